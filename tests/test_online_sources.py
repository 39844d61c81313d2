"""The online sources and their HTTP client, against a real local server (tests/_fake_api.py).

Nothing here is monkeypatched: httpx talks to a ThreadingHTTPServer on 127.0.0.1.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from _fake_api import ARTICLE_A, WIKI, FakeAPI

from cem.config import SourceConfig
from cem.errors import CemError, ConfigError
from cem.knowledge.http import HttpClient, HttpError, cache_key
from cem.knowledge.online import WebSearchSource, WikipediaAPISource, mmr_select
from cem.knowledge.types import SourceStats

KEY = "sk-TOPSECRET-1234567890"
KEY_ENV = "CEM_TEST_BING_KEY"
UA = "cem-test/0.1 (tests; nobody@example.org)"


@pytest.fixture
def api():
    with FakeAPI(bing_key=KEY) as server:
        yield server


@pytest.fixture
def bing_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


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


def web_cfg(api: FakeAPI, tmp_path: Path, path: str = "/bing/v7.0/search", **kw):
    return cfg(api, tmp_path, path, **({"kind": "web_search", "api_key_env": KEY_ENV} | kw))


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
    assert src.stats.retries == 2 and src.stats.errors == 0


def test_failing_api_is_counted_not_raised(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path, "/down/w/api.php", retries=2))
    assert src.search(["Paris", "Berlin"], k=3) == [[], []]
    assert src.stats.errors == 2 and src.stats.retries == 4
    assert api.hits("/down/") == 6  # 1 try + 2 retries per query


def test_api_timeout_is_counted(api, tmp_path):
    src = WikipediaAPISource(cfg(api, tmp_path, "/slow/w/api.php", timeout_s=0.2, retries=1))
    assert src.search(["Paris"], k=3) == [[]]
    assert src.stats.errors == 1 and src.stats.retries == 1
    with pytest.raises(HttpError) as e:
        client(tmp_path, timeout_s=0.2, retries=0).get(api.url("/slow/w/api.php"))
    assert e.value.timeout and not e.value.skipped


def test_retry_after_is_honoured_and_capped(api, tmp_path):
    c = client(tmp_path)
    t0 = time.monotonic()
    assert c.get_json(api.url("/busy/1/w/api.php"), {"list": "search", "srsearch": "Paris"})
    assert time.monotonic() - t0 >= 0.9 and c.stats.retries == 1
    c = client(tmp_path, retry_after_cap_s=0.2)
    t0 = time.monotonic()
    c.get(api.url("/busy/3600/w/api.php"))
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


def test_rate_limit_per_host(api, tmp_path):
    c = client(tmp_path, rate_limit_per_s=10.0)
    t0 = time.monotonic()
    for i in range(5):
        c.get(api.url(f"/echo/{i}"))
    assert time.monotonic() - t0 >= 0.35  # four gaps of 0.1 s, with slack


def test_oversized_response_is_refused(api, tmp_path):
    c = client(tmp_path, max_bytes=10_000)
    for page in ("/pages/huge.html", "/pages/stream.html"):  # declared length / streamed
        with pytest.raises(HttpError) as e:
            c.get(api.url(page))
        assert e.value.skipped and "cap" in e.value.reason
    assert not list((tmp_path / "http").rglob("*.json"))  # refusals are not cached


def test_missing_endpoint_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"knowledge\.sources\[2\]\.endpoint"):
        WikipediaAPISource(SourceConfig(kind="wikipedia_api", endpoint=None), index=2)
    bad = SourceConfig(kind="wikipedia_api", endpoint="http://127.0.0.1:9/", rate_limit_per_s=0)
    with pytest.raises(ConfigError, match=r"rate_limit_per_s.*try knowledge\.sources"):
        WikipediaAPISource(bad)


# --- Web search ------------------------------------------------------------------------


def test_web_search_pages_and_provenance(api, tmp_path, bing_key):
    src = WebSearchSource(web_cfg(api, tmp_path, retries=1))
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
    # pdf (content type), huge (declared size), stream (streamed size), slow (timeout).
    assert src.stats.skipped_pages == 4 and src.stats.errors == 0
    assert src.stats.queries == 1 and src.stats.passages == 3
    assert api.hits("/pages/slow.html") == 2  # tried, timed out, retried once
    # A page refused once is not fetched (nor counted) again in this run.
    src.search(["Louvre museum"], k=2)
    assert api.hits("/pages/slow.html") == 2 and api.hits("/pages/report.pdf") == 1
    assert src.stats.skipped_pages == 4


def test_web_search_cache_and_key_secrecy(api, tmp_path, bing_key, caplog):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log at DEBUG too
    src = WebSearchSource(web_cfg(api, tmp_path, "/bing-clean/v7.0/search"))
    first = src.search(["Berlin capital Germany"], k=2)
    assert first[0] and any(h.get("Ocp-Apim-Subscription-Key") == KEY for h in api.seen_headers)
    before = api.hits()
    assert src.search(["Berlin capital Germany"], k=2) == first
    assert api.hits() == before and src.stats.cache_hits == 4  # search + 3 pages
    # The key is nowhere: cache files, logs, reprs, attributes, the cache key.
    for f in (tmp_path / "http").rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes()
    assert KEY not in caplog.text and caplog.text  # something was logged
    for shown in (repr(src), repr(src.client), str(vars(src)), str(src.stats)):
        assert KEY not in shown
    url = api.url("/bing-clean/v7.0/search")
    assert cache_key("GET", url, {"q": "x"}) == cache_key("GET", url, {"q": "x"})


def test_cache_key_keeps_the_query_string_of_a_url():
    """Two result pages that differ only in their query are two cache entries."""
    assert cache_key("GET", "https://x.org/p?id=1") != cache_key("GET", "https://x.org/p?id=2")
    assert cache_key("GET", "https://x.org/p?id=1") == cache_key(
        "GET", "https://x.org/p", {"id": 1}
    )


def test_web_search_wrong_key_is_an_error_without_the_key(api, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, "sk-WRONG-0000")
    src = WebSearchSource(web_cfg(api, tmp_path))
    assert src.search(["Paris"], k=3) == [[]]
    assert src.stats.errors == 1 and src.stats.retries == 0  # 401 is not retried
    assert "HTTP 401" in caplog.text and KEY_ENV in caplog.text
    assert "sk-WRONG-0000" not in caplog.text


def test_web_search_missing_key(api, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(CemError, match=f"set the environment variable {KEY_ENV}"):
        WebSearchSource(web_cfg(api, tmp_path))
    with pytest.raises(ConfigError, match=r"knowledge\.sources\[1\]\.api_key_env"):
        WebSearchSource(web_cfg(api, tmp_path, api_key_env=None), index=1)


def test_web_search_falls_back_to_snippets(api, tmp_path, bing_key):
    src = WebSearchSource(web_cfg(api, tmp_path, "/bing-clean/v7.0/search", fetch_pages=0))
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
