"""The records that flow through retrieval."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class Passage:
    """A piece of retrieved text with its provenance.

    Attributes:
        text: the passage.
        source: the source kind that found it (``wiki_offline``, ``web_search``...).
        doc_id: the document's id within that source (title, URL, file:chunk).
        score: the source's relevance score (higher is better; comparable within a source).
        query: the query that found it.
        mistake_ids: the mistakes it was retrieved for.
        title: the document's title, where known.
    """

    text: str
    source: str
    doc_id: str
    score: float
    query: str = ""
    mistake_ids: list[str] = field(default_factory=list)
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SourceStats:
    """Counters a source keeps while it works; they go into ``knowledge/stats.json``."""

    queries: int = 0
    passages: int = 0
    errors: int = 0  # API errors and timeouts that survived every retry
    retries: int = 0
    skipped_pages: int = 0  # fetched pages that were not text, too large or too slow
    cache_hits: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class KnowledgeSource(Protocol):
    """Queries in, passages with provenance out."""

    name: str
    stats: SourceStats

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """The top ``k`` passages for each query, best first, in query order."""
        ...
