"""Every config option composes; bad values fail before compute with a message that says the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from cem.cli import main
from cem.config import conf_dir
from cem.validate import EVAL_CHECKS, ConfigInvalid, validate


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("model", options("model"))
def test_every_model_composes_and_validates(model, compose):
    cfg = compose("eval", f"model={model}", "run_dir=/tmp/x")
    assert cfg.model.name == model
    validate(cfg, EVAL_CHECKS)


@pytest.mark.parametrize("bench", options("benchmark"))
def test_every_benchmark_composes(bench, compose):
    overrides = [f"benchmark={bench}"] + ([] if bench == "world" else ["benchmark.path=/data/x"])
    cfg = compose("eval", *overrides)
    assert cfg.benchmark.name == bench
    validate(cfg, EVAL_CHECKS)


def test_file_benchmark_without_path_names_the_key(compose):
    cfg = compose("eval", "benchmark=mmlu")
    with pytest.raises(
        ConfigInvalid, match=r"benchmark.path is required for benchmark=mmlu.*try benchmark.path="
    ):
        validate(cfg, EVAL_CHECKS)


def test_unknown_key_fails_at_composition(compose):
    with pytest.raises(ConfigCompositionException):
        compose("eval", "eval.formulaton=cf")


def test_every_problem_is_reported_at_once(compose):
    cfg = compose(
        "eval",
        "eval.max_new_tokens=0",
        "eval.batch_size=0",
        "model.max_length=4",
        "benchmark.pool_fraction=1.5",
    )
    with pytest.raises(ConfigInvalid) as err:
        validate(cfg, EVAL_CHECKS)
    msg = str(err.value)
    assert "eval.max_new_tokens must be >= 1; got 0 (try eval.max_new_tokens=24)" in msg
    assert "eval.batch_size must be >= 1; got 0 (try eval.batch_size=32)" in msg
    assert "model.max_length must be >= 16; got 4 (try model.max_length=2048)" in msg
    assert "benchmark.pool_fraction must be in (0, 1]; got 1.5" in msg
    assert len(err.value.problems) == 4


def test_world_fractions_must_leave_a_test_set(compose):
    cfg = compose("eval", "benchmark.pool_fraction=0.5", "benchmark.exam_fraction=0.5")
    with pytest.raises(ConfigInvalid, match="must be < 1 so the test set is not empty"):
        validate(cfg, EVAL_CHECKS)


def test_model_needs_exactly_one_source(compose):
    cfg = compose("eval", "model=tiny_random_llama", "model.path=/some/where")
    with pytest.raises(ConfigInvalid, match="exactly one of model.asset, model.path"):
        validate(cfg, EVAL_CHECKS)


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["evaluate"]) == 2
    assert "unknown command 'evaluate'" in capsys.readouterr().err


def test_cli_bad_value_exits_2_before_loading_anything(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cem.cli", "eval", f"run_dir={tmp_path}", "eval.mode=sample"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "eval.mode must be one of loglik, generate; got 'sample'" in proc.stderr
    assert not (tmp_path / "eval").exists()


# Config errors that a stage's constructor or loader would raise on config alone, each
# caught by `cem run`'s checks before round 0: (overrides, the key the message must name).
BEFORE_COMPUTE = [
    (["knowledge=local_corpus"], "knowledge.sources.0.path"),
    (
        ["knowledge=local_corpus", "knowledge.sources.0.path=/nonexistent/corpus"],
        "knowledge.sources.0.path",
    ),
    (
        [
            "knowledge=local_corpus",
            "knowledge.sources.0.path=.",
            "knowledge.sources.0.retriever=tfidf",
        ],
        "knowledge.sources.0.retriever",
    ),
    (["knowledge.sources.0.kind=wiki_ofline"], "knowledge.sources.0.kind"),
    (["eval.chat_template=true", "eval.formulation=cf"], "eval.chat_template"),
    (["eval.chat_template=true"], "eval.chat_template"),  # world's own formulation is cf
    (
        ["knowledge=web_search", "knowledge/search=brave", "knowledge.sources.0.api_key_env=null"],
        "knowledge.sources.0.api_key_env",
    ),
    (
        ["knowledge=mix", "knowledge.sources.0.quota=-1", "knowledge.sources.1.quota=0"],
        "knowledge.sources[*].quota",
    ),
    (["model.device=cuda"], "model.device"),
    (["trainer=fsdp"], "trainer.strategy"),
    (["eval.devices=0"], "eval.devices"),
]


@pytest.mark.parametrize(("overrides", "key"), BEFORE_COMPUTE,
                         ids=[" ".join(o) for o, _ in BEFORE_COMPUTE])  # fmt: skip
def test_run_stops_before_any_compute_naming_the_key(overrides, key, tmp_path, capsys):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["run", f"run_dir={root}", "logger=csv", *overrides])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid config" in err and key in err, err
    assert not (root / "round_0").exists()
