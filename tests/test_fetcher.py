"""The guarded page fetcher: each refusal against the real local server (tests/_fake_api.py).

Nothing is mocked: httpcore connects to a ThreadingHTTPServer on 127.0.0.1, which the
tests allow through ``knowledge.allowed_private_hosts``. An audit hook (``recorded_connects``)
observes which addresses sockets connect to. Caps and deadlines are small, so each test
takes about a second at most.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import ssl
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest
from _fake_api import ARTICLE_A, HOSTILE, FakeAPI, recorded_connects

from cem.io import read_json, read_jsonl, write_jsonl
from cem.knowledge.http import HttpClient, HttpError
from cem.knowledge.net import AddressPolicy, is_public
from cem.knowledge.online import PAGE_CONTENT_TYPES
from cem.knowledge.providers import check_web
from cem.knowledge.retrieve import run_retrieve
from cem.knowledge.types import SourceStats

CAP = 100_000


@pytest.fixture
def api():
    with FakeAPI() as server:
        yield server


def fetcher(tmp_path: Path, allowed=("127.0.0.1",), **kw) -> HttpClient:
    base = dict(user_agent="cem-test", timeout_s=2.0, retries=2, backoff_s=0.01,
                max_bytes=CAP, rate_limit_per_s=1000.0, cache_dir=tmp_path / "http",
                stats=SourceStats(), policy=AddressPolicy.parse(allowed))  # fmt: skip
    return HttpClient(**(base | kw))


def fetch(c: HttpClient, url: str, *, timeout_s: float = 2.0, max_bytes: int = CAP):
    return c.fetch_page(url, timeout_s=timeout_s, max_bytes=max_bytes,
                        content_types=PAGE_CONTENT_TYPES)  # fmt: skip


def refused(c: HttpClient, url: str, counter: str, **kw) -> HttpError:
    with pytest.raises(HttpError) as e:
        fetch(c, url, **kw)
    assert e.value.counter == counter, e.value.reason
    return e.value


def test_redirect_loop_is_refused(api, tmp_path):
    e = refused(fetcher(tmp_path), api.url("/pages/loop-a"), "refused_redirects")
    assert "loop" in e.reason and e.skipped
    assert (api.hits("/pages/loop-a"), api.hits("/pages/loop-b")) == (1, 1)  # not retried


def test_redirects_are_followed_up_to_the_limit(api, tmp_path):
    e = refused(fetcher(tmp_path, max_redirects=3), api.url("/pages/hops/9"), "refused_redirects")
    assert "over 3 redirects" in e.reason and api.hits("/pages/hops/") == 4
    page = fetch(fetcher(tmp_path, max_redirects=9), api.url("/pages/hops/9"))
    assert page.url == api.url("/pages/article-a.html") and ARTICLE_A[0].encode() in page.body


def test_redirect_to_the_metadata_address_is_refused_without_connecting(api, tmp_path):
    with recorded_connects() as connects:
        e = refused(fetcher(tmp_path), api.url("/pages/to-metadata"), "refused_address")
    hosts = [str(address[0]) for address in connects if isinstance(address, tuple)]
    assert "127.0.0.1" in hosts  # the recorder saw the first hop's connection
    assert "169.254.169.254" not in hosts
    assert "169.254.169.254" in e.reason and "allowed_private_hosts" in e.reason


def test_the_first_hop_is_checked_too(api, tmp_path):
    with recorded_connects() as connects:
        refused(fetcher(tmp_path, allowed=()), api.url("/pages/article-a.html"), "refused_address")
    assert api.hits() == 0 and not connects


def test_other_schemes_are_refused(api, tmp_path):
    c = fetcher(tmp_path)
    e = refused(c, api.url("/pages/to-file"), "refused_scheme")
    assert "'file'" in e.reason
    refused(c, "ftp://127.0.0.1/pub/file.txt", "refused_scheme")


@pytest.mark.parametrize("path", ["/pages/slow-headers", "/pages/drip"])
def test_slow_headers_and_drip_hit_the_one_deadline(api, tmp_path, path):
    """One byte every 50 ms keeps every read alive; only the page's deadline ends it, and
    it covers the retries too (3 here), so the fetch ends after about 0.5 s in all."""
    c = fetcher(tmp_path, retries=3)
    t0 = time.monotonic()
    e = refused(c, api.url(path), "page_timeouts", timeout_s=0.5)
    assert e.timeout and time.monotonic() - t0 < 1.5
    assert api.hits(path) == 1  # no time was left for a retry


@pytest.mark.parametrize("path", ["/pages/huge-declared", "/pages/huge-stream", "/pages/gzip-bomb"])
def test_50_mb_and_a_gzip_bomb_stay_under_the_cap_in_memory(api, tmp_path, path):
    c = fetcher(tmp_path)
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        e = refused(c, api.url(path), "refused_size")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 3 and str(CAP) in e.reason
    assert peak < 10 * CAP  # the whole body is 50 MB (the bomb's, inflated)
    if path == "/pages/gzip-bomb":
        assert "decompressed" in e.reason


def test_a_non_text_type_is_refused(api, tmp_path):
    e = refused(fetcher(tmp_path), api.url("/pages/report.pdf"), "refused_type")
    assert "application/pdf" in e.reason


def test_refusals_are_never_cached(api, tmp_path):
    c = fetcher(tmp_path)
    for path in ("/pages/report.pdf", "/pages/huge-declared", "/pages/loop-a"):
        with pytest.raises(HttpError):
            fetch(c, api.url(path))
    assert not list((tmp_path / "http").rglob("*.json"))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str]:
    """A throwaway self-signed certificate for localhost and 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


def test_https_goes_through_the_checked_address_and_verifies_the_name(tls_files, tmp_path):
    """The connection goes to the checked IP, while TLS verifies the certificate against the
    URL's host name; the deadline holds over TLS too."""
    trusted = ssl.create_default_context(cafile=tls_files[0])
    with FakeAPI(tls=tls_files) as api:
        c = fetcher(tmp_path, ssl_context=trusted)
        page = fetch(c, api.url("/pages/article-a.html", host="localhost"))
        assert ARTICLE_A[0].encode() in page.body
        t0 = time.monotonic()
        refused(c, api.url("/pages/slow-headers"), "page_timeouts", timeout_s=0.5)
        assert time.monotonic() - t0 < 1.5
        with pytest.raises(HttpError) as e:  # httpcore's default context does not trust it
            fetch(fetcher(tmp_path, retries=0), api.url("/pages/article-b.html", host="localhost"))
    assert "CERTIFICATE_VERIFY_FAILED" in e.value.reason and e.value.counter is None


def test_address_policy():
    public = ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"]
    private = ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "100.64.0.1",
               "224.0.0.1", "240.0.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1",
               "::ffff:127.0.0.1", "2002:7f00:1::"]  # fmt: skip  # the last: 6to4 of 127.0.0.1
    assert all(is_public(ipaddress.ip_address(a)) for a in public)
    assert not any(is_public(ipaddress.ip_address(a)) for a in private)
    policy = AddressPolicy.parse(["127.0.0.1", "10.0.0.0/8", "Searx.LAN"])
    ip = ipaddress.ip_address
    assert policy.permits("x.org", ip("127.0.0.1")) and policy.permits("x.org", ip("10.9.9.9"))
    assert policy.permits("searx.lan", ip("192.168.1.5"))  # a listed name, wherever it is
    assert not policy.permits("x.org", ip("169.254.169.254"))
    assert not policy.permits("x.org", ip("127.0.0.2"))
    with pytest.raises(ValueError, match="'not a host'"):
        AddressPolicy.parse(["not a host"])


def test_a_bad_allow_list_entry_is_caught_by_validation():
    from omegaconf import OmegaConf

    k = OmegaConf.create({"sources": [], "allowed_private_hosts": ["10.0.0.0/33"]})
    [problem] = check_web(k)
    assert problem.startswith("knowledge.allowed_private_hosts must list")
    assert "'10.0.0.0/33'" in problem and "(try knowledge.allowed_private_hosts=" in problem


def test_every_refusal_is_counted_in_stats_json_and_logged_and_the_round_goes_on(
    api, tmp_path, caplog, compose
):
    """`cem retrieve` through SearXNG whose results list every hostile page."""
    bench = tmp_path / "bench.jsonl"
    items = [("What is the capital of France?", ["Paris", "Lyon", "Nice", "Lille"], 0)]
    write_jsonl(bench, [{"id": "q0", "question": q, "choices": c, "answer": a}
                        for q, c, a in items])  # fmt: skip
    records = [{"id": "q0", "set": "exam", "subject": "", "question": items[0][0],
                "choices": items[0][1], "gold": 0, "pred": 1, "pred_norm": 1, "scores": None,
                "margin": 0.5, "correct": False, "correct_norm": False}]  # fmt: skip
    write_jsonl(tmp_path / "run" / "eval" / "records.jsonl", records)
    src = "knowledge.sources.0"
    cfg = compose("retrieve",
        f"run_dir={tmp_path / 'run'}", "model=tiny_random_llama", "benchmark=jsonl",
        f"benchmark.path={bench}", "knowledge=web_search",
        f"knowledge.search.endpoint={api.url('/searxng')}",
        "knowledge.allowed_private_hosts=[127.0.0.1]",
        f"{src}.cache_dir={tmp_path / 'http'}", f"{src}.fetch_pages=20", f"{src}.retries=1",
        f"{src}.backoff_s=0.01", f"{src}.rate_limit_per_s=1000", f"{src}.page_timeout_s=1.0",
        f"{src}.page_max_bytes={CAP}",
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="cem")
    t0 = time.monotonic()
    run_retrieve(cfg)
    assert time.monotonic() - t0 < 10
    stats = read_json(tmp_path / "run" / "knowledge" / "stats.json")["source_stats"]
    expected = {counter: list(HOSTILE.values()).count(counter) for counter in HOSTILE.values()}
    assert {c: stats[c] for c in expected} == expected
    assert stats["skipped_pages"] == len(HOSTILE) and stats["errors"] == 0
    for path in HOSTILE:
        assert f"skipped page {api.url(path)}: " in caplog.text, path
    kept = read_jsonl(tmp_path / "run" / "knowledge" / "knowledge.jsonl")
    assert any(p["doc_id"] == api.url("/pages/article-a.html") for p in kept)
