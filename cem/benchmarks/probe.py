"""The general probe: held-out corpus passages that measure forgetting outside the benchmark.

A fixed sample of the offline Wikipedia summaries that mention no country: no country's
name or other spelling, capital, demonym or article title from the countryinfo asset.
The same passages serve every run, seed and round, so ``general_nll`` (the model's mean
negative log-likelihood per token on them, ``cem.evaluation.probe``) is comparable across
all of them. The passages never reach training: the wiki sources and the default General
items leave them out (``probe_titles``), and every leak guard holds their n-grams
(``probe_texts``), which catches a copy of them in any other corpus.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

PROBE_PASSAGES = 64  # passages in the probe
PROBE_TOKENS = 128  # each is scored on its first tokens, at most this many
_SEED = "cem-general-probe-v1"  # fixed: the probe must not move with the run's seed
_ASSETS = ("countryinfo", "wiki-summaries-en")
_SUMMARIES = "summaries_en-us.json"
_MAX_TERM_WORDS = 6


@dataclass(frozen=True)
class ProbePassage:
    title: str
    text: str


def _words(text: str) -> list[str]:
    from cem.text import tokens  # normalised words, as the leak guard reads text

    return tokens(text)


def country_terms(countryinfo_dir: Path) -> set[tuple[str, ...]]:
    """Every country's name, other spellings, capital and demonym, as normalised word tuples."""
    terms: set[tuple[str, ...]] = set()
    for path in sorted(Path(countryinfo_dir).glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict):
            continue
        names = [rec.get("name"), rec.get("capital"), rec.get("demonym")]
        names += [s for s in (rec.get("altSpellings") or []) if isinstance(s, str) and len(s) > 3]
        for name in names:
            words = tuple(_words(name)) if isinstance(name, str) else ()
            if 0 < len(words) <= _MAX_TERM_WORDS:
                terms.add(words)
    return terms


def mentions(text: str, terms: set[tuple[str, ...]]) -> bool:
    """Does ``text`` contain one of ``terms`` as a run of whole words?"""
    words = _words(text)
    return any(
        tuple(words[i : i + n]) in terms
        for n in range(1, _MAX_TERM_WORDS + 1)
        for i in range(len(words) - n + 1)
    )


def select_probe(summaries: dict, terms: set[tuple[str, ...]], n: int) -> list[ProbePassage]:
    """The first ``n`` summaries, in a fixed shuffled order, whose title and text mention
    no country term."""
    titles = sorted(t for t, s in summaries.items() if isinstance(s, dict) and s.get("extract"))
    random.Random(_SEED).shuffle(titles)
    out = []
    for title in titles:
        text = summaries[title]["extract"].strip()
        if not mentions(f"{title}. {text}", terms):
            out.append(ProbePassage(title, text))
            if len(out) == n:
                break
    return out


@functools.cache
def probe_passages() -> tuple[ProbePassage, ...]:
    """The probe, from the offline assets (fetched on first use); computed once per process."""
    from cem.assets.fetch import asset_dir

    countries, wiki = (asset_dir(name) for name in _ASSETS)
    summaries = json.loads((wiki / _SUMMARIES).read_text(encoding="utf-8"))
    return tuple(select_probe(summaries, country_terms(countries), PROBE_PASSAGES))


def probe_titles() -> frozenset[str]:
    """Titles the wiki sources and the General items leave out (case-folded)."""
    return frozenset(p.title.casefold() for p in probe_passages())


def probe_texts() -> list[str]:
    return [p.text for p in probe_passages()]
