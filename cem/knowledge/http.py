"""A small, polite, guarded HTTP client for the online knowledge sources.

Two kinds of request, with two policies:

- **API calls** (:meth:`HttpClient.get_json`, :meth:`HttpClient.post_json`) go to the
  configured endpoint and never follow a redirect. A client that follows one (httpx strips
  only ``Authorization`` when the origin changes) would send a custom key header such as
  ``X-Subscription-Token``, or a key in the query string such as SerpApi's ``api_key``, to
  whatever host the redirect names. A 3xx answer is an error that says to set the endpoint
  to the final URL. Headers and secret query parameters go on the wire only: never into
  the cache key, the cache, a log line or a message.
- **Page fetches** (:meth:`HttpClient.fetch_page`) go where search results point.
  Redirects are followed by hand, up to ``max_redirects``; every hop, the first included,
  must be http(s) and reach an address that the :class:`~cem.knowledge.net.AddressPolicy`
  permits (checked when connecting, on the resolved address then used). One deadline
  covers the whole page: every hop's connect, headers and body, and the retries. The size
  cap holds on the wire and after decompression; the content type is checked before the
  body is read.

Both wait between requests to a host, retry 429 and 5xx with exponential backoff
(honouring ``Retry-After``) and keep successful responses in an on-disk cache. The client
speaks httpcore (httpx only builds URLs): httpx's client logs each request's full URL at
INFO, which would carry a query-string key into the logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from cem.errors import CemError
from cem.knowledge.cache import HttpResponse, ResponseCache, cache_key
from cem.knowledge.net import (
    AddressPolicy,
    GuardedBackend,
    RateLimiter,
    Refused,
    deadline,
    read_body,
    retry_after_s,
    time_left,
)
from cem.knowledge.types import SourceStats

log = logging.getLogger(__name__)

# A server may ask for a long pause; past this we wait only this long and then retry, so
# one busy host cannot stall a whole retrieval round.
RETRY_AFTER_CAP_S = 60.0
_SCHEMES = ("http", "https")


class HttpError(CemError):
    """A request failed after every retry, or was refused.

    Attributes:
        url: the URL as shown: public query parameters only, never a key.
        reason: what went wrong.
        status: the last HTTP status, if a response came back.
        counter: the ``SourceStats`` counter naming a refusal (``refused_size``,
            ``api_redirects``...), None for failures of the server or network.
        timeout: True when the last failure was the deadline passing.
    """

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        status: int | None = None,
        counter: str | None = None,
        timeout: bool = False,
    ):
        self.url, self.reason, self.status = url, reason, status
        self.counter, self.timeout = counter, timeout
        super().__init__(f"{url}: {reason}")

    @property
    def skipped(self) -> bool:
        """Refused on purpose (type, size, address...), not failed."""
        return bool(self.counter and self.counter.startswith("refused"))


class _Retryable(Exception):
    """One attempt failed in a way worth another try."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        wait_s: float | None = None,
        timeout: bool = False,
    ):
        super().__init__(reason)
        self.reason, self.status, self.wait_s, self.timeout = reason, status, wait_s, timeout


@dataclass
class _Request:
    method: str
    url: httpx.URL  # with the public parameters: what is shown and cached
    max_bytes: int
    timeout_s: float  # API calls: each attempt; pages: the whole page, retries included
    redirects: int | None  # None: an API call (a redirect is an error); else hops allowed
    headers: dict[str, str] = field(default_factory=dict)  # sent only (keys among them)
    secret_params: dict[str, str] = field(default_factory=dict)  # added on the wire only
    body: bytes | None = None
    content_types: tuple[str, ...] | None = None

    @property
    def shown(self) -> str:
        return str(self.url)

    @property
    def key(self) -> str:
        return cache_key(self.method, self.shown, None, self.body)


def _header(r: httpcore.Response, name: bytes) -> str:
    for key, value in r.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return ""


class HttpClient:
    """API calls and page fetches with deadlines, retries, caps, a rate limit and a cache.

    Counters (``retries``, ``rate_limited``, ``server_errors``, ``cache_hits``) go into the
    ``stats`` it is given; failures and refusals are raised as :class:`HttpError` for the
    caller to count.
    """

    def __init__(
        self,
        *,
        user_agent: str,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        max_bytes: int,
        rate_limit_per_s: float,
        cache_dir: str | os.PathLike,
        stats: SourceStats,
        retry_after_cap_s: float = RETRY_AFTER_CAP_S,
        policy: AddressPolicy | None = None,
        max_redirects: int = 3,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.user_agent, self.timeout_s = user_agent, timeout_s
        self.retries, self.backoff_s, self.max_bytes = retries, backoff_s, max_bytes
        self.retry_after_cap_s, self.max_redirects = retry_after_cap_s, max_redirects
        self.stats = stats
        self.cache = ResponseCache(cache_dir)
        self._limiter = RateLimiter(rate_limit_per_s)
        self._lock = threading.Lock()  # stats are bumped from page-fetching threads
        # ssl_context None: httpcore's default, which verifies certificates (certifi's CAs).
        self._api = httpcore.ConnectionPool(
            ssl_context=ssl_context, network_backend=GuardedBackend(None)
        )
        # No connection limit for pages: the fetching threads bound them, and a request
        # waiting for a free connection would spend its page's deadline waiting.
        self._pages = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            network_backend=GuardedBackend(policy or AddressPolicy()),
            max_connections=None,
        )

    def __repr__(self) -> str:
        return f"HttpClient(cache={str(self.cache.root)!r}, retries={self.retries})"

    def close(self) -> None:
        self._api.close()
        self._pages.close()

    def count(self, counter: str) -> None:
        """Add one to a ``SourceStats`` counter; safe from several threads."""
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def get_json(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        secret_params: dict[str, str] | None = None,
    ) -> Any:
        """GET an API URL and parse its JSON; from the cache when asked before.

        Args:
            url: the endpoint; ``params`` are its query string (and part of the cache key).
            headers: extra headers such as a key; sent, never stored, logged or shown.
            secret_params: query parameters such as a key; sent, never stored or shown.

        Raises:
            HttpError: after every retry, on a redirect, or for a body that is not JSON.
        """
        url_ = httpx.URL(url, params=params)
        return self._json(self._api_request("GET", url_, headers, secret_params))

    def post_json(
        self, url: str, payload: dict[str, Any], *, headers: dict[str, str] | None = None
    ) -> Any:
        """POST ``payload`` as JSON to an API URL and parse the answer (cached by payload)."""
        body = json.dumps(payload, sort_keys=True).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return self._json(self._api_request("POST", httpx.URL(url), sent, None, body))

    def _api_request(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str] | None,
        secret_params: dict[str, str] | None,
        body: bytes | None = None,
    ) -> _Request:
        return _Request(
            method,
            url,
            self.max_bytes,
            self.timeout_s,
            None,
            dict(headers or {}),
            dict(secret_params or {}),
            body,
        )

    def fetch_page(
        self, url: str, *, timeout_s: float, max_bytes: int, content_types: tuple[str, ...]
    ) -> HttpResponse:
        """GET a page that a search result names, under the page policy (module docstring).

        Raises:
            HttpError: refused (``counter`` names why) or failed after every retry.
        """
        page = _Request("GET", httpx.URL(url), max_bytes, timeout_s, self.max_redirects)
        page.content_types = content_types
        return self._cached(page)

    def _json(self, req: _Request) -> Any:
        resp = self._cached(req)
        try:
            return json.loads(resp.body)
        except ValueError:
            self.cache.drop(req.key)
            raise HttpError(req.shown, "response is not valid JSON", status=resp.status) from None

    def _cached(self, req: _Request) -> HttpResponse:
        hit = self.cache.get(req.key)
        if hit is not None and (not req.content_types or hit.content_type in req.content_types):
            self.count("cache_hits")
            return hit
        resp = self._with_retries(req)
        self.cache.put(req.key, resp)
        return resp

    def _with_retries(self, req: _Request) -> HttpResponse:
        page_deadline: float | None = None  # pages: set once, after the first rate-limit wait
        last: _Retryable | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            if last is not None:
                wait = self.backoff_s * 2 ** (attempt - 1)
                if last.wait_s is not None:  # the server said how long; trust it, within reason
                    wait = min(last.wait_s, self.retry_after_cap_s)
                if page_deadline is not None and time.monotonic() + wait >= page_deadline:
                    break  # the page's one deadline leaves no time for another try
                log.info("retrying %s in %.2fs after: %s", req.shown, wait, last.reason)
                self.count("retries")
                time.sleep(wait)
            self._limiter.wait(req.url.host)
            if req.redirects is not None and page_deadline is None:
                page_deadline = time.monotonic() + req.timeout_s
            attempts += 1
            try:
                with deadline(page_deadline or time.monotonic() + req.timeout_s):
                    return self._attempt(req)
            except _Retryable as e:
                last = e
        assert last is not None
        counter = "page_timeouts" if last.timeout and req.redirects is not None else None
        raise HttpError(
            req.shown,
            f"failed after {attempts} attempts: {last.reason}",
            status=last.status,
            counter=counter,
            timeout=last.timeout,
        )

    def _attempt(self, req: _Request) -> HttpResponse:
        """One try: the request and, for a page, its redirects, each hop checked."""
        url, seen = req.url, {str(req.url)}
        for hop in range(1 + (req.redirects or 0) + 1):
            if url.scheme not in _SCHEMES:
                raise HttpError(
                    str(url),
                    f"{url.scheme!r} URL refused (http and https only)",
                    counter="refused_scheme",
                )
            with self._send(req, url) as r:
                if not (300 <= r.status < 400 and r.status != 304):
                    return self._read(req, url, r)
                if req.redirects is None:
                    raise HttpError(
                        req.shown,
                        f"answered HTTP {r.status} (a redirect), which API calls never follow "
                        "so that the key stays with the endpoint's host; set the endpoint to "
                        "the URL it redirects to",
                        status=r.status,
                        counter="api_redirects",
                    )
                location = _header(r, b"location")
                if not location:
                    raise HttpError(
                        str(url), f"HTTP {r.status} without a Location", status=r.status
                    )
                url = url.join(location)
                if str(url) in seen or hop >= req.redirects:
                    why = (
                        "a redirect loop" if str(url) in seen else f"over {req.redirects} redirects"
                    )
                    raise HttpError(req.shown, f"{why} (at {url})", counter="refused_redirects")
                seen.add(str(url))
        raise AssertionError("unreachable: the loop returns or raises")

    @contextlib.contextmanager
    def _send(self, req: _Request, url: httpx.URL) -> Iterator[httpcore.Response]:
        """The response to one hop; transport errors become retries, refusals errors."""
        pool = self._api if req.redirects is None else self._pages
        wire = url.copy_merge_params(req.secret_params) if req.secret_params else url
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "gzip, deflate", **req.headers}
        left = time_left()
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), left)
        try:
            with pool.stream(
                req.method,
                str(wire),
                headers=list(headers.items()),
                content=req.body,
                extensions={"timeout": timeouts},
            ) as r:
                yield r
        except Refused as e:
            raise HttpError(str(url), e.reason, counter=e.counter) from None
        except httpcore.TimeoutException as e:
            raise _Retryable(f"timeout ({type(e).__name__})", timeout=True) from None
        except (httpcore.NetworkError, httpcore.RemoteProtocolError) as e:
            raise _Retryable(f"network error ({type(e).__name__}: {e})") from None
        except httpcore.LocalProtocolError:
            # h11 quotes an illegal header value in its message, and a key is a header value.
            raise HttpError(
                str(url),
                "the request is malformed (an illegal header or URL; "
                "is the key in its environment variable well-formed?)",
            ) from None
        except (httpcore.ProtocolError, httpcore.UnsupportedProtocol) as e:
            raise HttpError(str(url), f"{type(e).__name__}: {e}") from None

    def _read(self, req: _Request, url: httpx.URL, r: httpcore.Response) -> HttpResponse:
        status = r.status
        if status == 429 or status >= 500:
            self.count("rate_limited" if status == 429 else "server_errors")
            wait = retry_after_s(_header(r, b"retry-after"))
            raise _Retryable(f"HTTP {status}", status=status, wait_s=wait)
        if not 200 <= status < 300:
            raise HttpError(str(url), f"HTTP {status}", status=status)
        ctype = _header(r, b"content-type").split(";")[0].strip().lower()
        if req.content_types and ctype not in req.content_types:
            raise HttpError(
                str(url), f"content type {ctype!r} not accepted", counter="refused_type"
            )
        declared = _header(r, b"content-length")
        if declared.isdigit() and int(declared) > req.max_bytes:
            raise HttpError(
                str(url),
                f"response of {declared} bytes exceeds the {req.max_bytes}-byte cap",
                counter="refused_size",
            )
        body = read_body(r.iter_stream(), _header(r, b"content-encoding"), req.max_bytes)
        return HttpResponse(str(url), status, ctype, body)
