"""A small, polite HTTP client for the online knowledge sources.

It sends a real User-Agent, waits between requests to the same host, retries transient
failures with exponential backoff (honouring ``Retry-After``), stops reading a response
past a size cap and keeps successful responses in an on-disk cache. Secret headers (API
keys) are passed per request and never stored, logged or made part of a cache key.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cem.errors import CemError, ConfigError
from cem.knowledge.cache import HttpResponse, ResponseCache, cache_key, default_cache_dir
from cem.knowledge.types import SourceStats

log = logging.getLogger(__name__)

# A server may ask for a long pause; past this we wait only this long and then retry, so
# one busy host cannot stall a whole retrieval round.
RETRY_AFTER_CAP_S = 60.0


class HttpError(CemError):
    """A request failed after every retry, or its response was refused.

    Attributes:
        url: the URL without secret headers (query parameters are never secret here).
        reason: what went wrong.
        status: the last HTTP status, if a response came back.
        skipped: True when the response was refused on purpose (wrong content type,
            too large), not because the server or network failed.
        timeout: True when the last failure was a timeout.
    """

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        status: int | None = None,
        skipped: bool = False,
        timeout: bool = False,
    ):
        self.url, self.reason, self.status = url, reason, status
        self.skipped, self.timeout = skipped, timeout
        super().__init__(f"GET {url}: {reason}")


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
    shown: str  # the full URL for messages and logs (never carries secret headers)
    url: str
    params: dict[str, Any] | None
    secret_headers: dict[str, str] | None
    timeout_s: float
    max_bytes: int
    content_types: tuple[str, ...] | None


class RateLimiter:
    """At most ``per_s`` requests a second to each host; safe to share between threads."""

    def __init__(self, per_s: float):
        self._interval = 1.0 / per_s
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        """Block until ``host`` may be sent another request, and book that slot."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self._interval
        if slot > now:
            time.sleep(slot - now)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


class HttpClient:
    """GET with timeouts, retries, a size cap, a per-host rate limit and a response cache.

    Counters (``retries``, ``cache_hits``) go into the ``stats`` it is given; failures that
    survive every retry are raised as :class:`HttpError` for the caller to count.
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
    ):
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.max_bytes, self.retry_after_cap_s = max_bytes, retry_after_cap_s
        self.stats = stats
        self.cache = ResponseCache(cache_dir)
        self._limiter = RateLimiter(rate_limit_per_s)
        self._lock = threading.Lock()  # stats are bumped from page-fetching threads
        self._client = httpx.Client(
            headers={"User-Agent": user_agent}, follow_redirects=True, timeout=timeout_s
        )

    def __repr__(self) -> str:
        return f"HttpClient(cache={str(self.cache.root)!r}, retries={self.retries})"

    def close(self) -> None:
        self._client.close()

    def count(self, counter: str) -> None:
        """Add one to a ``SourceStats`` counter; safe from several threads."""
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        *,
        secret_headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
        max_bytes: int | None = None,
        content_types: tuple[str, ...] | None = None,
    ) -> HttpResponse:
        """GET ``url``; from the cache when an identical request succeeded before.

        Args:
            url: the URL; ``params`` are added as its query string.
            params: query parameters (part of the cache key).
            secret_headers: headers such as API keys; sent, never stored or logged.
            timeout_s: overrides the client's timeout (per read, and for the whole body).
            max_bytes: overrides the client's response-size cap.
            content_types: accepted media types; others are refused unread.

        Raises:
            HttpError: the request failed after every retry, or its response was refused.
        """
        key = cache_key("GET", url, params)
        hit = self.cache.get(key)
        if hit is not None and (not content_types or hit.content_type in content_types):
            self.count("cache_hits")
            return hit
        req = _Request(
            shown=str(httpx.URL(url, params=params)),
            url=url,
            params=params,
            secret_headers=secret_headers,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            max_bytes=self.max_bytes if max_bytes is None else max_bytes,
            content_types=content_types,
        )
        resp = self._with_retries(req)
        self.cache.put(key, resp)
        return resp

    def get_json(self, url: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """:meth:`get`, then parse JSON; a body that is not JSON is an HttpError (and uncached)."""
        resp = self.get(url, params, **kwargs)
        try:
            return json.loads(resp.body)
        except ValueError:
            self.cache.drop(cache_key("GET", url, params))
            raise HttpError(resp.url, "response is not valid JSON", status=resp.status) from None

    def _with_retries(self, req: _Request) -> HttpResponse:
        last: _Retryable | None = None
        for attempt in range(self.retries + 1):
            if last is not None:
                wait = self.backoff_s * 2 ** (attempt - 1)
                if last.wait_s is not None:  # the server said how long; trust it, within reason
                    wait = min(last.wait_s, self.retry_after_cap_s)
                log.info("retrying %s in %.2fs after: %s", req.shown, wait, last.reason)
                self.count("retries")
                time.sleep(wait)
            self._limiter.wait(httpx.URL(req.url).netloc.decode("ascii"))
            try:
                return self._attempt(req)
            except _Retryable as e:
                last = e
        assert last is not None
        raise HttpError(
            req.shown,
            f"failed after {self.retries + 1} attempts: {last.reason}",
            status=last.status,
            timeout=last.timeout,
        )

    def _attempt(self, req: _Request) -> HttpResponse:
        shown = req.shown
        try:
            with self._client.stream(
                "GET", req.url, params=req.params, headers=req.secret_headers, timeout=req.timeout_s
            ) as r:
                status = r.status_code
                if status == 429 or status >= 500:
                    wait = _retry_after_s(r.headers.get("Retry-After"))
                    raise _Retryable(f"HTTP {status}", status=status, wait_s=wait)
                if not 200 <= status < 300:
                    raise HttpError(shown, f"HTTP {status}", status=status)
                ctype = _media_type(r.headers.get("Content-Type"))
                if req.content_types and ctype not in req.content_types:
                    raise HttpError(shown, f"content type {ctype!r} not accepted", skipped=True)
                body = _read_capped(r, shown, req.max_bytes, time.monotonic() + req.timeout_s)
                return HttpResponse(str(r.url), status, ctype, body)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout ({type(e).__name__})", timeout=True) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as e:
            raise _Retryable(f"network error ({type(e).__name__}: {e})") from None
        except httpx.HTTPError as e:  # redirects loops, bad URLs: another try will not help
            raise HttpError(shown, f"{type(e).__name__}: {e}") from None


def _read_capped(r: httpx.Response, shown: str, cap: int, deadline: float) -> bytes:
    """The body, refusing it past ``cap`` bytes; a body that trickles past ``deadline`` times out."""
    declared = r.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise HttpError(
            shown, f"response of {declared} bytes exceeds the {cap}-byte cap", skipped=True
        )
    chunks, size = [], 0
    for chunk in r.iter_bytes():
        size += len(chunk)
        if size > cap:  # stop reading: the server may be sending far more
            raise HttpError(shown, f"response exceeds the {cap}-byte cap", skipped=True)
        if time.monotonic() > deadline:
            raise _Retryable("timeout (body took too long)", timeout=True)
        chunks.append(chunk)
    return b"".join(chunks)


def client_from_config(cfg: Any, stats: SourceStats, where: str) -> HttpClient:
    """An :class:`HttpClient` from a source's config, after checking its HTTP fields.

    Args:
        cfg: a ``SourceConfig`` (or its DictConfig).
        stats: the source's counters.
        where: the config path of the source, e.g. ``knowledge.sources[0]``.

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
        ("rate_limit_per_s", cfg.rate_limit_per_s > 0, "must be > 0", "5"),
    ]
    for name, ok, expected, fix in checks:
        if not ok:
            key = f"{where}.{name}"
            raise ConfigError(key, getattr(cfg, name), expected, f"{key}={fix}")
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
    )
