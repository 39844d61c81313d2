"""SIGTERM and SIGINT: an atomic write finishes first, training saves a checkpoint, the
command exits 143 / 130 with the line that resumes it, and the resume is bit-exact."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_training import TINY, small_set, write_set

from cem import signals
from cem.io import atomic_open, read_json
from cem.training.train import run_train

# 9 examples pack into 6 sequences of <= 48 tokens: 3 batches of 2 per epoch.
TRAIN = ("model=tiny_random_llama", "trainer.enable_progress_bar=false", "train.batch_size=2",
         "train.max_steps=5", "train.seq_len=48", "train.lora.dropout=0.1",
         "trainer.precision=32-true")  # fmt: skip

# `cem train` that sends itself ``signum`` from the module's hook ``hook`` when the global
# step is ``at``: a signal at a known point of the batch, with no race against a timer.
SIGNALLED = """
import os, sys
from cem.training.module import CemLM
from cem.cli import main

signum, at, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
hook = getattr(CemLM, name)

def send(self, *args):
    hook(self, *args)
    if self.global_step == at:
        os.kill(os.getpid(), signum)

setattr(CemLM, name, send)
sys.exit(main(["train", *sys.argv[4:]]))
"""


def env() -> dict[str, str]:
    # The same thread count as this process, so that sums reduce in the same order.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def cem(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cem.cli", *args], env=env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.fixture
def handled():
    """cem's handlers installed in this process, Python's put back afterwards."""
    before = {signum: signal.getsignal(signum) for signum in signals.SIGNALS}
    signals.install()
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_a_signal_waits_for_the_atomic_write_in_progress(tmp_path, handled):
    path = tmp_path / "out.txt"
    with pytest.raises(signals.Interrupted) as stop, atomic_open(path) as fh:
        fh.write("first half, ")
        os.kill(os.getpid(), signal.SIGTERM)
        fh.write("second half")
    assert stop.value.exit_code == 143 and signals.pending() is None
    assert path.read_text() == "first half, second half"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(signals.Interrupted) as stop:  # outside a write: at once
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.value.exit_code == 130


@pytest.fixture(scope="module")
def references(tmp_path_factory, compose):
    """Uninterrupted trainings, one per gradient accumulation."""
    out = {}
    for accum in (1, 2):
        d = tmp_path_factory.mktemp(f"ref{accum}")
        write_set(d, small_set())
        run_train(compose("train", f"run_dir={d}", *TINY, *TRAIN, f"train.grad_accum={accum}"))
        out[accum] = d
    return out


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("signum", "hook", "accum", "every", "saved_at"),
    [
        # Before the batch of step 3: the stop callback checkpoints step 3 itself.
        (signal.SIGTERM, "on_train_batch_start", 1, 5, 3),
        # After step 2, inside an accumulation next: back to the checkpoint of step 2.
        (signal.SIGINT, "on_train_batch_end", 2, 2, 2),
        # Lightning's own SIGTERM stop (a SystemExit with no code) becomes exit 143 too.
        (signal.SIGTERM, "on_train_batch_end", 2, 2, 2),
    ],
    ids=["sigterm-checkpoints", "sigint-in-accumulation", "sigterm-lightning-stop"],
)
def test_a_signal_stops_training_resumably(tmp_path, references, signum, hook, accum, every,
                                           saved_at):  # fmt: skip
    write_set(tmp_path, small_set())
    args = [f"run_dir={tmp_path}", *TRAIN, f"train.grad_accum={accum}",
            f"train.checkpoint_every_n_steps={every}"]  # fmt: skip
    stopped = subprocess.run([sys.executable, "-c", SIGNALLED, str(int(signum)), "2", hook, *args],
                             env=env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    name = signal.Signals(signum).name
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cem train: stopped by {name}; training resumes from "), last
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == (
        saved_at
    )
    assert not (tmp_path / "model").exists() and not list(tmp_path.rglob(".*.tmp"))

    # The printed command resumes it, to the very weights of an uninterrupted training.
    hint = shlex.split(last.split("Resume with: ", 1)[1])
    assert hint[:3] == ["cem", "train", f"run_dir={tmp_path.resolve()}"]
    again = cem(*hint[1:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    ref = references[accum]
    a, b = (
        load_file(tmp_path / "model/model.safetensors"),
        load_file(ref / "model/model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in b)
    keys = ("steps", "loss_last", "epoch_losses", "target_tokens", "reached_rows")
    m, r = read_json(tmp_path / "train/metrics.json"), read_json(ref / "train/metrics.json")
    assert {k: m[k] for k in keys} == {k: r[k] for k in keys}


# `cem run` that sends itself SIGINT while round 0 is being scored.
INTERRUPTED_EVAL = """
import os, signal, sys
import cem.evaluation.evaluate as ev
from cem.cli import main

score = ev.score_loglik

def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return score(*args, **kwargs)

ev.score_loglik = interrupted
sys.exit(main(["run", *sys.argv[1:]]))
"""


@pytest.mark.e2e
def test_ctrl_c_outside_training_is_one_line_and_130(tmp_path):
    root = tmp_path / "run"
    args = [f"run_dir={root}", "experiment=fast", "eval.progress=false"]
    # A share cache of its own: round 0 must be scored here, not taken from another test's.
    fresh = {**env(), "CEM_SHARE_CACHE": str(tmp_path / "share")}
    stopped = subprocess.run([sys.executable, "-c", INTERRUPTED_EVAL, *args], env=fresh,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr + stopped.stdout
    last = stopped.stderr.strip().splitlines()[-1]
    assert last == f"cem run: stopped by SIGINT. Resume with: cem run run_dir={root} " + " ".join(
        args[1:]
    )
    assert not (root / "round_0/done/eval.json").exists()
    assert not (root / "summary.json").exists()


# `cem train` started the way a requeueing launcher starts a job: the launcher's handler for
# its time-limit signal is in place first (submitit's requeues the job, then exits with -1;
# this one records its call instead of calling scontrol). The module's hook then sends that
# signal after step 2.
LAUNCHED = """
import os, signal, sys
from pathlib import Path
from cem.training.module import CemLM
from cem.cli import main

record, rest = Path(sys.argv[1]), sys.argv[2:]

def launcher_requeue(signum, frame):
    record.write_text(signal.Signals(signum).name)
    sys.exit(-1)

signal.signal(signal.SIGUSR2, launcher_requeue)
hook = CemLM.on_train_batch_end

def send(self, *args):
    hook(self, *args)
    if self.global_step == 2:
        os.kill(os.getpid(), signal.SIGUSR2)

CemLM.on_train_batch_end = send
sys.exit(main(["train", *rest]))
"""


@pytest.mark.e2e
def test_a_launchers_time_limit_signal_checkpoints_then_requeues(tmp_path, references):
    write_set(tmp_path, small_set())
    record = tmp_path / "requeued.txt"
    args = [f"run_dir={tmp_path}", *TRAIN, "train.grad_accum=1", "train.checkpoint_every_n_steps=5"]
    stopped = subprocess.run([sys.executable, "-c", LAUNCHED, str(record), *args], env=env(),
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    # The launcher's handler ran (and chose the exit status), after cem checkpointed the
    # batch in flight when the signal came (step 3: the callbacks' batch end runs first).
    assert record.read_text() == "SIGUSR2", stopped.stderr[-3000:]
    assert stopped.returncode == 255, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert "time limit is near; the launcher requeues it" in stopped.stderr
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    # The requeued job is the same command: it resumes to an uninterrupted training's weights.
    again = cem("train", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    a = load_file(tmp_path / "model/model.safetensors")
    b = load_file(references[1] / "model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_without_a_launcher_handler_the_user_signals_are_left_alone(handled):
    assert signal.getsignal(signal.SIGUSR2) in (signal.SIG_DFL, signal.SIG_IGN)
    assert signals.requeue(signals.Interrupted(signal.SIGUSR2)) is False


def test_reclaim_takes_sigterm_back_from_a_library_that_replaced_the_handler(handled):
    """Lightning puts its own SIGTERM handler in place at fit start; ``reclaim`` (called by
    ``StopOnSignal`` at train start) puts cem's back, so that the stop checkpoints."""

    def lightnings(signum, frame):
        raise AssertionError("the library's handler ran")

    signal.signal(signal.SIGTERM, lightnings)
    signals.reclaim()
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGINT)
    with pytest.raises(signals.Interrupted) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.value.exit_code == 143


def test_a_rank_without_a_signal_stops_on_another_ranks():
    """Every rank stops at the batch where any rank saw a signal (``StopOnSignal`` reduces
    it): the one that saw none raises with the other's signal."""
    assert signals.pending() is None
    signals.stop("nothing pending")  # no signal anywhere: nothing happens
    with pytest.raises(signals.Interrupted) as stop:
        signals.stop("training resumes from step 3", signal.SIGTERM)
    assert (stop.value.exit_code, stop.value.detail) == (143, "training resumes from step 3")
