"""One training stage on several ranks of this machine, started by the loop itself.

``cem run trainer=ddp trainer.devices=N`` (or ``fsdp``, ``deepspeed_zero3``) trains each
round, and the warm-up, as N processes under ``torch.distributed.run``, one per device: the
loop process does not take part, so Lightning never re-runs the whole loop for its other
ranks. Every rank runs ``train_round`` on the stage's job (Lightning takes torchrun's ranks,
as in the ``torchrun -m cem train`` recipe); rank 0 saves the merged model and writes
``train/metrics.json``, which the loop then reads and marks done as it does one process's.
A stage stopped part-way resumes from its ``checkpoints/last.ckpt`` on the next ``cem run``.
Several nodes are not started this way (``check_loop_ranks``). While the ranks train, the
loop calls ``poll`` every ``POLL_S`` seconds (the W&B mirror reads rank 0's CSV log there,
so a launched stage's steps reach W&B as they are logged).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cem.errors import CemError

POLL_S = 10.0  # seconds between two calls of a launched stage's ``poll``
STOP_S = 60.0  # how long stopped ranks get to save their checkpoint before they are killed


def wait_polling(proc: subprocess.Popen, poll: Callable[[bool], None] | None,
                 every: float | None = None) -> int:  # fmt: skip
    """``proc``'s exit status, calling ``poll(False)`` every ``every`` seconds (``POLL_S``)
    while it runs and ``poll(True)`` once after it ends. A stop of this process (a signal,
    an error in ``poll``) stops ``proc`` too: SIGTERM, which torchrun hands to its ranks so
    that they save their checkpoint, then SIGKILL after ``STOP_S``."""
    try:
        while True:
            try:
                code = proc.wait(timeout=every or POLL_S)
                break
            except subprocess.TimeoutExpired:
                if poll is not None:
                    poll(False)
        if poll is not None:
            poll(True)
        return code
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def launch_training(job: DictConfig, folder: Path, base: Path | None, ranks: int,
                    poll: Callable[[bool], None] | None = None) -> dict:  # fmt: skip
    """Train ``job`` into ``folder`` on ``ranks`` processes; the metrics rank 0 wrote.
    ``poll`` is called while they train (``wait_polling``).

    Raises:
        CemError: a rank failed (its message is printed above, by that rank).
    """
    from cem.io import read_json
    from cem.layout import RoundDir

    job = OmegaConf.merge(job, {"trainer": {"devices": ranks, "num_nodes": 1}})
    with tempfile.TemporaryDirectory(prefix="cem-train-") as tmp:
        path = Path(tmp) / "train.yaml"
        OmegaConf.save(job, path, resolve=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={ranks}", "-m", "cem.training.launch", str(path),
                   str(folder), str(base or "")]  # fmt: skip
        code = wait_polling(subprocess.Popen(command), poll)
    if code != 0:
        raise CemError(f"{folder.name}/train on trainer.devices={ranks} ranks failed (exit "
                       f"{code}); the failing rank's message is above (try trainer=gpu "
                       "trainer.devices=1 to train in one process)")  # fmt: skip
    return read_json(RoundDir(folder).train_metrics)


def main(argv: list[str]) -> None:
    """One rank of ``launch_training``: ``python -m cem.training.launch JOB.yaml FOLDER BASE``
    (BASE empty: start from the job's ``model``)."""
    from cem import signals
    from cem.config import TrainJob
    from cem.training.train import train_round

    job, folder, base = argv
    cfg = OmegaConf.merge(OmegaConf.structured(TrainJob), OmegaConf.load(job))
    signals.install()
    try:
        train_round(cfg, Path(folder), Path(base) if base else None)
    except CemError as e:
        print(f"cem train (rank {os.environ.get('RANK', '?')}): error: {e}", file=sys.stderr)
        sys.exit(2)
    except signals.Interrupted as e:
        print(f"cem train (rank {os.environ.get('RANK', '?')}): stopped ({e})", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main(sys.argv[1:])
