"""Per-mistake diagnostics: hit, trained, fixed, and the fix rates against the control."""

from __future__ import annotations

from _records import eval_record, mistake

from cem.knowledge.types import Passage
from cem.loop.diagnostics import MistakeFlag, flags_by_id, flip_control, mistake_flags, rates


def passage(text: str, mistake_id: str) -> Passage:
    return Passage(text=text, source="wiki", doc_id=text[:8], score=1.0, mistake_ids=[mistake_id])


MISTAKES = [mistake("a", "Thimphu"), mistake("b", "Roseau"), mistake("c", "Apia"),
            mistake("d", "Suva", "ambiguous")]  # fmt: skip
PASSAGES = [
    passage("Thimphu is the capital of Bhutan.", "a"),
    passage("Dominica's capital is Roseau.", "b"),
    passage("Samoa is an island country.", "c"),  # no answer: no hit
    passage("Fiji's capital, Suva, is a port.", "d"),
]
ROWS = [  # train.parquet rows; row 1 (Roseau's passage) was never reached
    {"prompt": "Thimphu is the capital of Bhutan.", "response": "", "kind": "cpt",
     "source_ids": ["Bhutan", "a"]},
    {"prompt": "Dominica's capital is Roseau.", "response": "", "kind": "cpt",
     "source_ids": ["Dominica", "b"]},
    {"prompt": "Fill in: Dominica's capital is ____.", "response": "Roseau", "kind": "replay",
     "source_ids": ["b", "Dominica"]},  # replayed: not this round's training
    {"prompt": "Fiji's capital, Suva, is a port.", "response": "", "kind": "cpt",
     "source_ids": ["Fiji", "d"]},
]  # fmt: skip


def test_flags_and_rates():
    after = {("exam", "a"): True, ("exam", "b"): False, ("exam", "c"): True, ("exam", "d"): True}
    flags = mistake_flags(MISTAKES, PASSAGES, ROWS, reached={0, 2, 3}, after=after)
    got = {f.id: (f.hit, f.trained, f.fixed) for f in flags}
    assert got == {"a": (True, True, True), "b": (True, False, False), "c": (False, False, True),
                   "d": (True, True, True)}  # fmt: skip
    assert flags[0] == MistakeFlag(id="a", reason="wrong", relation="capital", hit=True,
                                   trained=True, fixed=True)  # fmt: skip
    # diagnostics.json's per_mistake reads back flag for flag
    assert flags_by_id({"per_mistake": [f.to_json() for f in flags]}) == {f.id: f for f in flags}
    assert flags_by_id(None) == {}
    r = rates(f for f in flags if f.reason == "wrong")
    assert r["hit_trained"] == {"n": 1, "fixed": 1, "rate": 1.0}
    assert r["hit_not_trained"] == {"n": 1, "fixed": 0, "rate": 0.0}
    assert r["no_hit"] == {"n": 1, "fixed": 1, "rate": 1.0}


def test_control_is_the_test_sets_flip_rate():
    before = [eval_record(str(i), "test", i < 2) for i in range(6)]
    before.append(eval_record("9", "exam", False))
    after = {("test", "2"): True, ("test", "3"): False, ("exam", "9"): True}
    assert flip_control(before, after) == {"set": "test", "n": 4, "fixed": 1, "rate": 0.25}
