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
from pathlib import Path

from cem.io import read_json, read_jsonl, write_json
from cem.knowledge.keypoints import holds_answer
from cem.layout import RoundDir, RunDir

GROUPS = ("hit_trained", "hit_not_trained", "no_hit")


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
    mistakes: list[dict], passages: list[dict], rows: list[dict], reached: set[int],
    after: dict[tuple[str, str], bool],
) -> list[dict]:  # fmt: skip
    """One ``{id, reason, relation, hit, trained, fixed}`` per mistake, in order."""
    by_mistake: dict[str, list[str]] = {}
    for p in passages:
        for mid in p.get("mistake_ids") or []:
            by_mistake.setdefault(mid, []).append(p["text"])
    trained_text: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
        if i in reached and row["kind"] != "replay":
            for sid in row["source_ids"]:
                trained_text.setdefault(sid, []).append(row["prompt"] + row["response"])
    out = []
    for m in mistakes:
        gold = m["gold_text"]
        hit = any(holds_answer(t, gold) for t in by_mistake.get(m["id"], []))
        out.append({
            "id": m["id"],
            "reason": m["reason"],
            "relation": m.get("subject", ""),
            "hit": hit,
            "trained": hit and any(holds_answer(t, gold) for t in trained_text.get(m["id"], [])),
            "fixed": after.get((m["set"], m["id"]), False),
        })  # fmt: skip
    return out


def rates(flags: Iterable[dict]) -> dict[str, dict]:
    """``{group: {"n", "fixed", "rate"}}`` over ``GROUPS``."""
    out = {g: {"n": 0, "fixed": 0, "rate": None} for g in GROUPS}
    for f in flags:
        g = "no_hit" if not f["hit"] else "hit_trained" if f["trained"] else "hit_not_trained"
        out[g]["n"] += 1
        out[g]["fixed"] += bool(f["fixed"])
    for g in out.values():
        g["rate"] = g["fixed"] / g["n"] if g["n"] else None
    return out


def flip_control(before: list[dict], after: dict[tuple[str, str], bool], name: str = "test"):
    """Share of ``name``'s items wrong before the round that are right after it."""
    wrong = [(r["set"], r["id"]) for r in before if r["set"] == name and not r["correct"]]
    flipped = sum(after.get(key, False) for key in wrong)
    return {"set": name, "n": len(wrong), "fixed": flipped,
            "rate": flipped / len(wrong) if wrong else None}  # fmt: skip


def build(root: Path, k: int) -> dict | None:
    """Round ``k``'s diagnostics, or None while its inputs are not all there."""
    import pyarrow.parquet as pq

    paths = _inputs(RunDir(root).round(k), RunDir(root).round(k + 1))
    if not all(p.is_file() for p in paths.values()):
        return None
    after = {(r["set"], r["id"]): bool(r["correct"]) for r in read_jsonl(paths["after"])}
    rows = pq.read_table(paths["train_set"], columns=["prompt", "response", "kind", "source_ids"])
    flags = mistake_flags(
        read_jsonl(paths["mistakes"]), read_jsonl(paths["knowledge"]), rows.to_pylist(),
        set(read_json(paths["train"]).get("reached_rows", [])), after,
    )  # fmt: skip
    reasons = sorted({f["reason"] for f in flags})
    return {
        "round": k,
        "mistakes": len(flags),
        "by_reason": {r: sum(f["reason"] == r for f in flags) for r in reasons},
        "fix_rates": rates(flags),
        "fix_rates_by_reason": {r: rates(f for f in flags if f["reason"] == r) for r in reasons},
        "control": flip_control(read_jsonl(paths["before"]), after),
        "per_mistake": flags,
    }


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
