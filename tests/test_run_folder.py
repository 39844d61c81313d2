"""The run folder as one contract: ``docs/run_folder.md`` lists exactly what ``cem.layout``
names, and the typed records read back what the stages write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _records import entry, run_summary

from cem import layout
from cem.errors import DataError
from cem.layout import RoundDir, RunDir
from cem.records import EntryKind, EvalRecord, Mistake, RunSummary, read_records, read_summary

DOC = Path(__file__).resolve().parent.parent / "docs" / "run_folder.md"
SKIPPED = {"name", "index"}  # RoundDir's properties that are not paths


def named_paths() -> set[str]:
    """Every path ``cem.layout`` names, relative to the run (``<round>`` for a round folder)."""
    run, rnd = RunDir(Path("D")), RoundDir(Path("<round>"))
    out = set()
    for obj, cls in ((run, RunDir), (rnd, RoundDir)):
        for name, attr in vars(cls).items():
            if isinstance(attr, property) and name not in SKIPPED:
                value = getattr(obj, name)
                if isinstance(value, Path):
                    out.add(value.as_posix())
    for stage in layout.STAGES:
        out.add(rnd.marker(stage).as_posix())
        out.add(rnd.stage_config(stage).as_posix())
    return {p.removeprefix("D/") for p in out}


def documented_paths() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", DOC.read_text(), re.M)}


def test_the_doc_lists_every_path_layout_names_and_no_other():
    named, documented = named_paths(), documented_paths()
    assert named - documented == set(), "add these to docs/run_folder.md"
    assert documented - named == set(), "docs/run_folder.md lists paths cem.layout lacks"


def test_rounds_are_listed_in_the_order_of_k(tmp_path):
    for name in ("round_10", "round_2", "warmup", "round_x", "round_0"):
        (tmp_path / name).mkdir()
    assert [r.index for r in RunDir(tmp_path).rounds()] == [0, 2, 10]
    assert RunDir(tmp_path).warmup.index is None


def record(**changes) -> dict:
    r = {"id": "q1", "set": "exam", "subject": "capital", "question": "The capital of Bhutan is",
         "choices": ["Thimphu", "Paro"], "gold": 0, "pred": 1, "pred_norm": 1,
         "scores": [-2.0, -1.5], "margin": 0.5, "correct": False, "correct_norm": False,
         "formulation": "cf", "meta": {"country": "Bhutan"}}  # fmt: skip
    return {**r, **changes}


def test_an_eval_record_round_trips_key_for_key():
    r = record()
    assert EvalRecord.from_json(r).to_json() == r
    assert list(EvalRecord.from_json(r).to_json()) == list(r)  # the file's key order
    gen = record(generation="The answer is B")
    assert EvalRecord.from_json(gen).to_json()["generation"] == "The answer is B"


@pytest.mark.parametrize(
    ("bad", "field"),
    [({"gold": "0"}, "gold"), ({"correct": 1}, "correct"), ({"choices": "Thimphu"}, "choices")],
)
def test_a_wrong_field_names_the_file_the_line_and_the_field(tmp_path, bad, field):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(record()) + "\n" + json.dumps(record(**bad)) + "\n")
    with pytest.raises(DataError, match=rf"records.jsonl:2: field '{field}' must be"):
        read_records(path, EvalRecord)


def test_a_missing_field_names_it(tmp_path):
    path = tmp_path / "mistakes.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": "?"}) + "\n")
    with pytest.raises(DataError, match=r"mistakes.jsonl:1: missing field 'gold_text'"):
        read_records(path, Mistake)


def test_a_mistake_keeps_the_order_of_its_file():
    m = Mistake.of(EvalRecord.from_json(record()), "wrong")
    assert list(m.to_json()) == ["id", "set", "subject", "question", "choices", "gold",
                                 "gold_text", "pred", "pred_text", "margin", "reason", "meta",
                                 "keywords", "queries", "extractor"]  # fmt: skip
    assert (m.gold_text, m.pred_text) == ("Thimphu", "Paro")


# --- summary.json: RunSummary and its RoundSummary entries -------------------------------------

METRICS = {"exam": {"acc": 0.5, "acc_norm": 0.5, "n": 4}}


ROUND_KEYS = ["round", "label", "protocol", "eval_dir", "metrics", "general_nll", "cpt_tokens",
              "cit_tokens", "replay_tokens", "trained_tokens", "rows_reached", "rows_total",
              "epoch_losses", "mistakes", "passages", "mistakes_by_reason", "diagnostics",
              "seconds", "cpu_seconds", "forgetting", "forgetting_vs_warmup", "gains",
              "intervals", "data_efficiency"]  # fmt: skip


def three_entries() -> tuple[dict, dict, dict]:
    r0 = entry(0, METRICS)
    warm = entry(0, METRICS, warmup=True, rows_reached=3, rows_total=4, epoch_losses=None,
                 forgetting_vs_warmup={"exam": 0.0})  # fmt: skip
    r1 = entry(1, METRICS, rows_reached=None, rows_total=None, epoch_losses=None,
               mistakes_by_reason={"wrong": 2}, diagnostics=None, forgetting_vs_warmup={},
               data_efficiency={"exam_gain_per_1k_cpt": None})  # fmt: skip
    return r0, warm, r1


def test_a_summary_round_trips_key_for_key_with_each_kind_its_fields():
    r0, warm, r1 = three_entries()
    s = run_summary([r0, r1], warm)
    back = RunSummary.from_json(s)
    assert back.to_json() == s  # as dicts, whatever their order; the keys' order is the
    # one `cem run` has always written (the helper's dicts have another)
    assert list(back.to_json()["rounds"][1]) == ROUND_KEYS
    assert list(back.to_json()["rounds"][0]) == [k for k in ROUND_KEYS if k in r0]
    assert [e.kind for e in back.timeline] == [EntryKind.ROUND_0, EntryKind.WARMUP,
                                               EntryKind.ROUND]  # fmt: skip
    assert back.reference_entry is back.warmup and back.final is back.rounds[1]
    # None is written where the entry's kind has the field (a round without diagnostics yet)...
    assert back.to_json()["rounds"][1]["diagnostics"] is None
    # ...and a field its kind lacks is never written, even when set.
    back.rounds[0].gains = {"vs_warmup": {}}
    assert "gains" not in back.rounds[0].to_json()
    assert RunSummary.from_json(run_summary([r0])).reference_entry.kind is EntryKind.ROUND_0
    # a summary written before cem recorded the code reads with none
    assert RunSummary.from_json({k: v for k, v in s.items() if k != "code"}).code == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["rounds"][1].pop("mistakes"), r"missing field 'rounds\[1\].mistakes'"),
        (lambda s: s["warmup"].pop("trained_tokens"), r"missing field 'warmup.trained_tokens'"),
        (lambda s: s["rounds"][1].update(label="round 2"),
         r"field 'rounds\[1\].label' must be 'before warm-up', 'after warm-up' or 'round <k>'"),
        (lambda s: s["rounds"].pop(0), r"field 'rounds' must start with round 0's entry"),
        (lambda s: s.update(reference="round_1"), r"field 'reference' must be 'round_0' or"),
        (lambda s: s["rounds"][1].update(seconds={"eval": "1"}),
         r"field 'rounds\[1\].seconds' must be dict\[str, float\]; got \{'eval': '1'\}"),
    ],
)  # fmt: skip
def test_a_bad_summary_names_the_file_and_the_field(tmp_path, change, message):
    r0, warm, r1 = three_entries()
    s = run_summary([r0, r1], warm)
    change(s)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(s))
    with pytest.raises(DataError, match=rf"summary.json: {message}"):
        read_summary(path)
