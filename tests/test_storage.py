"""Full disks and bad paths: one line naming the path (and the bytes needed where known),
nothing half-written, umask permissions for model folders, caches that are files."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import uuid

import pytest
from _tiny import tiny_model, tiny_tokenizer

from cem.errors import StorageError
from cem.io import atomic_open, check_writable, ensure_dir, read_json, write_json
from cem.knowledge.corpus import index_root
from cem.loop.verify import verify_run
from cem.models import save_model


@contextlib.contextmanager
def tmpfs(path, size: str, *options: str):
    """A small tmpfs at ``path`` (root only: else the test is skipped)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_names_the_path_and_keeps_the_old_file(tmp_path):
    with tmpfs(tmp_path / "small", "64k") as disk:
        path = write_json(disk / "a.json", {"x": 1})
        with pytest.raises(StorageError) as e:
            write_json(path, {"x": "y" * 200_000})
        assert str(e.value).startswith(f"cannot write {path}: no space left on device (")
        assert read_json(path) == {"x": 1} and [p.name for p in disk.iterdir()] == ["a.json"]


def test_a_model_that_does_not_fit_says_how_much_it_needs(tmp_path):
    with tmpfs(tmp_path / "small", "256k") as disk:
        with pytest.raises(StorageError, match=r"model: no space left on device \(needs at "
                                               r"least \d+\.\d KB, \d+\.\d KB were free\)"):  # fmt: skip
            save_model(tiny_model(), tiny_tokenizer(), disk / "model")
        assert list(disk.iterdir()) == []  # no half-written model folder, no temp folder


def test_a_read_only_disk_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "64k", "ro") as disk:
        with pytest.raises(StorageError, match=r"a.json: read-only file system; make it "):
            write_json(disk / "a.json", {"x": 1})
        with pytest.raises(StorageError, match=f"cannot write {disk}/run: {disk} is not writable"):
            check_writable(disk / "run", "set run_dir=<another folder>")


def test_a_cache_path_that_is_a_file_is_reported_with_the_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError) as e:
        index_root(str(blocker / "indexes"))
    assert str(e.value) == (
        f"{blocker}/indexes must be a folder but cannot be: {blocker} is a file; move the file "
        f"away (mv {blocker} {blocker}.bak) or give the source another index_dir"
    )
    monkeypatch.setenv("CEM_CACHE", str(blocker))
    with pytest.raises(StorageError, match="or point CEM_CACHE at another folder"):
        index_root(None)
    with pytest.raises(StorageError, match=f"{blocker} must be a folder but is a file"):
        ensure_dir(blocker)


def test_model_folders_take_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}


def test_a_failed_write_inside_a_signal_free_section_leaves_no_temp(tmp_path):
    with pytest.raises(ZeroDivisionError), atomic_open(tmp_path / "a.txt") as fh:
        fh.write("x")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_cem_run_on_a_full_disk_stops_with_one_line_and_a_clean_folder(tmp_path):
    with tmpfs(tmp_path / f"disk-{uuid.uuid4().hex[:6]}", "1m") as disk:
        root = disk / "run"
        # A share cache of its own (off the small disk): every stage writes under root.
        fresh = {**os.environ, "CEM_SHARE_CACHE": str(tmp_path / "share")}
        done = subprocess.run([sys.executable, "-m", "cem.cli", "run", f"run_dir={root}",
                               "experiment=fast", "eval.progress=false"], env=fresh,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 2, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "Logging error" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"cem run: error: cannot write {root}/"), last
        assert "no space left on device" in last
        assert not [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".old." in p.name]
        checked = verify_run(root)  # what did finish is whole
        assert checked and all(not c.problems for c in checked)
