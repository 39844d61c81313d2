"""Per-question records and per-set accuracy with Wilson intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cem.benchmarks.schema import MCItem
from cem.records import EvalRecord


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` trials.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 or n,
    which small exam sets hit often. ``n = 0`` gives the uninformative (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n]; got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def argmax(values: list[float]) -> int:
    """Index of the largest value; the first one wins a tie (as ``numpy.argmax``)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def make_record(item: MCItem, logliks: list[float], continuations: list[str]) -> EvalRecord:
    """One log-likelihood record: the item, the scores and both predictions.

    ``pred_norm`` divides each log-likelihood by the option's length in characters, as
    lm-eval's ``acc_norm`` does. lm-eval measures the choice text without its target
    delimiter, so the continuation's leading whitespace is not counted.
    """
    if len(logliks) != len(item.choices) or len(continuations) != len(item.choices):
        raise ValueError(
            f"item {item.id}: {len(item.choices)} choices but {len(logliks)} scores "
            f"and {len(continuations)} continuations"
        )
    pred = argmax(logliks)
    lengths = [max(len(c.lstrip()), 1) for c in continuations]
    pred_norm = argmax([ll / n for ll, n in zip(logliks, lengths, strict=True)])
    top = sorted(logliks, reverse=True)
    return _record(
        item,
        pred=pred,
        pred_norm=pred_norm,
        scores=[float(x) for x in logliks],
        margin=float(top[0] - top[1]) if len(top) > 1 else None,
    )


def make_generate_record(item: MCItem, generation: str) -> EvalRecord:
    """One generation-mode record: the choice read from ``generation`` (None if none)."""
    from cem.evaluation.generate import extract_choice

    pred = extract_choice(generation, item.choices)
    return _record(item, pred=pred, pred_norm=pred, scores=None, margin=None,
                   generation=generation)  # fmt: skip


def _record(
    item: MCItem,
    *,
    pred: int | None,
    pred_norm: int | None,
    scores: list[float] | None,
    margin: float | None,
    generation: str | None = None,
) -> EvalRecord:
    """The record of ``item``; ``formulation`` and ``meta`` are set by ``evaluate``."""
    return EvalRecord(
        id=item.id,
        set=item.set,
        subject=item.subject,
        question=item.question,
        choices=list(item.choices),
        gold=item.answer,
        pred=pred,
        pred_norm=pred_norm,
        scores=scores,
        margin=margin,
        correct=pred == item.answer,
        correct_norm=pred_norm == item.answer,
        generation=generation,
    )


def summarise(records: Iterable[EvalRecord], z: float = 1.96) -> dict[str, dict[str, Any]]:
    """Accuracy per set, in the order the sets first appear.

    Returns:
        ``{set: {"acc", "acc_norm", "n", "acc_ci": [lo, hi], "acc_norm_ci": [lo, hi]}}``.
    """
    counts: dict[str, list[int]] = {}
    for rec in records:
        c = counts.setdefault(rec.set, [0, 0, 0])
        c[0] += 1
        c[1] += rec.correct
        c[2] += rec.correct_norm
    out = {}
    for name, (n, k, k_norm) in counts.items():
        out[name] = {
            "acc": k / n,
            "acc_norm": k_norm / n,
            "n": n,
            "acc_ci": list(wilson_interval(k, n, z)),
            "acc_norm_ci": list(wilson_interval(k_norm, n, z)),
        }
    return out
