"""The run folder as one contract: ``docs/run_folder.md`` lists exactly what ``cem.layout``
names, and the typed records read back what the stages write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cem import layout
from cem.errors import DataError
from cem.layout import RoundDir, RunDir
from cem.records import EvalRecord, Mistake, read_records

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
