"""An evaluation in chunks, whose finished chunks survive a stop.

Questions are rendered, tokenised and scored ``eval.chunk_size`` at a time, so memory does
not grow with the benchmark. When there is more than one chunk, each finished chunk's
records are appended to ``eval/records.partial.jsonl`` (fsynced, under a signal-free
section); a re-run with the same fingerprint (the model's files by sha256, the benchmark,
the scoring settings) skips those chunks. ``records.jsonl`` is still written atomically,
once, at the end, and the partial file is then removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cem import signals
from cem.evaluation.parallel import ALONE, Ranks
from cem.io import ensure_dir, sha256_file, storage_errors
from cem.records import EvalRecord, FieldError
from cem.ui import console

WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf")


def model_fingerprint(mcfg: DictConfig, seed: int) -> str:
    """The model being scored: its weight files' sha256 (a local folder or an asset), or its
    settings and seed (random weights; a hub id, pinned by its revision)."""
    from cem.models import _resolve_path

    folder = None
    if mcfg.asset:
        from cem.assets.fetch import asset_dir

        folder = asset_dir(mcfg.asset, fetch=False)
    elif mcfg.path and Path(_resolve_path(mcfg.path)).is_dir():
        folder = Path(_resolve_path(mcfg.path))
    if folder is None:
        return _digest({"model": OmegaConf.to_container(mcfg, resolve=True), "seed": seed})
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHTS or p.name == "config.json")
    from cem import device

    dtype = device.resolve_dtype("model.dtype", mcfg.dtype, device.resolve_device(mcfg.device))
    return _digest({p.name: sha256_file(p) for p in files} | {"dtype": dtype})


def fingerprint(cfg: DictConfig, n_items: int) -> str:
    """What the records depend on: the model, the benchmark, the scoring settings."""
    keep = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("benchmark", "eval")}
    for volatile in ("progress", "devices"):  # changes no score
        keep["eval"].pop(volatile, None)
    model = model_fingerprint(cfg.model, cfg.seed)
    return _digest({**keep, "model": model, "max_length": cfg.model.max_length, "n": n_items})


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _json(line: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError:
        return {}
    return row if isinstance(row, dict) else {}


def chunks(items: list, size: int) -> Iterator[tuple[int, list]]:
    """``(index of the first item, items)`` of each chunk of ``size``."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


class PartialRecords:
    """``eval/records.partial.jsonl``: a fingerprint line, then each finished chunk's
    records followed by a ``{"chunk_end": n}`` line (records after the last one are a chunk
    that did not finish, and are dropped)."""

    def __init__(self, path: Path, fp: str):
        self.path, self.fp = path, fp

    def load(self, ids: list[str]) -> list[EvalRecord]:
        """The records of the finished chunks, when they are this evaluation's; else none."""
        if not self.path.is_file():
            return []
        kept: list[EvalRecord] = []
        pending: list[EvalRecord] = []
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            ok = _json(fh.readline()).get("fingerprint") == self.fp
            for line in fh if ok else ():
                row = _json(line)
                if not row:  # a torn last line: its chunk is scored again
                    break
                if "chunk_end" in row:
                    kept, pending = kept + pending, []
                    continue
                try:
                    pending.append(EvalRecord.from_json(row))
                except FieldError:  # not a record (another version wrote it): not resumed
                    ok = False
                    break
        ok = ok and [r.id for r in kept] == ids[: len(kept)]
        if not ok:
            console.print(f"[dim]{self.path.name} belongs to another evaluation: not resumed[/]")
            return []
        console.print(f"resuming the evaluation: {len(kept)} of {len(ids)} questions scored")
        return kept

    def append(self, records: list[EvalRecord], first: bool) -> None:
        """Add one finished chunk (the fingerprint line first when ``first``)."""
        mode = "w" if first else "a"
        ensure_dir(self.path.parent)
        with (
            signals.deferred(),
            storage_errors(self.path),
            open(self.path, mode, encoding="utf-8") as fh,
        ):
            if first:
                fh.write(json.dumps({"fingerprint": self.fp}) + "\n")
            for rec in records:
                fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
            fh.write(json.dumps({"chunk_end": len(records)}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def score_in_chunks(
    items: list,
    size: int,
    partial: PartialRecords | None,
    score: Callable[[list], list[EvalRecord]],
    group: Ranks = ALONE,
) -> list[EvalRecord]:
    """``score(chunk)`` over ``items`` chunk by chunk, resuming from ``partial``'s records.

    In a data-parallel evaluation only rank 0 holds ``partial``; every rank skips the
    chunks it had finished.
    """
    done = partial.load([it.id for it in items]) if partial else []
    records = list(done)
    skip = group.broadcast(len(done))
    for start, chunk in chunks(items, size):
        if start < skip:
            continue
        new = score(chunk)
        records += new
        if partial is not None:
            partial.append(new, first=not done and start == 0)
    return records
