"""The online sources and their HTTP client, against a real local server (tests/_fake_api.py).

Nothing here is monkeypatched: httpcore talks to a ThreadingHTTPServer on 127.0.0.1.
The search providers are tested in test_providers.py, the page fetcher's refusals in
test_fetcher.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _fake_api import ARTICLE_A, ARTICLE_C, WIKI, FakeAPI

from cem.config import SourceConfig
from cem.errors import ConfigError
from cem.knowledge.cache import cache_key
from cem.knowledge.http import HttpClient, HttpError
from cem.knowledge.net import AddressPolicy
from cem.knowledge.online import WebSearchSource, WikipediaAPISource, mmr_select
from cem.knowledge.types import SourceStats

UA = "cem-test/0.1 (tests; nobody@example.org)"
LOCAL = ["127.0.0.1"]  # knowledge.allowed_private_hosts for the local server's pages


@pytest.fixture
def api():
    with FakeAPI() as server:
        yield server


def cfg(api: FakeAPI, tmp_path: Path, path: str = "/w/api.php", **kw) -> SourceConfig:
    """A config with small timeouts and backoffs so failures cost little time."""
    base = dict(
        kind="wikipedia_api",
        endpoint=api.url(path),
        user_agent=UA,
        timeout_s=2.0,
        retries=2,
        backoff_s=0.01,
        rate_limit_per_s=1000.0,
        cache_dir=str(tmp_path / "http"),
        page_timeout_s=0.3,
        page_max_bytes=20_000,
        fetch_pages=7,
    )
    return SourceConfig(**(base | kw))


def searxng(api: FakeAPI, tmp_path: Path, path: str = "/searxng-clean", **kw) -> WebSearchSource:
    """A web_search source on the fake SearXNG, whose pages the allow-list lets it fetch."""
    c = cfg(api, tmp_path, path, **({"kind": "web_search", "provider": "searxng"} | kw))
    return WebSearchSource(c, allowed_private_hosts=LOCAL)


def client(tmp_path: Path, **kw) -> HttpClient:
    base = dict(
        user_agent=UA,
        timeout_s=2.0,
        retries=2,
        backoff_s=0.01,
        max_bytes=10_000,
        rate_limit_per_s=1000.0,
        cache_dir=tmp_path / "http",
        stats=SourceStats(),
        policy=AddressPolicy.parse(LOCAL),
    )
    return HttpClient(**(base | kw))


# --- Wikipedia -------------------------------------------------------------------------


def test_wikipedia_results_and_provenance(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path))
    [paris, nothing] = src.search(["capital France", "zzzunknownzzz"], k=2)
    assert nothing == []
    assert [p.doc_id for p in paris] == ["Paris", "France"]  # the server's ranking
    for p in paris:
        assert p.source == "wikipedia_api" and p.title == p.doc_id
        assert p.text == WIKI[p.doc_id] and p.query == "capital France"
    assert paris[0].score > paris[1].score
    assert src.stats.queries == 2 and src.stats.passages == 2 and src.stats.errors == 0
    # Two searches, then one batched extracts request for all titles.
    assert api.hits("/w/api.php") == 3
    assert all(h.get("User-Agent") == UA for h in api.seen_headers)


def test_flaky_api_is_retried_then_succeeds(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path, "/flaky/w/api.php", retries=3))
    [hits] = src.search(["Berlin"], k=3)
    assert [p.doc_id for p in hits] == ["Berlin"]
    assert src.stats.retries == 2 and src.stats.server_errors == 2 and src.stats.errors == 0


def test_failing_api_is_counted_not_raised(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path, "/down/w/api.php", retries=2))
    assert src.search(["Paris", "Berlin"], k=3) == [[], []]
    assert src.stats.errors == 2 and src.stats.retries == 4 and src.stats.server_errors == 6
    assert api.hits("/down/") == 6  # 1 try + 2 retries per query


def test_api_timeout_is_counted(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path, "/slow/w/api.php", timeout_s=0.2, retries=1))
    t0 = time.monotonic()
    assert src.search(["Paris"], k=3) == [[]]
    assert src.stats.errors == 1 and src.stats.retries == 1
    assert time.monotonic() - t0 < 1.0  # two attempts of 0.2 s, not the server's 1 s each
    with pytest.raises(HttpError) as e:
        client(tmp_path, timeout_s=0.2, retries=0).get_json(api.url("/slow/w/api.php"))
    assert e.value.timeout and not e.value.skipped


def test_retry_after_is_honoured_and_capped(api, tmp_path):
    c = client(tmp_path)
    t0 = time.monotonic()
    assert c.get_json(api.url("/busy/1/w/api.php"), {"list": "search", "srsearch": "Paris"})
    assert time.monotonic() - t0 >= 0.9 and c.stats.retries == 1 and c.stats.rate_limited == 1
    c = client(tmp_path, retry_after_cap_s=0.2)
    t0 = time.monotonic()
    c.get_json(api.url("/busy/3600/w/api.php"), {"list": "search", "srsearch": "Seine"})
    assert 0.15 <= time.monotonic() - t0 < 5


def test_second_identical_search_hits_the_cache(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path))
    first = src.search(["Seine river"], k=3)
    before = api.hits()
    assert WikipediaAPISource(cfg(api, tmp_path)).search(["Seine river"], k=3) == first
    assert src.search(["Seine river"], k=3) == first
    assert api.hits() == before
    assert src.stats.cache_hits == 2  # the search and the extracts


def test_corrupt_cache_entry_is_refetched(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path))
    first = src.search(["Berlin"], k=3)
    files = list((tmp_path / "http").rglob("*.json"))
    assert len(files) == 2
    for f in files:
        f.write_text('{"url": "trunc')
    before = api.hits()
    assert src.search(["Berlin"], k=3) == first
    assert api.hits() == before + 2
    assert src.search(["Berlin"], k=3) == first and api.hits() == before + 2  # repaired


def test_cache_key_keeps_the_query_string_of_a_url():
    """Two result pages that differ only in their query are two cache entries."""
    assert cache_key("GET", "https://x.org/p?id=1") != cache_key("GET", "https://x.org/p?id=2")
    assert cache_key("GET", "https://x.org/p?id=1") == cache_key(
        "GET", "https://x.org/p", {"id": 1}
    )
    assert cache_key("POST", "https://x.org/s", None, b"{}") != cache_key("POST", "https://x.org/s")


def test_rate_limit_per_host(api, tmp_path):
    c = client(tmp_path, rate_limit_per_s=10.0)
    t0 = time.monotonic()
    for i in range(5):
        c.get_json(api.url(f"/echo/{i}"))
    assert time.monotonic() - t0 >= 0.35  # four gaps of 0.1 s, with slack


def test_missing_endpoint_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"knowledge\.sources\[2\]\.endpoint"):
        WikipediaAPISource(SourceConfig(kind="wikipedia_api", endpoint=None), index=2)
    bad = SourceConfig(kind="wikipedia_api", endpoint="http://127.0.0.1:9/", rate_limit_per_s=0)
    with pytest.raises(ConfigError, match=r"rate_limit_per_s.*try knowledge\.sources"):
        WikipediaAPISource(bad)


# --- Web search (SearXNG here; every provider in test_providers.py) ---------------------


def test_web_search_pages_and_provenance(api, tmp_path):
    src = searxng(api, tmp_path, "/searxng", retries=1, page_max_bytes=20_000)
    [hits] = src.search(["Paris capital of France Seine"], k=3)
    assert len(hits) == 3
    assert all(p.source == "web_search" and p.doc_id.startswith(api.url("/")) for p in hits)
    assert all(p.title.startswith("Result ") for p in hits)
    assert [p.score for p in hits] == sorted((p.score for p in hits), reverse=True)
    # The best passage is an article paragraph that trafilatura extracted, free of boilerplate.
    assert hits[0].doc_id == api.url("/pages/article-a.html")
    assert any(para in hits[0].text for para in ARTICLE_A)
    text = " ".join(p.text for p in hits)
    assert "cookies" not in text and "newsletter" not in text and "%PDF" not in text
    assert src.stats.queries == 1 and src.stats.passages == 3 and src.stats.errors == 0
    # Only fetch_pages (7) results are fetched: 3 text pages, the gzip one, then loop-a,
    # hops/9 and to-metadata, each refused for its own reason.
    assert src.stats.skipped_pages == 3
    assert (src.stats.refused_redirects, src.stats.refused_address) == (2, 1)
    # A page refused once is not fetched (nor counted) again in this run.
    before = api.hits("/pages/loop-")
    src.search(["Louvre museum"], k=2)
    assert api.hits("/pages/loop-") == before and src.stats.skipped_pages == 3


def test_gzip_page_is_decoded(api, tmp_path):
    src = searxng(api, tmp_path, "/searxng", fetch_pages=4)
    [hits] = src.search(["Vienna capital Austria Danube"], k=1)
    assert hits[0].doc_id == api.url("/pages/article-gz.html")
    assert ARTICLE_C[0] in hits[0].text


def test_web_search_cache(api, tmp_path):
    src = searxng(api, tmp_path)
    first = src.search(["Berlin capital Germany"], k=2)
    assert first[0]
    before = api.hits()
    assert src.search(["Berlin capital Germany"], k=2) == first
    assert api.hits() == before and src.stats.cache_hits == 4  # search + 3 pages


def test_web_search_falls_back_to_snippets(api, tmp_path):
    src = searxng(api, tmp_path, fetch_pages=0)
    [hits] = src.search(["Loire river"], k=5)
    assert len(hits) == 3 and all(p.text.startswith("Snippet ") for p in hits)
    assert api.hits("/pages/") == 0


def test_mmr_prefers_diverse_passages():
    texts = [
        "Paris is the capital of France.",
        "Paris is the capital of France!",  # a near-duplicate of the first
        "The capital Paris has the Louvre museum.",
    ]
    assert mmr_select("capital of France Paris", texts, 2, lam=1.0) == [0, 1]
    assert mmr_select("capital of France Paris", texts, 2, lam=0.3) == [0, 2]
    assert mmr_select("q", [], 3, lam=0.7) == []


def test_cache_defaults_to_cem_cache(api, tmp_path, monkeypatch):
    monkeypatch.setenv("CEM_CACHE", str(tmp_path / "cem"))
    src = WikipediaAPISource(cfg(api, tmp_path, cache_dir=None))
    assert src.search(["Berlin"], k=1)[0]
    assert len(list((tmp_path / "cem" / "http").rglob("*.json"))) == 2
