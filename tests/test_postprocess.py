"""Near-duplicate removal, chunking to a token budget, top-k per mistake, the whole chain."""

from __future__ import annotations

import random

from cem.config import KnowledgeConfig
from cem.knowledge import postprocess
from cem.knowledge.corpus import chunk_text
from cem.knowledge.leak import LeakGuard
from cem.knowledge.postprocess import (
    chunk_passages,
    clean_passages,
    dedupe,
    top_k_per_mistake,
)
from cem.knowledge.types import Passage

BASE = (
    "The Danube is the second-longest river in Europe after the Volga. It flows through "
    "much of Central and Southeastern Europe, from the Black Forest into the Black Sea. "
    "Its drainage basin extends into nine more countries."
)


def _p(text, query="q", mistakes=("m1",), source="wiki_offline", doc_id=None) -> Passage:
    return Passage(
        text=text,
        source=source,
        doc_id=doc_id or text[:12],
        score=1.0,
        query=query,
        mistake_ids=list(mistakes),
    )


def test_dedupe_exact_and_near():
    near = BASE.replace("nine more countries", "nine other countries")  # 1 word changed
    other = "Paris is the capital and most populous city of France, on the Seine."
    ps = [
        _p(BASE, mistakes=["m1"]),
        _p(BASE.upper() + "!", mistakes=["m2"]),  # exact after normalisation
        _p(near, mistakes=["m3"]),
        _p(other, mistakes=["m1"]),
    ]
    kept, dropped = dedupe(ps, threshold=0.8)
    assert dropped == 2
    assert [p.text for p in kept] == [BASE, other]
    assert kept[0].mistake_ids == ["m1", "m2", "m3"]  # provenance merged into the kept one
    assert ps[0].mistake_ids == ["m1"]  # inputs untouched


def test_dedupe_threshold_respected():
    half = BASE.split()
    changed = " ".join(w if i % 4 else "zzz" for i, w in enumerate(half))
    kept, dropped = dedupe([_p(BASE), _p(changed)], threshold=0.8)
    assert dropped == 0 and len(kept) == 2
    kept, dropped = dedupe([_p("a b c"), _p("a b c d")], threshold=0.8)  # short texts
    assert dropped == 0


def test_dedupe_matches_pairwise_jaccard():
    from cem.knowledge.postprocess import _shingles

    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(40)]
    base = [rng.choices(vocab, k=30) for _ in range(20)]
    texts = []
    for b in base:
        for _ in range(5):
            t = list(b)
            for _ in range(rng.randint(0, 4)):
                t[rng.randrange(len(t))] = rng.choice(vocab)
            texts.append(" ".join(t))
    kept, _ = dedupe([_p(t) for t in texts], threshold=0.7)
    # Brute force: greedy in order, keep a text unless it is >= 0.7 similar to a kept one.
    sets, want = [_shingles(t.split(), 5) for t in texts], []
    for i, x in enumerate(sets):
        if all(len(x & sets[j]) / len(x | sets[j]) < 0.7 for j in want):
            want.append(i)
    assert [p.text for p in kept] == [texts[i] for i in want]


def test_dedupe_compares_candidates_not_all_pairs(monkeypatch):
    """Prefix filtering: a passage is compared with the few kept ones that share a prefix
    shingle, not with every kept one (the speed figure itself: benchmarks/bench_retrieval.py)."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)]
    ps = [_p(" ".join(rng.choices(vocab, k=150))) for _ in range(2000)]
    ps += [_p(p.text + " w1 w2") for p in ps[:200]]  # near, not exact, copies
    compared = []
    near = postprocess._near_duplicate

    def counting(x, prefix, kept_sets, index, threshold):
        compared.append(len({j for s in prefix for j in index.get(s, ())}))
        return near(x, prefix, kept_sets, index, threshold)

    monkeypatch.setattr(postprocess, "_near_duplicate", counting)
    kept, dropped = dedupe(ps, threshold=0.8)
    assert dropped == 200 and len(kept) == 2000
    assert len(compared) == 2200
    assert sum(compared) < 2200 * 5  # all pairs would be about 2200 * 1000


def test_chunk_text_budget_and_sentences():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(10))
    chunks = chunk_text(text, 20)
    assert all(len(c.split()) <= 20 for c in chunks)
    assert " ".join(chunks) == text
    assert all(c.endswith(".") for c in chunks)  # cut at sentence ends
    assert chunk_text("short one", 20) == ["short one"]
    long_sentence = " ".join(["word"] * 45)
    assert [len(c.split()) for c in chunk_text(long_sentence, 20)] == [20, 20, 5]


def test_chunk_with_custom_counter():
    def chars(s: str) -> int:  # a "tokenizer" with one token per 4 characters
        return (len(s) + 3) // 4

    chunks = chunk_text(BASE, 30, chars)
    assert len(chunks) > 1 and all(chars(c) <= 30 for c in chunks)


def test_chunk_passages_keeps_provenance():
    ps = [_p(BASE, doc_id="Danube"), _p("Short.", doc_id="S")]
    out, cut = chunk_passages(ps, 20)
    assert cut == 1
    assert [p.doc_id for p in out] == ["Danube#0", "Danube#1", "Danube#2", "S"]
    assert all(p.mistake_ids == ["m1"] and p.query == "q" for p in out)


def test_top_k_per_mistake_interleaves_queries():
    ps = [
        _p("a0", query="qa", mistakes=["m1"]),
        _p("a1", query="qa", mistakes=["m1"]),
        _p("a2", query="qa", mistakes=["m1"]),
        _p("b0", query="qb", mistakes=["m1"]),
        _p("b1", query="qb", mistakes=["m1", "m2"]),
        _p("c0", query="qc", mistakes=["m2"]),
        _p("free", query="qz", mistakes=[]),
    ]
    kept, dropped = top_k_per_mistake(ps, 3)
    assert [p.text for p in kept] == ["a0", "a1", "b0", "b1", "c0", "free"]
    assert dropped == 1
    assert kept[3].mistake_ids == ["m2"]  # m1 kept a0, b0, a1; only m2 kept b1


def test_clean_passages_chain():
    guard = LeakGuard.from_items([("Into which sea does the Danube flow?", "the Black Sea")], 13)
    leak = _p("Q: into which sea does the Danube flow? A: the Black Sea.", source="web_search")
    ps = [_p(BASE), _p(BASE + " "), leak, _p("Paris is in France.", mistakes=["m2"])]
    cfg = KnowledgeConfig(name="wiki_offline", passage_tokens=20, top_k_per_mistake=2)
    out, stats = clean_passages(ps, guard, cfg)
    assert stats["leak_dropped"] == 1 and stats["leak_dropped_by_source"] == {"web_search": 1}
    assert stats["dup_dropped"] == 1 and stats["chunked"] == 1
    assert [p.doc_id for p in out] == [BASE[:12] + "#0", BASE[:12] + "#1", "Paris is in "]
    assert stats["top_k_dropped"] == 1 and stats["kept"] == 3
