"""Round-0 work shared across jobs: the untouched model's evaluation and the schema warm-up.

Every job of a table at one seed starts the same way: it scores the untouched model,
builds and trains the warm-up, and scores the warmed-up model. Those four stages depend
only on their job configs (the model, the benchmark items and split, the formulation,
the dtype, the warm-up settings, the seed), so ``cem run`` computes them once and reuses
them in every job whose key matches (``loop.share_round0``, on by default).

A stage's key is the sha256 of its job config (run folder left out), the keys of the
stages it reads (the warm-up's model for the last evaluation), the project's source code
and the library versions and thread count that can change the numbers. An entry under
``$CEM_CACHE/shared/<key>/`` (or ``$CEM_SHARE_CACHE/<key>/``) holds the stage's output files, hard-linked (copied across
file systems), its done-marker and a manifest of every file's sha256; it is published by
one rename, so a reader never sees half of it. A file lock per key makes concurrent jobs
wait for the first one instead of computing the stage twice. An entry whose files do not
match the manifest is dropped with a warning and computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cem.config import RESULT_NEUTRAL
from cem.errors import DataError
from cem.io import read_json, sha256_file, storage_errors, write_json
from cem.layout import (
    HYDRA,
    LOCKS,
    REPORTS,
    RESULTS,
    RUN_CONFIG,
    WANDB,
    RoundDir,
    RunDir,
    read_marker,
)
from cem.loop import stages
from cem.provenance import code_fingerprint
from cem.records import read_summary
from cem.ui import console, warn

MANIFEST = "manifest.json"


def cache_dir() -> Path:
    """``$CEM_SHARE_CACHE``, else ``$CEM_CACHE/shared``."""
    from cem.assets.fetch import cache_root

    env = os.environ.get("CEM_SHARE_CACHE")
    return Path(env).expanduser() if env else cache_root() / "shared"


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    """``cfg`` resolved to plain containers, with the dotted ``keys`` left out."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        node = plain
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return plain


def stage_key(stage: str, job: DictConfig, upstream: list[str]) -> str:
    """The key of ``stage`` run with ``job`` after the stages keyed ``upstream``.

    The job leaves out the same result-neutral keys as a run's key (``RESULT_NEUTRAL``); a
    stage's job (``EvalJob``, ``BuildJob``, ``TrainJob``) has no ``loop`` or ``logger`` node,
    so only ``run_dir``, ``eval.progress``, ``eval.devices`` and
    ``trainer.enable_progress_bar`` can be there to leave out.
    """
    plain = _without(job, RESULT_NEUTRAL)
    text = json.dumps({"stage": stage, "job": plain, "upstream": upstream,
                       "code": code_fingerprint()}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (a copy across file systems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with storage_errors(dst):  # a full disk names the copy, not its source
            shutil.copy2(src, dst)


def _files(folder: Path, outputs: list[Path]) -> list[Path]:
    found = []
    for path in outputs:
        found += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return found


def publish(folder: Path, stage: str, outputs: list[Path], key: str) -> None:
    """Copy the finished stage's outputs and marker into the cache under ``key``."""
    entry = cache_dir() / key
    if entry.is_dir():
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=entry.parent))
    try:
        files = {}
        for path in _files(folder, outputs):
            rel = path.relative_to(folder).as_posix()
            _place(path, tmp / rel)
            files[rel] = sha256_file(tmp / rel)
        manifest = {"stage": stage, "key": key, "files": files,
                    "marker": read_marker(folder, stage)}  # fmt: skip
        write_json(tmp / MANIFEST, manifest)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _valid(entry: Path) -> dict | None:
    """The entry's manifest when every file matches it; a bad entry is removed."""
    from cem.loop.verify import check_files

    try:
        manifest = read_json(entry / MANIFEST)
        problems = check_files(entry, manifest["files"], MANIFEST)
    except (OSError, ValueError, KeyError) as e:
        problems = [f"{entry / MANIFEST} does not read ({e})"]
    if not problems:
        return manifest
    console.print(f"[yellow]shared round-0 entry {entry} is corrupt: {problems[0]}; computing the"
                  " stage again[/]")  # fmt: skip
    shutil.rmtree(entry, ignore_errors=True)
    return None


def materialize(entry: Path, manifest: dict, folder: Path, stage: str) -> dict:
    """Place the entry's files in ``folder`` and write the stage's marker, marked as shared."""
    for rel in manifest["files"]:
        dst = folder / rel
        if dst.exists():
            dst.unlink()
        _place(entry / rel, dst)
    info = {**manifest["marker"], "shared_from": manifest["key"]}
    write_json(RoundDir(folder).marker(stage), info)
    return info


def run_shared(enabled: bool, folder: Path, stage: str, outputs: list[Path], key: str,
               task: Callable[[], dict | None]) -> dict:  # fmt: skip
    """``stages.run_stage``, reusing (or publishing) the stage's result under ``key``."""
    done = read_marker(folder, stage)
    if done is not None or not enabled:
        return stages.run_stage(folder, stage, task)
    from filelock import FileLock

    entry = cache_dir() / key
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        manifest = _valid(entry) if entry.is_dir() else None
        if manifest is not None:
            console.print(f"[dim]{folder.name}/{stage}: shared from {entry}[/]")
            return materialize(entry, manifest, folder, stage)
        info = stages.run_stage(folder, stage, task)
        publish(folder, stage, outputs, key)
        return info


# --- whole runs ------------------------------------------------------------------------------

# What a reused run does not take from the finished one: its own Hydra files, W&B, logs,
# locks and the results the loop rewrites at its end.
NOT_REUSED = (HYDRA, WANDB, RUN_CONFIG, *RESULTS, *REPORTS, *LOCKS)


def run_key(cfg: DictConfig) -> str:
    """A run's key: its resolved config without the result-neutral keys, and the code."""
    plain = _without(cfg, RESULT_NEUTRAL)
    text = json.dumps({"run": plain, "code": code_fingerprint()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _registry(key: str) -> Path:
    return cache_dir() / "runs" / f"{key}.json"


def register_run(root: Path, cfg: DictConfig) -> None:
    """Record a finished run under its key, for ``reuse_run``."""
    write_json(_registry(run_key(cfg)), {"path": str(root.resolve())})


def _finished(summary: Path) -> bool:
    """Has the run of this summary.json stopped? A summary that does not read is not reused."""
    try:
        return read_summary(summary).stopped is not None
    except DataError as e:
        warn(f"not reusing {summary.parent}: {e}")
        return False


def reuse_run(root: Path, cfg: DictConfig) -> Path | None:
    """Hard-link a finished run with the same key into the empty run folder ``root``; the
    finished run's folder, or None when there is none (or ``root`` has begun a run)."""
    entry = _registry(run_key(cfg))
    if read_marker(RunDir(root).round(0), "eval") is not None or not entry.is_file():
        return None
    src = Path(read_json(entry)["path"])
    summary = RunDir(src).summary
    if src == root.resolve() or not summary.is_file() or not _finished(summary):
        return None
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in NOT_REUSED or path.suffix in (".lock", ".log") or not path.is_file():
            continue
        dst = root / rel
        if not dst.exists():
            _place(path, dst)
    console.print(f"[bold]cem run[/] the same run has finished in {src}: its stages are reused")
    return src
