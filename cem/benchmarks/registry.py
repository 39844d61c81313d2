"""Load a configured benchmark into named sets of items."""

from __future__ import annotations

import logging

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
        ood=list(b.ood),
    )


def load_files(b: DictConfig) -> dict[str, list[MCItem]]:
    from cem.benchmarks.loaders import load_path

    result = load_path(b.path, b.name, set_name=b.set_name, skip_bad_rows=b.skip_bad_rows)
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
    if b.limit is not None:
        sets = {name: items[: b.limit] for name, items in sets.items()}
    return sets


def select_sets(sets: dict[str, list[MCItem]], wanted: list[str] | None) -> dict[str, list[MCItem]]:
    """The sets to score: ``wanted`` in order, or every set but the instruction pool."""
    if wanted is None:
        return {name: items for name, items in sets.items() if name != "pool"}
    unknown = [w for w in wanted if w not in sets]
    if unknown:
        raise ConfigError(
            "eval.sets",
            unknown,
            f"must name sets of this benchmark ({', '.join(sets)})",
            f"eval.sets=[{','.join(s for s in sets if s != 'pool')}]",
        )
    return {name: sets[name] for name in wanted}
