"""The W&B mirror (``cem.loop.mirror``): each training step once on one step axis across the
rounds, also when a run is killed and continued; job types that group a table's jobs into
``cem report``'s rows; and, end to end, the offline run files read back record by record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _records import entry, run_summary
from _wandb_file import read_run, run_files
from omegaconf import OmegaConf
from test_loop import FAST

from cem.io import read_json, read_jsonl, write_json
from cem.layout import RoundDir, read_marker
from cem.loop.mirror import (
    STEP,
    RunLogger,
    StepFeed,
    csv_steps,
    flat_entry,
    job_type,
    step_base,
)
from cem.records import RoundSummary, RunSummary


def write_log(folder: Path, version: int, steps: range, loss: float) -> None:
    """A ``train_logs/version_<n>/metrics.csv`` as Lightning's CSVLogger writes it: a step
    row per step and an epoch row after the last."""
    path = folder / "train_logs" / f"version_{version}" / "metrics.csv"
    path.parent.mkdir(parents=True)
    lines = ["epoch,step,train/epoch_loss,train/loss,train/lr"]
    lines += [f"0,{s},,{loss + s},0.01" for s in steps]
    lines.append(f"0,{steps[-1]},{loss},,")
    path.write_text("\n".join(lines) + "\n")


def finished(folder: Path, steps: int) -> None:
    write_json(RoundDir(folder).marker("train"), {"seconds": 1.0, "result": {"steps": steps}})


class FakeRun:
    """Records what the mirror sends to a W&B run."""

    def __init__(self):
        self.rows: list[dict] = []
        self.axes: dict[str, str] = {}

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.axes[name] = step_metric

    def log(self, row: dict) -> None:
        self.rows.append(row)


def test_csv_steps_keep_each_step_once_and_the_resumed_values(tmp_path):
    write_log(tmp_path, 0, range(0, 4), loss=10)  # killed after step 3, checkpoint at 2
    write_log(tmp_path, 1, range(2, 6), loss=20)  # resumed from the checkpoint
    rows = csv_steps(tmp_path)
    step_rows = [(s, r["train/loss"]) for s, r in rows if "train/loss" in r]
    assert step_rows == [(0, 10), (1, 11), (2, 22), (3, 23), (4, 24), (5, 25)]
    epochs = [(s, r["train/epoch_loss"]) for s, r in rows if "train/epoch_loss" in r]
    assert epochs == [(5, 20)]  # the killed version's epoch row lay past the resume point
    assert [s for s, r in csv_steps(tmp_path, before=2) if "train/loss" in r] == [0, 1]
    assert csv_steps(tmp_path / "nothing") == []


ROUND_0_ONLY = RunSummary.from_json(run_summary([entry(0, {})]))


class Received:
    """A Lightning logger's ``log_metrics``, recorded."""

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.rows.append((step, metrics))


def test_step_feed_sends_launched_ranks_rows_as_they_are_written_each_once(tmp_path):
    """What launched ranks' rank 0 appends to its CSV goes on to the loggers at the next
    poll, each row once (the epoch row shares its step with the last step row); the row being
    written and a file caught in the middle of a rewrite wait for a later poll."""
    got = Received()
    feed = StepFeed(tmp_path, [got])
    feed(False)  # no log yet
    assert got.rows == []
    path = tmp_path / "train_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    header = "epoch,step,train/epoch_loss,train/loss\n"
    path.write_text(header + "0,0,,3.5\n0,1,,3.25\n0,2,,3")  # step 2's row being written
    feed(False)
    assert got.rows == [(0, {"epoch": 0, "train/loss": 3.5}), (1, {"epoch": 0, "train/loss": 3.25})]
    path.write_text(header + "0,0,,3.5\n0,1,,3.25\n0,2,,3.125\n0,3,,3.0\n0,")  # cut mid-row
    feed(False)  # the cut row has no step yet: step 3's row is the last one, and waits
    assert [s for s, _ in got.rows] == [0, 1, 2]
    assert got.rows[2] == (2, {"epoch": 0, "train/loss": 3.125})  # not the half-written 3
    path.write_text(header + "0,0,,3.5\n0,1,,3.25\n0,2,,3.125\n0,3,,3.0\n0,3,2.9,\n")
    feed(True)  # the ranks have ended: the last row goes too
    assert got.rows[3:] == [(3, {"epoch": 0, "train/loss": 3.0}),
                            (3, {"epoch": 0, "train/epoch_loss": 2.9})]  # fmt: skip
    feed(True)
    assert len(got.rows) == 5  # nothing twice


def test_step_feed_after_a_resume_sends_only_later_steps(tmp_path):
    """A resumed stage's new CSV version redoes steps already sent: the W&B axis only rises."""
    write_log(tmp_path, 0, range(0, 4), loss=10)  # killed after step 3, checkpoint at 2
    got = Received()
    feed = StepFeed(tmp_path, [got])
    feed(True)
    write_log(tmp_path, 1, range(2, 6), loss=20)
    feed(True)
    steps = [s for s, _ in got.rows]
    assert steps == sorted(steps)
    assert [s for s, m in got.rows if "train/loss" in m] == list(range(6))
    assert got.rows[-2:] == [(5, {"epoch": 0, "train/loss": 25, "train/lr": 0.01}),
                             (5, {"epoch": 0, "train/epoch_loss": 20})]  # fmt: skip


def test_a_log_that_does_not_read_after_the_ranks_end_warns_and_keeps_the_stage(tmp_path, capsys):
    """The ranks have trained and written their metrics: a CSV log that still does not
    parse costs W&B the live steps, with a warning naming the log, and raises nothing."""
    path = tmp_path / "train_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss\n0,0,3.5\n0,1,not-a-number\n")
    got = Received()
    StepFeed(tmp_path, [got])(True)
    warned = "".join(capsys.readouterr().err.split())  # rich folds long lines
    assert "W&Bmissesthelivetrainingstepsof" in warned
    assert f"under{tmp_path / 'train_logs'}doesnotread" in warned
    assert "not-a-number" in warned
    assert got.rows == []


def test_a_continued_run_sends_every_step_once_in_rising_order(tmp_path, compose):
    """Killed in round 1's training after step 2 (checkpoint at step 2): the continued
    process's W&B run gets the warm-up from its CSV, round 1's first steps from the killed
    process's CSV, then the live steps, on one axis with the warm-up's steps before."""
    root = tmp_path / "run"
    warm, r1 = root / "warmup", root / "round_1"
    write_log(warm, 0, range(0, 3), loss=1)
    finished(warm, 3)
    write_log(r1, 0, range(0, 3), loss=10)
    mirror = RunLogger(compose("run", f"run_dir={root}", *FAST), root)  # logger=csv: no W&B
    mirror.run = FakeRun()
    assert step_base(root, r1) == 3 and step_base(root, warm) == 0
    for step in (2, 3):  # the continued training logs from its checkpoint's step on
        mirror.log_step(r1, step, {"train/loss": 100.0 + step, "epoch": 0})
    finished(r1, 4)
    mirror.update(ROUND_0_ONLY)  # nothing left to replay
    sent = [(row[STEP], row["round"], row["train/loss"]) for row in mirror.run.rows
            if "train/loss" in row]  # fmt: skip
    assert sent == [(0, 0.5, 1), (1, 0.5, 2), (2, 0.5, 3),
                    (3, 1.0, 10), (4, 1.0, 11), (5, 1.0, 102), (6, 1.0, 103)]  # fmt: skip
    assert mirror.run.axes["train/loss"] == STEP and mirror.run.axes["train/epoch"] == STEP
    live = [row for row in mirror.run.rows if row.get(STEP) in (5, 6)]
    assert [row["train/epoch"] for row in live] == [0, 0]  # Lightning's "epoch", renamed
    assert mirror.run.rows[-1] == {"round": 0, "cpt_tokens": 0, "cit_tokens": 0}


def test_each_entry_has_its_place_on_the_round_axis():
    metrics = {"exam": {"acc": 0.5, "acc_norm": 0.5, "n": 4}}
    warm = flat_entry(RoundSummary.from_json(entry(0, metrics, warmup=True)))
    first = flat_entry(RoundSummary.from_json(entry(1, metrics)))
    assert (warm["round"], first["round"]) == (0.5, 1)  # the warm-up between round 0 and 1
    assert warm["acc/exam"] == first["acc/exam"] == 0.5
    assert "mistakes" not in warm and first["mistakes"] == 0


def hydra_job(root: Path, *overrides: str) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    return root


def test_job_type_is_the_row_of_cem_report(tmp_path, compose):
    cfg = compose("run", "run_dir=/tmp/x", "table=paradigm")
    jobs = [hydra_job(tmp_path / f"s{seed}", "table=paradigm", "paradigm=cpt_only",
                      f"seed={seed}", "logger=wandb", "logger.tags=[a]") for seed in (0, 1)]  # fmt: skip
    assert [job_type(cfg, j) for j in jobs] == ["paradigm=cpt_only"] * 2
    assert cfg.logger.group == "paradigm"  # the table's jobs in one group
    assert job_type(cfg, tmp_path) == "cem-run"  # no overrides: not a sweep job
    long = [hydra_job(tmp_path / f"l{i}", f"model=a_model_with_a_very_long_name_{i}",
                      "benchmark=another_long_benchmark_name") for i in (1, 2)]  # fmt: skip
    capped = [job_type(cfg, j) for j in long]
    assert all(len(c) == 64 for c in capped) and capped[0] != capped[1]
    cfg.logger.job_type = "mine"
    assert job_type(cfg, jobs[0]) == "mine"


def steps_sent(monkeypatch, tmp_path: Path) -> list[tuple[str, int, bool]]:
    """Every step the W&B mirror's Lightning logger is handed, as it is handed: (training
    folder, step, whether that training's ``train/metrics.json`` was written by then)."""
    from cem.loop import mirror

    got: list[tuple[str, int, bool]] = []
    send = mirror.StepLogger.log_metrics

    def sent(self, metrics, step=None):
        got.append((self.folder.name, step, RoundDir(self.folder).train_metrics.is_file()))
        return send(self, metrics, step)

    monkeypatch.setattr(mirror.StepLogger, "log_metrics", sent)
    monkeypatch.setenv("CEM_SHARE_CACHE", str(tmp_path / "share"))  # each stage trains here
    return got


@pytest.mark.e2e
def test_every_stage_sends_its_steps_to_w_and_b_while_it_trains(tmp_path, compose, monkeypatch):
    """With W&B on (the default logger), the warm-up's and each round's steps go to the
    mirror as they are logged, before the stage ends, each CSV row once (once, a round's
    loggers went where its warm-up flag goes, and its steps came only at the next update)."""
    from cem.loop.run import run_loop

    got = steps_sent(monkeypatch, tmp_path)
    root = tmp_path / "run"
    run_loop(compose("run", f"run_dir={root}", *FAST, "logger=wandb"))
    for stage in ("warmup", "round_1", "round_2"):
        steps = [(s, done) for name, s, done in got if name == stage]
        assert [s for s, _ in steps] == [s for s, _ in csv_steps(root / stage)], stage
        assert steps and not any(done for _, done in steps), stage


# --- end to end: offline W&B files of a killed and continued run --------------------------------

WANDB_ARGS = ("logger=wandb", "logger.group=demo_table", "seed=0",
              "train.checkpoint_every_n_steps=2")  # fmt: skip
# `cem run` that SIGKILLs itself as round 1's fourth step starts: steps 0-2 are logged, the
# checkpoint is step 2's, so the continued training redoes step 2 (its CSV has it twice).
KILLED_AFTER_STEP_2 = """
import os, signal, sys
from pathlib import Path
from cem.training.module import CemLM
from cem.cli import main

def kill_in_round_1(self, batch, batch_idx):
    if self.global_step == 3 and Path(self.trainer.default_root_dir).name == "round_1":
        os.kill(os.getpid(), signal.SIGKILL)

CemLM.on_train_batch_start = kill_in_round_1
sys.exit(main(["run", *sys.argv[1:]]))
"""


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    """A fast run with W&B offline, SIGKILLed in round 1's training, then continued."""
    import torch

    root = tmp_path_factory.mktemp("wandb") / "run"
    args = [f"run_dir={root}", *FAST, *WANDB_ARGS]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STEP_2, *args], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    again = subprocess.run([sys.executable, "-m", "cem.cli", "run", *args], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    return root


@pytest.mark.e2e
def test_offline_files_hold_every_step_once_on_one_axis(continued):
    root = continued
    files = run_files(root)
    assert len(files) == 2  # the killed process's run, then the continued one's
    killed, run = read_run(files[0]), read_run(files[1])
    assert run.exit_code == 0
    assert (run.run.run_group, run.run.job_type) == (
        "demo_table",
        "experiment=fast train.checkpoint_every_n_steps=2",  # no seed, no logger.*
    )
    steps = [h for h in run.history if "train/loss" in h]
    folders = [root / "warmup", root / "round_1", root / "round_2"]
    total = sum(read_marker(f, "train")["result"]["steps"] for f in folders)
    assert [h[STEP] for h in steps] == list(range(total))  # each once, rising
    expected = [(step_base(root, f) + s, r["train/loss"]) for f in folders
                for s, r in csv_steps(f) if "train/loss" in r]  # fmt: skip
    assert [(h[STEP], h["train/loss"]) for h in steps] == expected  # what the CSV logs hold
    assert {h["round"] for h in steps} == {0.5, 1, 2}
    for key in ("train/loss_cpt", "train/loss_cit", "train/lr", "train/tokens_per_s",
                "train/epoch_loss"):  # fmt: skip
        assert any(key in h for h in run.history if STEP in h and h["round"] == 1), key
        assert run.step_metric[key] == STEP
    # The killed process's file reads up to where W&B had written it (records still in
    # flight at a SIGKILL are lost): a run of rising steps, each once, and no exit record.
    killed_steps = [h[STEP] for h in killed.history if "train/loss" in h]
    assert killed_steps == list(range(len(killed_steps))) and killed.exit_code is None
    logs = sorted((root / "round_1" / "train_logs").glob("version_*"))
    assert len(logs) == 2  # the killed start and the continued one


@pytest.mark.e2e
def test_offline_files_hold_rounds_intervals_tables_and_the_plot(continued):
    root = continued
    run = read_run(run_files(root)[-1])
    rounds = {h["round"]: h for h in run.history if "acc/exam" in h}
    assert sorted(rounds) == [0, 0.5, 1, 2]
    summary = read_json(root / "summary.json")
    for k in (1, 2):
        iv = summary["rounds"][k]["intervals"]["vs_warmup"]
        h = rounds[k]
        assert h["acc/exam"] == summary["rounds"][k]["metrics"]["exam"]["acc"]
        assert [h["interval_vs_warmup/exam_low"], h["interval_vs_warmup/exam_high"]] == iv["exam"][
            "ci"
        ]
        assert h["interval_vs_warmup/knowledge_p"] == iv["knowledge"]["p"]
        assert "fix_rate/test_control" in h and "general_nll" in h
        assert run.step_metric["interval_vs_warmup/exam_low"] == "round"
        table = run.history[[i for i, x in enumerate(run.history)
                             if f"mistakes/round_{k}/_type" in x][0]]  # fmt: skip
        assert table[f"mistakes/round_{k}/_type"] == "table-file"
        media = files_dir(root) / table[f"mistakes/round_{k}/path"]
        data = json.loads(media.read_text())
        assert data["columns"][-3:] == ["hit", "trained", "fixed"]
        flags = {f["id"]: f for f in read_json(root / f"round_{k}/diagnostics.json")["per_mistake"]}
        ids = [m["id"] for m in read_jsonl(root / f"round_{k}/mistakes/mistakes.jsonl")]
        assert [row[0] for row in data["data"]] == ids
        assert [row[-1] for row in data["data"]] == [flags[i]["fixed"] for i in ids]
    plot = [h for h in run.history if "summary_plot/_type" in h]
    assert plot and plot[0]["summary_plot/_type"] == "image-file"
    assert run.summary["stopped"] == {"reason": "rounds", "round": 2}
    # the run's config holds the code beside the loop's config
    from cem.provenance import provenance

    config = {i.key: json.loads(i.value_json) for i in run.run.config.update}
    assert config["code"] == provenance() and config["seed"] == summary["seed"]


def files_dir(root: Path) -> Path:
    return run_files(root)[-1].parent / "files"
