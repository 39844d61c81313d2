"""The embedded ``world`` benchmark: multiple-choice facts about countries.

Facts come from the countryinfo JSON files, limited to countries that have an article in
the offline Wikipedia summaries (the knowledge source retrieval draws from). Countries,
not items, are split into the instruction pool, the exam set E and the held-out test set
T, so no country's facts cross sets. The transfer sets ask other kinds of question about
the exam countries (what the exam's knowledge should carry over to); they are not
out-of-domain, so forgetting outside the benchmark is measured by the general probe
(``cem.benchmarks.probe``). Everything is seeded: the same inputs and seed give the same
items.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cem.benchmarks.schema import MCItem
from cem.benchmarks.world_tables import (
    ARTICLE_NAMES,
    ARTICLE_WORDS,
    CAPITALS,
    CURRENCIES,
    DEFUNCT,
    DISPLAY_NAMES,
    LANGUAGES,
    SOUTH_AMERICA,
    SPLIT_SUBREGIONS,
    SUBREGION_NAMES,
    TEMPLATES,
    WIKI_TITLES,
)
from cem.errors import ConfigError, DataError

RELATIONS = ("capital", "region", "subregion", "language", "currency", "demonym")
TRANSFER_SETS = ("reverse", "borders")
SOURCE = "countryinfo"
N_DISTRACTORS = 3


@dataclass(frozen=True)
class Country:
    """One country as the benchmark uses it.

    Attributes:
        code: ISO alpha-3 code (borders refer to countries by it).
        name: display name, without an article.
        wiki_title: title of its article in the Wikipedia summaries.
        facts: relation -> the answer text, for the relations it has a value for.
        also_right: relation -> casefolded texts that must not be distractors (every
            listed language or currency, not only the first).
        region: raw countryinfo region (groups distractors for the transfer sets).
        borders: alpha-3 codes of its land neighbours.
    """

    code: str
    name: str
    wiki_title: str
    facts: dict[str, str]
    also_right: dict[str, frozenset[str]] = field(default_factory=dict)
    region: str = ""
    borders: frozenset[str] = frozenset()


def ref(name: str) -> str:
    """The country's name as it reads mid-sentence ("the Netherlands", "the Gambia")."""
    if name.startswith("The "):
        return "the " + name[4:]
    if name in ARTICLE_NAMES or any(w in name for w in ARTICLE_WORDS):
        return "the " + name
    return name


def slug(text: str) -> str:
    """ASCII, lower case, hyphenated: ``Côte d'Ivoire`` -> ``cote-d-ivoire``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def check_world_config(
    pool_fraction: float, exam_fraction: float, relations: list[str], transfer: list[str]
) -> None:
    """Raise ConfigError for a bad split or an unknown relation or transfer set name."""
    for key, value in (("pool_fraction", pool_fraction), ("exam_fraction", exam_fraction)):
        if not 0 < value < 1:
            raise ConfigError(
                f"benchmark.{key}", value, "must be in (0, 1)", f"benchmark.{key}=0.2"
            )
    if pool_fraction + exam_fraction >= 1:
        raise ConfigError(
            "benchmark.exam_fraction",
            exam_fraction,
            f"plus benchmark.pool_fraction ({pool_fraction}) must be < 1 so the test set is not empty",
            "benchmark.pool_fraction=0.2 benchmark.exam_fraction=0.4",
        )
    for key, names, allowed in (
        ("relations", relations, RELATIONS),
        ("transfer", transfer, TRANSFER_SETS),
    ):
        unknown = [n for n in names if n not in allowed]
        if unknown or len(set(names)) != len(names):
            raise ConfigError(
                f"benchmark.{key}",
                list(names),
                f"must name distinct values among {list(allowed)}",
                f"benchmark.{key}=[{','.join(allowed)}]",
            )
    if not relations:
        raise ConfigError(
            "benchmark.relations", [], "must not be empty", "benchmark.relations=[capital]"
        )


def load_summaries(summaries_path: Path) -> dict[str, dict[str, Any]]:
    """The Wikipedia summaries file: title -> {title, extract, description, topic}."""
    path = Path(summaries_path)
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(path, None, "Wikipedia summaries file is missing or empty")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"not valid JSON: {e.msg}") from e
    if not isinstance(data, dict) or not data:
        raise DataError(path, None, "expected a JSON object mapping titles to summaries")
    return data


def _load_records(countryinfo_dir: Path) -> list[dict[str, Any]]:
    """Every countryinfo record, in file-name order."""
    folder = Path(countryinfo_dir)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise DataError(folder, None, "countryinfo folder is missing or holds no *.json files")
    records = []
    for path in files:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"not valid JSON: {e.msg}") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
            raise DataError(path, None, "expected a JSON object with a string 'name'")
        records.append(rec)
    return records


def _match_title(rec: dict[str, Any], titles: dict[str, str]) -> str | None:
    """The summary title for a record: an override, then "<name> (country)", the name and
    its spellings. Two- and three-letter spellings are ISO codes ("ANT" would hit "Ant")."""
    name = rec["name"]
    spellings = [s for s in (rec.get("altSpellings") or []) + (rec.get("alt") or []) if len(s) > 3]
    for cand in [WIKI_TITLES.get(name, ""), f"{name} (country)", name, *spellings]:
        if cand and cand.casefold() in titles:
            return titles[cand.casefold()]
    return None


def _first(value: Any) -> str:
    """The first non-empty string of a string or list field, or ""."""
    items = value if isinstance(value, list) else [value]
    return next((v.strip() for v in items if isinstance(v, str) and v.strip()), "")


def _coded(rec: dict[str, Any], key: str, table: dict[str, str]) -> tuple[str, frozenset[str]]:
    """The name of the first listed code, and the names of all listed codes."""
    codes = [c for c in (rec.get(key) or []) if isinstance(c, str)]
    names = frozenset(table[c].casefold() for c in codes if c in table)
    return (table.get(codes[0], "") if codes else ""), names


def _geography(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(countryinfo region, continent, subregion as English text names it)."""
    region = _first(rec.get("region"))
    sub = _first(rec.get("subregion"))
    inter = _first(rec.get("intermediateregion"))
    if sub in SPLIT_SUBREGIONS and inter:
        sub = inter
    continent = region
    if region == "Americas":
        continent = SOUTH_AMERICA if inter == SOUTH_AMERICA else "North America"
    return region, continent, SUBREGION_NAMES.get(sub, sub)


def _country(rec: dict[str, Any], wiki_title: str) -> Country:
    """Build a Country from its record; relations without a usable value are left out."""
    code = (rec.get("ISO") or {}).get("alpha3") or rec["name"]
    region, continent, subregion = _geography(rec)
    language, languages = _coded(rec, "languages", LANGUAGES)
    currency, currencies = _coded(rec, "currencies", CURRENCIES)
    facts = {
        "capital": CAPITALS.get(code, _first(rec.get("capital"))),
        "region": continent,
        "subregion": subregion,
        "language": language,
        "currency": currency,
        # "Antiguan,Barbudan" -> "Antiguan and Barbudan"
        "demonym": re.sub(r"\s*[,/]\s*", " and ", _first(rec.get("demonym"))),
    }
    return Country(
        code=code,
        name=DISPLAY_NAMES.get(rec["name"], rec["name"]),
        wiki_title=wiki_title,
        facts={k: v for k, v in facts.items() if v},
        also_right={"language": languages, "currency": currencies},
        region=region,
        borders=frozenset(b for b in (rec.get("borders") or []) if isinstance(b, str)),
    )


def load_countries(countryinfo_dir: Path, summaries: dict[str, dict[str, Any]]) -> list[Country]:
    """Countries that have a Wikipedia summary and at least one fact, sorted by code.

    countryinfo holds duplicate records (two for Palestine, two for the Vatican); of those
    with the same ISO code or matching the same article, the one with the most facts wins.
    """
    titles = {t.casefold(): t for t in summaries}
    found = []
    for rec in _load_records(countryinfo_dir):
        title = _match_title(rec, titles)
        if title is not None and (rec.get("ISO") or {}).get("alpha3") not in DEFUNCT:
            found.append(_country(rec, title))
    found = [c for c in found if c.facts]
    found = _most_facts(_most_facts(found, lambda c: c.code), lambda c: c.wiki_title)
    return sorted(found, key=lambda c: c.code)


def _most_facts(countries: list[Country], key: Callable[[Country], str]) -> list[Country]:
    """One country per key: the first with the most facts."""
    best: dict[str, Country] = {}
    for c in countries:
        prev = best.get(key(c))
        if prev is None or len(c.facts) > len(prev.facts):
            best[key(c)] = c
    return list(best.values())


def split_countries(
    countries: list[Country], seed: int, pool_fraction: float, exam_fraction: float
) -> dict[str, list[Country]]:
    """Seeded split of countries into ``pool``, ``exam`` and ``test`` (the rest)."""
    order = sorted(countries, key=lambda c: c.code)
    random.Random(f"world-split-{seed}").shuffle(order)
    n_pool = round(len(order) * pool_fraction)
    n_exam = round(len(order) * exam_fraction)
    return {
        "pool": order[:n_pool],
        "exam": order[n_pool : n_pool + n_exam],
        "test": order[n_pool + n_exam :],
    }


def _options(
    rng: random.Random, answer: str, candidates: list[str], exclude: frozenset[str]
) -> tuple[list[str], int] | None:
    """Three distractors drawn from ``candidates`` and the answer at a random position;
    None when there are too few candidates."""
    banned = exclude | {answer.casefold()}
    pool = sorted({c for c in candidates if c.casefold() not in banned})
    if len(pool) < N_DISTRACTORS:
        return None
    choices = rng.sample(pool, N_DISTRACTORS)
    pos = rng.randrange(N_DISTRACTORS + 1)
    choices.insert(pos, answer)
    return choices, pos


def _item(
    c: Country, subject: str, set_name: str, texts: tuple[str, str], answer: str,
    candidates: list[str], exclude: frozenset[str], seed: int,
) -> MCItem | None:  # fmt: skip
    """The item ``world-<subject>-<country>``, its options seeded by the seed and its id;
    None when there are too few distractors. ``texts`` is (question, stem)."""
    item_id = f"world-{subject}-{slug(c.name)}"
    options = _options(random.Random(f"{seed}:{item_id}"), answer, candidates, exclude)
    if options is None:
        return None
    return MCItem(
        id=item_id,
        question=texts[0],
        choices=options[0],
        answer=options[1],
        subject=subject,
        set=set_name,
        source=SOURCE,
        stem=texts[1],
        meta={"country": c.name, "relation": subject, "wiki_title": c.wiki_title},
    )


def relation_items(
    countries: list[Country], relation: str, vocab: list[str], seed: int, set_name: str
) -> list[MCItem]:
    """One item per country that has a value for ``relation``; distractors from ``vocab``."""
    items = []
    for c in countries:
        if relation not in c.facts:
            continue
        r = ref(c.name)
        fmt = {"c": r, "C": r[:1].upper() + r[1:]}
        texts = tuple(t.format(**fmt) for t in TEMPLATES[relation])
        exclude = c.also_right.get(relation, frozenset())
        items.append(_item(c, relation, set_name, texts, c.facts[relation], vocab, exclude, seed))
    return [it for it in items if it]


def _same_region_first(c: Country, others: list[Country], banned: set[str]) -> list[str]:
    """Names of candidate distractor countries: same region when there are enough."""
    pool = [o for o in others if o.code not in banned and o.code != c.code]
    near = [o for o in pool if o.region == c.region]
    return [ref(o.name) for o in (near if len(near) >= N_DISTRACTORS else pool)]


def reverse_items(exam: list[Country], everyone: list[Country], seed: int) -> list[MCItem]:
    """ "Thimphu is the capital of which country?" over exam countries with a unique capital.

    Capitals that contain the country's name (Kuwait City, Singapore) are skipped: the
    question would give its answer away.
    """
    counts = Counter(o.facts.get("capital", "").casefold() for o in everyone)
    items = []
    for c in exam:
        cap = c.facts.get("capital", "")
        if cap and counts[cap.casefold()] == 1 and c.name.casefold() not in cap.casefold():
            texts = (f"{cap} is the capital of which country?", f"{cap} is the capital of")
            others = _same_region_first(c, everyone, set())
            items.append(
                _item(
                    c, "reverse", "transfer_reverse", texts, ref(c.name), others, frozenset(), seed
                )
            )
    return [it for it in items if it]


def borders_items(exam: list[Country], everyone: list[Country], seed: int) -> list[MCItem]:
    """ "Which of these countries shares a land border with X?" over exam countries with a
    neighbour; distractors are non-neighbours, from the same region where possible."""
    by_code = {o.code: o for o in everyone}
    items = []
    for c in exam:
        # countryinfo lists most borders on both sides; the union guards against the rest.
        near = {b for b in c.borders if b in by_code} | {
            o.code for o in everyone if c.code in o.borders
        }
        if not near:
            continue
        pick = random.Random(f"{seed}:world-borders-{c.code}").choice(sorted(near))
        r = ref(c.name)
        texts = (
            f"Which of these countries shares a land border with {r}?",
            f"A country that shares a land border with {r} is",
        )
        others = _same_region_first(c, everyone, near)
        items.append(
            _item(
                c,
                "borders",
                "transfer_borders",
                texts,
                ref(by_code[pick].name),
                others,
                frozenset(),
                seed,
            )
        )
    return [it for it in items if it]


def build_world(
    countryinfo_dir: Path,
    summaries_path: Path,
    *,
    seed: int,
    pool_fraction: float,
    exam_fraction: float,
    relations: list[str],
    transfer: list[str],
) -> dict[str, list[MCItem]]:
    """Build the ``world`` benchmark from plain paths.

    Args:
        countryinfo_dir: folder of countryinfo ``*.json`` files.
        summaries_path: the Wikipedia summaries JSON (title -> {title, extract, ...}).
        seed: seeds the country split and every item's options.
        pool_fraction: share of countries for the instruction pool.
        exam_fraction: share for the exam set E; the test set T gets the rest.
        relations: in-domain relations, a subset of ``RELATIONS``.
        transfer: transfer sets, a subset of ``TRANSFER_SETS``; each becomes
            ``transfer_<name>``.

    Returns:
        ``pool``, ``exam``, ``test`` and one ``transfer_<name>`` per transfer set, in order.
    """
    check_world_config(pool_fraction, exam_fraction, relations, transfer)
    countries = load_countries(countryinfo_dir, load_summaries(summaries_path))
    splits = split_countries(countries, seed, pool_fraction, exam_fraction)
    # Distractors come from every country's values, so all sets share one vocabulary.
    vocab = {r: sorted({c.facts[r] for c in countries if r in c.facts}) for r in relations}
    sets = {
        name: [it for r in relations for it in relation_items(members, r, vocab[r], seed, name)]
        for name, members in splits.items()
    }
    builders = {"reverse": reverse_items, "borders": borders_items}
    for name in transfer:
        sets[f"transfer_{name}"] = builders[name](splits["exam"], countries, seed)
    return sets


def mention_rates(
    countries: list[Country], summaries: dict[str, dict[str, Any]]
) -> dict[str, tuple[int, int]]:
    """Per relation: (countries whose summary contains the answer, countries with an
    answer); a case-insensitive substring test on the summary's extract."""
    rates = {}
    for r in RELATIONS:
        have = [c for c in countries if r in c.facts]
        text = {c.code: summaries[c.wiki_title].get("extract", "").casefold() for c in have}
        hits = sum(c.facts[r].casefold() in text[c.code] for c in have)
        rates[r] = (hits, len(have))
    return rates
