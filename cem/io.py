"""Atomic file output: every stage writes to a temp file in the same folder, then renames.

A write is never cut short by SIGTERM or SIGINT (``cem.signals.deferred``), and a full disk
or an unwritable path is one ``StorageError`` naming the path, with nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from cem import signals
from cem.errors import StorageError

NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
# Temp files and folders of atomic writes (``.<name>.<random>.tmp``) and of model swaps.
STALE_PATTERNS = (".*.tmp", ".*.old.*")


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    encoding: str | None = "utf-8",
    needed: int | None = None,
) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success rename it over ``path``, on error delete it.

    The file gets the permissions a plain ``open`` would give (0666 less the umask), not the
    temp file's private 0600. ``needed`` (bytes, where known) goes into a full disk's message.
    """
    path = Path(path)
    with signals.deferred(), storage_errors(path, needed):
        ensure_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        kwargs = {} if "b" in mode else {"encoding": encoding}
        try:
            with os.fdopen(fd, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def error_code(e: BaseException) -> int | None:
    """The errno behind ``e``: an OSError's own, or one that a library (safetensors, pyarrow)
    only left in its message."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    text = str(e)
    if found := re.search(r"os error (\d+)|\[Errno (\d+)\]|errno (\d+)", text):
        return int(next(g for g in found.groups() if g))
    return errno.ENOSPC if "No space left on device" in text else None


def storage_message(
    e: BaseException, path: str | os.PathLike, needed: int | None = None, free: int | None = None
) -> str | None:
    """One line for a full disk or an unwritable path (None for any other error).

    Args:
        needed: bytes the write needs at least, where known.
        free: bytes free before the write began; None: measured now.
    """
    code = error_code(e)
    if code in NO_SPACE:
        free = _free_bytes(Path(path)) if free is None else free
        need = f"needs at least {_size(needed)}, " if needed else ""
        room = f" ({need}{_size(free)} were free)" if free is not None else ""
        return (f"cannot write {path}: no space left on device{room}; free some space or "
                "write elsewhere (run_dir=<a larger disk>)")  # fmt: skip
    if code in NO_ACCESS:
        what = "read-only file system" if code == errno.EROFS else "permission denied"
        return (f"cannot write {path}: {what}; make it writable or write "
                "elsewhere (run_dir=<a writable folder>)")  # fmt: skip
    return None


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk or a permission error while writing ``path`` into a StorageError."""
    free = _free_bytes(Path(path))
    try:
        yield
    except Exception as e:
        msg = storage_message(e, path, needed, free)
        if msg is None:
            raise
        raise StorageError(msg) from None


def ensure_dir(path: str | os.PathLike, other: str | None = None) -> Path:
    """``mkdir -p path``; a regular file in the way is a StorageError saying what to do.

    Args:
        other: how to choose another folder instead, e.g. ``"set run_dir=<folder>"``.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        check_writable(path, other)
        raise
    return path


def check_writable(path: str | os.PathLike, other: str | None = None) -> None:
    """StorageError unless ``path`` is, or can be made, a writable folder (nothing created)."""
    path = Path(path).expanduser().absolute()
    first = next(p for p in (path, *path.parents) if p.exists())
    if not first.is_dir():
        what = "is a file" if first == path else f"cannot be: {first} is a file"
        raise StorageError(f"{path} must be a folder but {what}; move the file away "
                           f"(mv {first} {first}.bak)" + (f" or {other}" if other else ""))  # fmt: skip
    if not os.access(first, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write {path}: {first} is not writable; make it writable"
                           + (f" or {other}" if other else ""))  # fmt: skip


def remove_stale(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files and folders that a killed write left under ``folder``."""
    gone = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            if any(Path(name).match(p) for p in STALE_PATTERNS):
                path = Path(dirpath) / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    dirnames.remove(name)
                else:
                    path.unlink(missing_ok=True)
                gone.append(path)
    return gone


def public_perms(path: str | os.PathLike) -> None:
    """Give a folder tree written through ``mkdtemp`` (0700) the umask's permissions."""
    mask = _umask()
    for dirpath, _, filenames in os.walk(path):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _size(n: float) -> str:
    """``1536`` -> ``"1.5 KB"``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, sort_keys=False)
        fh.write("\n")
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` per non-blank line; bad JSON raises DataError with the line."""
    from cem.errors import DataError

    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, lineno, f"invalid JSON ({e.msg})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file; a bad line raises DataError naming the file and line."""
    return [row for _, row in iter_jsonl(path)]


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256, read 1 MB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
