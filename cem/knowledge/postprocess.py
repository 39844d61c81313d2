"""Cleaning retrieved passages (METHOD.md, step 4): leaks, near-duplicates, chunks, top-k.

Each step returns its output and a count for ``knowledge/stats.json``. ``clean_passages``
runs them in the order METHOD.md gives: leak guard, dedupe, chunk, top-k per mistake.
Passages are never changed in place; merged or cut ones are copies.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cem.knowledge.corpus import CountTokens, chunk_text
from cem.knowledge.leak import LeakGuard, tokens
from cem.knowledge.types import Passage

SHINGLE_WORDS = 5  # METHOD: word 5-gram shingles


def _shingles(toks: list[str], width: int) -> frozenset[int]:
    if len(toks) < width:  # a short text is one shingle: itself
        return frozenset([hash(tuple(toks))]) if toks else frozenset()
    return frozenset(hash(tuple(toks[i : i + width])) for i in range(len(toks) - width + 1))


def _merge_ids(into: Passage, other: Passage) -> Passage:
    ids = list(dict.fromkeys([*into.mistake_ids, *other.mistake_ids]))
    return into if ids == into.mistake_ids else replace(into, mistake_ids=ids)


def dedupe(
    passages: Sequence[Passage], threshold: float, width: int = SHINGLE_WORDS
) -> tuple[list[Passage], int]:
    """Drop near-duplicates: Jaccard of word ``width``-gram shingles >= ``threshold``.

    The first of a group (best first) is kept and takes over the others' mistake ids.
    Exact: candidate pairs come from prefix filtering (two sets with Jaccard >= t share an
    element among the first ``|x| - ceil(t|x|) + 1`` of each, in one global order), then
    the Jaccard of each candidate pair is computed.

    Returns:
        ``(kept, number dropped)``.
    """
    # Exact duplicates (after normalisation) first: they are common (one document found
    # for several mistakes) and need no shingles.
    keys = [" ".join(tokens(p.text)) for p in passages]
    sets = {key: _shingles(key.split(), width) for key in dict.fromkeys(keys)}
    df = Counter(s for x in sets.values() for s in x)
    kept: list[Passage] = []
    kept_sets: list[frozenset[int]] = []
    index: dict[int, list[int]] = defaultdict(list)  # shingle -> kept positions
    exact: dict[str, int] = {}
    for p, key in zip(passages, keys, strict=True):
        x = sets[key]
        j = exact.get(key)
        prefix = _prefix(x, df, threshold) if j is None else []
        if j is None and x:
            j = _near_duplicate(x, prefix, kept_sets, index, threshold)
        if j is not None:
            kept[j] = _merge_ids(kept[j], p)
            continue
        exact[key] = len(kept)
        for s in prefix:
            index[s].append(len(kept))
        kept.append(p)
        kept_sets.append(x)
    return kept, len(passages) - len(kept)


def _prefix(x: frozenset[int], df: Counter, threshold: float) -> list[int]:
    # Rare shingles first keeps the candidate lists short.
    size = max(1, min(len(x) - math.ceil(threshold * len(x) - 1e-9) + 1, len(x)))
    return heapq.nsmallest(size, x, key=lambda s: (df[s], s))


def _near_duplicate(
    x: frozenset[int],
    prefix: list[int],
    kept_sets: list[frozenset[int]],
    index: dict[int, list[int]],
    threshold: float,
) -> int | None:
    candidates = sorted({j for s in prefix for j in index.get(s, ())})
    for j in candidates:
        y = kept_sets[j]
        if min(len(x), len(y)) < threshold * max(len(x), len(y)) - 1e-9:
            continue  # the size bound alone rules it out
        inter = len(x & y)
        if inter >= threshold * (len(x) + len(y) - inter) - 1e-9:
            return j
    return None


def chunk_passages(
    passages: Sequence[Passage], max_tokens: int, count_tokens: CountTokens | None = None
) -> tuple[list[Passage], int]:
    """Cut passages longer than ``max_tokens`` at sentence ends (chunk ``j``: ``doc_id#j``).

    Args:
        count_tokens: the trained model's token counter, without special tokens
            (default: whitespace words).

    Returns:
        ``(passages, number of passages that were cut)``.
    """
    out: list[Passage] = []
    cut = 0
    for p in passages:
        chunks = chunk_text(p.text, max_tokens, count_tokens)
        if len(chunks) <= 1:
            out.append(p if chunks == [p.text] or not chunks else replace(p, text=chunks[0]))
            continue
        cut += 1
        out += [replace(p, text=c, doc_id=f"{p.doc_id}#{j}") for j, c in enumerate(chunks)]
    return out, cut


def top_k_per_mistake(passages: Sequence[Passage], k: int) -> tuple[list[Passage], int]:
    """Keep each mistake's ``k`` best passages; a passage stays if any mistake keeps it.

    "Best" is the rank within the passage's own result list (same source and query), so
    the lists of a mistake's several queries are interleaved; ties keep input order. A
    kept passage lists only the mistakes that kept it. Passages without a mistake id are
    all kept.

    Returns:
        ``(kept, number dropped)``.
    """
    seen: Counter = Counter()
    rank = []
    for p in passages:
        rank.append(seen[(p.source, p.query)])
        seen[(p.source, p.query)] += 1
    by_mistake: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(passages):
        for m in dict.fromkeys(p.mistake_ids):
            by_mistake[m].append(i)
    chosen: dict[int, set[str]] = defaultdict(set)
    for m, idx in by_mistake.items():
        for i in sorted(idx, key=lambda i: (rank[i], i))[:k]:
            chosen[i].add(m)
    kept = []
    for i, p in enumerate(passages):
        if not p.mistake_ids:
            kept.append(p)
        elif i in chosen:
            ids = [m for m in p.mistake_ids if m in chosen[i]]
            kept.append(p if ids == p.mistake_ids else replace(p, mistake_ids=ids))
    return kept, len(passages) - len(kept)


def clean_passages(
    passages: Sequence[Passage],
    guard: LeakGuard,
    knowledge: Any,
    count_tokens: CountTokens | None = None,
) -> tuple[list[Passage], dict[str, Any]]:
    """Leak guard, dedupe, chunk and top-k, with the counts of each step.

    Args:
        passages: every retrieved passage, each list best first, ``mistake_ids`` set.
        guard: the leak guard over all evaluation sets.
        knowledge: the ``KnowledgeConfig`` (``dedup_jaccard``, ``passage_tokens``,
            ``top_k_per_mistake``).
        count_tokens: the model's token counter for the chunk budget.
    """
    kept, dropped = guard.filter(passages)
    out, dups = dedupe(kept, knowledge.dedup_jaccard)
    out, cut = chunk_passages(out, knowledge.passage_tokens, count_tokens)
    out, over_k = top_k_per_mistake(out, knowledge.top_k_per_mistake)
    stats = {
        "retrieved": len(passages),
        "leak_dropped": len(dropped),
        "leak_dropped_by_source": dict(Counter(p.source for p in dropped)),
        "dup_dropped": dups,
        "chunked": cut,
        "top_k_dropped": over_k,
        "kept": len(out),
    }
    return out, stats
