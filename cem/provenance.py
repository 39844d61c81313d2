"""What code made a result: every stage's done-marker records it, ``summary.json`` lists
what its stages ran with, and ``cem report`` says when a table's runs differ in it.

``code_fingerprint`` is the sha256 of the package's source and of what else can move a
number (the torch and transformers versions, the thread count, the GPU, and what picks the
CPU's kernels: ``cem.device.cpu_kernels``), so it tells two installs and two kinds of machine
apart even where there is no git checkout; the git commit is recorded beside it
where the package runs from one. It also keys the shared round-0 work (``cem.loop.share``).
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

FINGERPRINT_CHARS = 16  # what a marker keeps of the sha256


@functools.cache
def code_fingerprint() -> str:
    """The sha256 of the package's source and of what else can move a number."""
    import torch
    import transformers

    import cem

    h = hashlib.sha256()
    for path in sorted(Path(cem.__file__).parent.rglob("*.py")):
        h.update(path.relative_to(Path(cem.__file__).parent).as_posix().encode())
        h.update(path.read_bytes())
    h.update(f"torch={torch.__version__} transformers={transformers.__version__}".encode())
    h.update(f"threads={torch.get_num_threads()}".encode())
    # model.device=auto scores on the GPU where there is one: other kernels, other numbers.
    h.update(f"cuda={torch.cuda.get_device_name() if torch.cuda.is_available() else None}".encode())
    # Kernels differ by CPU: AVX2's emulated bf16 moved world's round-0 log-likelihoods by
    # up to 0.9 nat against the archived tables' machine, an AMX machine by about 0.1
    # (experiments/LOG.md, 2026-12-02 and 2026-12-03).
    from cem.device import cpu_kernels

    h.update(f"cpu={cpu_kernels()}".encode())
    return h.hexdigest()


@functools.cache
def git_commit() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout the package runs from; ``(None, None)`` when it
    is not one (an installed wheel) or git is missing. ``dirty``: tracked files changed."""
    import cem

    repo = Path(cem.__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return None, None
    try:

        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                  text=True, check=True, timeout=10).stdout.strip()  # fmt: skip

        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def provenance() -> dict:
    """``{"cem", "code", "commit", "dirty", "torch", "transformers", "threads", "cpu"}`` of
    this process: what a done-marker records of the code and machine that ran the stage."""
    import torch
    import transformers

    import cem
    from cem.device import cpu_kernels

    commit, dirty = git_commit()
    return {
        "cem": cem.__version__,
        "code": code_fingerprint()[:FINGERPRINT_CHARS],
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_kernels(),
    }
