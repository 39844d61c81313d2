"""Data-parallel evaluation: one process per device, each scoring its share of the batches.

``torchrun --nproc_per_node=N --no-python cem eval ...`` starts N ranks; ``eval.devices=N``
(in ``cem eval`` and in ``cem run``'s eval stages) starts them itself, through
``torch.distributed.run``. Each rank loads the model on its own device (``model.device``
``auto`` or ``cuda`` is ``cuda:$LOCAL_RANK``; on the CPU every rank uses the CPU).

Every rank builds the same batches of each chunk, since the scorer's plan depends only on
the items and the tokenizer, and scores batch ``i`` when ``i % N == rank``: strided, so the
longest batches (which come first) are spread over the ranks. Rank 0 gathers the scores
(``torch.distributed.gather_object``; gloo on the CPU, nccl on CUDA), puts them back in item
order and makes the records. Each batch is computed exactly as one process computes it, so
the records are byte-identical to a one-process run wherever the kernels are deterministic
(fp32 on the CPU; a test checks it). Rank 0 alone runs the general probe and writes the
outputs, once and atomically; the partial records of a long evaluation are its alone too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cem.errors import CemError, ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel evaluation (rank 0 of 1 alone)."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0: it gathers, writes and prints."""
        return self.rank == 0

    def mine(self, batch: int) -> bool:
        """Whether this rank scores the ``batch``-th batch."""
        return batch % self.world == self.rank

    def merge(self, values: list) -> list | None:
        """On rank 0, each position's value from the rank that filled it (the others leave
        None there); None on the other ranks. Values may be nested lists."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        parts: list | None = [None] * self.world if self.leader else None
        dist.gather_object(values, parts, dst=0)
        return _fill(parts) if parts is not None else None

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


ALONE = Ranks()


def _fill(parts: list) -> Any:
    """The one value of ``parts`` that is not None, position by position within lists."""
    if any(isinstance(p, list) for p in parts):
        return [_fill(list(column)) for column in zip(*parts, strict=True)]
    return next((p for p in parts if p is not None), None)


def launched() -> bool:
    """Whether this process is one of several ranks that a launcher started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def ranks(device_spec: str) -> Iterator[Ranks]:
    """This process's ``Ranks``, with the process group set up for the duration when a
    launcher started several: nccl when ``device_spec`` resolves to CUDA, else gloo.

    Raises:
        ConfigError: ``model.device`` names one GPU, which every rank would share.
    """
    if not launched():
        yield ALONE
        return
    import torch
    import torch.distributed as dist

    from cem import device as devices

    _not_one_gpu(device_spec)
    device = devices.resolve_device(device_spec)
    own = not dist.is_initialized()
    if own:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
        if own:  # leave together: a rank that tears gloo down while another still talks
            dist.barrier()  # to it aborts ("terminate called without an active exception")
    finally:
        if own:
            dist.destroy_process_group()


def check_devices(cfg: DictConfig) -> None:
    """``eval.devices`` against this machine, before any process starts.

    Raises:
        ConfigError: more GPUs asked for than are visible, or one GPU named for all.
    """
    n, spec = int(cfg.eval.devices), str(cfg.model.device)
    _not_one_gpu(spec)
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec != "cpu" and 0 < visible < n:
        raise ConfigError("eval.devices", n, f"must be at most the {visible} visible GPUs",
                          f"eval.devices={visible}")  # fmt: skip


def _not_one_gpu(spec: str) -> None:
    if ":" in spec:  # cuda:N
        raise ConfigError("model.device", spec, "names one GPU for every rank of a "
                          "data-parallel evaluation", "model.device=auto")  # fmt: skip


def launch(cfg: DictConfig, run_dir: Path) -> dict:
    """Run this evaluation as ``eval.devices`` ranks under ``torch.distributed.run`` on this
    machine; returns the metrics that rank 0 wrote to ``run_dir/eval/metrics.json``.

    Raises:
        CemError: a rank failed (its message is printed above, by that rank).
    """
    from cem.io import read_json
    from cem.layout import RoundDir

    check_devices(cfg)
    n = int(cfg.eval.devices)
    with tempfile.TemporaryDirectory(prefix="cem-eval-") as tmp:
        job = Path(tmp) / "eval.yaml"
        OmegaConf.save(cfg, job, resolve=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={n}", "-m", "cem.evaluation.runner", str(job),
                   str(run_dir)]  # fmt: skip
        code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise CemError(f"the evaluation on eval.devices={n} ranks failed (exit {code}); the "
                       "failing rank's message is above (try eval.devices=1 to run it in one "
                       "process)")  # fmt: skip
    return read_json(RoundDir(Path(run_dir)).eval_metrics)
