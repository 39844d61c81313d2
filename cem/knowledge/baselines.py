"""CPT text for the baselines of METHOD.md, in place of the mistakes' passages.

``knowledge.passages`` picks the CPT text of a round:

- ``mistakes`` (CEM): the passages retrieved for this round's mistakes;
- ``random``: corpus passages drawn at random until they hold as many tokens as CEM's
  retrieval kept this round (the random-passage CPT baseline, same token budget);
- ``full``: every passage of the corpus (the full-corpus CPT baseline), or of a seeded
  random ``knowledge.corpus_fraction`` of its documents.

Both baselines go through the same leak guard and chunking as CEM's passages, so that the
comparison differs only in *which* text is trained on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from cem.errors import ConfigError
from cem.knowledge.corpus import CountTokens, Document
from cem.knowledge.leak import LeakGuard
from cem.knowledge.postprocess import chunk_passages
from cem.knowledge.types import KnowledgeSource, Passage

CORPUS_KINDS = "wiki_offline, wiki_dense or local_corpus"
_BLOCK = 256


def corpus_documents(source: KnowledgeSource, mode: str) -> list[tuple[str, Document]]:
    """Every document of the source's offline corpora, with the name of its source.

    Raises:
        ConfigError: the source has no corpus of its own (``wikipedia_api``, ``web_search``).
    """
    parts = getattr(source, "sources", [source])  # a MixSource, or one source
    docs = [(s.name, d) for s in parts for d in getattr(s, "docs", [])]
    if not docs:
        raise ConfigError(
            "knowledge.passages",
            mode,
            f"needs an offline corpus to draw from ({CORPUS_KINDS}); {source!r} has none",
            "knowledge=wiki_offline",
        )
    return docs


def _passages(
    docs: list[tuple[str, Document]], guard: LeakGuard, max_tokens: int, count: CountTokens
) -> Iterator[tuple[Passage, bool]]:
    """Each document as guarded, chunked passages: ``(passage, leaked)``, in blocks of
    ``_BLOCK`` documents (the guard works on many passages at once)."""
    for start in range(0, len(docs), _BLOCK):
        block = [Passage(text=d.text, source=name, doc_id=d.doc_id, score=0.0, title=d.title)
                 for name, d in docs[start : start + _BLOCK]]  # fmt: skip
        kept, dropped = guard.filter(block)
        for q in dropped:
            yield q, True
        for q in chunk_passages(kept, max_tokens, count)[0]:
            yield q, False


def baseline_passages(
    mode: str,
    source: KnowledgeSource,
    budget_tokens: int,
    guard: LeakGuard,
    max_tokens: int,
    count: CountTokens,
    seed: str,
    fraction: float = 1.0,
) -> tuple[list[Passage], dict[str, int]]:
    """The CPT passages of a baseline and its counts (``corpus_docs``, ``leak_dropped``).

    Args:
        mode: ``random`` or ``full``.
        budget_tokens: for ``random``, the tokens to reach (CEM's kept passages this round).
        seed: seeds the draw of ``random`` (the run seed and the round).
        fraction: for ``full``, the share of the documents kept (a seeded draw).
    """
    docs = corpus_documents(source, mode)
    if mode == "random":
        docs = docs[:]
        random.Random(seed).shuffle(docs)
    elif fraction < 1:
        keep = sorted(random.Random(seed).sample(range(len(docs)), round(fraction * len(docs))))
        docs = [docs[i] for i in keep]
    out: list[Passage] = []
    total = leaked = 0
    for p, leak in _passages(docs, guard, max_tokens, count):
        if mode == "random" and total >= budget_tokens:
            break
        if leak:
            leaked += 1
            continue
        out.append(p)
        total += count(p.text)
    return out, {"corpus_docs": len(docs), "leak_dropped": leaked, "tokens": total}
