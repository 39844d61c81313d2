"""Load a configured benchmark into named sets of items."""

from __future__ import annotations

import logging
import random
from dataclasses import replace

from omegaconf import DictConfig

from cem.benchmarks.schema import MCItem
from cem.errors import ConfigError

log = logging.getLogger(__name__)

WORLD_ASSETS = ("countryinfo", "wiki-summaries-en")


def load_world(b: DictConfig) -> dict[str, list[MCItem]]:
    from cem.assets.fetch import asset_dir
    from cem.benchmarks.world import build_world

    countries, summaries = (asset_dir(name) for name in WORLD_ASSETS)
    return build_world(
        countries,
        summaries / "summaries_en-us.json",
        seed=b.seed,
        pool_fraction=b.pool_fraction,
        exam_fraction=b.exam_fraction,
        relations=list(b.relations),
        transfer=list(b.transfer),
    )


def load_files(b: DictConfig) -> dict[str, list[MCItem]]:
    from cem.benchmarks.loaders import load_path

    result = load_path(
        b.path,
        b.name,
        set_name=b.set_name,
        skip_bad_rows=b.skip_bad_rows,
        recursive=b.split,
        # The split draws from every item, so only an unsplit benchmark stops at the limit.
        limit=None if b.split else b.limit,
        max_row_bytes=b.max_row_bytes,
    )  # the split reads dev/, val/ and test/ alike
    if result.skipped:
        first = result.skipped[0]
        log.warning(
            "skipped %d bad rows of %s (benchmark.skip_bad_rows=true); first: %s:%d: %s",
            len(result.skipped),
            b.path,
            *first,
        )
    # A jsonl/parquet row may name its own set (pool, exam, test...); the rest take set_name.
    sets: dict[str, list[MCItem]] = {}
    for item in result.items:
        sets.setdefault(item.set, []).append(item)
    return sets


def load_benchmark(b: DictConfig) -> dict[str, list[MCItem]]:
    """All sets of the benchmark, each cut to ``benchmark.limit`` items when set.

    ``world`` yields ``pool``, ``exam``, ``test`` and its out-of-domain sets; a file
    benchmark yields the sets its rows name, and ``benchmark.set_name`` (``exam`` unless
    told) for rows that name none.
    """
    sets = load_world(b) if b.name == "world" else load_files(b)
    if b.name != "world" and b.split:
        sets = split_sets(sets, b.seed, b.pool_fraction, b.exam_fraction)
    if b.limit is not None:
        sets = {name: items[: b.limit] for name, items in sets.items()}
    return sets


def split_sets(
    sets: dict[str, list[MCItem]], seed: int, pool_fraction: float, exam_fraction: float
) -> dict[str, list[MCItem]]:
    """Every loaded item, re-split into ``pool``, ``exam`` and ``test`` (``benchmark.split``).

    Per subject, the items are shuffled with a generator seeded by (seed, subject); the
    first ``pool_fraction`` go to the instruction pool, the next ``exam_fraction`` to the
    exam set E and the rest to the held-out test set T. Every subject thus appears in E
    and T alike, and the split depends on nothing but the seed and the items.
    """
    by_subject: dict[str, list[MCItem]] = {}
    for items in sets.values():
        for item in items:
            by_subject.setdefault(item.subject, []).append(item)
    out: dict[str, list[MCItem]] = {"pool": [], "exam": [], "test": []}
    for subject in sorted(by_subject):
        items = sorted(by_subject[subject], key=lambda it: it.id)
        random.Random(f"{seed}:{subject}").shuffle(items)
        n_pool = round(pool_fraction * len(items))
        n_exam = round(exam_fraction * len(items))
        for i, item in enumerate(items):
            name = "pool" if i < n_pool else "exam" if i < n_pool + n_exam else "test"
            out[name].append(replace(item, set=name))
    return out


def select_sets(sets: dict[str, list[MCItem]], wanted: list[str] | None) -> dict[str, list[MCItem]]:
    """The sets to score: ``wanted`` in order, or every set but the instruction pool."""
    scorable = [s for s in sets if s != "pool"] or list(sets)
    if wanted is None:
        chosen = {name: items for name, items in sets.items() if name != "pool"}
        if not any(chosen.values()):  # a run that would score nothing
            raise ConfigError(
                "eval.sets", None,
                f"leaves nothing to score: this benchmark's items are all in {list(sets)}, "
                "and the pool is not scored unless asked for", f"eval.sets=[{','.join(scorable)}]",
            )  # fmt: skip
        return chosen
    if not wanted:
        raise ConfigError("eval.sets", wanted, "must name at least one set (null: all but the pool)",
                          "eval.sets=null")  # fmt: skip
    unknown = [w for w in wanted if w not in sets]
    if unknown:
        raise ConfigError(
            "eval.sets",
            unknown,
            f"must name sets of this benchmark ({', '.join(sets)})",
            f"eval.sets=[{','.join(scorable)}]",
        )
    return {name: sets[name] for name in wanted}
