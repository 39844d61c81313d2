"""Each web search provider against a local server that answers in that API's documented
shape (tests/_fake_api.py), with the real client code running: nothing is mocked.

Also: keys never leak, a wrong key stops the command, 429/5xx are retried and counted, an
API redirect is never followed, and a missing key is caught before round 0.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _fake_api import ARTICLE_A, FakeAPI

from cem.choices import SearchProvider
from cem.config import SourceConfig, conf_dir
from cem.io import write_jsonl
from cem.knowledge.online import SearchDenied, WebSearchSource
from cem.knowledge.providers import PROVIDERS, check_web_search
from cem.loop.run import check_run
from cem.validate import ConfigInvalid

KEY = "sk-TOPSECRET-1234567890"
KEY_ENV = "CEM_TEST_SEARCH_KEY"
ENDPOINTS = {  # the fake server's path for each provider
    "searxng": "/searxng-clean",
    "brave": "/brave/res/v1/web/search",
    "tavily": "/tavily/search",
    "serpapi_bing": "/serpapi/search.json",
}
KEYED = ["brave", "tavily", "serpapi_bing"]
QUERY = "Paris capital of France Seine"


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeAPI(key=KEY) as server:
        yield server


def web_cfg(api: FakeAPI, tmp_path: Path, provider: str, path: str | None = None, **kw):
    base = dict(kind="web_search", provider=provider, endpoint=api.url(path or ENDPOINTS[provider]),
                api_key_env=None if provider == "searxng" else KEY_ENV, user_agent="cem-test",
                timeout_s=2.0, retries=2, backoff_s=0.01, rate_limit_per_s=1000.0,
                cache_dir=str(tmp_path / "http"), page_timeout_s=1.0, page_max_bytes=20_000,
                fetch_pages=3)  # fmt: skip
    return SourceConfig(**(base | kw))


def source(api: FakeAPI, tmp_path: Path, provider: str, path: str | None = None, **kw):
    return WebSearchSource(web_cfg(api, tmp_path, provider, path, **kw),
                           allowed_private_hosts=["127.0.0.1"])  # fmt: skip


def api_requests(api: FakeAPI) -> list:
    return [r for r in api.requests if not r[1].startswith("/pages/")]


def carries_key(request: tuple, key: str = KEY) -> bool:
    method, path, query, headers, body = request
    return key in json.dumps([path, query, headers]) or key.encode() in body


def test_every_provider_has_a_class_a_yaml_and_the_retired_bing_none():
    names = {p.stem for p in (conf_dir() / "knowledge" / "search").glob("*.yaml")}
    assert names == {p.value for p in PROVIDERS} == set(ENDPOINTS)
    assert SearchProvider.bing not in PROVIDERS


@pytest.mark.parametrize("provider", list(ENDPOINTS))
def test_each_provider_finds_pages_through_its_documented_api(api, tmp_path, provider):
    src = source(api, tmp_path, provider)
    [hits] = src.search([QUERY], k=2)
    assert hits[0].doc_id == api.url("/pages/article-a.html") and hits[0].source == "web_search"
    assert any(para in hits[0].text for para in ARTICLE_A)  # the page itself, fetched
    assert all(p.title.startswith("Result ") for p in hits) and src.stats.errors == 0
    [(method, path, query, headers, body)] = api_requests(api)
    # The request as each API's documentation gives it (cem/knowledge/providers.py).
    if provider == "searxng":
        assert (method, query) == ("GET", {"q": QUERY, "format": "json", "language": "en-US"})
    if provider == "brave":
        assert query == {"q": QUERY, "count": "3", "search_lang": "en", "country": "US"}
        assert headers["X-Subscription-Token"] == KEY and method == "GET"
    if provider == "tavily":
        assert method == "POST" and headers["Authorization"] == f"Bearer {KEY}"
        assert json.loads(body) == {"query": QUERY, "max_results": 3, "search_depth": "basic"}
    if provider == "serpapi_bing":
        assert query == {"engine": "bing", "q": QUERY, "count": "3", "mkt": "en-US", "api_key": KEY}
    pages = [r for r in api.requests if r[1].startswith("/pages/")]
    assert len(pages) == 3 and not any(carries_key(r) for r in pages)  # pages never get it


def test_snippets_are_plain_text(api, tmp_path):
    [hits] = source(api, tmp_path, "brave", fetch_pages=0).search(["Loire"], k=3)
    assert hits[0].text == "Snippet 0: a summary of article-a.html. & more"  # <strong>, &amp;


@pytest.mark.parametrize("provider", KEYED)
def test_the_key_is_never_logged_cached_or_shown(api, tmp_path, provider, caplog):
    caplog.set_level(logging.DEBUG)  # httpcore traces at DEBUG too
    src = source(api, tmp_path, provider)
    first = src.search([QUERY], k=2)
    assert src.search([QUERY], k=2) == first and src.stats.cache_hits == 4  # search + 3 pages
    assert any(carries_key(r) for r in api_requests(api))  # it did go to the endpoint
    texts = [caplog.text, repr(src), repr(src.client), str(vars(src)), str(src.stats)]
    os.environ[KEY_ENV] = "sk-WRONG-0000"
    with pytest.raises(SearchDenied) as denied:
        src.search(["another query"], k=2)
    texts.append(str(denied.value))
    for f in (tmp_path / "http").rglob("*"):
        if f.is_file():
            texts.append(f.read_text(errors="replace"))
    assert caplog.text and all(KEY not in t and "sk-WRONG" not in t for t in texts)


@pytest.mark.parametrize("provider", KEYED)
def test_a_wrong_key_stops_at_once_naming_the_variable(api, tmp_path, provider, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-WRONG-0000")
    src = source(api, tmp_path, provider)
    with pytest.raises(SearchDenied) as e:
        src.search(["first", "second"], k=2)
    msg = str(e.value)
    assert "HTTP 401" in msg and f"${KEY_ENV}" in msg and "knowledge.sources.0.api_key_env" in msg
    assert "sk-WRONG" not in msg
    assert len(api_requests(api)) == 1 and src.stats.retries == 0  # not retried, not repeated


def test_searxng_without_json_stops_with_the_settings_fix(api, tmp_path):
    with pytest.raises(SearchDenied, match=r"HTTP 403.*search\.formats.*settings\.yml"):
        source(api, tmp_path, "searxng", "/searxng-off").search(["x"], k=1)


@pytest.mark.parametrize("provider", list(ENDPOINTS))
def test_429_and_5xx_are_retried_within_bounds_and_counted(api, tmp_path, provider):
    src = source(api, tmp_path, provider, "/flaky-api" + ENDPOINTS[provider])
    [hits] = src.search([QUERY], k=2)
    assert hits and src.stats.errors == 0
    assert (src.stats.retries, src.stats.rate_limited, src.stats.server_errors) == (2, 1, 1)
    down = source(api, tmp_path, provider, "/down-api" + ENDPOINTS[provider], retries=2)
    assert down.search(["a", "b"], k=2) == [[], []]  # counted; the round goes on
    assert (down.stats.errors, down.stats.retries, down.stats.server_errors) == (2, 4, 6)


@pytest.mark.parametrize("provider", KEYED)
def test_an_api_redirect_is_not_followed_so_no_key_reaches_the_other_port(api, tmp_path, provider):
    with FakeAPI(key=KEY) as other:
        api.redirect_to = other.url("")  # same path and query, another port
        src = source(api, tmp_path, provider, "/redirect" + ENDPOINTS[provider])
        assert src.search([QUERY], k=2) == [[]]
    assert other.requests == []  # so no key header or parameter reached it
    assert src.stats.api_redirects == 1 and src.stats.errors == 1
    assert carries_key(api.requests[0])  # the endpoint itself had it


def test_config_problems_name_the_key_and_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    problems = lambda **kw: check_web_search(SourceConfig(kind="web_search", **kw), 1)  # noqa: E731
    [p] = problems(provider="brave", endpoint="https://api.search.brave.com/res/v1/web/search")
    assert p.startswith("knowledge.sources.1.api_key_env must name") and "BRAVE_API_KEY" in p
    [p] = problems(provider="tavily", endpoint="https://api.tavily.com/search", api_key_env=KEY_ENV)
    assert f"names {KEY_ENV}, which is not set" in p and f"export {KEY_ENV}=" in p
    [p] = problems(provider="searxng", endpoint=None)
    assert p.startswith("knowledge.sources.1.endpoint must be the URL of SearXNG")
    for retired in (
        dict(provider="bing"),
        dict(endpoint="https://api.bing.microsoft.com/v7.0/search"),
    ):
        [p] = problems(**retired)
        assert "retired on 2025-08-11" in p
        assert all(
            f"knowledge/search={n}" in p for n in ("serpapi_bing", "brave", "tavily", "searxng")
        )
    with pytest.raises(ConfigInvalid, match="BRAVE_API_KEY"):
        WebSearchSource(
            SourceConfig(kind="web_search", provider="brave", endpoint="https://x.org/")
        )


@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_knowledge_search_points_web_search_and_mix_at_a_provider(name, compose):
    for knowledge, i in (("web_search", 0), ("mix", 1)):
        cfg = compose("run", "run_dir=/tmp/x", f"knowledge={knowledge}", f"knowledge/search={name}")
        src = cfg.knowledge.sources[i]
        assert (src.provider, src.endpoint) == (name, cfg.knowledge.search.endpoint)
        assert src.api_key_env == cfg.knowledge.search.api_key_env


def test_a_missing_key_is_caught_before_round_0(monkeypatch, tmp_path, compose):
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    problems = check_run(compose("run", "run_dir=/tmp/x", "table=knowledge_source",
                                 "knowledge=mix", "knowledge/search=tavily"))  # fmt: skip
    assert any("knowledge.sources.1.api_key_env names TAVILY_API_KEY, which is not set" in p
               for p in problems)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "BRAVE_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "cem.cli", "run", f"run_dir={tmp_path}",
                           "experiment=fast", "knowledge=web_search", "knowledge/search=brave"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "BRAVE_API_KEY, which is not set" in proc.stderr
    assert not (tmp_path / "round_0").exists()  # nothing was loaded or scored


def _retrieve(tmp_path: Path, api: FakeAPI, key: str, *extra: str) -> subprocess.CompletedProcess:
    """`cem retrieve` in a subprocess, through SerpApi (whose key rides in the URL)."""
    bench = tmp_path / "bench.jsonl"
    write_jsonl(bench, [{"id": "q0", "question": "What is the capital of France?",
                         "choices": ["Paris", "Lyon", "Nice", "Lille"], "answer": 0}])  # fmt: skip
    write_jsonl(tmp_path / "run" / "eval" / "records.jsonl", [
        {"id": "q0", "set": "exam", "subject": "", "question": "What is the capital of France?",
         "choices": ["Paris", "Lyon", "Nice", "Lille"], "gold": 0, "pred": 1, "pred_norm": 1,
         "scores": None, "margin": 0.5, "correct": False, "correct_norm": False}])  # fmt: skip
    s = "knowledge.sources.0"
    env = os.environ | {KEY_ENV: key, "CEM_CACHE": str(tmp_path / "cache")}
    return subprocess.run([
        sys.executable, "-m", "cem.cli", "retrieve", f"run_dir={tmp_path / 'run'}",
        "model=tiny_random_llama", "benchmark=jsonl", f"benchmark.path={bench}",
        "knowledge=web_search", "knowledge/search=serpapi_bing",
        f"knowledge.search.endpoint={api.url(ENDPOINTS['serpapi_bing'])}",
        f"knowledge.search.api_key_env={KEY_ENV}", "knowledge.allowed_private_hosts=[127.0.0.1]",
        f"{s}.fetch_pages=3", f"{s}.backoff_s=0.01", f"{s}.rate_limit_per_s=1000", *extra,
    ], capture_output=True, text=True, timeout=180, env=env)  # fmt: skip


def test_the_key_is_in_no_file_log_or_output_of_a_retrieve_run(api, tmp_path):
    proc = _retrieve(tmp_path, api, KEY, "hydra.verbose=true")  # every logger at DEBUG
    assert proc.returncode == 0, proc.stderr
    assert any(carries_key(r) for r in api_requests(api))
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert any(f.suffix == ".log" for f in files) and any(f.name == "config.yaml" for f in files)
    assert any("http" in f.relative_to(tmp_path).parts for f in files)  # the HTTP cache
    for f in files:
        assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in proc.stdout + proc.stderr and "DEBUG" in proc.stdout + proc.stderr


def test_a_wrong_key_stops_cem_retrieve_with_the_variable_named(api, tmp_path):
    proc = _retrieve(tmp_path, api, "sk-WRONG-0000")
    assert proc.returncode == 2
    assert f"${KEY_ENV}" in proc.stderr and "knowledge.sources.0.api_key_env" in proc.stderr
    assert "sk-WRONG" not in proc.stdout + proc.stderr
    assert len(api_requests(api)) == 1  # the first query, then the command stopped
    assert not (tmp_path / "run" / "knowledge").exists()
