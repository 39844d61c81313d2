"""Item-level evidence across runs: a variant's gain pooled over seeds, and two variants
compared pairwise on the same seeds (``cem report --against``).

A run's evidence is, per evaluated item, whether its reference model (the warm-up, or
round 0) and its final model got it right, plus the general probe's NLL per token of each
passage. Two runs pair only when they share the seed and so the split: the same exam and
test items. Gains pool over seeds by ``stratified_comparison``: items are resampled within
each (seed, set) stratum, and each seed weighs the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cem.errors import CemError
from cem.io import read_json
from cem.layout import RoundDir, RunDir
from cem.records import EvalRecord, RunSummary, read_records

EXAM, TEST = "exam", "test"


@dataclass
class RunItems:
    """What one run's reference and final models got right, item by item."""

    path: Path
    seed: int
    ref: dict[str, dict[str, bool]]  # set -> item id -> right
    final: dict[str, dict[str, bool]]
    probe: tuple[list[float], list[float]] | None  # per-passage NLL per token: (ref, final)
    round0: dict[str, dict[str, bool]] | None = None  # round 0's model: forgetting's reference
    # round 0's option scores, item id -> scores: rows of one seed start from the same model,
    # so these match digit for digit unless the rows ran on different kinds of machine
    round0_scores: dict[str, list[float]] | None = None


def _correct(records: Sequence[EvalRecord]) -> dict[str, dict[str, bool]]:
    out: dict[str, dict[str, bool]] = {}
    for r in records:
        out.setdefault(r.set, {})[r.id] = r.correct
    return out


def _probe(folder: RoundDir) -> list[float] | None:
    path = folder.general
    if not path.is_file():
        return None
    return [p["nll_sum"] / p["tokens"] for p in read_json(path)["per_passage"] if p["tokens"]]


def load_items(path: Path, summary: RunSummary) -> RunItems:
    """The run's reference and final evaluations (folders named in its summary)."""
    # eval_dir: the round folder's eval/, relative to the run
    ref_dir, final_dir = (RunDir(path).scored(e.eval_dir)
                          for e in (summary.reference_entry, summary.final))  # fmt: skip
    for d in (ref_dir, final_dir):
        if not d.records.is_file():
            raise CemError(f"{d.records} not found: the run {path} is incomplete")
    probes = (_probe(ref_dir), _probe(final_dir))
    ref_records = read_records(ref_dir.records, EvalRecord)
    r0_dir = RunDir(path).scored(summary.rounds[0].eval_dir)
    r0_records = (ref_records if r0_dir == ref_dir
                  else read_records(r0_dir.records, EvalRecord) if r0_dir.records.is_file()
                  else None)  # fmt: skip
    return RunItems(path, summary.seed, _correct(ref_records),
                    _correct(read_records(final_dir.records, EvalRecord)),
                    probes if all(p is not None for p in probes) else None,
                    None if r0_records is None else _correct(r0_records),
                    _scores(r0_records))  # fmt: skip


def _scores(records: Sequence[EvalRecord] | None) -> dict[str, list[float]] | None:
    """Item id -> option scores (None where there are none: generation mode, or no records)."""
    scores = {r.id: r.scores for r in records or () if r.scores is not None}
    return scores or None


def _vectors(run: RunItems, name: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ref, final = run.ref.get(name, {}), run.final.get(name, {})
    return (np.array([final[i] for i in ids], dtype=float),
            np.array([ref[i] for i in ids], dtype=float))  # fmt: skip


def _ids(run: RunItems, name: str) -> list[str]:
    return sorted(set(run.ref.get(name, {})) & set(run.final.get(name, {})))


def _claims(strata: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, dict | None]:
    """Δexam, Δtest (schema gain) and knowledge gain from per-seed (x, y) strata."""
    from cem.evaluation.stats import stratified_comparison

    exam, test = strata[EXAM], strata[TEST]
    if not exam or len(exam) != len(test):
        return {"exam": None, "test": None, "knowledge": None}
    s = len(exam)
    return {
        "exam": stratified_comparison(exam, [1 / s] * s),
        "test": stratified_comparison(test, [1 / s] * s),
        "knowledge": stratified_comparison(exam + test, [1 / s] * s + [-1 / s] * s),
    }


def pooled_gain(runs: Sequence[RunItems]) -> dict[str, dict | None]:
    """A variant's gains over its reference, pooled over its runs (one stratum per seed)."""
    strata: dict[str, list] = {EXAM: [], TEST: []}
    for run in runs:
        for name in strata:
            ids = _ids(run, name)
            if ids:
                strata[name].append(_vectors(run, name, ids))
    return _claims(strata)


def pair_runs(a: Sequence[RunItems], b: Sequence[RunItems], a_label: str, b_label: str):
    """Runs of ``a`` and ``b`` matched by seed; each pair must share its exam and test items.

    Raises:
        CemError: no seed in common, or a pair whose splits differ (different items).
    """
    by_seed = {r.seed: r for r in b}
    pairs = [(r, by_seed[r.seed]) for r in a if r.seed in by_seed]
    if not pairs:
        raise CemError(
            f"cannot pair {a_label!r} (seeds {sorted(r.seed for r in a)}) with {b_label!r} "
            f"(seeds {sorted(by_seed)}): a paired comparison needs the same seeds; run the "
            "missing seeds first"
        )
    for x, y in pairs:
        for name in (EXAM, TEST):
            if set(x.ref.get(name, {})) != set(y.ref.get(name, {})):
                raise CemError(
                    f"cannot pair {x.path} with {y.path}: seed {x.seed} but different {name} "
                    "items (another split or benchmark); compare runs of one benchmark and split"
                )
    return pairs


def start_difference(x: RunItems, y: RunItems) -> dict | None:
    """How the round-0 scores of a pair differ, or None where they match (or are missing).

    Rows of one seed start from the same model and items, so their round-0 scores match
    digit for digit on one kind of machine; they differ when the rows ran on different
    kinds (the archived paradigm table's seed 2: up to 0.88 nat per option, 8 predictions,
    experiments/LOG.md 2026-12-03), in different dtypes, or from different models.
    """
    if x.round0_scores is None or y.round0_scores is None:
        return None
    common = sorted(set(x.round0_scores) & set(y.round0_scores))
    gaps = [max((abs(a - b) for a, b in zip(x.round0_scores[i], y.round0_scores[i],
                                            strict=True)), default=0.0)
            for i in common]  # fmt: skip
    differ = sum(g > 0 for g in gaps)
    if not differ:
        return None
    preds = sum(
        int(np.argmax(x.round0_scores[i])) != int(np.argmax(y.round0_scores[i])) for i in common
    )
    return {"seed": x.seed, "items": len(common), "differ": differ, "predictions": preds,
            "max_nat": max(gaps)}  # fmt: skip


def _forgetting(pairs: Sequence[tuple[RunItems, RunItems]]) -> dict[str, dict | None]:
    """Per set, ``a``'s forgetting minus ``b``'s, paired per item: on the items both runs'
    round-0 models got right, whether each final model now gets them wrong (the summary's
    forgetting rate, item by item), one stratum per seed."""
    from cem.evaluation.stats import stratified_comparison

    strata: dict[str, list] = {}
    for x, y in pairs:
        if x.round0 is None or y.round0 is None:
            continue
        for name, right in x.round0.items():
            xf, yf = x.final.get(name, {}), y.final.get(name, {})
            ids = sorted(i for i, ok in right.items()
                         if ok and y.round0.get(name, {}).get(i) and i in xf and i in yf)  # fmt: skip
            if ids:
                strata.setdefault(name, []).append(
                    (np.array([not xf[i] for i in ids], dtype=float),
                     np.array([not yf[i] for i in ids], dtype=float)))  # fmt: skip
    return {name: stratified_comparison(s, [1 / len(s)] * len(s)) for name, s in strata.items()}


def compare(a: Sequence[RunItems], b: Sequence[RunItems], a_label: str, b_label: str) -> dict:
    """``a`` against ``b`` on their common seeds: each gain's difference, paired per item.

    The per-item value is the item's gain (final − reference right), so runs whose
    reference models differ still compare their gains.
    """
    pairs = pair_runs(a, b, a_label, b_label)
    strata: dict[str, list] = {EXAM: [], TEST: []}
    probe_a, probe_b = [], []
    for x, y in pairs:
        for name in strata:
            ids = _ids(x, name)
            xa, xr = _vectors(x, name, ids)
            ya, yr = _vectors(y, name, ids)
            strata[name].append((xa - xr, ya - yr))
        if x.probe and y.probe:
            probe_a.append(np.subtract(x.probe[1], x.probe[0]))
            probe_b.append(np.subtract(y.probe[1], y.probe[0]))
    out = _claims(strata)
    if probe_a and len(probe_a) == len(pairs):
        from cem.evaluation.stats import stratified_comparison

        n = len(probe_a)
        out["general_nll"] = stratified_comparison(list(zip(probe_a, probe_b, strict=True)),
                                                   [1 / n] * n)  # fmt: skip
    out["forgetting"] = _forgetting(pairs)
    out["start_differs"] = [d for x, y in pairs if (d := start_difference(x, y))]
    out["seeds"] = sorted(x.seed for x, _ in pairs)
    out["unpaired"] = sorted({r.seed for r in (*a, *b)} - set(out["seeds"]))
    return out
