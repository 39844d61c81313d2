"""``cem run``: summary math on synthetic records, stage markers, stopping, validation before
compute, and the whole loop end to end on the tiny random Llama (experiment=fast), killed
with SIGKILL during training and resumed to the very same numbers."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _records import eval_record
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cem.config import conf_dir
from cem.errors import CemError
from cem.io import read_json, read_jsonl, write_json
from cem.layout import RoundDir, read_marker
from cem.loop import stages
from cem.loop.plots import plot_summary
from cem.loop.run import check_run, run_loop, stop_reason
from cem.loop.summary import build_summary, efficiency, forgetting, gains, report
from cem.records import EvalRecord, RunSummary, read_summary, write_records


def rec(set_: str, id_: str, correct: bool) -> EvalRecord:
    return eval_record(id_, set_, correct)


def records(exam_right: set[int], test_right: set[int]) -> list[EvalRecord]:
    return [rec("exam", f"e{i}", i in exam_right) for i in range(4)] + [
        rec("test", f"t{i}", i in test_right) for i in range(4)
    ]


# --- summary math ----------------------------------------------------------------------


def test_forgetting_is_the_share_of_round_0_rights_now_wrong():
    r0 = records({0, 1}, {0})
    now = records({1, 2, 3}, {1})
    assert forgetting(r0, now) == {"exam": 0.5, "test": 1.0}
    assert forgetting(records(set(), {0}), now) == {"exam": None, "test": 1.0}


def test_gains_split_into_schema_and_knowledge():
    ref = {"exam": {"acc": 0.5}, "test": {"acc": 0.5}}
    now = {"exam": {"acc": 0.75}, "test": {"acc": 0.625}}
    g = gains(ref, now)
    assert g == {"exam": 0.25, "test": 0.125, "schema": 0.125, "knowledge": 0.125}
    assert gains(ref, {"exam": {"acc": 1.0}})["knowledge"] is None  # no test set scored
    assert efficiency(g, 2000) == {
        "exam_gain_per_1k_cpt": 0.125,
        "knowledge_gain_per_1k_cpt": 0.0625,
    }
    assert efficiency(g, 0)["exam_gain_per_1k_cpt"] is None


def fake_eval(folder: Path, recs: list[EvalRecord], seconds: float = 1.0) -> None:
    write_records(folder / "eval" / "records.jsonl", recs)
    write_json(RoundDir(folder).marker("eval"), {"seconds": seconds, "cpu_seconds": 2 * seconds})


def fake_train(folder: Path, cpt: int, cit: int, mistakes: int | None = None) -> None:
    write_json(
        folder / "train_set" / "stats.json", {"tokens": {"cpt": cpt, "cit": cit, "replay": 0}}
    )
    for stage in ("build", "train"):
        write_json(RoundDir(folder).marker(stage), {"seconds": 2.0, "result": {}})
    if mistakes is not None:
        write_json(RoundDir(folder).marker("retrieve"),
                   {"seconds": 3.0, "result": {"mistakes": mistakes, "passages": 5}})  # fmt: skip


def synthetic_run(root: Path) -> None:
    """Round 0, warm-up and one trained round, as the loop lays them out."""
    fake_eval(root / "round_0", records({0, 1}, {0}))  # exam 0.5, test 0.25
    fake_train(root / "warmup", 0, 500)
    fake_eval(root / "round_1", records({0, 1, 2}, {0, 1}))  # after warm-up: 0.75, 0.5
    fake_train(root / "round_1", 2000, 1000, mistakes=1)
    fake_eval(root / "round_2", records({0, 1, 2, 3}, {1}))  # M1: 1.0, 0.25


@pytest.mark.parametrize("protocol", ["heldout", "retest"])
def test_summary_of_a_synthetic_run(tmp_path, protocol):
    synthetic_run(tmp_path)
    cfg = OmegaConf.create({"protocol": {"name": protocol}, "model": {"name": "m"},
                            "benchmark": {"name": "b"}, "seed": 0,
                            "loop": {"warmup": {"enabled": True}}})  # fmt: skip
    s = build_summary(tmp_path, cfg, "rounds")
    r0, r1, warm = s.rounds[0], s.rounds[1], s.warmup
    assert [r0.round, r1.round, warm.round] == [0, 1, 0]
    assert [e.key for e in s.timeline] == ["round_0", "warmup", "round_1"]
    assert [e.tick for e in s.timeline] == ["0", "W", "1"]
    assert (r0.eval_dir, warm.eval_dir, r1.eval_dir) == ("round_0/eval", "round_1/eval",
                                                         "round_2/eval")  # fmt: skip
    assert r1.metrics["exam"] == {"acc": 1.0, "acc_norm": 1.0, "n": 4}
    assert r1.gains["vs_warmup"] == {"exam": 0.25, "test": -0.25, "schema": -0.25, "knowledge": 0.5}
    assert r1.gains["vs_round_0"] == {"exam": 0.5, "test": 0.0, "schema": 0.0, "knowledge": 0.5}
    assert r1.forgetting == {"exam": 0.0, "test": 1.0}
    assert r1.forgetting_vs_warmup == {"exam": 0.0, "test": 0.5}
    assert r1.data_efficiency == {"exam_gain_per_1k_cpt": 0.125, "knowledge_gain_per_1k_cpt": 0.25}
    assert (r1.cpt_tokens, r1.cit_tokens, warm.cit_tokens, r1.mistakes) == (2000, 1000, 500, 1)
    assert r1.seconds == {"retrieve": 3.0, "build": 2.0, "train": 2.0, "eval": 1.0}
    assert s.reference == "warmup" and s.gains["round"] == 1 and s.best_round == 1
    assert s.reference_entry is warm and s.final is r1
    assert s.stopped == {"reason": "rounds", "round": 1}
    assert s.seconds == {"total": 14.0, "cpu_total": 6.0}  # CPU time of the evals only
    assert {e.protocol for e in [r0, r1, warm]} == {protocol} == {s.protocol}
    # What summary.json holds: each kind of entry its own fields, and it reads back alike.
    written = s.to_json()
    assert RunSummary.from_json(written).to_json() == written
    assert "trained_tokens" not in written["rounds"][0] and "gains" not in written["rounds"][0]
    assert "mistakes" not in written["warmup"] and "data_efficiency" not in written["warmup"]
    assert written["rounds"][1]["diagnostics"] is None  # no diagnostics.json: still written
    assert "mistakes_by_reason" not in written["rounds"][1]  # no knowledge/stats.json
    report(s)
    assert plot_summary(s, tmp_path / "summary.png").stat().st_size > 1000


# --- stages and stopping -----------------------------------------------------------------


def test_a_stage_runs_once_and_its_marker_is_written_last(tmp_path):
    calls = []
    info = stages.run_stage(tmp_path, "eval", lambda: calls.append(1) or {"acc": 0.5})
    assert info["result"] == {"acc": 0.5} and info["seconds"] >= 0
    assert stages.run_stage(tmp_path, "eval", lambda: calls.append(2)) == info
    assert calls == [1]

    def crash():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stages.run_stage(tmp_path, "train", crash)
    assert read_marker(tmp_path, "train") is None


def test_without_warm_up_round_1_reuses_round_0_scores(tmp_path):
    from cem.loop.run import evaluate_round

    fake_eval(tmp_path / "round_0", records({0}, {1}))
    info = evaluate_round(OmegaConf.create({}), tmp_path, 1, None, ["exam", "test"])
    assert info["result"] == {"copied_from": str(tmp_path / "round_0" / "eval")}
    copied = read_jsonl(tmp_path / "round_1" / "eval" / "records.jsonl")
    assert copied == read_jsonl(tmp_path / "round_0" / "eval" / "records.jsonl") != []


def test_stop_reasons():
    cfg = OmegaConf.create({"loop": {"rounds": 3, "patience": 1, "min_delta": 0.0},
                            "mistakes": {"margin_threshold": 0.0, "max_mistakes": None, "seed": 0}})  # fmt: skip
    wrong = [eval_record("e", "exam", correct=False)]
    right = [dataclasses.replace(wrong[0], correct=True, pred=0)]
    assert stop_reason(cfg, 1, [0.5], wrong) is None
    assert stop_reason(cfg, 2, [0.5, 0.6], wrong) is None
    assert stop_reason(cfg, 3, [0.5, 0.6, 0.6], wrong) == "patience"
    assert stop_reason(cfg, 2, [0.5, 0.6], right) == "no_mistakes"
    assert stop_reason(cfg, 4, [0.5, 0.6, 0.7, 0.8], wrong) == "rounds"
    cfg.loop.patience = 2
    assert stop_reason(cfg, 3, [0.5, 0.6, 0.6], wrong) is None
    cfg.loop.patience = None
    assert stop_reason(cfg, 3, [0.5, 0.4, 0.3], wrong) is None


# --- configs and validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
)
def test_every_experiment_composes_and_validates(experiment, compose):
    cfg = compose("run", f"experiment={experiment}", "run_dir=/tmp/x")
    assert check_run(cfg) == []


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_defaults_validate_and_seeds_follow_seed(logger, compose):
    cfg = compose("run", "seed=3", f"logger={logger}", "run_dir=/tmp/x")
    assert check_run(cfg) == []
    assert cfg.logger.backend == logger
    seeds = (cfg.benchmark.seed, cfg.mistakes.seed, cfg.mix.seed, cfg.replay.seed, cfg.train.seed)
    assert seeds == (3, 3, 3, 3, 3)  # the world split rotates with the seed


def test_every_problem_is_reported_with_its_fix(compose):
    cfg = compose("run", "run_dir=/tmp/x", "loop.rounds=0", "mix.cit_ratio=1.5", "loop.patience=0",
                      "train.lr=0", "eval.sets=[test]")  # fmt: skip
    problems = check_run(cfg)
    assert "loop.rounds must be >= 1; got 0 (try loop.rounds=2)" in problems
    assert "mix.cit_ratio must be in [0, 1]; got 1.5 (try mix.cit_ratio=0.5)" in problems
    assert "loop.patience must be >= 1; got 0 (try loop.patience=1)" in problems
    assert any(p.startswith("train.lr must be > 0") for p in problems)
    assert any(p.startswith("eval.sets must include exam") for p in problems)
    assert len(problems) == 5, problems


def test_unknown_group_option_lists_the_allowed_ones(compose):
    with pytest.raises(ConfigCompositionException, match=r"(?s)logger/tensorboard.*csv.*wandb"):
        compose("run", "logger=tensorboard")
    with pytest.raises(ConfigCompositionException, match=r"(?s)experiment/huge.*fast"):
        compose("run", "experiment=huge")


def test_cli_bad_overrides_exit_2_before_compute(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cem.cli", "run", f"run_dir={tmp_path / 'r'}", "loop.rounds=0",
         "mix.cit_ratio=1.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "loop.rounds must be >= 1; got 0 (try loop.rounds=2)" in proc.stderr
    assert "mix.cit_ratio must be in [0, 1]; got 1.5 (try mix.cit_ratio=0.5)" in proc.stderr
    assert not (tmp_path / "r" / "round_0").exists()


# --- the loop end to end (tiny random Llama) -----------------------------------------------

FAST = ("experiment=fast", "eval.progress=false")


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, compose):
    root = tmp_path_factory.mktemp("loop") / "run"
    return root, run_loop(compose("run", f"run_dir={root}", *FAST))


@pytest.mark.e2e
def test_every_stage_records_the_code_it_ran_with(fast_run):
    import torch

    from cem.provenance import code_fingerprint, git_commit

    root, summary = fast_run
    assert read_marker(root / "round_1", "train")["code"] == summary.code[0]
    assert len(summary.code) == 1  # one process, one code version for every stage
    code = summary.code[0]
    assert code["code"] == code_fingerprint()[:16] and code["threads"] == torch.get_num_threads()
    assert (code["commit"], code["dirty"]) == git_commit()
    assert code["torch"] == torch.__version__


@pytest.mark.e2e
def test_loop_writes_every_file(fast_run):
    root, summary = fast_run
    expected = [
        "config.yaml", "summary.json", "summary.png", "metrics.csv",
        "round_0/eval/records.jsonl", "round_0/done/eval.json",
        "warmup/train_set/train.parquet", "warmup/done/train.json",
        "round_1/eval/metrics.json", "round_1/mistakes/mistakes.jsonl",
        "round_1/knowledge/knowledge.jsonl", "round_1/train_set/stats.json",
        "round_1/train/metrics.json", "round_1/diagnostics.json",
        "round_2/train_set/train.parquet", "round_2/model/config.json", "round_3/eval/records.jsonl",
    ]  # fmt: skip
    assert [p for p in expected if not (root / p).exists()] == []
    # loop.keep_models=last: only the newest model stays; no finished training's checkpoints.
    superseded = ["warmup/model", "round_1/model", *(f"{f}/checkpoints" for f in
                  ("warmup", "round_1", "round_2"))]  # fmt: skip
    assert [p for p in superseded if (root / p).exists()] == []
    assert not (root / "round_3" / "mistakes").exists()  # the last folder scores the final model
    for stage in ("retrieve", "build", "train", "eval"):
        assert read_marker(root / "round_2", stage)["seconds"] > 0
    assert read_json(root / "summary.json") == summary.to_json()
    assert [r.round for r in summary.rounds] == [0, 1, 2]
    assert summary.stopped == {"reason": "rounds", "round": 2}
    assert set(summary.rounds[2].metrics) == {"exam", "test", "transfer_reverse"}
    assert summary.warmup.cit_tokens > 0 and summary.rounds[1].cpt_tokens > 0
    trained = summary.rounds[1].trained_tokens  # what the round's steps reached
    assert (
        trained["cpt"] > 0
        and trained == read_json(root / "round_1/train/metrics.json")["target_tokens"]
    )
    # Round 2 reviews and replays round 1: its build saw round 1's folder.
    assert read_json(root / "round_2/train_set/stats.json")["earlier_rounds"] == [
        str(root / "round_1")
    ]
    warm = read_json(root / "warmup/train_set/stats.json")
    assert warm["paradigm"] == "cit_only" and set(warm["by_kind"]) == {"normative"}
    lines = (root / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("protocol,round,label,set,acc") and len(lines) == 1 + 4 * 3


@pytest.mark.e2e
def test_loop_diagnoses_each_round_and_gives_paired_intervals(fast_run):
    root, summary = fast_run
    for k in (1, 2):
        d = read_json(root / f"round_{k}" / "diagnostics.json")
        mistakes = read_jsonl(root / f"round_{k}" / "mistakes" / "mistakes.jsonl")
        assert [f["id"] for f in d["per_mistake"]] == [m["id"] for m in mistakes]
        assert sum(g["n"] for g in d["fix_rates"].values()) == d["mistakes"] == len(mistakes)
        after = {
            r["id"]: r["correct"] for r in read_jsonl(root / f"round_{k + 1}/eval/records.jsonl")
        }
        assert all(f["fixed"] == after[f["id"]] for f in d["per_mistake"])
        assert all(f["hit"] or not f["trained"] for f in d["per_mistake"])  # trained needs a hit
        assert d["control"]["set"] == "test" and d["control"]["n"] >= d["control"]["fixed"]
        entry = summary.rounds[k]
        assert entry.diagnostics["fix_rates"] == d["fix_rates"]
        iv = entry.intervals["vs_warmup"]
        exam = iv["exam"]
        assert exam["delta"] == pytest.approx(entry.gains["vs_warmup"]["exam"])
        assert exam["ci"][0] <= exam["delta"] <= exam["ci"][1] and 0 <= exam["p"] <= 1
        assert iv["knowledge"]["delta"] == pytest.approx(entry.gains["vs_warmup"]["knowledge"])
        assert entry.general_nll > 0 and "general_nll" in iv
    assert summary.gains["intervals"] == summary.rounds[-1].intervals


@pytest.mark.e2e
def test_a_finished_run_is_not_recomputed(fast_run, monkeypatch, compose):
    root, summary = fast_run

    def boom(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for name in ("eval_task", "retrieve_task", "build_task", "warmup_build_task", "train_task"):
        monkeypatch.setattr(stages, name, boom)
    assert run_loop(compose("run", f"run_dir={root}", *FAST)) == summary


@pytest.mark.e2e
def test_a_run_continues_only_with_its_own_config(fast_run, compose):
    root, _ = fast_run
    with pytest.raises(CemError, match=r"another config \(mix.cit_ratio: 0.5 -> 0.25\)"):
        run_loop(compose("run", f"run_dir={root}", *FAST, "mix.cit_ratio=0.25"))


@pytest.mark.e2e
def test_wandb_logger_in_disabled_mode(fast_run, monkeypatch, compose):
    from cem.loop.mirror import RunLogger

    root, summary = fast_run
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose("run", f"run_dir={root}", *FAST, "logger=wandb")
    logger = RunLogger(cfg, root)
    try:
        logger.update(summary, final=True)
        d = read_json(root / "round_1" / "diagnostics.json")
        logger.log_mistakes(1, root / "round_1" / "mistakes" / "mistakes.jsonl", d)
        assert logger.logged == {"round_0", "warmup", "round_1", "round_2"}
    finally:
        logger.finish()
    assert logger.run is None
    assert len(read_jsonl(root / "round_1" / "mistakes" / "mistakes.jsonl")) > 0


# `cem run` in a subprocess that SIGKILLs itself inside round 1's training, right after the
# checkpoint of step 2 (callbacks run before the module's hook): a kill at a known point,
# with no race against a poller.
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from cem.training.module import CemLM
from cem.cli import main

hook = CemLM.on_train_batch_end

def kill_in_round_1(self, outputs, batch, batch_idx):
    hook(self, outputs, batch, batch_idx)
    if self.global_step == 2 and Path(self.trainer.default_root_dir).name == "round_1":
        os.kill(os.getpid(), signal.SIGKILL)

CemLM.on_train_batch_end = kill_in_round_1
sys.exit(main(["run", *sys.argv[1:]]))
"""


@pytest.mark.e2e
def test_a_killed_run_resumes_to_the_same_results(fast_run, tmp_path):
    import torch

    ref, ref_summary = fast_run
    root = tmp_path / "run"
    args = [f"run_dir={root}", *FAST]
    # The same thread count as this process, so that sums reduce in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, *args], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert read_marker(root / "round_1", "build") is not None
    assert read_marker(root / "round_1", "train") is None
    assert (root / "round_1/checkpoints/last.ckpt").is_file() and not (
        root / "round_1/model"
    ).exists()

    again = subprocess.run([sys.executable, "-m", "cem.cli", "run", *args], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "round_1/retrieve: done" in again.stderr and "resuming from" in again.stderr
    summary = read_summary(root / "summary.json")
    for a, b in zip([summary.warmup, *summary.rounds],
                    [ref_summary.warmup, *ref_summary.rounds], strict=True):  # fmt: skip
        assert a.metrics == b.metrics  # exact: acc, acc_norm, n of every set
        assert a.forgetting == b.forgetting
    assert summary.gains == ref_summary.gains
    # Bit-exact beyond accuracy: every option's log-likelihood under the final model.
    final = "round_3/eval/records.jsonl"
    assert [r["scores"] for r in read_jsonl(root / final)] == [
        r["scores"] for r in read_jsonl(ref / final)
    ]


@pytest.mark.parametrize(
    ("keep", "final", "left"),
    [("all", True, {"warmup", "round_1", "round_2"}), ("last", False, {"round_2"}),
     ("last", True, {"round_2"}), ("none", False, {"round_2"}), ("none", True, set())],
)  # fmt: skip
def test_prune_keeps_what_a_later_stage_needs(tmp_path, keep, final, left):
    for name in ("warmup", "round_1", "round_2", "round_3"):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "checkpoints").mkdir()
        if name != "round_3":  # round 3's training has not finished: its files stay
            write_json(RoundDir(tmp_path / name).marker("train"), {"seconds": 1.0})
    stages.prune(tmp_path, keep, final=final)
    models = {p.parent.name for p in tmp_path.glob("*/model")}
    assert models == left | {"round_3"}
    checkpoints = {p.parent.name for p in tmp_path.glob("*/checkpoints")}
    assert checkpoints == ({"warmup", "round_1", "round_2", "round_3"} if keep == "all"
                           else {"round_3"})  # fmt: skip


@pytest.mark.e2e
def test_a_finished_run_is_reused_by_an_identical_job(fast_run, tmp_path, monkeypatch, compose):
    root, summary = fast_run

    def boom(*args, **kwargs):
        raise AssertionError("a stage of a finished identical run ran again")

    for name in ("eval_task", "retrieve_task", "build_task", "warmup_build_task", "train_task"):
        monkeypatch.setattr(stages, name, boom)
    # Another folder and result-neutral differences (logging, kept models): the same run.
    again = run_loop(compose("run", f"run_dir={tmp_path / 'again'}", *FAST, "logger.group=other",
                                 "loop.keep_models=all", "loop.reuse_runs=true"))  # fmt: skip
    assert [e.metrics for e in again.rounds] == [e.metrics for e in summary.rounds]
    assert again.gains == summary.gains
    assert (tmp_path / "again" / "round_2" / "diagnostics.json").is_file()
    # A result-changing key is another run: its stages must run.
    with pytest.raises(AssertionError, match="ran again"):
        run_loop(compose("run", f"run_dir={tmp_path / 'other'}", *FAST, "mix.cit_ratio=0.25",
                             "loop.reuse_runs=true"))  # fmt: skip


@pytest.mark.e2e
def test_a_finished_run_whose_summary_does_not_read_is_not_reused(fast_run, tmp_path, capsys,
                                                                    compose):  # fmt: skip
    import shutil

    from cem.loop import share

    ref, _ = fast_run
    src = tmp_path / "src"
    shutil.copytree(ref, src, symlinks=True)
    (src / "summary.json").write_text('{"protocol": "heldout"')  # cut short
    cfg = compose("run", f"run_dir={tmp_path / 'new'}", *FAST, "loop.reuse_runs=true")
    share.register_run(src, cfg)
    assert share.reuse_run(tmp_path / "new", cfg) is None
    err = capsys.readouterr().err
    assert f"warning: not reusing {src}: " in err and "not valid JSON" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.e2e
def test_a_changed_file_reruns_its_stage_or_says_why_it_cannot(fast_run, tmp_path, capsys, compose):
    import shutil

    ref, summary = fast_run
    root = tmp_path / "run"
    shutil.copytree(ref, root, symlinks=True)
    records = root / "round_3/eval/records.jsonl"
    records.write_text(records.read_text().replace('"correct": true', '"correct": false', 1))
    again = run_loop(compose("run", f"run_dir={root}", *FAST))  # round 3 is scored again
    assert [r.metrics for r in again.rounds] == [r.metrics for r in summary.rounds]
    assert again.gains == summary.gains
    err = capsys.readouterr().err
    assert f"{records} does not match its sha256 in the done-marker" in err
    assert records.read_bytes() == (ref / "round_3/eval/records.jsonl").read_bytes()
    # The final model's base was deleted by loop.keep_models=last: it cannot be retrained.
    weights = root / "round_2/model/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CemError, match=r"round_2/train must run again but the model it starts "
                                       r"from, .*round_1/model, is gone"):  # fmt: skip
        run_loop(compose("run", f"run_dir={root}", *FAST))
    assert f"{weights} does not match its sha256" in capsys.readouterr().err
