"""BM25 retrieval with ``bm25s``, and its on-disk index cache.

Texts are tokenised by bm25s (lowercase, words of two or more characters, English
stopwords removed). Stemming is used only when PyStemmer happens to be installed; the
cache manifest records which, so switching rebuilds the index.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cem.knowledge.corpus import corpus_hash, load_cached, save_cached

log = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when the saved layout or tokenisation changes
STOPWORDS = "en"


def _stemmer() -> tuple[object | None, str]:
    """PyStemmer's English stemmer if installed, else none (the project does not require it)."""
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        return None, "none"
    return Stemmer.Stemmer("english"), "pystemmer-english"


class BM25Index:
    """A bm25s index over a list of texts; hits are ``(position in texts, score)``."""

    def __init__(self, retriever: object, n_docs: int):
        self.retriever = retriever
        self.n_docs = n_docs
        self.stemmer, self.stemmer_name = _stemmer()

    @classmethod
    def build(cls, texts: list[str]) -> BM25Index:
        """Tokenise and index ``texts`` in memory."""
        import bm25s

        stemmer, _ = _stemmer()
        tokens = bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=stemmer, show_progress=False)
        retriever = bm25s.BM25()
        # The empty token lets a text with no indexable words still be indexed.
        retriever.index(tokens, show_progress=False, create_empty_token=True)
        return cls(retriever, len(texts))

    @classmethod
    def load(cls, folder: Path, n_docs: int) -> BM25Index:
        """Load a saved index; raises if it does not hold ``n_docs`` documents."""
        import bm25s

        retriever = bm25s.BM25.load(str(folder), show_progress=False)
        got = int(retriever.scores["num_docs"])
        if got != n_docs:
            raise ValueError(f"index holds {got} documents, expected {n_docs}")
        return cls(retriever, n_docs)

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load_or_build(cls, texts: list[str], root: Path, kind: str) -> BM25Index:
        """The cached index of ``texts`` under ``root/<kind>-bm25-<hash>/``, built if absent.

        A corrupt or stale cache folder is logged, deleted and rebuilt.
        """
        digest = corpus_hash(texts)
        folder = Path(root) / f"{kind}-bm25-{digest[:16]}"
        meta = {
            "format": "cem-bm25",
            "version": INDEX_VERSION,
            "corpus_sha256": digest,
            "n_docs": len(texts),
            "stemmer": _stemmer()[1],
            "stopwords": STOPWORDS,
        }
        index = load_cached(folder, meta, lambda f: cls.load(f, len(texts)))
        if index is not None:
            log.info("loaded BM25 index %s", folder)
            return index
        log.info("building BM25 index of %d texts in %s", len(texts), folder)
        index = cls.build(texts)
        save_cached(folder, meta, index.save)
        return index

    def tokenize(self, queries: list[str]) -> list[list[int]]:
        """Token ids of each query; words unknown to the index are dropped."""
        import bm25s

        words = bm25s.tokenize(
            queries,
            stopwords=STOPWORDS,
            stemmer=self.stemmer,
            return_ids=False,
            show_progress=False,
        )
        vocab = self.retriever.vocab_dict
        return [[vocab[w] for w in q if w in vocab and w] for q in words]

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """Top ``k`` documents per query, best first; documents scoring 0 are left out."""
        out: list[list[tuple[int, float]]] = []
        for ids in self.tokenize(queries):
            if not ids or k < 1:
                out.append([])
                continue
            scores = self.retriever.get_scores_from_ids(ids)
            top = _top_k(scores, k)
            out.append([(int(i), float(scores[i])) for i in top if scores[i] > 0])
        return out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores, best first (ties ordered by index)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]
