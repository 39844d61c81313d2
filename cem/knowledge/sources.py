"""Knowledge sources: queries in, passages with provenance out.

Kinds: ``wiki_offline`` (BM25 over the offline Wikipedia summaries), ``wiki_dense``
(embeddings of the same summaries, the paper's vector retrieval), ``local_corpus`` (the
user's files; BM25 or dense) and, from ``cem.knowledge.online``, ``wikipedia_api`` and
``web_search`` (through a provider of ``cem.knowledge.providers``). ``MixSource`` combines
several with per-source quotas (the paper's Mix).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cem.choices import Retriever, values
from cem.config import KnowledgeConfig, ModelConfig, SourceConfig
from cem.errors import CemError, ConfigError
from cem.knowledge.corpus import (
    CountTokens,
    Document,
    chunk_documents,
    index_root,
    index_text,
    load_local_corpus,
    load_wiki_summaries,
)
from cem.knowledge.types import KnowledgeSource, Passage, SourceStats

log = logging.getLogger(__name__)


class CorpusSource:
    """Retrieval over an in-memory list of documents with a BM25 or dense index."""

    def __init__(self, name: str, docs: list[Document], index: Any):
        self.name = name
        self.docs = docs
        self.index = index
        self.stats = SourceStats()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(docs={len(self.docs)})"

    def close(self) -> None:
        """Nothing to release; present so every source can be closed alike."""

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """The top ``k`` documents for each query as passages, best first, in query order."""
        self.stats.queries += len(queries)
        out = []
        for query, hits in zip(queries, self.index.search(queries, k), strict=True):
            passages = [self._passage(i, score, query) for i, score in hits]
            self.stats.passages += len(passages)
            out.append(passages)
        return out

    def _passage(self, i: int, score: float, query: str) -> Passage:
        doc = self.docs[i]
        return Passage(
            text=doc.text,
            source=self.name,
            doc_id=doc.doc_id,
            score=score,
            query=query,
            title=doc.title,
        )


def _bm25(docs: list[Document], cfg: Any, kind: str) -> Any:
    from cem.knowledge.sparse import BM25Index

    texts = [index_text(d) for d in docs]
    return BM25Index.load_or_build(texts, index_root(cfg.index_dir), kind)


def _dense(docs: list[Document], cfg: Any, kind: str, device: str) -> Any:
    from cem.knowledge.dense import DenseIndex, load_embedder

    model, model_name = load_embedder(
        cfg.embedding_model, cfg.embedding_asset, device, cfg.embedding_dtype
    )
    texts = [index_text(d) for d in docs]
    return DenseIndex.load_or_build(texts, model, model_name, index_root(cfg.index_dir), kind)


class WikiOfflineSource(CorpusSource):
    """BM25 over the offline Wikipedia summaries (``cfg.path`` overrides the asset).

    Summaries are short (77 words on average), so they are indexed whole; chunking to the
    token budget happens after retrieval (``cem.knowledge.postprocess``).
    """

    def __init__(self, cfg: Any, *, index: int = 0, **_: Any):
        docs = load_wiki_summaries(cfg.path)
        super().__init__("wiki_offline", docs, _bm25(docs, cfg, "wiki_offline"))


class WikiDenseSource(CorpusSource):
    """Dense (embedding) retrieval over the offline Wikipedia summaries."""

    def __init__(self, cfg: Any, *, index: int = 0, device: str = ModelConfig.device, **_: Any):
        docs = load_wiki_summaries(cfg.path)
        super().__init__("wiki_dense", docs, _dense(docs, cfg, "wiki_dense", device))


class LocalCorpusSource(CorpusSource):
    """The user's corpus, chunked to ``passage_tokens`` and indexed with BM25 or embeddings."""

    def __init__(
        self,
        cfg: Any,
        *,
        index: int = 0,
        count_tokens: CountTokens | None = None,
        passage_tokens: int | None = None,
        device: str = ModelConfig.device,
    ):
        problems = source_problems(cfg, index)
        if problems:
            raise problems[0]
        budget = passage_tokens or KnowledgeConfig.passage_tokens
        docs = chunk_documents(load_local_corpus(cfg.path, cfg.text_field), budget, count_tokens)
        if cfg.retriever == "bm25":
            index_ = _bm25(docs, cfg, "local_corpus")
        else:
            index_ = _dense(docs, cfg, "local_corpus", device)
        super().__init__("local_corpus", docs, index_)


class MixSource:
    """Several sources at once; each gives its quota share of every query's passages.

    For a query and ``k``, source ``s`` is asked for ``round(share_s * k)`` passages (at
    least one when its quota is positive). The lists are merged rank by rank (every
    source's best, then every source's second...), since scores of different sources are
    not comparable; exact duplicate texts are dropped and at most ``k`` are kept.
    """

    name = "mix"

    def __init__(self, sources: Sequence[KnowledgeSource], quotas: Sequence[float]):
        if len(sources) != len(quotas):
            raise ValueError(f"{len(sources)} sources but {len(quotas)} quotas")
        if (problem := quota_problem(quotas)) is not None:
            raise problem
        self.sources = list(sources)
        self.quotas = [q / sum(quotas) for q in quotas]
        self._own = SourceStats()

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{s.name}:{q:.2f}" for s, q in zip(self.sources, self.quotas, strict=True)
        )
        return f"MixSource({parts})"

    @property
    def stats(self) -> SourceStats:
        """This mix's queries and passages; the error counters summed over its sources."""
        total = SourceStats(queries=self._own.queries, passages=self._own.passages)
        for s in self.sources:
            for key in SourceStats.__dataclass_fields__:
                if key not in ("queries", "passages"):
                    setattr(total, key, getattr(total, key) + getattr(s.stats, key))
        return total

    def close(self) -> None:
        for s in self.sources:
            if hasattr(s, "close"):
                s.close()

    def counts(self, k: int) -> list[int]:
        """How many passages each source is asked for, given ``k`` per query."""
        return [max(1, round(q * k)) if q > 0 else 0 for q in self.quotas]

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Up to ``k`` merged passages per query, in query order."""
        self._own.queries += len(queries)
        per_source = [
            s.search(queries, n) if n > 0 else [[] for _ in queries]
            for s, n in zip(self.sources, self.counts(k), strict=True)
        ]
        out = []
        for q in range(len(queries)):
            merged = _merge_by_rank([hits[q] for hits in per_source], k)
            self._own.passages += len(merged)
            out.append(merged)
        return out


def _merge_by_rank(lists: list[list[Passage]], k: int) -> list[Passage]:
    """Interleave ranked lists rank by rank, dropping exact duplicate texts, up to ``k``."""
    seen: set[str] = set()
    merged: list[Passage] = []
    for rank in range(max((len(x) for x in lists), default=0)):
        for hits in lists:
            if rank < len(hits) and len(merged) < k:
                key = " ".join(hits[rank].text.split())
                if key not in seen:
                    seen.add(key)
                    merged.append(hits[rank])
    return merged


# Kind -> class. The HTTP kinds live in ``cem.knowledge.online`` and are imported only
# when used, so the offline kinds never import the HTTP stack.
SOURCES: dict[str, type] = {
    "wiki_offline": WikiOfflineSource,
    "wiki_dense": WikiDenseSource,
    "local_corpus": LocalCorpusSource,
}
ONLINE_SOURCES: dict[str, str] = {
    "wikipedia_api": "WikipediaAPISource",
    "web_search": "WebSearchSource",
}


def source_problems(cfg: Any, index: int) -> list[ConfigError]:
    """What is wrong with ``knowledge.sources.<index>`` on its config alone: the rules its
    constructor enforces, checked by ``cem.validate`` before any compute.

    Online sources check their own settings (``cem.knowledge.online``, the providers).
    """
    where = f"knowledge.sources.{index}"
    kind = cfg.kind
    if kind not in SOURCES and kind not in ONLINE_SOURCES:
        allowed = ", ".join([*SOURCES, *ONLINE_SOURCES])
        return [ConfigError(f"{where}.kind", kind, f"must be one of {allowed}",
                            f"{where}.kind=wiki_offline")]  # fmt: skip
    if kind != "local_corpus":
        return []
    problems = []
    if not cfg.path:
        problems.append(ConfigError(f"{where}.path", cfg.path,
                                    "must name a JSONL/Parquet file or a folder of .txt/.md files",
                                    f"{where}.path=/data/my_corpus"))  # fmt: skip
    elif not Path(str(cfg.path)).expanduser().exists():
        problems.append(ConfigError(f"{where}.path", cfg.path, "does not exist",
                                    f"{where}.path=<an existing file or folder>"))  # fmt: skip
    if cfg.retriever not in values(Retriever):
        problems.append(ConfigError(f"{where}.retriever", cfg.retriever,
                                    f"must be one of {', '.join(values(Retriever))}",
                                    f"{where}.retriever=bm25"))  # fmt: skip
    return problems


def quota_problem(quotas: Sequence[float]) -> ConfigError | None:
    """Mix quotas: each >= 0, with a positive sum."""
    if any(q < 0 for q in quotas) or sum(quotas) <= 0:
        return ConfigError("knowledge.sources[*].quota", list(quotas),
                           "must be >= 0 with a positive sum", "knowledge.sources.0.quota=0.5")  # fmt: skip
    return None


def check_sources(k: Any) -> list[str]:
    """Every source's config problems, and the mix's quotas (``check_knowledge``)."""
    problems = [str(e) for i, s in enumerate(k.sources) for e in source_problems(s, i)]
    if len(k.sources) > 1 and (q := quota_problem([s.quota for s in k.sources])) is not None:
        problems.append(str(q))
    return problems


def build_source(
    cfg: SourceConfig,
    *,
    count_tokens: CountTokens | None = None,
    passage_tokens: int | None = None,
    index: int = 0,
    allowed_private_hosts: Sequence[str] = (),
    device: str = ModelConfig.device,
) -> KnowledgeSource:
    """Build the source that ``cfg.kind`` names.

    Args:
        cfg: the source's config.
        count_tokens: token counter for chunking corpus documents (default: words).
        passage_tokens: chunk budget for ``local_corpus`` (default: the
            ``KnowledgeConfig.passage_tokens`` default).
        index: the source's place in ``knowledge.sources``, for error messages.
        allowed_private_hosts: ``knowledge.allowed_private_hosts``, for ``web_search``.
        device: ``model.device``, where a dense source's embedder runs.

    Raises:
        ConfigError: unknown kind or a bad source setting.
    """
    kind = cfg.kind
    if kind in SOURCES:
        return SOURCES[kind](cfg, index=index, count_tokens=count_tokens,
                             passage_tokens=passage_tokens, device=device)  # fmt: skip
    if kind in ONLINE_SOURCES:
        try:
            module = importlib.import_module("cem.knowledge.online")
        except ImportError as e:
            raise CemError(f"knowledge source {kind!r} is unavailable: {e}") from None
        cls = getattr(module, ONLINE_SOURCES[kind])
        if kind == "web_search":  # the one kind that fetches pages named by its results
            return cls(cfg, index=index, allowed_private_hosts=allowed_private_hosts)
        return cls(cfg, index=index)
    raise source_problems(cfg, index)[0]


def build_knowledge_source(
    cfg: KnowledgeConfig,
    *,
    count_tokens: CountTokens | None = None,
    device: str = ModelConfig.device,
) -> KnowledgeSource:
    """The source of ``knowledge``: the single configured one, or a ``MixSource`` of several;
    a dense one embeds where ``device`` (``model.device``) resolves."""
    if not cfg.sources:
        raise ConfigError(
            "knowledge.sources",
            list(cfg.sources),
            "must list at least one source",
            "knowledge=wiki_offline",
        )
    built = [
        build_source(
            s,
            count_tokens=count_tokens,
            passage_tokens=cfg.passage_tokens,
            index=i,
            allowed_private_hosts=list(cfg.allowed_private_hosts),
            device=device,
        )
        for i, s in enumerate(cfg.sources)
    ]
    if len(built) == 1:
        return built[0]
    return MixSource(built, [s.quota for s in cfg.sources])
