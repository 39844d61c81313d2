"""Wilson intervals, records and per-set summaries."""

from __future__ import annotations

import pytest

from cem.benchmarks.schema import MCItem
from cem.evaluation.generate import extract_choice
from cem.evaluation.metrics import make_record, summarise, wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(150, 300)
    assert hi - lo == pytest.approx(0.1124, abs=1e-4)  # about +-5.6 points at n=300
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_record_fields_margin_and_length_normalisation():
    item = MCItem(id="q", question="?", choices=["Thimphu", "Paro"], answer=1, set="exam")
    rec = make_record(item, [-2.0, -3.0], [" Thimphu", " Paro"])
    assert rec["pred"] == 0 and not rec["correct"]
    assert rec["margin"] == pytest.approx(1.0)
    # Per character: -2/8 = -0.25 for " Thimphu" beats -3/5 = -0.6 for " Paro".
    assert rec["pred_norm"] == 0
    rec = make_record(item, [-4.0, -3.0], [" Thimphu", " Paro"])
    # -4/8 = -0.5 still beats -0.6, so acc_norm and acc disagree here.
    assert rec["pred"] == 1 and rec["correct"] and rec["pred_norm"] == 0


def test_ties_go_to_the_first_option():
    item = MCItem(id="q", question="?", choices=["a", "b"], answer=1)
    assert make_record(item, [-1.0, -1.0], ["a", "b"])["pred"] == 0


def test_summarise_per_set():
    recs = [{"set": "exam", "correct": c, "correct_norm": not c} for c in (True, True, False, True)]
    recs.append({"set": "test", "correct": False, "correct_norm": False})
    m = summarise(recs)
    assert list(m) == ["exam", "test"]
    assert m["exam"]["acc"] == 0.75 and m["exam"]["acc_norm"] == 0.25 and m["exam"]["n"] == 4
    assert m["test"]["acc"] == 0.0 and m["test"]["acc_ci"][0] == 0.0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is B", 1),
        ("B", 1),
        ("(C)", 2),
        ("D.", 3),
        ("Answer: B) Paro", 1),
        ("It is Thimphu, of course.", 0),
        ("I think Niger, not Nigeria.", 2),
        ("No idea.", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, ["Thimphu", "Paro", "Niger", "Nigeria"]) == expected
