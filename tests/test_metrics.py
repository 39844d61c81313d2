"""Wilson intervals, records and per-set summaries."""

from __future__ import annotations

import pytest
from _records import eval_record

from cem.benchmarks.schema import MCItem
from cem.evaluation.metrics import (
    make_generate_record,
    make_record,
    summarise,
    wilson_interval,
)

RECORD_FIELDS = {
    "id",
    "set",
    "subject",
    "question",
    "choices",
    "gold",
    "pred",
    "pred_norm",
    "scores",
    "margin",
    "correct",
    "correct_norm",
    "formulation",  # set by cem.evaluation.evaluate, as "meta"
    "meta",
}


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [  # scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
        (8, 10, 0.490162, 0.943318),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
        (150, 300, 0.443780, 0.556220),
        (81, 263, 0.255289, 0.366210),
    ],
)
def test_wilson_interval_known_values(k, n, lo, hi):
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(5, 10, z=2.576)  # 99% is wider than 95%
    assert lo < wilson_interval(5, 10)[0] and hi > wilson_interval(5, 10)[1]
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_record_fields_and_margin():
    item = MCItem(id="q1", question="?", choices=["Thimphu", "Paro"], answer=1, subject="capital")
    rec = make_record(item, [-2.0, -3.5], [" Thimphu", " Paro"]).to_json()
    assert set(rec) == RECORD_FIELDS
    assert rec["id"] == "q1" and rec["set"] == "exam" and rec["subject"] == "capital"
    assert rec["gold"] == 1 and rec["pred"] == 0 and not rec["correct"]
    assert rec["scores"] == [-2.0, -3.5] and rec["margin"] == pytest.approx(1.5)


def test_pred_norm_divides_by_characters_without_the_delimiter():
    item = MCItem(id="q", question="?", choices=["Thimphu", "Paro"], answer=1)
    # Per character (lm-eval counts "Thimphu", not " Thimphu"): -4/7 = -0.57 beats -3/4.
    rec = make_record(item, [-4.0, -3.0], [" Thimphu", " Paro"]).to_json()
    assert rec["pred"] == 1 and rec["correct"]
    assert rec["pred_norm"] == 0 and not rec["correct_norm"]


def test_ties_go_to_the_first_option():
    item = MCItem(id="q", question="?", choices=["a", "b", "c"], answer=1)
    rec = make_record(item, [-1.0, -0.5, -0.5], [" a", " b", " c"]).to_json()
    assert rec["pred"] == 1 and rec["margin"] == 0.0


def test_record_length_mismatch_is_an_error():
    item = MCItem(id="q", question="?", choices=["a", "b"], answer=0)
    with pytest.raises(ValueError, match="2 choices"):
        make_record(item, [-1.0], [" a"])


def test_generate_record():
    item = MCItem(id="q", question="?", choices=["Thimphu", "Paro"], answer=1)
    rec = make_generate_record(item, "The answer is B.").to_json()
    assert set(rec) == RECORD_FIELDS | {"generation"}
    assert rec["pred"] == rec["pred_norm"] == 1 and rec["correct"]
    assert rec["scores"] is None and rec["margin"] is None
    assert rec["generation"] == "The answer is B."
    rec = make_generate_record(item, "I do not know.").to_json()
    assert rec["pred"] is None and not rec["correct"]


def test_summarise_per_set():
    recs = [eval_record(f"e{i}", "exam", c, correct_norm=not c)
            for i, c in enumerate((True, True, False, True))]  # fmt: skip
    recs.append(eval_record("t0", "test", False))
    m = summarise(recs)
    assert list(m) == ["exam", "test"]
    assert m["exam"]["acc"] == 0.75 and m["exam"]["acc_norm"] == 0.25 and m["exam"]["n"] == 4
    assert m["exam"]["acc_ci"] == pytest.approx(list(wilson_interval(3, 4)))
    assert m["test"]["acc"] == 0.0 and m["test"]["acc_ci"][0] == 0.0
    assert set(m["test"]) == {"acc", "acc_norm", "n", "acc_ci", "acc_norm_ci"}
