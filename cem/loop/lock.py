"""One writer per run folder: ``cem run`` holds an exclusive lock on ``run_dir``.

The lock is ``run_dir/.lock`` (``filelock``: an OS lock, released when its process dies);
``run_dir/.lock.json`` says who holds it (host, pid, start time, command), so that a second
process can name the holder. A holder file left by a process that is gone is a stale lock:
it is taken over with a warning. Each job of a sweep has its own folder and lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, SoftFileLock, Timeout

from cem.errors import RunLocked
from cem.io import ensure_dir, read_json, write_json
from cem.ui import warn

LOCK, HOLDER = ".lock", ".lock.json"


def holder(root: Path) -> dict | None:
    """Who holds (or last held) the lock on ``root``, from its holder file."""
    try:
        info = read_json(root / HOLDER)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_gone(info: dict) -> bool:
    """True when the holder ran on this host and its pid no longer exists."""
    if info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def describe(info: dict | None) -> str:
    if info is None:
        return "another process (it has not written its details yet)"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
            f"(`{info.get('command')}`)")  # fmt: skip


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``root`` for the block; RunLocked when another holds it."""
    ensure_dir(root, "set run_dir=<another folder>")
    lock = _acquire(root)
    try:
        old = holder(root)
        if old is not None and old.get("pid") != os.getpid():
            warn(
                f"{root} was locked by {describe(old)}, which ended without releasing it; "
                "taking the lock over"
            )
        write_json(root / HOLDER, _me())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / HOLDER)
        lock.release()


def _acquire(root: Path) -> FileLock | SoftFileLock:
    lock: FileLock | SoftFileLock = FileLock(root / LOCK, timeout=0)
    try:
        lock.acquire()
        return lock
    except NotImplementedError:  # a filesystem without flock: fall back to the file's existence
        lock = SoftFileLock(root / LOCK, timeout=0)
    except Timeout:
        pass
    info = holder(root)
    if isinstance(lock, SoftFileLock) and info is not None and is_gone(info):
        os.unlink(root / LOCK)  # a soft lock outlives its process: the stale case
    try:
        lock.acquire()
        return lock
    except Timeout:
        gone = " (that pid is gone: a child process of it may still hold the lock)"
        raise RunLocked(
            f"{root} is in use by {describe(info)}{gone if info and is_gone(info) else ''}; "
            "wait for it to finish, or give this run another run_dir"
        ) from None


def _me() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["cem", *sys.argv[1:]]) if sys.argv else "cem",
    }
