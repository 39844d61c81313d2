"""One writer per run folder: a second ``cem run`` on a locked ``run_dir`` exits at once
naming the holder; a lock whose holder is gone is taken over with a warning."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import cem.loop.lock as lock_mod
from cem.errors import RunLocked
from cem.io import read_json, write_json
from cem.loop.lock import HOLDER, LOCK, run_lock

# Holds the lock on argv[1] until killed; says so on stdout once it holds it.
HOLD = """
import sys, time
from pathlib import Path
from cem.loop.lock import run_lock

with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.e2e
def test_a_second_cem_run_on_a_locked_folder_exits_at_once(tmp_path):
    root = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "cem.cli", "run", f"run_dir={root}",
                                 "experiment=fast"], capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"{root} is in use by pid {holder.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr and not (root / "config.yaml").exists()
        # at once: refused before any stage (no round folder), not after waiting for the lock
        assert not list(root.glob("round_*")) and "waiting" not in second.stderr.lower()
    finally:
        holder.kill()
        holder.wait()
    # Killed holding it: the OS lets go, the holder file stays, the next one takes over.
    assert read_json(root / HOLDER)["pid"] == holder.pid
    with run_lock(root):
        assert read_json(root / HOLDER)["pid"] == os.getpid()
    assert not (root / HOLDER).exists()


def test_in_process_a_held_lock_refuses_and_a_stale_one_warns(tmp_path, capsys):
    with (
        run_lock(tmp_path),
        pytest.raises(RunLocked, match=f"pid {os.getpid()}"),
        run_lock(tmp_path),
    ):
        pass
    info = {
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "started": "then",
        "command": "cem run",
    }
    write_json(tmp_path / HOLDER, info)
    with run_lock(tmp_path):
        pass
    err = " ".join(capsys.readouterr().err.split())
    assert f"was locked by pid {info['pid']}" in err and "taking the lock over" in err


def test_without_os_locks_a_stale_soft_lock_is_taken_over(tmp_path, monkeypatch):
    class NoFlock(lock_mod.FileLock):
        def acquire(self, *args, **kwargs):
            raise NotImplementedError("no flock here")

    monkeypatch.setattr(lock_mod, "FileLock", NoFlock)
    (tmp_path / LOCK).write_text("")  # left by a process that died holding it
    write_json(tmp_path / HOLDER, {"host": socket.gethostname(), "pid": dead_pid()})
    with run_lock(tmp_path):
        assert read_json(tmp_path / HOLDER)["pid"] == os.getpid()
        with pytest.raises(RunLocked, match="is in use by pid"), run_lock(tmp_path):
            pass
    # A live holder on another host cannot be judged: refused, not taken over.
    (tmp_path / LOCK).write_text("")
    write_json(tmp_path / HOLDER, {"host": "elsewhere", "pid": dead_pid()})
    with pytest.raises(RunLocked, match="on elsewhere"), run_lock(tmp_path):
        pass
