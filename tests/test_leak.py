"""The leak guard: planted leaks are dropped, near misses are kept, and it is fast."""

from __future__ import annotations

import random

import pytest

from cem.knowledge.leak import LeakGuard, normalize, tokens
from cem.knowledge.types import Passage

# 11 question tokens + 2 answer tokens = 13: the whole item is exactly one 13-gram.
QUESTION = "Which river flows through the city where the Treaty was signed?"
ANSWER = "the Danube"
ITEM_TEXT = f"{QUESTION} {ANSWER}"


def _p(text: str, source: str = "wiki_offline") -> Passage:
    return Passage(text=text, source=source, doc_id=text[:10], score=1.0)


@pytest.fixture
def guard() -> LeakGuard:
    return LeakGuard.from_items([(QUESTION, ANSWER)], n=13)


def test_normalize():
    assert tokens("Hello, World! It's  NFKC: ﬁne") == ["hello", "world", "it", "s", "nfkc", "fine"]
    assert normalize("  A-b_c  (d) ") == "a b c d"
    assert len(tokens(ITEM_TEXT)) == 13


def test_planted_13gram_is_dropped(guard):
    leak = _p(f"Some intro text. {QUESTION} {ANSWER}. More text follows here.")
    clean = _p("The Danube is a long river in Europe.")
    kept, dropped = guard.filter([clean, leak])
    assert kept == [clean] and dropped == [leak]


def test_punctuation_and_case_differences_are_caught(guard):
    text = (
        "intro -- WHICH river flows through the city, where the treaty was signed: "
        "THE DANUBE!! and so on"
    )
    assert guard.is_leak(text)


def test_altered_answer_is_kept(guard):
    assert not guard.is_leak(f"Intro. {QUESTION} the Rhine. More text.")


def test_12_token_overlap_is_kept(guard):
    twelve = " ".join(tokens(ITEM_TEXT)[1:])  # drop "which": 12 tokens of the item
    assert len(twelve.split()) == 12
    assert not guard.is_leak(f"Intro words here {twelve} and more words")
    assert guard.is_leak(f"Intro words here which {twelve} and more words")


def test_ngram_spanning_two_passages_is_not_a_leak(guard):
    toks = tokens(ITEM_TEXT)
    first, second = " ".join(toks[:7]), " ".join(toks[7:])
    assert not guard.leaks([f"x {first}", f"{second} y"]).any()


def test_short_item_rule():
    guard = LeakGuard.from_items([("Capital of France?", "Paris")], n=13)
    assert guard.is_leak("Paris is the capital of France.")
    assert guard.is_leak("The CAPITAL of france; it is... PARIS")
    assert not guard.is_leak("Paris is a large city in France.")  # question absent
    assert not guard.is_leak("Lyon is not the capital of France.")  # answer absent
    assert not guard.is_leak("The capital of Frances is Parisian")  # not whole tokens


def test_short_multi_token_answer_must_be_contiguous():
    guard = LeakGuard.from_items([("Who wrote Hamlet?", "William Shakespeare")], n=13)
    assert guard.is_leak("William Shakespeare: who wrote Hamlet, and when?")
    assert not guard.is_leak("Who wrote Hamlet? William, not Shakespeare.")


def test_many_items_and_empty_inputs():
    guard = LeakGuard.from_items(
        [(QUESTION, ANSWER), ("Capital of France?", "Paris"), ("", ""), ("?!", "x")], n=13
    )
    assert len(guard) == 4
    leaks = guard.leaks(["", "x", "capital of france paris", ITEM_TEXT, "nothing"])
    assert leaks.tolist() == [False, False, True, True, False]
    assert guard.filter([]) == ([], [])


def test_long_question_ngrams_without_answer_count():
    # METHOD: any shared 13-gram of question + answer, even one inside the question.
    q = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    guard = LeakGuard.from_items([(q, "answer")], n=13)
    assert guard.is_leak("zero " + " ".join(q.split()[1:]) + " end")
    assert not guard.is_leak(" ".join(q.split()[2:]))


def test_scan_of_many_passages_accounts_for_each():  # its speed: benchmarks/bench_retrieval.py
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    items = [
        (" ".join(rng.choices(words, k=rng.randint(3, 25))), rng.choice(words)) for _ in range(3000)
    ]
    guard = LeakGuard.from_items(items, n=13)
    passages = [_p(" ".join(rng.choices(words, k=120))) for _ in range(1000)]
    long_questions = [q for q, _ in items if len(q.split()) >= 13][:10]
    planted = [
        _p(f"{passages[i].text} {q} {passages[i + 1].text}") for i, q in enumerate(long_questions)
    ]
    kept, dropped = guard.filter(passages + planted)
    assert len(kept) + len(dropped) == 1000 + len(planted)
    assert len(planted) == 10 and all(p in dropped for p in planted)
