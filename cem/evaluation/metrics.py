"""Per-question records and per-set accuracy with Wilson 95% intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from cem.benchmarks.schema import MCItem


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` (z=1.96: 95%)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one wins ties (as numpy's argmax)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def margin(values: Sequence[float]) -> float | None:
    """Best score minus second-best score; None with fewer than two options."""
    if len(values) < 2:
        return None
    top = sorted(values, reverse=True)
    return top[0] - top[1]


def make_record(item: MCItem, logliks: Sequence[float], continuations: Sequence[str]) -> dict:
    """One question's record: every option's score, the predictions and the margin.

    ``pred_norm`` divides each log-likelihood by the continuation's length in characters,
    as lm-evaluation-harness's ``acc_norm`` does.
    """
    scores = [float(x) for x in logliks]
    normed = [s / max(len(c), 1) for s, c in zip(scores, continuations, strict=True)]
    pred, pred_norm = argmax(scores), argmax(normed)
    return {
        "id": item.id,
        "set": item.set,
        "subject": item.subject,
        "question": item.question,
        "choices": list(item.choices),
        "gold": item.answer,
        "pred": pred,
        "pred_norm": pred_norm,
        "scores": scores,
        "margin": margin(scores),
        "correct": pred == item.answer,
        "correct_norm": pred_norm == item.answer,
    }


def summarise(records: Iterable[dict]) -> dict[str, dict]:
    """``{set: {"acc", "acc_norm", "n", "acc_ci", "acc_norm_ci"}}`` in order of first appearance."""
    counts: dict[str, list[int]] = {}
    for r in records:
        c = counts.setdefault(r["set"], [0, 0, 0])
        c[0] += 1
        c[1] += bool(r["correct"])
        c[2] += bool(r["correct_norm"])
    out = {}
    for name, (n, k, k_norm) in counts.items():
        out[name] = {
            "acc": k / n,
            "acc_norm": k_norm / n,
            "n": n,
            "acc_ci": list(wilson_interval(k, n)),
            "acc_norm_ci": list(wilson_interval(k_norm, n)),
        }
    return out
