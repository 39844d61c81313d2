"""Paired statistics for every gain the project reports (METHOD.md, "Statistics").

The unit of evidence is the item. Within a run, a gain (one model against another on the
same items) gets a paired bootstrap interval over items and an exact McNemar p; the
knowledge gain (Δexam − Δtest, two sets of different items) gets a bootstrap interval that
resamples each set on its own and a permutation p. A comparison of two configs pools the
per-item differences over seeds with a stratified bootstrap (items resampled within each
seed and set) and a paired sign-flip permutation p. Means over seeds get a t-interval.
All of it is scipy.stats and statsmodels, seeded (``SEED``), with ``N_RESAMPLES`` draws
and 95% intervals by the percentile method.

A claim is **confirmed** when its interval excludes zero in the stated direction,
**refuted** when it excludes zero the other way, and **inconclusive** otherwise. Where a
table compares several rows with one, the knowledge gain's p is also given adjusted for
the family (``holm``), so that a reader can tell which verdicts survive the multiplicity.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

N_RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def _bootstrap(samples: Sequence[np.ndarray], statistic: Callable, paired: bool) -> list[float]:
    """The percentile interval of ``statistic`` (vectorised over the last axis)."""
    from scipy.stats import bootstrap

    point = float(statistic(*samples, axis=-1))
    if all(np.all(s == s.flat[0]) for s in samples if s.size):
        return [point, point]  # every draw gives the same value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on near-degenerate distributions
        ci = bootstrap(tuple(samples), statistic, n_resamples=N_RESAMPLES, paired=paired,
                       vectorized=True, confidence_level=LEVEL, method="percentile",
                       rng=_rng()).confidence_interval  # fmt: skip
    return [float(ci.low), float(ci.high)]


def _permutation_p(samples: Sequence[np.ndarray], statistic: Callable, kind: str) -> float:
    from scipy.stats import permutation_test

    if kind == "samples" and np.array_equal(samples[0], samples[1]):
        return 1.0  # no pair differs: every sign flip gives the same statistic
    res = permutation_test(tuple(samples), statistic, permutation_type=kind, vectorized=True,
                           n_resamples=N_RESAMPLES, alternative="two-sided", rng=_rng())  # fmt: skip
    return float(res.pvalue)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def mcnemar_p(before: np.ndarray, after: np.ndarray) -> float:
    """Exact McNemar p of a paired change in accuracy (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar

    lost = int(np.sum(before & ~after))
    won = int(np.sum(~before & after))
    if lost + won == 0:
        return 1.0
    return float(mcnemar([[0, lost], [won, 0]], exact=True).pvalue)


def paired_delta(before: Sequence[bool], after: Sequence[bool]) -> dict | None:
    """Accuracy after − before on the same items: the delta, its interval and McNemar p.

    Returns None for no items. ``won`` / ``lost``: items that turned right / wrong.
    """
    b, a = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if b.size == 0:
        return None
    d = a.astype(float) - b.astype(float)
    return {
        "delta": float(d.mean()),
        "ci": _bootstrap([d], _mean, paired=False),
        "p": mcnemar_p(b, a),
        "test": "exact McNemar",
        "n": int(b.size),
        "won": int(np.sum(~b & a)),
        "lost": int(np.sum(b & ~a)),
    }


def _diff_of_means(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def delta_difference(d_exam: Sequence[float], d_test: Sequence[float]) -> dict | None:
    """The knowledge gain, mean(d_exam) − mean(d_test), of per-item changes on two sets.

    The sets hold different items, so each is resampled on its own; the p is a
    permutation test of the items' set labels.
    """
    x, y = np.asarray(d_exam, dtype=float), np.asarray(d_test, dtype=float)
    if x.size == 0 or y.size == 0:
        return None
    return {
        "delta": float(_diff_of_means(x, y)),
        "ci": _bootstrap([x, y], _diff_of_means, paired=False),
        "p": _permutation_p([x, y], _diff_of_means, "independent"),
        "test": "permutation (set labels)",
        "n": int(x.size + y.size),
    }


def ratio_delta(before: Sequence[float], after: Sequence[float], weights: Sequence[float]):
    """(Σ after − Σ before) / Σ weights over paired units (e.g. NLL sums per passage, per
    token), with a paired bootstrap interval over the units."""
    b, a, w = (np.asarray(v, dtype=float) for v in (before, after, weights))
    if b.size == 0 or w.sum() == 0:
        return None

    def stat(d: np.ndarray, ws: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sum(d, axis=axis) / np.sum(ws, axis=axis)

    return {"delta": float(stat(a - b, w)), "ci": _bootstrap([a - b, w], stat, paired=True),
            "n": int(b.size)}  # fmt: skip


def stratified_comparison(strata: Sequence[tuple[np.ndarray, np.ndarray]],
                          weights: Sequence[float]) -> dict | None:  # fmt: skip
    """A paired comparison pooled over strata: Σ_s w_s · mean(x_s − y_s).

    Each stratum (one seed's items of one set) holds config A's and config B's per-item
    values, matched item by item. The interval resamples items within each stratum; the p
    flips the sign of each item's difference (a paired permutation test).
    """
    strata = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for x, y in strata]
    if not strata or any(x.size == 0 or x.shape != y.shape for x, y in strata):
        return None
    w = np.asarray(weights, dtype=float)
    diffs = [x - y for x, y in strata]

    def stat(*ds: np.ndarray, axis: int = -1) -> np.ndarray:
        return sum(wi * np.mean(d, axis=axis) for wi, d in zip(w, ds, strict=True))

    bounds = np.cumsum([0, *(d.size for d in diffs)])
    xs, ys = np.concatenate([x for x, _ in strata]), np.concatenate([y for _, y in strata])

    def paired_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        d = x - y
        return stat(*(d[..., lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)))

    return {
        "delta": float(stat(*diffs)),
        "ci": _bootstrap(diffs, stat, paired=False),
        "p": _permutation_p([xs, ys], paired_stat, "samples"),
        "test": "paired sign-flip permutation, stratified bootstrap",
        "n": int(xs.size),
        "strata": len(strata),
    }


def t_interval(values: Sequence[float]) -> dict | None:
    """Mean over runs with a t-interval (scipy's t quantile, df = n − 1); None for n < 2."""
    from scipy.stats import t

    xs = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if xs.size < 2:
        return None
    mean, sd, df = float(xs.mean()), float(xs.std(ddof=1)), xs.size - 1
    half = float(t.ppf(0.5 + LEVEL / 2, df)) * sd / math.sqrt(xs.size)
    return {"mean": mean, "sd": sd, "ci": [mean - half, mean + half], "df": df, "n": int(xs.size)}


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """``ps`` adjusted for being tested together (Holm's step-down, statsmodels), for a
    family such as a table's rows each compared with one row; a None stays None."""
    from statsmodels.stats.multitest import multipletests

    given = [(i, p) for i, p in enumerate(ps) if p is not None]
    out: list[float | None] = [None] * len(ps)
    if given:
        adjusted = multipletests([p for _, p in given], method="holm")[1]
        for (i, _), q in zip(given, adjusted, strict=True):
            out[i] = float(q)
    return out


def verdict(ci: Sequence[float] | None, direction: int = 1) -> str:
    """``confirmed`` / ``refuted`` / ``inconclusive`` for a claim that the value is > 0
    (``direction=1``) or < 0 (``direction=-1``)."""
    if ci is None:
        return "inconclusive"
    lo, hi = (direction * c for c in ci)
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return "confirmed"
    if hi < 0:
        return "refuted"
    return "inconclusive"
