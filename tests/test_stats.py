"""Paired statistics: McNemar, bootstrap intervals, the stratified comparison, t-intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sst

from cem.evaluation.stats import (
    delta_difference,
    holm,
    paired_delta,
    ratio_delta,
    stratified_comparison,
    t_interval,
    verdict,
)


def test_paired_delta_counts_flips_and_uses_exact_mcnemar():
    from statsmodels.stats.contingency_tables import mcnemar

    before = [True] * 50 + [False] * 30 + [True] * 2 + [False] * 18
    after = [True] * 50 + [True] * 30 + [False] * 2 + [False] * 18
    g = paired_delta(before, after)
    assert (g["won"], g["lost"], g["n"]) == (30, 2, 100)
    assert g["delta"] == pytest.approx(0.28)
    assert g["p"] == pytest.approx(mcnemar([[0, 2], [30, 0]], exact=True).pvalue)
    lo, hi = g["ci"]
    assert 0.15 < lo < 0.28 < hi < 0.40
    assert verdict(g["ci"]) == "confirmed" and verdict(g["ci"], -1) == "refuted"


def test_no_change_is_inconclusive_with_p_one():
    g = paired_delta([True, False] * 20, [True, False] * 20)
    assert g["delta"] == 0 and g["ci"] == [0.0, 0.0] and g["p"] == 1.0
    assert verdict(g["ci"]) == "inconclusive"
    assert paired_delta([], []) is None


def test_knowledge_gain_resamples_each_set_apart():
    rng = np.random.default_rng(1)
    exam = rng.choice([0.0, 1.0], size=200, p=[0.8, 0.2])  # 20% of exam items fixed
    test = rng.choice([0.0, 1.0], size=200, p=[0.97, 0.03])
    g = delta_difference(exam, test)
    assert g["delta"] == pytest.approx(exam.mean() - test.mean())
    assert g["ci"][0] > 0 and g["p"] < 0.01
    same = delta_difference(exam, exam)
    assert same["delta"] == 0 and same["ci"][0] < 0 < same["ci"][1] and same["p"] > 0.5


def test_ratio_delta_is_per_token():
    g = ratio_delta([10.0, 20.0], [12.0, 24.0], [5, 10])
    assert g["delta"] == pytest.approx(6 / 15) and g["n"] == 2


def test_stratified_comparison_pools_seeds():
    rng = np.random.default_rng(2)
    strata, weights = [], []
    for _ in range(3):  # three seeds: A fixes 10% more items than B
        b = rng.choice([0.0, 1.0], size=300, p=[0.9, 0.1])
        a = np.maximum(b, rng.choice([0.0, 1.0], size=300, p=[0.9, 0.1]))
        strata.append((a, b))
        weights.append(1 / 3)
    c = stratified_comparison(strata, weights)
    assert c["delta"] == pytest.approx(np.mean([np.mean(a - b) for a, b in strata]))
    assert c["ci"][0] > 0 and c["p"] < 0.001 and c["strata"] == 3 and c["n"] == 900
    null = stratified_comparison([(a, a) for a, _ in strata], weights)
    assert null["delta"] == 0 and null["p"] == 1.0
    # A difference of differences: exam strata weighted +1/S, test strata -1/S.
    kn = stratified_comparison(strata + [(b, b) for _, b in strata], [1 / 3] * 3 + [-1 / 3] * 3)
    assert kn["delta"] == pytest.approx(c["delta"])
    assert stratified_comparison([(np.ones(3), np.ones(2))], [1.0]) is None


def test_t_interval_uses_the_t_distribution():
    xs = [0.04, 0.09, 0.12, 0.07, 0.10]
    got = t_interval(xs)
    lo, hi = sst.t.interval(0.95, 4, loc=np.mean(xs), scale=sst.sem(xs))
    assert got["df"] == 4 and got["ci"] == pytest.approx([lo, hi])
    # At df 11 the old lookup table fell back to df 15's quantile (2.131 < 2.201): too narrow.
    twelve = [0.01 * i for i in range(12)]
    width = t_interval(twelve)["ci"][1] - t_interval(twelve)["ci"][0]
    assert width == pytest.approx(2 * sst.t.ppf(0.975, 11) * sst.sem(twelve))
    assert t_interval([0.1]) is None


def test_holm_adjusts_a_family_of_p_values_and_keeps_the_missing_ones():
    # Holm's step-down by hand: sorted 0.01, 0.03, 0.04 times 3, 2, 1, then made monotone.
    assert holm([0.04, 0.01, None, 0.03]) == pytest.approx([0.06, 0.03, None, 0.06])
    assert holm([0.049]) == [pytest.approx(0.049)]  # a family of one: unchanged
    assert holm([None]) == [None] and holm([]) == []
