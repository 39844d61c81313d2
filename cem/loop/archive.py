"""``cem archive SWEEP DEST``: a sweep's evidence without its models, small enough to commit.

A sweep folder holds a merged model per round and checkpoints: gigabytes that no report
reads. ``cem archive`` copies, for every finished run under ``SWEEP``, only files that
``cem report`` and ``cem inspect`` read (``cem.layout.evidence``), at the same relative
paths: the summary, the configs and overrides, every round's small stats and diagnostics,
and the per-item files (eval records, mistakes, kept passages, training rows) of the
round folders the report compares (round 0, the reference and the final evaluation);
``--full`` keeps the per-item files of every round, which ``cem inspect`` shows.
``cem report DEST`` then writes the same table as ``cem report SWEEP``, on any machine,
and a table run over several sittings on machines that do not keep their disks can be
archived after each into one folder and reported from there.

Each file is written atomically and only when it changed, so archiving a growing sweep
again adds its new runs. ``DEST/archive.json`` lists every run with the sha256 of every
file, and ``cem archive --check DEST`` holds the files to it.
"""

from __future__ import annotations

import argparse
import shutil
from datetime import UTC, datetime
from pathlib import Path

from cem.errors import CemError
from cem.io import atomic_open, read_json, sha256_file, write_json
from cem.layout import RoundDir, RunDir, evidence
from cem.loop.variants import find_runs
from cem.loop.verify import check_files
from cem.records import RunSummary

MANIFEST = "archive.json"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _copy(src: Path, dst: Path, digest: str) -> bool:
    """Copy ``src`` (whose sha256 is ``digest``) over ``dst`` atomically unless ``dst`` is
    already the same; True if copied."""
    same_size = dst.is_file() and dst.stat().st_size == src.stat().st_size
    if same_size and sha256_file(dst) == digest:
        return False
    with src.open("rb") as fin, atomic_open(dst, "wb", needed=src.stat().st_size) as fout:
        shutil.copyfileobj(fin, fout)
    return True


def compared(run: RunDir, summary: RunSummary) -> list[RoundDir]:
    """The round folders whose per-item files ``cem report`` reads: round 0, and those of the
    reference and the final evaluation (``eval_dir`` is relative to the run)."""
    return [run.scored(e.eval_dir)
            for e in (summary.rounds[0], summary.reference_entry, summary.final)]  # fmt: skip


def archive(sweep: Path, dest: Path, *, full: bool = False) -> dict:
    """Copy the evidence of every finished run under ``sweep`` into ``dest`` (``full``: the
    per-item files of every round folder, else of those ``compared`` reads).

    Returns:
        The manifest written to ``dest/archive.json``: the runs, and per run its files'
        sha256; ``skipped`` names the runs not finished yet.
    """
    sweep, dest = Path(sweep).resolve(), Path(dest).resolve()
    if _inside(dest, sweep) or _inside(sweep, dest):
        raise CemError(f"the archive {dest} and the sweep {sweep} must not hold one another "
                       "(cem report would count their runs twice); give a folder outside it, "
                       f"e.g. experiments/runs/{sweep.name}")  # fmt: skip
    runs = find_runs(sweep)
    manifest_path = dest / MANIFEST
    old = read_json(manifest_path) if manifest_path.is_file() else {}
    entries = dict(old.get("runs", {}))
    copied, skipped = 0, []
    for run in runs:
        rel = run.path.relative_to(sweep).as_posix()
        if not run.summary.stopped:
            skipped.append(rel)
            continue
        files = {}
        folder = RunDir(run.path)
        for src in evidence(folder, None if full else compared(folder, run.summary)):
            name = src.relative_to(run.path).as_posix()
            files[name] = sha256_file(src)
            copied += _copy(src, dest / rel / name, files[name])
        entries[rel] = {"seed": run.summary.seed, "files": files}
    manifest = {
        "source": str(sweep),
        "archived": datetime.now(UTC).isoformat(timespec="seconds"),
        "full": full,
        "runs": dict(sorted(entries.items())),
        "skipped": skipped,
    }
    write_json(manifest_path, manifest)
    manifest["copied"] = copied
    return manifest


def check(dest: Path) -> list[str]:
    """Why the files under ``dest`` do not match its manifest (empty when they all do)."""
    path = Path(dest) / MANIFEST
    if not path.is_file():
        raise CemError(f"{path} not found: {dest} is not an archive (make one with "
                       "`cem archive SWEEP DEST`)")  # fmt: skip
    return [problem for rel, entry in read_json(path)["runs"].items()
            for problem in check_files(Path(dest) / rel, entry["files"], MANIFEST)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cem archive", description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, nargs="?", help="the sweep folder, e.g. multirun/paradigm")
    p.add_argument("dest", type=Path, help="the archive folder, e.g. experiments/runs/paradigm")
    p.add_argument("--full", action="store_true",
                   help="keep every round's per-item files (what cem inspect shows)")  # fmt: skip
    p.add_argument("--check", action="store_true",
                   help="check DEST's files against its archive.json instead")  # fmt: skip
    args = p.parse_args(argv)
    if args.check:
        if args.sweep is not None:
            p.error("--check takes the archive folder only: cem archive --check DEST")
        problems = check(args.dest)
        for line in problems:
            print(f"BAD {line}")
        n = len(read_json(args.dest / MANIFEST)["runs"])
        print(f"{n} runs checked: " + (f"{len(problems)} problems" if problems else "no problems"))
        return 1 if problems else 0
    if args.sweep is None:
        p.error("give the sweep and the archive folder: cem archive SWEEP DEST")
    m = archive(args.sweep, args.dest, full=args.full)
    size = sum((args.dest / rel / name).stat().st_size
               for rel, e in m["runs"].items() for name in e["files"])  # fmt: skip
    print(
        f"archived {len(m['runs'])} runs into {args.dest} ({size / 1e6:.1f} MB, "
        f"{m['copied']} files written)"
    )
    if m["skipped"]:
        print("not finished yet, left out: " + ", ".join(m["skipped"]))
    return 0
