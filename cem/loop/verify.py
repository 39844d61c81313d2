"""The files a done-marker vouches for, by sha256; ``cem verify RUN_DIR`` checks a whole run.

Each stage's marker records the sha256 of every file in the folders the stage writes
(``cem.layout.OUTPUTS``). A resume checks them before it skips a stage, so a flipped bit or
a truncated file re-runs that stage instead of feeding a later one. A folder that ``loop.keep_models``
deleted on purpose is listed in the marker's ``pruned`` and no longer checked.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from cem.io import sha256_file
from cem.layout import DONE, MARKERS, RoundDir


def hash_outputs(folder: Path, stage: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file in the folders that ``stage`` writes."""
    files = {}
    for root in RoundDir(folder).outputs(stage):
        for path in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
            files[path.relative_to(folder).as_posix()] = sha256_file(path)
    return files


def check_marker(folder: Path, marker: dict) -> list[str]:
    """Why the files of ``marker`` (a stage's done-marker in ``folder``) cannot be trusted.

    Returns:
        One line per missing or changed file; empty when every file matches (or the marker
        predates hashing and records none).
    """
    pruned = tuple(f"{p}/" for p in marker.get("pruned", []))
    files = {rel: d for rel, d in marker.get("files", {}).items() if not rel.startswith(pruned)}
    return check_files(folder, files, "the done-marker")


def check_files(folder: Path, files: dict[str, str], record: str) -> list[str]:
    """One line per file of ``files`` (``{path relative to folder: sha256}``, as ``record``
    lists them) that is missing or changed; empty when every file matches."""
    problems = []
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path} does not match its sha256 in {record}")
    return problems


@dataclass
class Checked:
    """One done-marker of a run and what its check found."""

    marker: Path
    files: int
    problems: list[str]


def verify_run(root: Path) -> list[Checked]:
    """Check every done-marker under ``root`` (a run, or a sweep of runs)."""
    out = []
    for path in sorted(root.rglob(MARKERS)):
        folder = path.parent.parent
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
            problems = check_marker(folder, marker)
            n = len(marker.get("files", {}))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            problems, n = [f"{path} is not a valid done-marker ({e})"], 0
        out.append(Checked(path, n, problems))
    return out


def main(argv: list[str] | None = None) -> int:
    """``cem verify RUN_DIR``: 0 when every finished stage's files match, else 1."""
    p = argparse.ArgumentParser(prog="cem verify", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run folder (or a sweep folder holding runs)")
    args = p.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"cem verify: error: {args.run_dir} is not a folder", flush=True)
        return 2
    checked = verify_run(args.run_dir)
    bad = [c for c in checked if c.problems]
    for c in checked:
        stage = c.marker.relative_to(args.run_dir).as_posix().replace(f"/{DONE}/", "/")[:-5]
        print(f"{'ok ' if not c.problems else 'BAD'} {stage} ({c.files} files)")
        for problem in c.problems:
            print(f"    {problem}")
    files = sum(c.files for c in checked)
    print(f"{len(checked) - len(bad)} of {len(checked)} stages verified ({files} files); "
          + (f"{len(bad)} with problems, which the run's own `cem run` runs again" if bad
             else "no problems"))  # fmt: skip
    return 1 if bad else 0
