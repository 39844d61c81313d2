"""Web search providers of ``web_search``: one small class per API, behind one interface.

A provider says how to ask its API (:meth:`Provider.request`) and how to read the answer
(:meth:`Provider.parse`); :class:`~cem.knowledge.online.WebSearchSource` sends the request
through :class:`~cem.knowledge.http.HttpClient`, which never follows a redirect from an API
(so a key header or query-string key stays with the endpoint's host) and never stores,
logs or shows a key. Keys are read from the environment variable named by ``api_key_env``.

Request and response shapes, checked against each API's documentation (2025):

- SearXNG (docs.searxng.org/dev/search_api): ``GET <instance>/search?q=..&format=json``,
  ``results[].{url, title, content}``. Formats other than HTML must be enabled in the
  instance's ``settings.yml`` (``search.formats``); a format that is not answers 403.
- Brave (api-dashboard.search.brave.com/api-reference/web/search/get):
  ``GET https://api.search.brave.com/res/v1/web/search?q=..&count=..`` (count 1-20, plus
  ``country`` and ``search_lang``), key in the ``X-Subscription-Token`` header;
  ``web.results[].{url, title, description}`` (descriptions carry ``<strong>`` tags).
- Tavily (docs.tavily.com/api-reference/endpoint/search): ``POST https://api.tavily.com/search``,
  JSON ``{query, max_results (0-20), search_depth}``, header ``Authorization: Bearer <key>``;
  ``results[].{url, title, content, score}``.
- SerpApi with ``engine=bing`` (serpapi.com/bing-search-api, serpapi.com/bing-organic-results):
  ``GET https://serpapi.com/search.json?engine=bing&q=..&count=..(1-50)&mkt=..&api_key=..``;
  ``organic_results[].{position, title, link, snippet}``.
- Bing Web Search v7 (``api.bing.microsoft.com/v7.0``) was retired on 2025-08-11: a config
  that asks for it is refused with the replacements.
"""

from __future__ import annotations

import html
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from cem.choices import SearchProvider

BING_RETIRED = (
    "the Bing Search APIs were retired on 2025-08-11; use knowledge/search=serpapi_bing "
    "(Bing's results through SerpApi), knowledge/search=brave, knowledge/search=tavily or "
    "knowledge/search=searxng (self-hosted, no key)"
)
_TAG = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True)
class WebResult:
    """One search result: the page to fetch and the engine's own summary of it."""

    url: str
    title: str
    snippet: str


@dataclass
class ApiRequest:
    """What to send: ``headers`` and ``secret_params`` go on the wire only (keys among them)."""

    method: str  # GET | POST
    url: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    secret_params: dict[str, str] = field(default_factory=dict)
    payload: dict[str, Any] | None = None  # POST: the JSON body


def _clean(text: Any) -> str:
    """Plain text from a title or snippet that may hold HTML tags and entities."""
    return html.unescape(_TAG.sub("", str(text or ""))).strip()


def _result(url: Any, title: Any, snippet: Any) -> WebResult:
    return WebResult(str(url or ""), _clean(title), _clean(snippet))


class Provider(ABC):
    """One web search API.

    Args:
        endpoint: the API URL (SearXNG: the instance's base URL).
        market: ``knowledge.sources.<i>.market``, a language-region code such as en-US.
    """

    name: ClassVar[SearchProvider]
    label: ClassVar[str]  # the API's name in messages
    key_env: ClassVar[str | None] = None  # the usual variable for its key; None: no key
    key_url: ClassVar[str] = ""  # where a key is made

    def __init__(self, endpoint: str, market: str):
        self.endpoint, self.market = endpoint, market

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self.endpoint!r})"

    @abstractmethod
    def request(self, query: str, count: int, key: str | None) -> ApiRequest:
        """The request for ``count`` results of ``query``; ``key`` as read from the env."""

    @abstractmethod
    def parse(self, data: Any) -> list[WebResult]:
        """The results of a JSON answer, best first.

        Raises:
            KeyError, TypeError, AttributeError: the answer has another shape.
        """

    def denied(self, status: int, where: str, key_env: str | None) -> str:
        """The message for a 401 or 403 answer, which ends the command."""
        return (
            f"{self.label} answered HTTP {status}: the key in ${key_env} (named by "
            f"{where}.api_key_env) is wrong, expired or not allowed this API; set the right "
            f"one (export {key_env}=<your key>, from {self.key_url}) and run again"
        )


class SearxngProvider(Provider):
    name = SearchProvider.searxng
    label = "SearXNG"

    def request(self, query: str, count: int, key: str | None) -> ApiRequest:
        base = self.endpoint.rstrip("/")
        url = base if base.endswith("/search") else f"{base}/search"
        # SearXNG has no result-count parameter: one page of results, cut to ``count``.
        return ApiRequest("GET", url, {"q": query, "format": "json", "language": self.market})

    def parse(self, data: Any) -> list[WebResult]:
        return [_result(r["url"], r.get("title"), r.get("content")) for r in data["results"]]

    def denied(self, status: int, where: str, key_env: str | None) -> str:
        return (
            f"SearXNG at {self.endpoint} answered HTTP {status}: its JSON API is off. Add "
            f"json to search.formats in the instance's settings.yml (formats: [html, json]) "
            f"and restart it (README, 'Web search')"
        )


class BraveProvider(Provider):
    name = SearchProvider.brave
    label = "the Brave Search API"
    key_env = "BRAVE_API_KEY"
    key_url = "https://brave.com/search/api/"

    def request(self, query: str, count: int, key: str | None) -> ApiRequest:
        lang, _, region = self.market.partition("-")
        params: dict[str, Any] = {"q": query, "count": min(count, 20)}
        if lang:
            params["search_lang"] = lang.lower()
        if region:
            params["country"] = region.upper()
        headers = {"X-Subscription-Token": str(key), "Accept": "application/json"}
        return ApiRequest("GET", self.endpoint, params, headers)

    def parse(self, data: Any) -> list[WebResult]:
        results = (data.get("web") or {}).get("results", [])  # no "web" when nothing matched
        return [_result(r["url"], r.get("title"), r.get("description")) for r in results]


class TavilyProvider(Provider):
    name = SearchProvider.tavily
    label = "the Tavily search API"
    key_env = "TAVILY_API_KEY"
    key_url = "https://app.tavily.com"

    def request(self, query: str, count: int, key: str | None) -> ApiRequest:
        payload = {"query": query, "max_results": min(count, 20), "search_depth": "basic"}
        headers = {"Authorization": f"Bearer {key}"}
        return ApiRequest("POST", self.endpoint, headers=headers, payload=payload)

    def parse(self, data: Any) -> list[WebResult]:
        return [_result(r["url"], r.get("title"), r.get("content")) for r in data["results"]]


class SerpApiBingProvider(Provider):
    name = SearchProvider.serpapi_bing
    label = "SerpApi (engine=bing)"
    key_env = "SERPAPI_API_KEY"
    key_url = "https://serpapi.com/manage-api-key"

    def request(self, query: str, count: int, key: str | None) -> ApiRequest:
        params = {"engine": "bing", "q": query, "count": min(count, 50), "mkt": self.market}
        return ApiRequest("GET", self.endpoint, params, secret_params={"api_key": str(key)})

    def parse(self, data: Any) -> list[WebResult]:
        results = data.get("organic_results", [])  # absent when Bing found nothing
        return [_result(r["link"], r.get("title"), r.get("snippet")) for r in results]


PROVIDERS: dict[SearchProvider, type[Provider]] = {
    cls.name: cls for cls in (SearxngProvider, BraveProvider, TavilyProvider, SerpApiBingProvider)
}


def make_provider(cfg: Any) -> Provider:
    """The provider a checked ``web_search`` source config names."""
    return PROVIDERS[SearchProvider(cfg.provider)](str(cfg.endpoint), str(cfg.market))


def read_key(env: str) -> str | None:
    """The key in environment variable ``env`` (None when unset or blank)."""
    return os.environ.get(env, "").strip() or None


def check_web_search(cfg: Any, index: int) -> list[str]:
    """Every problem of a ``web_search`` source's provider, endpoint and key.

    Run by ``cem.validate`` before any compute, and by the source itself when built.
    """
    where = f"knowledge.sources.{index}"
    try:
        provider = SearchProvider(cfg.provider)
    except ValueError:
        names = ", ".join(p.value for p in PROVIDERS)
        return [
            f"{where}.provider must be one of {names}; got {cfg.provider!r} "
            f"(try knowledge/search=searxng)"
        ]
    host = (urlsplit(str(cfg.endpoint or "")).hostname or "").lower()
    if provider is SearchProvider.bing or host.endswith("bing.microsoft.com"):
        key = f"{where}.provider" if provider is SearchProvider.bing else f"{where}.endpoint"
        shown = provider.value if provider is SearchProvider.bing else cfg.endpoint
        return [f"{key} asks for Bing Web Search v7; got {shown!r}: {BING_RETIRED}"]
    cls, problems = PROVIDERS[provider], []
    if not cfg.endpoint:
        problems.append(
            f"{where}.endpoint must be the URL of {cls.label} for provider="
            f"{provider.value} (or set knowledge.search.endpoint to it); got None "
            f"(try knowledge/search={provider.value})"
        )
    elif urlsplit(str(cfg.endpoint)).scheme not in ("http", "https") or not host:
        problems.append(
            f"{where}.endpoint must be an http(s) URL; got {cfg.endpoint!r} "
            f"(try knowledge/search={provider.value})"
        )
    if cls.key_env and not cfg.api_key_env:
        problems.append(
            f"{where}.api_key_env must name the environment variable holding the "
            f"key of {cls.label}, e.g. {cls.key_env} (then export {cls.key_env}=<your key>); "
            f"got None (try knowledge/search={provider.value})"
        )
    elif cls.key_env and read_key(str(cfg.api_key_env)) is None:
        env = cfg.api_key_env
        problems.append(
            f"{where}.api_key_env names {env}, which is not set: {cls.label} needs "
            f"a key (export {env}=<your key>, from {cls.key_url}; or use "
            f"knowledge/search=searxng, which needs none)"
        )
    return problems


def check_web(k: Any) -> list[str]:
    """The web rules of a ``knowledge`` config: each web_search source, and the allow-list."""
    problems = [
        p for i, s in enumerate(k.sources) if s.kind == "web_search" for p in check_web_search(s, i)
    ]
    if k.allowed_private_hosts:
        from cem.knowledge.net import AddressPolicy  # imports httpcore: only when needed

        try:
            AddressPolicy.parse(k.allowed_private_hosts)
        except ValueError as e:
            problems.append(
                f"knowledge.allowed_private_hosts must list IP addresses, CIDRs or "
                f"host names: {e} (try knowledge.allowed_private_hosts=[127.0.0.1])"
            )
    return problems
