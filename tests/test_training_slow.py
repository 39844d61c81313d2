"""Slow training tests: DDP over two CPU processes, and SmolLM2 learning a few facts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import FACTS, TINY, row, small_set, write_set

from cem.training.train import run_train

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (prompt, answer) pairs that FACTS state; SmolLM2 cannot know them beforehand.
PROBES = [
    ("The river Lumo flows through the town of", " Kessa"),
    ("Mount Orrin is the highest peak of the", " Vell"),
    ("The Tarn Republic adopted the silver crown as its currency in", " 1891"),
    ("Queen Ilsa of Marrow founded the first public", " library"),
]


DDP_ARGS = ("model=tiny_random_llama", "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
            "train.max_steps=3", "train.seq_len=64", "train.batch_size=2")  # fmt: skip


@pytest.mark.parametrize(
    "entry",
    [
        [str(Path(sys.executable).with_name("cem")), "train"],
        [sys.executable, "-m", "cem", "train"],
    ],
    ids=["cem_train", "python_m"],
)
def test_ddp_two_cpu_processes(tmp_path, entry):
    """Lightning re-runs the command line for rank 1: both entry points must survive that."""
    if not Path(entry[0]).is_file():
        pytest.skip(f"{entry[0]} not found: install the package (pip install -e .)")
    write_set(tmp_path, small_set() * 2)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    proc = subprocess.run([*entry, f"run_dir={tmp_path}", *DDP_ARGS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and (tmp_path / "model" / "model.safetensors").is_file()


def test_two_ranks_metrics_are_the_whole_run_s(tmp_path):
    """A full epoch over 2 ranks reaches every row: ``train/metrics.json`` counts both ranks'
    batches (rank 0 alone holds about half), with the loss-bearing tokens of the whole set."""
    from test_parallel_eval import child_env

    rows = small_set() * 2
    args = [a for a in DDP_ARGS if not a.startswith("train.max_steps")]
    for name, extra in (("two", []), ("one", ["trainer=cpu", "trainer.devices=1"])):
        write_set(tmp_path / name, rows)
        proc = subprocess.run([sys.executable, "-m", "cem", "train", f"run_dir={tmp_path / name}",
                               *args, *extra, "train.max_steps=-1", "train.epochs=1"],
                              cwd=REPO, env=child_env(), capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = (json.loads((tmp_path / n / "train" / "metrics.json").read_text())
                for n in ("two", "one"))  # fmt: skip
    assert two["rows_total"] == one["rows_total"] == len(rows)
    assert two["rows_reached"] == len(rows)
    # A rank's share may repeat a batch to even the shares out, never leave one out.
    assert all(two["target_tokens"][k] >= n for k, n in one["target_tokens"].items())
    assert len(two["epoch_losses"]) == 1 and two["tokens_per_s"] > 0


STOP_AT_STEP = """
import os, sys
from cem.cli import main
from cem.training.module import CemLM

stop_at, original = int(os.environ.get("STOP_AT", "-1")), CemLM.on_train_batch_end

def stop(self, outputs, batch, batch_idx):
    original(self, outputs, batch, batch_idx)  # after the step's checkpoint
    if self.global_step == stop_at:
        raise RuntimeError(f"stopped at step {stop_at}")

CemLM.on_train_batch_end = stop
sys.exit(main(sys.argv[1:]))
"""


def test_two_ranks_resumed_mid_epoch_count_every_ranks_share(tmp_path):
    """2 gloo ranks under torchrun stopped mid-epoch 1 (a checkpoint every step) and run again resume to the totals of an uninterrupted run: every row reached, every
    loss-bearing token counted once, each epoch's mean over both ranks' tokens."""
    from test_parallel_eval import child_env

    script = tmp_path / "stop_at.py"
    script.write_text(STOP_AT_STEP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "train"]  # fmt: skip
    args = [a for a in DDP_ARGS if not a.startswith("train.max_steps")]
    args += ["train.max_steps=-1", "train.epochs=2", "train.checkpoint_every_n_steps=1",
             "train.lora.dropout=0", "train.seq_len=48"]  # fmt: skip
    rows = small_set() * 2

    def train(name: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, f"run_dir={tmp_path / name}", *args], cwd=REPO,
                              env=child_env() | env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    for name in ("whole", "resumed"):
        write_set(tmp_path / name, rows)
    assert (proc := train("whole")).returncode == 0, proc.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "train" / "metrics.json").read_text())
    per_epoch = whole["steps"] // 2
    assert per_epoch >= 2
    stop_at = per_epoch + 1  # the first step of epoch 1 is done, the epoch is not
    stopped = train("resumed", STOP_AT=str(stop_at))
    assert stopped.returncode != 0 and f"stopped at step {stop_at}" in stopped.stderr
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == stop_at and saved["epoch"] == 1
    assert (proc := train("resumed")).returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((tmp_path / "resumed" / "train" / "metrics.json").read_text())
    assert whole["steps"] == resumed["steps"]
    assert resumed["rows_reached"] == whole["rows_reached"] == len(rows)
    assert resumed["target_tokens"] == whole["target_tokens"]
    assert resumed["input_tokens"] == whole["input_tokens"]
    assert [e["epoch"] for e in resumed["epoch_losses"]] == [0, 1]
    for r, w in zip(resumed["epoch_losses"], whole["epoch_losses"], strict=True):
        assert r == pytest.approx(w, rel=1e-6)


def test_cem_run_trains_each_stage_on_two_ranks_it_starts_itself(tmp_path, compose, capfd):
    """``cem run trainer=ddp trainer.devices=2``: the warm-up and each round train on 2 ranks
    that the loop starts under torchrun (2 gloo processes here); rank 0 writes the model and
    the whole run's metrics, the stage is marked done, and a second ``cem run`` has nothing
    left to do."""
    from cem.layout import RoundDir, read_marker
    from cem.loop.run import run_loop

    root = tmp_path / "run"
    cfg = compose("run", "experiment=fast", "eval.progress=false", "logger=csv",
                  f"run_dir={root}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")  # fmt: skip
    summary = run_loop(cfg)
    said = " ".join(capfd.readouterr().err.split())
    assert said.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 3
    assert [e.round for e in summary.rounds] == [0, 1, 2]
    for stage in ("warmup", "round_1", "round_2"):
        folder = RoundDir(root / stage)
        assert read_marker(folder, "train") is not None, stage
        m = json.loads(folder.train_metrics.read_text())
        assert m["rows_reached"] == m["rows_total"] > 0, stage
        logs = sorted((root / stage / "train_logs").rglob("metrics.csv"))
        assert len(logs) == 1, logs  # rank 0 alone logs
    assert (RoundDir(root / "round_2").model / "model.safetensors").is_file()  # the last kept
    again = run_loop(cfg)
    assert [e.metrics for e in again.rounds] == [e.metrics for e in summary.rounds]


def test_launched_ranks_steps_reach_the_w_and_b_mirror_while_they_train(
    tmp_path, compose, monkeypatch
):
    """With W&B on, the steps of a stage trained on 2 launched ranks go to the loop's mirror
    while the ranks run (before rank 0 writes ``train/metrics.json``), each CSV row once."""
    from test_mirror import steps_sent

    from cem.loop import mirror
    from cem.loop.run import run_loop
    from cem.training import launch

    monkeypatch.setattr(launch, "POLL_S", 0.05)
    got = steps_sent(monkeypatch, tmp_path)
    root = tmp_path / "run"
    cfg = compose("run", "experiment=fast", "eval.progress=false", "logger=wandb",
                  f"run_dir={root}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")  # fmt: skip
    run_loop(cfg)
    for stage in ("warmup", "round_1", "round_2"):
        sent = [(step, done) for name, step, done in got if name == stage]
        assert [s for s, _ in sent] == [s for s, _ in mirror.csv_steps(root / stage)], stage
        assert not sent[0][1], f"{stage}: no step was sent before the ranks finished"


def test_a_sigterm_to_the_loop_stops_its_launched_ranks_at_a_checkpoint(tmp_path):
    """SIGTERM to ``cem run`` while 2 launched ranks train its warm-up: the loop hands it to
    torchrun, the ranks save ``last.ckpt`` and stop, and the loop exits 143 (128 + SIGTERM)."""
    import signal
    import time

    from test_parallel_eval import child_env

    root = tmp_path / "run"
    args = ["run", "experiment=fast", "loop.warmup.max_steps=100000", f"run_dir={root}",
            "train.checkpoint_every_n_steps=1000000",  # only the stop saves one
            "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]  # fmt: skip
    said = tmp_path / "said.log"  # a file, not a pipe nobody reads while the ranks train
    with said.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cem.cli", *args], cwd=REPO,
                                env=child_env(), stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
    logs = root / "warmup" / "train_logs"
    deadline = time.monotonic() + 240
    while not any(logs.rglob("metrics.csv")) and time.monotonic() < deadline:
        assert proc.poll() is None, said.read_text()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    out = said.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert (root / "warmup" / "checkpoints" / "last.ckpt").is_file(), out[-3000:]
    assert not (root / "warmup" / "model").exists()


def answer_logprob(model, tok, prompt: str, answer: str) -> float:
    ids = tok(prompt + answer, return_tensors="pt").input_ids
    n = len(tok(prompt).input_ids)
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return float(logp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum())


def test_smollm2_lora_learns_facts(tmp_path, compose):
    from cem.models import load_model

    write_set(tmp_path, [row(f) for f in FACTS] * 2)
    cfg = compose("train", f"run_dir={tmp_path}", *TINY, "model=smollm2_135m_instruct",
                  "train.max_steps=12", "train.lr=1e-3", "train.batch_size=4",
                  "train.seq_len=128", "train.warmup_ratio=0", "train.schedule=constant")  # fmt: skip
    cfg.model.dtype = "float32"
    before_model, tok = load_model(cfg.model)
    before = [answer_logprob(before_model, tok, p, a) for p, a in PROBES]
    del before_model
    m = run_train(cfg)
    cfg.model.asset, cfg.model.path = None, str(tmp_path / "model")
    after_model, _ = load_model(cfg.model)
    after = [answer_logprob(after_model, tok, p, a) for p, a in PROBES]
    assert m["loss_last"] < m["loss_first"]
    assert sum(after) > sum(before) + 2.0, (before, after)
    assert sum(a > b for a, b in zip(after, before, strict=True)) >= 3, (before, after)


def test_torchrun_trains_on_two_cpu_ranks_and_rank_0_saves_the_model_once(tmp_path):
    """``torchrun --nproc_per_node=2 -m cem train ... trainer=ddp`` (the recipe for training on
    N GPUs, here 2 gloo ranks): Lightning takes torchrun's ranks instead of starting its own,
    and the merged model is the one Lightning's own 2-process start makes, byte for byte."""
    from _tiny import tiny_model
    from test_parallel_eval import child_env

    from cem.config import ModelConfig
    from cem.models import load_model

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "cem", "train"]  # fmt: skip
    runs = {"torchrun": torchrun, "lightning": [sys.executable, "-m", "cem", "train"]}
    said = {}
    for name, entry in runs.items():
        write_set(tmp_path / name, small_set() * 2)
        proc = subprocess.run([*entry, f"run_dir={tmp_path / name}", *DDP_ARGS], cwd=REPO,
                              env=child_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        said[name] = " ".join((proc.stdout + proc.stderr).split())  # rich wraps lines
        assert "Starting with 2 processes" in said[name]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in said["torchrun"]
    assert said["torchrun"].count(f"wrote {tmp_path / 'torchrun' / 'model'}") == 1  # rank 0
    model_dir = tmp_path / "torchrun" / "model"
    assert [p.name for p in model_dir.glob("*.safetensors")] == ["model.safetensors"]
    reference = (tmp_path / "lightning" / "model" / "model.safetensors").read_bytes()
    assert (model_dir / "model.safetensors").read_bytes() == reference
    metrics = json.loads((tmp_path / "torchrun" / "train" / "metrics.json").read_text())
    assert metrics["steps"] == 3
    trained, _ = load_model(ModelConfig(name="trained", path=str(model_dir), dtype="float32"))
    base = tiny_model().state_dict()  # what training started from (seed 0)
    weights = trained.state_dict()
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in base.items()}
    lora_targets = [k for k in base if k.endswith(("q_proj.weight", "v_proj.weight"))]
    assert lora_targets and all(not torch.equal(weights[k], base[k]) for k in lora_targets)
