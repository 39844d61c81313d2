"""Why a round fixed the mistakes it fixed: hit, trained, fixed, per exam mistake.

For each exam mistake of round k (``round_k/mistakes``):

- **hit**: one of the passages kept for it (``round_k/knowledge``) states the gold answer
  (``holds_answer``: whole words, any case);
- **trained**: a hit, and a row of the round's own training set (replayed rows left out)
  that is linked to the mistake (its id in the row's ``source_ids``: the CPT passage, an
  Extractive or Review item made from it) and states the gold answer was reached by an
  optimiser step (``train/metrics.json`` ``reached_rows``);
- **fixed**: the item is right when M_k is scored (``round_{k+1}/eval``). For an
  ambiguous mistake (right, by a small margin) it means it is still right.

The fix rate is reported given hit-and-trained, hit-not-trained and no hit, per reason
(wrong, ambiguous), beside the control: the share of the test items wrong at the start
of the round that are right after it (the flip rate that needs no knowledge of the item).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cem.io import read_json, write_json
from cem.knowledge.keypoints import holds_answer
from cem.knowledge.types import Passage
from cem.layout import RoundDir, RunDir
from cem.records import EvalRecord, Mistake, Record, read_records

GROUPS = ("hit_trained", "hit_not_trained", "no_hit")


@dataclass
class MistakeFlag(Record):
    """One mistake's line of ``diagnostics.json``'s ``per_mistake``.

    Attributes:
        id, reason: the mistake's (``cem.records.Mistake``).
        relation: its subject.
        hit, trained, fixed: as the module's docstring defines them.
    """

    id: str
    reason: str
    relation: str
    hit: bool
    trained: bool
    fixed: bool


def _inputs(folder: RoundDir, scored: RoundDir) -> dict[str, Path]:
    return {
        "mistakes": folder.mistakes,
        "knowledge": folder.knowledge,
        "train_set": folder.train_set,
        "train": folder.train_metrics,
        "before": folder.records,
        "after": scored.records,
    }


def mistake_flags(
    mistakes: list[Mistake], passages: list[Passage], rows: list[dict], reached: set[int],
    after: dict[tuple[str, str], bool],
) -> list[MistakeFlag]:  # fmt: skip
    """One flag per mistake, in order; ``rows``: the training set's ``prompt``,
    ``response``, ``kind`` and ``source_ids``."""
    by_mistake: dict[str, list[str]] = {}
    for p in passages:
        for mid in p.mistake_ids:
            by_mistake.setdefault(mid, []).append(p.text)
    trained_text: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
        if i in reached and row["kind"] != "replay":
            for sid in row["source_ids"]:
                trained_text.setdefault(sid, []).append(row["prompt"] + row["response"])
    out = []
    for m in mistakes:
        gold = m.gold_text
        hit = any(holds_answer(t, gold) for t in by_mistake.get(m.id, []))
        out.append(MistakeFlag(
            id=m.id, reason=m.reason, relation=m.subject, hit=hit,
            trained=hit and any(holds_answer(t, gold) for t in trained_text.get(m.id, [])),
            fixed=after.get((m.set, m.id), False),
        ))  # fmt: skip
    return out


def rates(flags: Iterable[MistakeFlag]) -> dict[str, dict]:
    """``{group: {"n", "fixed", "rate"}}`` over ``GROUPS``."""
    out = {g: {"n": 0, "fixed": 0, "rate": None} for g in GROUPS}
    for f in flags:
        g = "no_hit" if not f.hit else "hit_trained" if f.trained else "hit_not_trained"
        out[g]["n"] += 1
        out[g]["fixed"] += f.fixed
    for g in out.values():
        g["rate"] = g["fixed"] / g["n"] if g["n"] else None
    return out


def flip_control(before: list[EvalRecord], after: dict[tuple[str, str], bool],
                 name: str = "test") -> dict:  # fmt: skip
    """Share of ``name``'s items wrong before the round that are right after it."""
    wrong = [(r.set, r.id) for r in before if r.set == name and not r.correct]
    flipped = sum(after.get(key, False) for key in wrong)
    return {"set": name, "n": len(wrong), "fixed": flipped,
            "rate": flipped / len(wrong) if wrong else None}  # fmt: skip


def build(root: Path, k: int) -> dict | None:
    """Round ``k``'s diagnostics, or None while its inputs are not all there."""
    import pyarrow.parquet as pq

    paths = _inputs(RunDir(root).round(k), RunDir(root).round(k + 1))
    if not all(p.is_file() for p in paths.values()):
        return None
    after = {(r.set, r.id): r.correct for r in read_records(paths["after"], EvalRecord)}
    rows = pq.read_table(paths["train_set"], columns=["prompt", "response", "kind", "source_ids"])
    flags = mistake_flags(
        read_records(paths["mistakes"], Mistake), read_records(paths["knowledge"], Passage),
        rows.to_pylist(), set(read_json(paths["train"]).get("reached_rows", [])), after,
    )  # fmt: skip
    reasons = sorted({f.reason for f in flags})
    return {
        "round": k,
        "mistakes": len(flags),
        "by_reason": {r: sum(f.reason == r for f in flags) for r in reasons},
        "fix_rates": rates(flags),
        "fix_rates_by_reason": {r: rates(f for f in flags if f.reason == r) for r in reasons},
        "control": flip_control(read_records(paths["before"], EvalRecord), after),
        "per_mistake": [f.to_json() for f in flags],
    }


def flags_by_id(d: dict | None) -> dict[str, MistakeFlag]:
    """The ``per_mistake`` flags of a round's diagnostics (``load``) by mistake id."""
    flags = (MistakeFlag.from_json(f) for f in (d or {}).get("per_mistake", []))
    return {f.id: f for f in flags}


def write(root: Path, k: int) -> dict | None:
    """Build round ``k``'s diagnostics and write ``round_k/diagnostics.json``."""
    d = build(root, k)
    if d is not None:
        write_json(RunDir(root).round(k).diagnostics, d)
    return d


def load(root: Path, k: int) -> dict | None:
    """``round_k/diagnostics.json``, else built from the round's files (None if incomplete)."""
    path = RunDir(root).round(k).diagnostics
    return read_json(path) if path.is_file() else build(root, k)
