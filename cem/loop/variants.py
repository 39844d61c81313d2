"""The runs of a sweep and its rows: every ``summary.json`` under a folder, each with its
job's own Hydra overrides, grouped into *variants* by what sets them apart (``cem report``
makes its table of them; the W&B mirror names a job's ``job_type`` by the same reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cem.config import RESULT_NEUTRAL
from cem.errors import CemError
from cem.layout import SUMMARY, RunDir
from cem.records import RunSummary, read_summary

# Overrides that never tell variants apart (they do not change results, or are the seeds).
IGNORED = ("seed", "table", *RESULT_NEUTRAL)


@dataclass
class Run:
    path: Path
    summary: RunSummary
    overrides: dict[str, str] | None  # None: not a sweep job (no .hydra/overrides.yaml)


@dataclass
class Variant:
    label: str
    runs: list[Run] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)  # what sets the row apart


def find_runs(root: Path) -> list[Run]:
    """Every run below ``root`` that has a ``summary.json``, in path order (finished or not:
    ``summary.stopped`` is None while a run is still going)."""
    if not root.is_dir():
        raise CemError(f"{root} is not a folder; give the sweep folder, e.g. multirun/paradigm")
    runs = [Run(path.parent, read_summary(path), job_overrides(path.parent))
            for path in sorted(root.rglob(SUMMARY))]  # fmt: skip
    if not runs:
        raise CemError(f"no summary.json under {root}; run a sweep first (cem run table=NAME)")
    return runs


def job_overrides(folder: Path) -> dict[str, str] | None:
    """The job's own Hydra overrides, ``key -> value`` (None for a run made outside Hydra)."""
    from omegaconf import OmegaConf

    path = RunDir(folder).overrides
    if not path.is_file():
        return None
    out = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)):
        key, _, value = str(item).lstrip("+~").partition("=")
        if not key.startswith("hydra") and key not in IGNORED:
            out[key] = value
    return out


def group(runs: list[Run]) -> tuple[list[Variant], dict[str, str]]:
    """Variants by their distinguishing overrides, and the overrides all runs share.

    Runs without overrides (made one by one, not by a sweep) are told apart by their folder
    name. The protocol always splits variants, so that retest and heldout never pool.
    """
    given = [r.overrides or {} for r in runs]
    keys = sorted({k for o in given for k in o})
    shared = {k: given[0][k] for k in keys
              if all(o.get(k) == given[0].get(k) for o in given)}  # fmt: skip
    varying = [k for k in keys if k not in shared]
    protocols = {r.summary.protocol for r in runs}
    variants: dict[str, Variant] = {}
    for r, o in zip(runs, given, strict=True):
        parts = [f"{k}={o[k]}" for k in varying if k in o]
        if r.overrides is None:
            parts = [r.path.name]
        if len(protocols) > 1 and "protocol" not in varying:
            parts.append(f"protocol={r.summary.protocol}")
        label = " ".join(parts) or "all runs"
        own = {k: o[k] for k in varying if k in o}
        variants.setdefault(label, Variant(label, overrides=own)).runs.append(r)
    return list(variants.values()), shared
