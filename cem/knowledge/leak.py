"""The leak guard: drop retrieved text that states an evaluation question with its answer.

The paper's 13-gram filter (METHOD.md, step 4). Text is normalised (NFKC, lowercase,
punctuation and symbols replaced by spaces, whitespace collapsed) and split into tokens.
For every evaluation item, over all evaluation sets, the n-grams of "question + answer"
are collected; a passage sharing any of them is a leak. An item whose question + answer
is shorter than n tokens cannot be caught that way, so for it a passage is a leak when it
contains the normalised question and the normalised answer, each as a contiguous run.

Speed: tokens become 64-bit ids (Python's string hash, stable within a process) and every
window of a batch of passages gets a polynomial hash, computed with numpy over the whole
batch at once; n-gram membership is a binary search in a sorted array.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from cem.text import tokens

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so no information is lost modulo 2**64


def normalize(text: str) -> str:
    """The normalised text: ``tokens`` joined by single spaces."""
    return " ".join(tokens(text))


def _ids(toks: list[str]) -> np.ndarray:
    return np.fromiter((hash(t) for t in toks), dtype=np.int64, count=len(toks)).view(np.uint64)


def _window_hashes(ids: np.ndarray, lengths: Iterable[int]) -> dict[int, np.ndarray]:
    """Hash of every window of each length; entry ``i`` of length ``m`` covers ``ids[i:i+m]``."""
    wanted = set(lengths)
    out: dict[int, np.ndarray] = {}
    h = ids
    for m in range(1, max(wanted, default=0) + 1):
        if m > 1:  # H_m(i) = H_{m-1}(i) * B + id[i+m-1], wrapping modulo 2**64 as intended
            h = h[:-1] * _BASE + ids[m - 1 :]
        if m in wanted:
            out[m] = h
    return out


def _contains(sorted_hashes: np.ndarray, values: np.ndarray) -> np.ndarray:
    if len(sorted_hashes) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    idx = np.minimum(np.searchsorted(sorted_hashes, values), len(sorted_hashes) - 1)
    return sorted_hashes[idx] == values


class _HasText(Protocol):
    text: str


P = TypeVar("P", bound=_HasText)


class LeakGuard:
    """The n-grams (and short question/answer pairs) of every evaluation item."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"leak n-gram length must be >= 1; got {n}")
        self.n = n
        self.items = 0
        self._grams: list[np.ndarray] = []
        self._sorted: np.ndarray | None = None
        # short items: question length -> question hash -> {(answer length, answer hash)}
        self._short: dict[int, dict[int, set[tuple[int, int]]]] = defaultdict(dict)

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, str]], n: int) -> LeakGuard:
        """A guard over ``(question, answer)`` pairs: every item of every evaluation set."""
        guard = cls(n)
        for question, answer in items:
            guard.add(question, answer)
        return guard

    def add(self, question: str, answer: str) -> None:
        """Guard one item; the question should be the stem, without the options."""
        q, a = tokens(question), tokens(answer)
        self.items += 1
        if len(q) + len(a) >= self.n:
            self._grams.append(_window_hashes(_ids(q + a), [self.n])[self.n])
            self._sorted = None
        elif q:  # a question that normalises to nothing cannot be looked for
            qh = int(_window_hashes(_ids(q), [len(q)])[len(q)][0])
            ah = int(_window_hashes(_ids(a), [len(a)])[len(a)][0]) if a else 0
            self._short[len(q)].setdefault(qh, set()).add((len(a), ah))

    def __len__(self) -> int:
        return self.items

    def _ngrams(self) -> np.ndarray:
        if self._sorted is None:
            grams = np.concatenate(self._grams) if self._grams else np.zeros(0, np.uint64)
            self._sorted = np.unique(grams)
        return self._sorted

    def leaks(self, texts: Sequence[str]) -> np.ndarray:
        """A boolean per text: does it leak an evaluation item?"""
        toks = [tokens(t) for t in texts]
        lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
        starts = np.concatenate([[0], np.cumsum(lengths)])
        ids = _ids([w for t in toks for w in t])
        pid = np.repeat(np.arange(len(texts)), lengths)
        answer_lengths = {ma for d in self._short.values() for s in d.values() for ma, _ in s}
        hashes = _window_hashes(ids, {self.n, *self._short, *answer_lengths} - {0})
        leak = np.zeros(len(texts), dtype=bool)
        # Windows run over the concatenated batch; one is real only if it starts and ends
        # in the same passage (the ``pid[...] == pid[...]`` masks).
        if self.n in hashes:
            h = hashes[self.n]
            hit = _contains(self._ngrams(), h) & (pid[: len(h)] == pid[self.n - 1 :])
            leak[np.unique(pid[: len(h)][hit])] = True
        for mq, by_question in self._short.items():
            if mq not in hashes:
                continue
            h = hashes[mq]
            keys = np.array(sorted(by_question), dtype=np.uint64)
            hit = _contains(keys, h) & (pid[: len(h)] == pid[mq - 1 :]) & ~leak[pid[: len(h)]]
            for pos in np.flatnonzero(hit):
                p = int(pid[pos])
                if not leak[p] and self._has_answer(p, by_question[int(h[pos])], hashes, starts):
                    leak[p] = True
        return leak

    @staticmethod
    def _has_answer(
        p: int, answers: set[tuple[int, int]], hashes: dict[int, np.ndarray], starts: np.ndarray
    ) -> bool:
        for ma, ah in answers:
            if ma == 0:  # the answer normalises to nothing: the question alone decides
                return True
            lo, hi = int(starts[p]), int(starts[p + 1]) - ma + 1
            if hi > lo and bool(np.any(hashes[ma][lo:hi] == np.uint64(ah))):
                return True
        return False

    def is_leak(self, text: str) -> bool:
        return bool(self.leaks([text])[0])

    def filter(self, passages: Sequence[P]) -> tuple[list[P], list[P]]:
        """Split ``passages`` into ``(kept, dropped)``, each in the input order."""
        leak = self.leaks([p.text for p in passages])
        kept = [p for p, bad in zip(passages, leak, strict=True) if not bad]
        dropped = [p for p, bad in zip(passages, leak, strict=True) if bad]
        return kept, dropped


def guard_pairs(sets: Mapping[str, Sequence[Any]]) -> list[tuple[str, str]]:
    """(question, answer) and (stem, answer) of every evaluation item (every set but the
    pool), and each general-probe passage with an empty answer (its n-grams: the probe
    measures forgetting, so no copy of it may be trained on)."""
    from cem.benchmarks.probe import probe_texts
    from cem.benchmarks.prompts import BLANK

    pairs = [(text, "") for text in probe_texts()]
    for name, items in sets.items():
        if name == "pool":
            continue
        for it in items:
            pairs.append((it.question, it.gold))
            if it.stem:
                pairs.append((it.stem, it.gold))
            if BLANK.search(it.question):  # a blank question is also stated filled in
                pairs.append((BLANK.sub(it.gold, it.question, count=1), it.gold))
    return pairs
