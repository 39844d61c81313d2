"""Online knowledge sources: the live MediaWiki API and the Bing Web Search API.

Both speak HTTP through :class:`cem.knowledge.http.HttpClient` (rate-limited, retried,
cached on disk). A request that fails after every retry is counted in ``stats`` and the
round goes on: ``search`` never raises for network or API trouble.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cem.errors import CemError, ConfigError
from cem.knowledge.http import HttpError, client_from_config
from cem.knowledge.types import Passage, SourceStats
from cem.knowledge.webtext import extract_main_text, mmr_select, split_paragraphs

log = logging.getLogger(__name__)

PAGE_CONTENT_TYPES = ("text/html", "text/plain", "application/xhtml+xml")
# MediaWiki returns intro extracts for at most 20 titles per request (``exlimit``).
_EXTRACT_BATCH = 20
# Bing's ``count`` accepts at most 50.
_BING_MAX_COUNT = 50


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


class WebSearchSource:
    """Bing Web Search v7, then the top result pages' main text, chosen by MMR.

    The API key is read from the environment variable named by ``api_key_env`` at each
    search; it is never stored on the object, logged, cached or put in a message.
    Passages: ``doc_id`` is the page URL, ``title`` the result's name, ``score`` is
    ``1/(1+rank)`` in the MMR order.
    """

    name = "web_search"

    def __init__(self, cfg: Any, index: int = 0):
        """Args: cfg: the ``SourceConfig``; index: its place in ``knowledge.sources``.

        Raises:
            ConfigError: no endpoint, no ``api_key_env``, or a bad HTTP or MMR setting.
            CemError: the environment variable that should hold the key is unset.
        """
        self._where = where = f"knowledge.sources[{index}]"
        self.endpoint = _endpoint(cfg, where)
        if not cfg.api_key_env:
            raise ConfigError(
                f"{where}.api_key_env",
                cfg.api_key_env,
                "must name the environment variable that holds the Bing Web Search key",
                f"{where}.api_key_env=BING_SEARCH_KEY",
            )
        if not 0.0 <= cfg.mmr_lambda <= 1.0:
            key = f"{where}.mmr_lambda"
            raise ConfigError(key, cfg.mmr_lambda, "must be in [0, 1]", f"{key}=0.7")
        if cfg.fetch_pages < 0:
            key = f"{where}.fetch_pages"
            raise ConfigError(key, cfg.fetch_pages, "must be >= 0", f"{key}=5")
        self.api_key_env = str(cfg.api_key_env)
        self.fetch_pages, self.mmr_lambda = int(cfg.fetch_pages), float(cfg.mmr_lambda)
        self.page_max_bytes, self.page_timeout_s = int(cfg.page_max_bytes), cfg.page_timeout_s
        self.market = str(cfg.market)
        self._api_key()  # fail now, before any compute, if the key is missing
        # Pages refused or failed in this run: not fetched again (the cache keeps only successes).
        self._failed_pages: set[str] = set()
        self.stats = SourceStats()
        self.client = client_from_config(cfg, self.stats, where)

    def __repr__(self) -> str:
        return f"WebSearchSource(endpoint={self.endpoint!r}, api_key_env={self.api_key_env!r})"

    def close(self) -> None:
        self.client.close()

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise CemError(
                f"web_search needs a Bing Web Search key: set the environment variable "
                f"{self.api_key_env} (named by {self._where}.api_key_env), e.g. "
                f"`export {self.api_key_env}=<your key>`"
            )
        return key

    def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """The ``k`` most relevant yet diverse passages from each query's result pages."""
        key = self._api_key()
        self.stats.queries += len(queries)
        out = []
        for query in queries:
            results = self._web_results(query, max(k, self.fetch_pages), key)
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

    def _web_results(self, query: str, count: int, key: str) -> list[dict[str, str]]:
        params = {"q": query, "count": min(count, _BING_MAX_COUNT), "mkt": self.market}
        try:
            data = self.client.get_json(
                self.endpoint, params, secret_headers={"Ocp-Apim-Subscription-Key": key}
            )
            values = data.get("webPages", {}).get("value", [])
            return [
                {"name": str(v.get("name", "")), "url": v["url"], "snippet": v.get("snippet", "")}
                for v in values
                if str(v.get("url", "")).startswith(("http://", "https://"))
            ]
        except HttpError as e:
            hint = f" (check the key in ${self.api_key_env})" if e.status in (401, 403) else ""
            self._error(f"search for {query!r} failed: {e.reason}{hint}")
        except (AttributeError, TypeError, KeyError):
            self._error(f"search for {query!r}: unexpected response shape")
        return []

    def _candidates(self, results: list[dict[str, str]]) -> list[tuple[str, str, str]]:
        """(text, url, title) passages: the top pages' paragraphs, else the results' snippets."""
        top = results[: self.fetch_pages]
        texts: list[str | None] = []
        if top:
            with ThreadPoolExecutor(max_workers=len(top)) as pool:
                texts = list(pool.map(self._page_text, [r["url"] for r in top]))
        seen: set[str] = set()
        out = []
        for rank, result in enumerate(results):
            text = texts[rank] if rank < len(texts) else None
            # Fall back to the snippet: it is the search engine's own summary of the page.
            paragraphs = split_paragraphs(text) if text else []
            for para in paragraphs or [result["snippet"].strip()]:
                if para and para not in seen:
                    seen.add(para)
                    out.append((para, result["url"], result["name"]))
        return out

    def _page_text(self, url: str) -> str | None:
        """The page's main text, or None when it was skipped or yielded nothing."""
        if url in self._failed_pages:
            return None
        try:
            resp = self.client.get(
                url,
                timeout_s=self.page_timeout_s,
                max_bytes=self.page_max_bytes,
                content_types=PAGE_CONTENT_TYPES,
            )
        except HttpError as e:
            self._failed_pages.add(url)
            self.client.count("skipped_pages")  # pages are fetched in threads
            log.info("%s: skipped page %s: %s", self.name, url, e.reason)
            return None
        return extract_main_text(resp)

    def _error(self, message: str) -> None:
        self.stats.errors += 1
        log.warning("%s: %s", self.name, message)
