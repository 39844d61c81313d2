"""The records that flow through retrieval."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from cem.records import Record


@dataclass
class Passage(Record):
    """A piece of retrieved text with its provenance (a line of ``knowledge/knowledge.jsonl``).

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
    """Counters a source keeps while it works; they go into ``knowledge/stats.json``.

    ``skipped_pages`` counts every result page that gave no text; the ``refused_*``
    counters and ``page_timeouts`` say why, one reason per refused page.
    """

    queries: int = 0
    passages: int = 0
    errors: int = 0  # API errors and timeouts that survived every retry
    retries: int = 0
    rate_limited: int = 0  # 429 answers (each retried within ``retries``)
    server_errors: int = 0  # 5xx answers (each retried within ``retries``)
    api_redirects: int = 0  # API answers that redirected: never followed, so no key travels
    skipped_pages: int = 0  # fetched pages that were refused, failed or too slow
    refused_scheme: int = 0  # a page or redirect hop that was not http(s)
    refused_address: int = 0  # a hop whose host is not public nor in allowed_private_hosts
    refused_redirects: int = 0  # a redirect loop, or more hops than page_max_redirects
    refused_size: int = 0  # over page_max_bytes (declared, streamed or decompressed)
    refused_type: int = 0  # a content type (or encoding) that is not text
    page_timeouts: int = 0  # the page's one deadline passed (connect, headers, body, retries)
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
