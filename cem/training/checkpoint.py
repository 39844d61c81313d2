"""Checkpoints that cannot poison a resume, and a clean stop on SIGTERM or SIGINT.

Lightning writes ``last.ckpt`` in place (through a temp file in ``$TMPDIR``, then a copy
when the run folder is on another filesystem), so a full disk or a kill leaves a truncated
file that every later resume dies on. Here a checkpoint is written beside its final path,
fsynced and renamed; one that fails its check is moved aside and training starts over.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from cem import signals
from cem.io import atomic_open
from cem.ui import warn

log = logging.getLogger(__name__)
# Lightning logs "Received SIGTERM" itself; the CLI prints the one line that matters.
logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file in the checkpoint's folder, fsync, rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        # Serialised first (as Lightning does): torch's zip writer turns a full disk into a
        # bare RuntimeError, while a plain write raises ENOSPC, and the size needed is known.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_open(path, "wb", needed=buffer.tell()) as fh:
            fh.write(buffer.getbuffer())


def usable_checkpoint(path: Path) -> Path | None:
    """``path`` when it holds a whole checkpoint; else None, a bad one moved aside.

    A checkpoint is a zip archive (``torch.save``); every member's CRC is checked, which
    finds truncation and flipped bits without unpickling a tensor. A bad file is renamed
    ``<name>.corrupt-<time>`` and kept for inspection; training then starts from the
    beginning of the stage. A folder (a sharded FSDP or DeepSpeed checkpoint) is trusted.
    """
    if not path.exists():
        return None
    if path.is_dir():
        return path
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        reason = f"member {bad} fails its CRC check" if bad else None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        reason = str(e) or type(e).__name__
    if reason is None:
        return path
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    warn(
        f"{path} is not a whole checkpoint ({reason}); moved it to {aside.name} and "
        "training starts from the beginning of the stage"
    )
    return None


class StopOnSignal(Callback):
    """On SIGTERM or SIGINT, stop at the end of the current batch, saving ``ckpt`` first.

    The checkpoint is taken at the point where ``ModelCheckpoint`` takes its own (after an
    optimiser step, before the module's batch-end hook), so a resume is bit-exact. A batch
    inside a gradient accumulation has no such point: the stop then resumes from the last
    checkpoint that was saved. On several ranks, each batch end all-reduces whether any rank
    has a signal, so that all of them save and stop at the same batch.
    """

    def __init__(self, ckpt: Path):
        self.ckpt = ckpt
        self._step_before = -1

    def on_train_start(self, trainer, pl_module) -> None:
        signals.reclaim()  # Lightning has just put its own SIGTERM handler in place

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # A signal that lands between batches waits for this batch: its end can checkpoint.
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_signalled(trainer, stepped=trainer.global_step != self._step_before)

    def _stop_if_signalled(self, trainer, stepped: bool) -> None:
        signum = signals.pending() or 0
        if trainer.world_size > 1:
            # Ranks see a signal at different batches; they must stop at the same one, or
            # the checkpoint's collectives and the next step's wait on each other for ever.
            flag = torch.tensor(float(signum), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if not signum:
            return
        if stepped:
            trainer.save_checkpoint(self.ckpt)
            signals.stop(f"training resumes from step {trainer.global_step} ({self.ckpt})", signum)
        signals.stop(resume_detail(self.ckpt), signum)


def resume_detail(ckpt: Path) -> str:
    """Where a training stopped between checkpoints resumes from."""
    if ckpt.is_file():
        return f"training resumes from its last checkpoint ({ckpt})"
    return "no checkpoint yet: training restarts from the beginning of the stage"
