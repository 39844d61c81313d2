"""A real HTTP server on 127.0.0.1 that answers like MediaWiki, four search APIs and web pages.

Each search API answers in the shape its documentation gives (see cem/knowledge/providers.py)
and checks its key the way the real one does. Routes (``{base}`` is ``http://127.0.0.1:<port>``):

    /w/api.php                  MediaWiki ``list=search`` and ``prop=extracts``
    /flaky/w/api.php            503 for the first two requests, then as /w/api.php
    /down/w/api.php             always 500
    /slow/w/api.php             sleeps SLOW_S, then as /w/api.php
    /busy/<secs>/w/api.php      first request 429 with ``Retry-After: <secs>``, then as /w/api.php
    /searxng/search             SearXNG JSON (403 unless format=json) listing every page below
    /searxng-clean/search       the same, listing only the text pages
    /searxng-off/search         a SearXNG whose JSON format is off: always 403
    /brave/res/v1/web/search    Brave (X-Subscription-Token), the text pages
    /tavily/search              Tavily (POST, Authorization: Bearer), the text pages
    /serpapi/search.json        SerpApi engine=bing (api_key in the query), the text pages
    /flaky-api/<route>          429, then 503, then as <route>
    /down-api/<route>           always 503
    /redirect/<route>           307 to ``redirect_to`` + <route> (set it to another server)
    /pages/...                  articles, plain text, gzip, a PDF, and hostile pages (PAGES)
    /echo/<anything>            a tiny JSON body
"""

from __future__ import annotations

import contextlib
import gzip
import json
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SLOW_S = 1.0
BIG_BYTES = 200_000
HUGE_BYTES = 50_000_000  # the hostile pages' 50 MB
DRIP_S = 0.05  # hostile pages send one byte this often

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
ARTICLE_C = [
    "Vienna is the capital of Austria and lies on the river Danube in the east of the country; "
    "its historic centre is a World Heritage Site.",
]
NOTES = "Notes on French geography.\n\nThe river Loire is the longest river in France, " * 3
GZIP_BOMB = gzip.compress(b"\0" * HUGE_BYTES, compresslevel=9)  # ~50 KB on the wire

# path -> (content type, body); the hostile ones are served by _hostile().
PAGES = {
    "/pages/article-a.html": ("text/html; charset=utf-8", _article("Paris", ARTICLE_A)),
    "/pages/article-b.html": ("text/html; charset=utf-8", _article("Berlin", ARTICLE_B)),
    "/pages/notes.txt": ("text/plain; charset=utf-8", NOTES.encode()),
    "/pages/article-gz.html": ("text/html", _article("Vienna", ARTICLE_C)),  # sent gzipped
    "/pages/report.pdf": ("application/pdf", b"%PDF-1.4\n%binary\x00\x01\x02 report"),
    "/pages/huge.html": ("text/html", b"<p>" + b"x" * BIG_BYTES + b"</p>"),
    "/pages/stream.html": ("text/html", b""),
    "/pages/slow.html": ("text/html", _article("Slow", ARTICLE_A)),
}
TEXT_PAGES = ["/pages/article-a.html", "/pages/article-b.html", "/pages/notes.txt"]
# Each refused for one reason: path -> the SourceStats counter that counts it.
HOSTILE = {
    "/pages/loop-a": "refused_redirects",  # -> loop-b -> loop-a
    "/pages/hops/9": "refused_redirects",  # nine redirects to an article
    "/pages/to-metadata": "refused_address",  # -> http://169.254.169.254/latest/meta-data/
    "/pages/to-file": "refused_scheme",  # -> file:///etc/passwd
    "/pages/slow-headers": "page_timeouts",  # one header byte every DRIP_S
    "/pages/drip": "page_timeouts",  # one body byte every DRIP_S
    "/pages/huge-declared": "refused_size",  # Content-Length: 50 MB
    "/pages/huge-stream": "refused_size",  # 50 MB, no Content-Length
    "/pages/gzip-bomb": "refused_size",  # 50 KB of gzip that inflates to 50 MB
    "/pages/report.pdf": "refused_type",
}


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many pages are fetched at once; the default 5 drops connects


class FakeAPI:
    """The server, run in a daemon thread. Use as a context manager.

    Attributes:
        requests: every request as (method, path, query, headers, body), in order.
        redirect_to: the base URL that /redirect/ sends clients to.
    """

    def __init__(self, key: str = "test-key", tls: tuple[str, str] | None = None):
        """Args: key: the API key the search APIs accept; tls: (cert, key) files to serve
        https with."""
        self.key, self.scheme = key, "https" if tls else "http"
        self.redirect_to = ""
        self.counts: Counter[str] = Counter()  # requests per path
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        api = self

        class Handler(_Handler):
            fake = api

        self.server = _Server(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str, host: str = "") -> str:
        address, port = self.server.server_address[:2]
        return f"{self.scheme}://{host or address}:{port}{path}"

    def hits(self, prefix: str = "/") -> int:
        """Requests so far whose path starts with ``prefix``."""
        with self.lock:
            return sum(n for path, n in self.counts.items() if path.startswith(prefix))

    @property
    def seen_headers(self) -> list[dict[str, str]]:
        return [r[3] for r in self.requests]

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
        self._handle(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _handle(self, body: bytes) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.fake.lock:
            self.fake.counts[path] += 1
            n = self.fake.counts[path]
            self.fake.requests.append((self.command, path, query, dict(self.headers), body))
        # The client may stop reading on purpose (caps, deadlines, refusals).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(path, query, n, body)

    def _route(self, path: str, query: dict[str, str], n: int, body: bytes) -> None:
        if path.endswith("/w/api.php"):
            return self._wiki_route(path, query, n)
        if path.startswith("/flaky-api/"):
            if n <= 2:
                return self._json(429 if n == 1 else 503, {"error": "busy"}, {"Retry-After": "0"})
            path = path.removeprefix("/flaky-api")
        if path.startswith("/down-api/"):
            return self._json(503, {"error": "down"})
        if path.startswith("/redirect/"):
            target = self.fake.redirect_to + self.path.removeprefix("/redirect")
            return self._send(307, "text/plain", b"moved", {"Location": target})
        if path in SEARCH_APIS:
            return SEARCH_APIS[path](self, query, body)
        if path.startswith("/echo/"):
            return self._json(200, {"path": path})
        if path.startswith("/pages/"):
            return self._page(path)
        return self._json(404, {"error": "not found"})

    def _wiki_route(self, path: str, query: dict[str, str], n: int) -> None:
        if path == "/flaky/w/api.php" and n <= 2:
            return self._json(503, {"error": "busy"})
        if path == "/down/w/api.php":
            return self._json(500, {"error": "down"})
        if path == "/slow/w/api.php":
            time.sleep(SLOW_S)
        if path.startswith("/busy/") and n == 1:
            return self._json(429, {"error": "slow down"}, {"Retry-After": path.split("/")[2]})
        return self._json(200, _wiki(query))

    def results(self, pages: list[str], count: int) -> list[tuple[str, str, str]]:
        """(url, title, snippet) for the first ``count`` of ``pages``."""
        name = lambda p: p.rsplit("/", 1)[-1]  # noqa: E731
        return [(self.fake.url(p), f"Result {i}: {name(p)}", f"Snippet {i}: a summary of {name(p)}.")
                for i, p in enumerate(pages[:count])]  # fmt: skip

    def _page(self, path: str) -> None:
        if (
            path.startswith(("/pages/loop-", "/pages/hops/"))
            or path in HOSTILE
            and path != "/pages/report.pdf"
        ):
            return _hostile(self, path)
        if path not in PAGES:
            return self._json(404, {"error": "not found"})
        ctype, body = PAGES[path]
        if path == "/pages/slow.html":
            time.sleep(SLOW_S)
        if path == "/pages/stream.html":  # no Content-Length: the client must count bytes
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(BIG_BYTES // 8192 + 1):
                self.wfile.write(b"<p>" + b"y" * 8185 + b"</p>")
            self.close_connection = True
            return
        if path == "/pages/article-gz.html":
            return self._send(200, ctype, gzip.compress(body), {"Content-Encoding": "gzip"})
        self._send(200, ctype, body)

    def _send(
        self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, "application/json; charset=utf-8", json.dumps(obj).encode(), headers)


def _hostile(h: _Handler, path: str) -> None:
    """Pages that must each be refused, without holding the client past its caps."""
    h.close_connection = True
    redirects = {"/pages/loop-a": "/pages/loop-b", "/pages/loop-b": "/pages/loop-a",
                 "/pages/to-metadata": "http://169.254.169.254/latest/meta-data/",
                 "/pages/to-file": "file:///etc/passwd"}  # fmt: skip
    if path.startswith("/pages/hops/"):
        left = int(path.rsplit("/", 1)[1])
        redirects[path] = f"/pages/hops/{left - 1}" if left > 1 else "/pages/article-a.html"
    if path in redirects:
        return h._send(302, "text/html", b"moved", {"Location": redirects[path]})
    if path == "/pages/slow-headers":
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n")
        for _ in range(int(30 / DRIP_S)):  # 30 s of "X-Drip: aaaa...", a byte at a time
            h.wfile.write(b"X-Drip: " if _ == 0 else b"a")
            h.wfile.flush()
            time.sleep(DRIP_S)
        return
    if path == "/pages/drip":
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "5000")
        h.end_headers()
        for _ in range(5000):
            h.wfile.write(b"a")
            h.wfile.flush()
            time.sleep(DRIP_S)
        return
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    if path == "/pages/gzip-bomb":
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(GZIP_BOMB)))
        h.end_headers()
        h.wfile.write(GZIP_BOMB)
        return
    if path == "/pages/huge-declared":
        h.send_header("Content-Length", str(HUGE_BYTES))
    h.end_headers()
    chunk = b"<p>" + b"z" * 65_529 + b"</p>"
    for _ in range(HUGE_BYTES // len(chunk)):
        h.wfile.write(chunk)


def _searxng(h: _Handler, query: dict[str, str], body: bytes, pages: list[str]) -> None:
    if query.get("format") != "json":  # as SearXNG does for a format not in search.formats
        return h._send(403, "text/html", b"<h1>403 Forbidden</h1>")
    results = [{"url": u, "title": t, "content": s, "engine": "fake", "score": 1.0}
               for u, t, s in h.results(pages, 30)]  # fmt: skip
    h._json(200, {"query": query.get("q", ""), "number_of_results": len(results),
                  "results": results, "answers": [], "suggestions": []})  # fmt: skip


def _brave(h: _Handler, query: dict[str, str], body: bytes) -> None:
    if h.headers.get("X-Subscription-Token") != h.fake.key:
        return h._json(
            401,
            {
                "type": "ErrorResponse",
                "error": {"status": 401, "code": "SUBSCRIPTION_TOKEN_INVALID"},
            },
        )
    results = [{"title": t, "url": u, "description": f"<strong>{s}</strong> &amp; more",
                "type": "search_result"} for u, t, s in h.results(TEXT_PAGES, int(query["count"]))]  # fmt: skip
    h._json(200, {"type": "search", "query": {"original": query["q"]},
                  "web": {"type": "search", "results": results}})  # fmt: skip


def _tavily(h: _Handler, query: dict[str, str], body: bytes) -> None:
    if h.command != "POST" or h.headers.get("Authorization") != f"Bearer {h.fake.key}":
        return h._json(401, {"detail": {"error": "Unauthorized: missing or invalid API key."}})
    req = json.loads(body)
    results = [{"title": t, "url": u, "content": s, "score": 0.9, "raw_content": None}
               for u, t, s in h.results(TEXT_PAGES, req["max_results"])]  # fmt: skip
    h._json(200, {"query": req["query"], "answer": None, "images": [], "results": results,
                  "response_time": 0.5})  # fmt: skip


def _serpapi(h: _Handler, query: dict[str, str], body: bytes) -> None:
    if query.get("api_key") != h.fake.key:
        return h._json(
            401,
            {
                "error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"
            },
        )
    assert query["engine"] == "bing"
    results = [{"position": i + 1, "title": t, "link": u, "displayed_link": u, "snippet": s}
               for i, (u, t, s) in enumerate(h.results(TEXT_PAGES, int(query["count"])))]  # fmt: skip
    h._json(200, {"search_metadata": {"status": "Success"}, "search_parameters": {"engine": "bing",
                  "q": query["q"]}, "organic_results": results})  # fmt: skip


SEARCH_APIS = {
    "/searxng/search": lambda h, q, b: _searxng(
        h, q, b, [*TEXT_PAGES, "/pages/article-gz.html", *HOSTILE]
    ),
    "/searxng-clean/search": lambda h, q, b: _searxng(h, q, b, TEXT_PAGES),
    "/searxng-off/search": lambda h, q, b: h._send(403, "text/html", b"<h1>403 Forbidden</h1>"),
    "/brave/res/v1/web/search": _brave,
    "/tavily/search": _tavily,
    "/serpapi/search.json": _serpapi,
}


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


# Every socket.connect of this process, while recording: an audit hook observes the
# connections the client makes (it changes nothing), so a test can show that a refused
# address was never connected to.
_CONNECTS: list[object] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "socket.connect" and _CONNECTS is not None:
        _CONNECTS.append(args[1])


sys.addaudithook(_audit)


@contextlib.contextmanager
def recorded_connects() -> Iterator[list[object]]:
    """The addresses (host, port) that sockets connected to inside the block."""
    global _CONNECTS
    _CONNECTS = []
    try:
        yield _CONNECTS
    finally:
        _CONNECTS = None
