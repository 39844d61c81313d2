"""``cem inspect``: one row per exam mistake with its evidence and later answers, agreeing
with the run's files; a page that loads nothing; its filters in a real headless Chromium;
and a folder that is not a run refused with what was expected."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _chromium import WHY_ABSENT, Chromium, chromium_path
from test_loop import FAST

from cem.cli import main
from cem.errors import CemError
from cem.io import read_json, read_jsonl
from cem.loop.inspector import check_run_dir, exam_records, mark, round_rows, write_page
from cem.loop.run import run_loop

# Every world item (no benchmark.limit): mistakes of both relations, hits and misses, fixed
# and not, in the time of the default fast run.
ALL_ITEMS = (*FAST, "benchmark.limit=null")


@pytest.fixture(scope="module")
def run(tmp_path_factory, compose) -> Path:
    root = tmp_path_factory.mktemp("inspect") / "run"
    run_loop(compose("run", f"run_dir={root}", *ALL_ITEMS))
    return root


@pytest.fixture(scope="module")
def page(run) -> Path:
    return write_page(run)


def flags(root: Path, k: int) -> list[dict]:
    return read_json(root / f"round_{k}" / "diagnostics.json")["per_mistake"]


class Articles(HTMLParser):
    """The ``data-*`` of every mistake row, and every attribute that could fetch something."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article":
            self.rows.append({k[5:]: v for k, v in a.items() if k.startswith("data-")})
        self.links += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action") and v]


def test_mark_finds_every_whole_word_answer_in_any_case():
    assert mark("Oslo is not in Oslofjord; OSLO is.", "Oslo") == [
        ("Oslo", True), (" is not in Oslofjord; ", False), ("OSLO", True), (" is.", False)]  # fmt: skip
    assert mark("no answer here", "Oslo") == [("no answer here", False)]


@pytest.mark.e2e
def test_one_row_per_exam_mistake_with_its_evidence(run):
    evals = exam_records(run)
    for k in (1, 2):
        rows = round_rows(run, k, evals)
        mistakes = read_jsonl(run / f"round_{k}" / "mistakes" / "mistakes.jsonl")
        assert [r.id for r in rows] == [m["id"] for m in mistakes]
        assert [(r.hit, r.trained, r.status == "fixed") for r in rows] == [
            (f["hit"], f["trained"], f["fixed"]) for f in flags(run, k)]  # fmt: skip
        passages = read_jsonl(run / f"round_{k}" / "knowledge" / "knowledge.jsonl")
        table = pq.read_table(run / f"round_{k}" / "train_set" / "train.parquet").to_pylist()
        for r, m in zip(rows, mistakes, strict=True):
            assert (r.question, r.gold, r.answer) == (m["question"], m["gold_text"], m["pred_text"])
            assert (r.keywords, r.queries, r.relation) == (
                m["keywords"],
                m["queries"],
                m["subject"],
            )
            kept = [p["text"] for p in passages if r.id in p["mistake_ids"]]
            assert ["".join(t for t, _ in p.segments) for p in r.passages] == kept
            assert r.hit == any(p.holds_answer for p in r.passages)
            marked = {t.lower() for p in r.passages for t, is_answer in p.segments if is_answer}
            assert marked <= {r.gold.lower()}
            made = [x["prompt"] + x["response"] for x in table
                    if r.id in x["source_ids"] and x["kind"] != "replay"]  # fmt: skip
            assert ["".join(t for t, _ in it.segments) for it in r.items] == made
            # The answer under each later model; the first decides fixed or not.
            assert [a.model for a in r.later] == [f"round {j}" for j in range(k, 3)]
            assert r.later[0].correct == (r.status == "fixed")
            assert r.later[-1].correct == evals[3][r.id].correct
    statuses = {(r.status, r.hit, r.relation) for k in (1, 2) for r in round_rows(run, k, evals)}
    assert {s for s, _, _ in statuses} == {"fixed", "unfixed"}  # the data the filters need
    assert {h for _, h, _ in statuses} == {True, False}
    assert {rel for _, _, rel in statuses} == {"capital", "region"}


@pytest.mark.e2e
def test_a_round_not_scored_yet_is_pending(run, tmp_path):
    """Killed before the last model was scored: round 2's mistakes have no later answer,
    and their hit is read off the passages by the rule the diagnostics use."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("model", "model_in", "round_3"))
    (copy / "round_2" / "diagnostics.json").unlink()
    rows = round_rows(copy, 2, exam_records(copy))
    assert {r.status for r in rows} == {"pending"} and all(r.later == [] for r in rows)
    assert [r.hit for r in rows] == [f["hit"] for f in flags(run, 2)]
    assert all(r.trained is None for r in rows)
    html = write_page(copy).read_text()
    assert html.count('data-status="pending"') == len(rows)


@pytest.mark.e2e
def test_the_page_loads_nothing_and_lists_every_mistake(run, page):
    html = page.read_text()
    parsed = Articles()
    parsed.feed(html)
    expected = [{"status": "fixed" if f["fixed"] else "unfixed",
                 "hit": "hit" if f["hit"] else "nohit", "relation": f["relation"], "round": str(k)}
                for k in (1, 2) for f in flags(run, k)]  # fmt: skip
    assert parsed.rows == expected
    assert all(link.startswith("#") for link in parsed.links)  # the SVG's own references
    assert not re.search(r"url\((?!#)|@import", html)  # the SVG's clip paths: url(#id)
    assert set(re.findall(r'([\w:]+)="https?://', html)) == {"xmlns", "xmlns:xlink"}  # SVG's
    assert "<svg" in html and "default-src 'none'" in html


SHOWN = "Array.from(document.querySelectorAll('.mistake')).filter(e => e.offsetParent).length"


def choose(browser: Chromium, name: str, value: str) -> int:
    """Pick ``value`` in the page's ``name`` filter as a user would (a change event); the
    rows the browser lays out then, which the page's own count must match."""
    browser.run(f"{{ const s = document.forms.filters.elements.{name}; s.value = {value!r};"
                " s.dispatchEvent(new Event('change', {bubbles: true})); }")  # fmt: skip
    shown = browser.run(SHOWN)
    assert browser.run("Number(document.getElementById('shown').textContent)") == shown
    return shown


@pytest.mark.e2e
def test_filters_work_in_headless_chromium(run, page, tmp_path):
    if chromium_path() is None:
        pytest.skip(WHY_ABSENT)
    pytest.importorskip("websockets", reason="the dev extra's websockets drives the browser")
    rows = [f | {"round": k} for k in (1, 2) for f in flags(run, k)]
    url = page.resolve().as_uri()
    with Chromium(tmp_path / "profile") as browser:
        browser.open(url)
        assert browser.run(SHOWN) == len(rows)
        assert choose(browser, "status", "fixed") == sum(r["fixed"] for r in rows)
        assert choose(browser, "hit", "nohit") == sum(r["fixed"] and not r["hit"] for r in rows)
        assert browser.run("location.hash") == "#status=fixed&hit=nohit&relation=all&round=all"
        choose(browser, "status", "all")
        assert choose(browser, "relation", "region") == sum(
            not r["hit"] and r["relation"] == "region" for r in rows)  # fmt: skip
        browser.open("about:blank")  # then a fresh load of a view kept in the address
        browser.open(f"{url}#status=unfixed&relation=capital&round=2")
        assert browser.run(SHOWN) == sum(not r["fixed"] and r["relation"] == "capital"
                                         and r["round"] == 2 for r in rows)  # fmt: skip
        first = "document.querySelector('.mistake:not([hidden]) details')"
        browser.run(f"{first}.open = true")  # the first row's passages, for the screenshot
        shot = browser.screenshot(tmp_path / "inspect.png")
        assert {u.split("#")[0] for u in browser.requests()} - {"about:blank"} == {url}
        assert browser.errors() == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_folder_that_is_not_a_run_says_what_it_expected(tmp_path, capsys):
    with pytest.raises(CemError, match=r"is not a `cem run` folder: expected config\.yaml, "
                       r"summary\.json, round_0/eval/records\.jsonl"):  # fmt: skip
        check_run_dir(tmp_path)
    sweep = tmp_path / "sweep" / "paradigm=parallel,seed=0"
    sweep.mkdir(parents=True)
    (sweep / "summary.json").write_text("{}")
    with pytest.raises(
        CemError, match=r"holds 1 run folder\(s\): inspect one, e\.g\. cem inspect "
    ):
        check_run_dir(tmp_path / "sweep")
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "expected config.yaml" in err
