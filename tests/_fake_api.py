"""A real HTTP server on 127.0.0.1 that answers like MediaWiki, Bing v7 and some web pages.

Routes (``{base}`` is ``http://127.0.0.1:<port>``):
    /w/api.php                  MediaWiki ``list=search`` and ``prop=extracts``
    /flaky/w/api.php            503 for the first two requests, then as /w/api.php
    /down/w/api.php             always 500
    /slow/w/api.php             sleeps SLOW_S, then as /w/api.php
    /busy/<secs>/w/api.php      first request 429 with ``Retry-After: <secs>``, then as /w/api.php
    /bing/v7.0/search           Bing JSON listing every page below (401 without the key)
    /bing-clean/v7.0/search     the same, listing only the text pages
    /pages/...                  HTML articles, plain text, a PDF, oversized and slow pages
    /echo/<anything>            a tiny JSON body
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SLOW_S = 1.0
BIG_BYTES = 200_000

WIKI = {
    "Paris": "Paris is the capital and largest city of France. It lies on the Seine.",
    "France": "France is a country in Western Europe. Its capital is Paris.",
    "Berlin": "Berlin is the capital and largest city of Germany.",
    "Seine": "The Seine is a river in northern France that flows through Paris.",
}

_BOILERPLATE_TOP = """<header><nav><a href="/">Home</a> | <a href="/news">News</a> |
<a href="/login">Log in</a></nav><div class="cookie">We use cookies to improve your
experience. Accept all cookies?</div></header>"""
_BOILERPLATE_BOTTOM = """<aside><h3>Related</h3><ul><li><a href="/x">Ten cheap flights</a></li>
</ul></aside><footer><p>Subscribe to our newsletter for weekly deals.</p>
<p>Copyright 2024 Example Media Group. All rights reserved.</p></footer>"""


def _article(title: str, paragraphs: list[str]) -> bytes:
    body = "".join(f"<p>{p}</p>\n" for p in paragraphs)
    html = f"""<!DOCTYPE html><html><head><title>{title}</title></head><body>
{_BOILERPLATE_TOP}<main><article><h1>{title}</h1>
{body}</article></main>{_BOILERPLATE_BOTTOM}</body></html>"""
    return html.encode()


ARTICLE_A = [
    "Paris is the capital of France and its most populous city, with more than two million "
    "residents living within the city limits along the river Seine.",
    "The city has been a major centre of finance, diplomacy, commerce, fashion, science and "
    "the arts in Europe since the seventeenth century.",
    "The Louvre, which holds the Mona Lisa, is the most visited art museum in the world and "
    "stands on the right bank of the Seine in the heart of Paris.",
]
ARTICLE_B = [
    "Berlin became the capital of reunified Germany in 1990 and is the largest city of the "
    "European Union by population within its city limits.",
    "The Brandenburg Gate, built in the eighteenth century, is one of the best-known "
    "landmarks of Berlin and of Germany as a whole.",
]
NOTES = "Notes on French geography.\n\nThe river Loire is the longest river in France, " * 3

# path -> (content type, body); "stream" and "slow" are served specially.
PAGES = {
    "/pages/article-a.html": ("text/html; charset=utf-8", _article("Paris", ARTICLE_A)),
    "/pages/article-b.html": ("text/html; charset=utf-8", _article("Berlin", ARTICLE_B)),
    "/pages/notes.txt": ("text/plain; charset=utf-8", NOTES.encode()),
    "/pages/report.pdf": ("application/pdf", b"%PDF-1.4\n%binary\x00\x01\x02 report"),
    "/pages/huge.html": ("text/html", b"<p>" + b"x" * BIG_BYTES + b"</p>"),
    "/pages/stream.html": ("text/html", b""),
    "/pages/slow.html": ("text/html", _article("Slow", ARTICLE_A)),
}
TEXT_PAGES = ["/pages/article-a.html", "/pages/article-b.html", "/pages/notes.txt"]


class FakeAPI:
    """The server, run in a daemon thread. Use as a context manager."""

    def __init__(self, bing_key: str = "test-key"):
        self.bing_key = bing_key
        self.counts: Counter[str] = Counter()  # requests per path
        self.seen_headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        api = self

        class Handler(_Handler):
            fake = api

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def hits(self, prefix: str = "/") -> int:
        """Requests so far whose path starts with ``prefix``."""
        with self.lock:
            return sum(n for path, n in self.counts.items() if path.startswith(prefix))

    def __enter__(self) -> FakeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAPI

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        parts = urlsplit(self.path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.fake.lock:
            self.fake.counts[path] += 1
            n = self.fake.counts[path]
            self.fake.seen_headers.append(dict(self.headers.items()))
        # The client may stop reading on purpose (size cap, timeout).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(path, query, n)

    def _route(self, path: str, query: dict[str, str], n: int) -> None:
        if path == "/w/api.php":
            return self._json(200, _wiki(query))
        if path == "/flaky/w/api.php":
            return self._json(503, {"error": "busy"}) if n <= 2 else self._json(200, _wiki(query))
        if path == "/down/w/api.php":
            return self._json(500, {"error": "down"})
        if path == "/slow/w/api.php":
            time.sleep(SLOW_S)
            return self._json(200, _wiki(query))
        if path.startswith("/busy/") and path.endswith("/w/api.php"):
            if n == 1:
                secs = path.split("/")[2]
                return self._json(429, {"error": "slow down"}, {"Retry-After": secs})
            return self._json(200, _wiki(query))
        if path in ("/bing/v7.0/search", "/bing-clean/v7.0/search"):
            if self.headers.get("Ocp-Apim-Subscription-Key") != self.fake.bing_key:
                return self._json(401, {"error": {"code": "401", "message": "Access denied"}})
            pages = TEXT_PAGES if path.startswith("/bing-clean") else list(PAGES)
            return self._json(200, self._bing(query, pages))
        if path.startswith("/echo/"):
            return self._json(200, {"path": path})
        if path in PAGES:
            return self._page(path)
        return self._json(404, {"error": "not found"})

    def _bing(self, query: dict[str, str], pages: list[str]) -> dict:
        count = int(query.get("count", 10))
        value = [
            {
                "name": f"Result {i}: {p.rsplit('/', 1)[-1]}",
                "url": self.fake.url(p),
                "snippet": f"Snippet {i}: a summary of {p.rsplit('/', 1)[-1]}.",
            }
            for i, p in enumerate(pages[:count])
        ]
        return {"_type": "SearchResponse", "webPages": {"value": value}}

    def _page(self, path: str) -> None:
        ctype, body = PAGES[path]
        if path == "/pages/slow.html":
            time.sleep(SLOW_S)
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if path == "/pages/stream.html":
            # No Content-Length: the client must count bytes as they arrive.
            self.end_headers()
            for _ in range(BIG_BYTES // 8192 + 1):
                self.wfile.write(b"<p>" + b"y" * 8185 + b"</p>")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _wiki(query: dict[str, str]) -> dict:
    """MediaWiki's ``format=json`` shapes for ``list=search`` and ``prop=extracts``."""
    if query.get("list") == "search":
        words = set(query.get("srsearch", "").lower().split())
        scored = [(sum(w in text.lower() for w in words), t) for t, text in WIKI.items()]
        ranked = [t for s, t in sorted(scored, key=lambda x: -x[0]) if s > 0]
        hits = [{"ns": 0, "title": t, "pageid": list(WIKI).index(t) + 1} for t in ranked]
        return {"query": {"search": hits[: int(query.get("srlimit", 10))]}}
    if query.get("prop") == "extracts":
        pages = {}
        for i, title in enumerate(query.get("titles", "").split("|")):
            if title in WIKI:
                pid = list(WIKI).index(title) + 1
                pages[str(pid)] = {"pageid": pid, "ns": 0, "title": title, "extract": WIKI[title]}
            else:
                pages[str(-1 - i)] = {"ns": 0, "title": title, "missing": ""}
        return {"batchcomplete": "", "query": {"pages": pages}}
    return {"error": {"code": "badrequest"}}
