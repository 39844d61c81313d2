"""Online knowledge sources: the live MediaWiki API, and web search through a provider.

Both speak HTTP through :class:`cem.knowledge.http.HttpClient` (rate-limited, retried,
cached on disk; pages fetched under the guarded page policy). A request that fails after
every retry, or a page that is refused, is counted in ``stats`` and the round goes on. The
one exception is a search API that denies the key (401/403): every later query would fail
too, so the command stops at once with the fix.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cem.errors import CemError, ConfigError
from cem.knowledge.cache import default_cache_dir
from cem.knowledge.http import HttpClient, HttpError
from cem.knowledge.net import AddressPolicy
from cem.knowledge.providers import WebResult, check_web_search, make_provider, read_key
from cem.knowledge.types import Passage, SourceStats
from cem.knowledge.webtext import extract_main_text, mmr_select, split_paragraphs

log = logging.getLogger(__name__)

PAGE_CONTENT_TYPES = ("text/html", "text/plain", "application/xhtml+xml")
# MediaWiki returns intro extracts for at most 20 titles per request (``exlimit``).
_EXTRACT_BATCH = 20


def _endpoint(cfg: Any, where: str) -> str:
    if not cfg.endpoint:
        raise ConfigError(
            f"{where}.endpoint",
            cfg.endpoint,
            f"must be the API URL of a {cfg.kind} source",
            f"{where}.endpoint=<API URL>",
        )
    return str(cfg.endpoint)


def _rank_score(rank: int) -> float:
    return 1.0 / (1.0 + rank)


class WikipediaAPISource:
    """Search the live MediaWiki API, then fetch plain-text intro extracts of the hits.

    Passages: ``doc_id`` and ``title`` are the page title, ``score`` is ``1/(1+rank)`` in
    the search results.
    """

    name = "wikipedia_api"

    def __init__(self, cfg: Any, index: int = 0):
        """Args: cfg: the ``SourceConfig``; index: its place in ``knowledge.sources``."""
        where = f"knowledge.sources[{index}]"
        self.endpoint = _endpoint(cfg, where)
        self.stats = SourceStats()
        self.client = client_from_config(cfg, self.stats, where)

    def __repr__(self) -> str:
        return f"WikipediaAPISource(endpoint={self.endpoint!r})"

    def close(self) -> None:
        self.client.close()

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """The top ``k`` pages for each query as intro-extract passages, best first."""
        self.stats.queries += len(queries)
        hits = [self._search_titles(q, k) for q in queries]
        extracts = self._extracts(list(dict.fromkeys(t for titles in hits for t in titles)))
        out = []
        for query, titles in zip(queries, hits, strict=True):
            passages = [
                Passage(
                    text=extracts[title],
                    source=self.name,
                    doc_id=title,
                    score=_rank_score(rank),
                    query=query,
                    title=title,
                )
                for rank, title in enumerate(titles)
                if extracts.get(title)
            ]
            self.stats.passages += len(passages)
            out.append(passages)
        return out

    def _search_titles(self, query: str, k: int) -> list[str]:
        params = {"action": "query", "list": "search", "srsearch": query}
        params |= {"srlimit": k, "format": "json"}
        try:
            data = self.client.get_json(self.endpoint, params)
            return [hit["title"] for hit in data["query"]["search"]]
        except HttpError as e:
            self._error(f"search for {query!r} failed: {e.reason}")
        except (KeyError, TypeError):
            self._error(f"search for {query!r}: unexpected response shape")
        return []

    def _extracts(self, titles: list[str]) -> dict[str, str]:
        """Intro extracts by title, fetched in batches; titles that fail are left out."""
        extracts: dict[str, str] = {}
        for start in range(0, len(titles), _EXTRACT_BATCH):
            batch = titles[start : start + _EXTRACT_BATCH]
            params = {"action": "query", "prop": "extracts", "explaintext": 1, "exintro": 1}
            params |= {"exlimit": "max", "titles": "|".join(batch), "format": "json"}
            try:
                query = self.client.get_json(self.endpoint, params)["query"]
                # The API may normalise a title ("foo" -> "Foo"); map results back.
                renamed = {n["to"]: n["from"] for n in query.get("normalized", [])}
                for page in query["pages"].values():
                    text = (page.get("extract") or "").strip()
                    extracts[renamed.get(page["title"], page["title"])] = text
            except HttpError as e:
                self._error(f"extracts for {len(batch)} titles failed: {e.reason}")
            except (KeyError, TypeError, AttributeError):
                self._error("extracts: unexpected response shape")
        return extracts

    def _error(self, message: str) -> None:
        self.stats.errors += 1
        log.warning("%s: %s", self.name, message)


class SearchDenied(CemError):
    """The search API refused the key (401/403): the command stops, naming the variable."""


class WebSearchSource:
    """A web search provider's results, then the top result pages' main text, chosen by MMR.

    The API key is read from the environment variable named by ``api_key_env`` at each
    search; it is never stored on the object, logged, cached or put in a message.
    Passages: ``doc_id`` is the page URL, ``title`` the result's title, ``score`` is
    ``1/(1+rank)`` in the MMR order.
    """

    name = "web_search"

    def __init__(self, cfg: Any, index: int = 0, allowed_private_hosts: Any = ()):
        """Args: cfg: the ``SourceConfig``; index: its place in ``knowledge.sources``;
        allowed_private_hosts: ``knowledge.allowed_private_hosts``, for the page fetcher.

        Raises:
            ConfigInvalid: the provider, endpoint or key is missing or retired.
            ConfigError: a bad HTTP or MMR setting.
        """
        from cem.validate import ConfigInvalid

        self._where = where = f"knowledge.sources.{index}"
        problems = check_web_search(cfg, index)
        if problems:
            raise ConfigInvalid(problems)
        if not 0.0 <= cfg.mmr_lambda <= 1.0:
            key = f"{where}.mmr_lambda"
            raise ConfigError(key, cfg.mmr_lambda, "must be in [0, 1]", f"{key}=0.7")
        if cfg.fetch_pages < 0:
            key = f"{where}.fetch_pages"
            raise ConfigError(key, cfg.fetch_pages, "must be >= 0", f"{key}=5")
        self.provider = make_provider(cfg)
        self.api_key_env = str(cfg.api_key_env) if cfg.api_key_env else None
        self.fetch_pages, self.mmr_lambda = int(cfg.fetch_pages), float(cfg.mmr_lambda)
        self.page_max_bytes, self.page_timeout_s = int(cfg.page_max_bytes), cfg.page_timeout_s
        # Pages refused or failed in this run: not fetched again (the cache keeps only successes).
        self._failed_pages: set[str] = set()
        self.stats = SourceStats()
        self.client = client_from_config(cfg, self.stats, where, allowed_private_hosts)

    def __repr__(self) -> str:
        return f"WebSearchSource(provider={self.provider!r}, api_key_env={self.api_key_env!r})"

    def close(self) -> None:
        self.client.close()

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """The ``k`` most relevant yet diverse passages from each query's result pages.

        Raises:
            SearchDenied: the API answered 401 or 403 (a wrong key, or SearXNG's JSON off).
        """
        self.stats.queries += len(queries)
        out = []
        for query in queries:
            results = self._web_results(query, max(k, self.fetch_pages))
            candidates = self._candidates(results)
            chosen = mmr_select(query, [c[0] for c in candidates], k, self.mmr_lambda)
            passages = [
                Passage(
                    text=candidates[i][0],
                    source=self.name,
                    doc_id=candidates[i][1],
                    score=_rank_score(rank),
                    query=query,
                    title=candidates[i][2],
                )
                for rank, i in enumerate(chosen)
            ]
            self.stats.passages += len(passages)
            out.append(passages)
        return out

    def _web_results(self, query: str, count: int) -> list[WebResult]:
        key = read_key(self.api_key_env) if self.api_key_env else None
        if self.api_key_env and key is None:  # unset since validation: say so, once
            raise CemError(
                f"{self._where}.api_key_env names {self.api_key_env}, which is not "
                f"set (export {self.api_key_env}=<your key>)"
            )
        req = self.provider.request(query, count, key)
        try:
            if req.method == "POST":
                data = self.client.post_json(req.url, req.payload or {}, headers=req.headers)
            else:
                data = self.client.get_json(
                    req.url, req.params, headers=req.headers, secret_params=req.secret_params
                )
            results = self.provider.parse(data)
        except HttpError as e:
            if e.status in (401, 403):
                raise SearchDenied(
                    self.provider.denied(e.status, self._where, self.api_key_env)
                ) from None
            if e.counter:
                self.client.count(e.counter)
            self._error(f"search for {query!r} failed: {e.reason}")
            return []
        except (AttributeError, TypeError, KeyError):
            self._error(f"search for {query!r}: unexpected response shape")
            return []
        web = [r for r in results if r.url.startswith(("http://", "https://"))]
        return web[:count]

    def _candidates(self, results: list[WebResult]) -> list[tuple[str, str, str]]:
        """(text, url, title) passages: the top pages' paragraphs, else the results' snippets."""
        top = results[: self.fetch_pages]
        texts: list[str | None] = []
        if top:
            with ThreadPoolExecutor(max_workers=len(top)) as pool:
                texts = list(pool.map(self._page_text, [r.url for r in top]))
        seen: set[str] = set()
        out = []
        for rank, result in enumerate(results):
            text = texts[rank] if rank < len(texts) else None
            # Fall back to the snippet: it is the search engine's own summary of the page.
            paragraphs = split_paragraphs(text) if text else []
            for para in paragraphs or [result.snippet.strip()]:
                if para and para not in seen:
                    seen.add(para)
                    out.append((para, result.url, result.title))
        return out

    def _page_text(self, url: str) -> str | None:
        """The page's main text, or None when it was refused, failed or yielded nothing."""
        if url in self._failed_pages:
            return None
        try:
            resp = self.client.fetch_page(
                url,
                timeout_s=self.page_timeout_s,
                max_bytes=self.page_max_bytes,
                content_types=PAGE_CONTENT_TYPES,
            )
        except HttpError as e:
            self._failed_pages.add(url)
            self.client.count("skipped_pages")  # pages are fetched in threads
            if e.counter:
                self.client.count(e.counter)
            log.info("%s: skipped page %s: %s", self.name, url, e.reason)
            return None
        return extract_main_text(resp)

    def _error(self, message: str) -> None:
        self.client.count("errors")
        log.warning("%s: %s", self.name, message)


def client_from_config(
    cfg: Any, stats: SourceStats, where: str, allowed_private_hosts: Any = ()
) -> HttpClient:
    """An :class:`HttpClient` from a source's config, after checking its HTTP fields.

    Args:
        cfg: a ``SourceConfig`` (or its DictConfig).
        stats: the source's counters.
        where: the config path of the source, e.g. ``knowledge.sources[0]``.
        allowed_private_hosts: ``knowledge.allowed_private_hosts``, for page fetches.

    Raises:
        ConfigError: a field is out of range; the message names the key and a fix.
    """
    checks = [
        ("timeout_s", cfg.timeout_s > 0, "must be > 0", "10"),
        ("page_timeout_s", cfg.page_timeout_s > 0, "must be > 0", "10"),
        ("retries", cfg.retries >= 0, "must be >= 0", "3"),
        ("backoff_s", cfg.backoff_s >= 0, "must be >= 0", "0.5"),
        ("max_response_bytes", cfg.max_response_bytes > 0, "must be > 0", "2000000"),
        ("page_max_bytes", cfg.page_max_bytes > 0, "must be > 0", "1000000"),
        ("page_max_redirects", cfg.page_max_redirects >= 0, "must be >= 0", "3"),
        ("rate_limit_per_s", cfg.rate_limit_per_s > 0, "must be > 0", "5"),
    ]
    for name, ok, expected, fix in checks:
        if not ok:
            key = f"{where}.{name}"
            raise ConfigError(key, getattr(cfg, name), expected, f"{key}={fix}")
    try:
        policy = AddressPolicy.parse(allowed_private_hosts)
    except ValueError as e:
        raise ConfigError(
            "knowledge.allowed_private_hosts",
            list(allowed_private_hosts),
            f"must list IPs, CIDRs or host names ({e})",
            "knowledge.allowed_private_hosts=[127.0.0.1]",
        ) from None
    return HttpClient(
        user_agent=cfg.user_agent,
        timeout_s=cfg.timeout_s,
        retries=cfg.retries,
        backoff_s=cfg.backoff_s,
        max_bytes=cfg.max_response_bytes,
        rate_limit_per_s=cfg.rate_limit_per_s,
        cache_dir=Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir(),
        stats=stats,
        retry_after_cap_s=cfg.retry_after_cap_s,
        policy=policy,
        max_redirects=cfg.page_max_redirects,
    )
