"""The on-disk cache of successful HTTP responses, shared by the online sources.

Keys are sha256 of the method, the URL with its public parameters and the request body:
headers, and so API keys, never enter a key, and secret query parameters (SerpApi's
``api_key``) are added on the wire only, so they never reach a key or a stored URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cem.io import atomic_open, ensure_dir

log = logging.getLogger(__name__)


@dataclass
class HttpResponse:
    """A successful (2xx) response, read in full within the size cap and decoded."""

    url: str  # the final URL (after redirects), as shown: never a key
    status: int
    content_type: str  # media type only, lower case, without parameters
    body: bytes
    from_cache: bool = False

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def cache_key(method: str, url: str, params: dict[str, Any] | None = None,
              body: bytes | None = None) -> str:  # fmt: skip
    """sha256 of method, URL, sorted parameters and body. Headers (and so keys) never enter."""
    full = httpx.URL(url, params=sorted((params or {}).items())) if params else httpx.URL(url)
    text = f"{method.upper()} {full}"
    if body is not None:
        text += " " + hashlib.sha256(body).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """One JSON file per response under ``root/ab/abcdef....json``, written atomically."""

    def __init__(self, root: str | os.PathLike):
        # Created now: a file in its place is one clear error, not a failure per response.
        self.root = ensure_dir(root, "point CEM_CACHE (or the source's cache_dir) elsewhere")

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> HttpResponse | None:
        """The stored response, or None when absent or unreadable (a corrupt entry is a miss)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                row = json.load(fh)
            body = base64.b64decode(row["body_b64"], validate=True)
            return HttpResponse(
                row["url"], int(row["status"]), str(row["content_type"]), body, True
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring corrupt HTTP cache entry %s (%s); refetching", path, e)
            return None

    def put(self, key: str, resp: HttpResponse) -> None:
        row = {
            "url": resp.url,
            "status": resp.status,
            "content_type": resp.content_type,
            "body_b64": base64.b64encode(resp.body).decode("ascii"),
        }
        with atomic_open(self._path(key)) as fh:
            json.dump(row, fh)

    def drop(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def default_cache_dir() -> Path:
    """``$CEM_CACHE/http``, where ``$CEM_CACHE`` defaults to ``~/.cache/cem``."""
    root = os.environ.get("CEM_CACHE") or os.path.join("~", ".cache", "cem")
    return Path(root).expanduser() / "http"
