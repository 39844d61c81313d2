"""The text of fetched result pages, and choosing passages by relevance plus diversity (MMR)."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter

from cem.knowledge.cache import HttpResponse

log = logging.getLogger(__name__)

# Lines of extracted page text shorter than this (headings, captions, bylines) are joined
# to the next line, so that a passage is a paragraph and not a fragment.
_MIN_PASSAGE_CHARS = 80


def extract_main_text(resp: HttpResponse) -> str | None:
    """The main text of a fetched page (trafilatura for HTML), or None if it finds none."""
    if resp.content_type == "text/plain":
        return resp.text().strip() or None
    import trafilatura  # slow to import; only web search needs it

    try:
        text = trafilatura.extract(resp.body, url=resp.url, include_comments=False)
    except Exception as e:  # a malformed page must not end the round
        log.info("trafilatura failed on %s: %s", resp.url, e)
        return None
    return (text or "").strip() or None


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of extracted text, with short lines joined to the next."""
    out, buf = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        buf = f"{buf}\n{line}" if buf else line
        if len(buf) >= _MIN_PASSAGE_CHARS:
            out.append(buf)
            buf = ""
    if buf:
        out.append(buf)
    return out


# Function words carry no topic; left in, they make any text look related to any query.
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was "
    "were what when where which who with".split()
)


def _tfidf(texts: list[str]) -> list[dict[str, float]]:
    """L2-normalised TF-IDF bag-of-words vectors (smoothed IDF over ``texts``)."""
    bags = [Counter(w for w in re.findall(r"\w+", t.lower()) if w not in _STOPWORDS) for t in texts]
    df = Counter(word for bag in bags for word in bag)
    n = len(texts)
    vecs = []
    for bag in bags:
        vec = {w: c * (math.log((1 + n) / (1 + df[w])) + 1.0) for w, c in bag.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        vecs.append({w: v / norm for w, v in vec.items()})
    return vecs


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(w, 0.0) for w, v in a.items())


def mmr_select(query: str, texts: list[str], k: int, lam: float) -> list[int]:
    """Indices of up to ``k`` texts by maximal marginal relevance, best first.

    Each pick maximises ``lam * sim(query, t) - (1 - lam) * max sim(t, picked)``; ties go
    to the earlier text, so search-engine order breaks them. Texts that share no word with
    the query come last.
    """
    if not texts or k <= 0:
        return []
    qvec, *vecs = _tfidf([query, *texts])
    rel = [_cosine(qvec, v) for v in vecs]
    # Highest similarity of each text to anything picked so far.
    redundancy = [0.0] * len(texts)
    picked: list[int] = []
    remaining = list(range(len(texts)))
    while remaining and len(picked) < k:
        # A text with no word of the query would otherwise win over a relevant one that
        # repeats a pick; take such texts only once the relevant ones run out.
        best = max(remaining, key=lambda i: (rel[i] > 0, lam * rel[i] - (1 - lam) * redundancy[i]))
        picked.append(best)
        remaining.remove(best)
        for i in remaining:
            redundancy[i] = max(redundancy[i], _cosine(vecs[i], vecs[best]))
    return picked
