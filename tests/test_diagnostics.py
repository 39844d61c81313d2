"""Per-mistake diagnostics: hit, trained, fixed, and the fix rates against the control."""

from __future__ import annotations

from cem.loop.diagnostics import flip_control, mistake_flags, rates


def m(id_: str, gold: str, reason: str = "wrong") -> dict:
    return {"id": id_, "set": "exam", "gold_text": gold, "reason": reason, "subject": "capital"}


MISTAKES = [m("a", "Thimphu"), m("b", "Roseau"), m("c", "Apia"), m("d", "Suva", "ambiguous")]
PASSAGES = [
    {"text": "Thimphu is the capital of Bhutan.", "mistake_ids": ["a"]},
    {"text": "Dominica's capital is Roseau.", "mistake_ids": ["b"]},
    {"text": "Samoa is an island country.", "mistake_ids": ["c"]},  # no answer: no hit
    {"text": "Fiji's capital, Suva, is a port.", "mistake_ids": ["d"]},
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
    got = {f["id"]: (f["hit"], f["trained"], f["fixed"]) for f in flags}
    assert got == {"a": (True, True, True), "b": (True, False, False), "c": (False, False, True),
                   "d": (True, True, True)}  # fmt: skip
    r = rates(f for f in flags if f["reason"] == "wrong")
    assert r["hit_trained"] == {"n": 1, "fixed": 1, "rate": 1.0}
    assert r["hit_not_trained"] == {"n": 1, "fixed": 0, "rate": 0.0}
    assert r["no_hit"] == {"n": 1, "fixed": 1, "rate": 1.0}


def test_control_is_the_test_sets_flip_rate():
    before = [{"set": "test", "id": i, "correct": i < 2} for i in range(6)]
    before.append({"set": "exam", "id": 9, "correct": False})
    after = {("test", 2): True, ("test", 3): False, ("exam", 9): True}
    assert flip_control(before, after) == {"set": "test", "n": 4, "fixed": 1, "rate": 0.25}
