"""Data-parallel evaluation (cem.evaluation.parallel): ranks score their share of the
batches, rank 0 writes what one process writes, byte for byte (fp32, the tiny model, 2 gloo
processes on the CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer
from conftest import compose_config

from cem.errors import ConfigError
from cem.evaluation.generate import generate_texts
from cem.evaluation.parallel import Ranks, _fill, check_devices
from cem.evaluation.scorer import Request, score_requests

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("records.jsonl", "metrics.json", "general.json")
# Enough items for several chunks of several batches on each rank.
OVERRIDES = ["model=tiny_random_llama", "benchmark.limit=5", "eval.batch_size=2",
             "eval.chunk_size=7", "eval.progress=false"]  # fmt: skip


@contextmanager
def one_thread():
    """The ranks run one thread each (torchrun's default): so does the reference."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reference(tmp_path: Path, *overrides: str) -> Path:
    from cem.evaluation.runner import run_eval

    with one_thread():
        run_eval(compose_config("eval", *OVERRIDES, f"run_dir={tmp_path / 'one'}", *overrides))
    return tmp_path / "one" / "eval"


def assert_same_files(one: Path, many: Path) -> None:
    for name in OUTPUTS:
        assert (many / name).read_bytes() == (one / name).read_bytes(), name
    assert not (many / "records.partial.jsonl").exists()


def child_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --- the shares ------------------------------------------------------------------------


def test_shares_are_strided_batches_that_fill_every_position_once():
    assert [b for b in range(7) if Ranks(1, 3).mine(b)] == [1, 4]
    assert _fill([[[1.0, None], None], [[None, 2.0], "x"]]) == [[1.0, 2.0], "x"]


def test_the_shares_of_two_ranks_merge_into_one_process_s_scores():
    model, tok = tiny_model(), tiny_tokenizer()
    requests = [Request(f"Question {i}: what is {'very ' * i}far?\nAnswer:", [" A", " Be", " C"])
                for i in range(9)]  # fmt: skip
    whole = score_requests(model, tok, requests, batch_size=2)
    shares = [score_requests(model, tok, requests, batch_size=2, shard=Ranks(r, 2))
              for r in (0, 1)]  # fmt: skip
    assert all(None in [x for row in s for x in row] for s in shares)  # each left some out
    assert _fill(shares) == whole
    prompts = [r.context for r in requests]
    texts = generate_texts(model, tok, prompts, max_new_tokens=3, batch_size=2)
    parts = [generate_texts(model, tok, prompts, max_new_tokens=3, batch_size=2,
                            shard=Ranks(r, 2)) for r in (0, 1)]  # fmt: skip
    assert _fill(parts) == texts


def test_device_counts_are_checked_before_any_rank_starts(tmp_path, monkeypatch, compose):
    def two_ranks(device: str):
        return compose("eval", *OVERRIDES, f"run_dir={tmp_path}", "eval.devices=2", device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"eval.devices must be at most the 1 visible GPUs; "
                       r"got 2 \(try eval.devices=1\)"):  # fmt: skip
        check_devices(two_ranks("model.device=auto"))
    check_devices(two_ranks("model.device=cpu"))  # CPU ranks: any N
    with pytest.raises(ConfigError, match=r"model.device names one GPU .*model.device=auto"):
        check_devices(two_ranks("model.device=cuda:0"))


# --- two gloo processes ------------------------------------------------------------------


@pytest.mark.e2e
def test_torchrun_cem_eval_writes_one_process_s_files(tmp_path):
    cem = Path(sys.executable).with_name("cem")
    cem = str(cem) if cem.is_file() else shutil.which("cem")
    if cem is None:
        pytest.skip("the `cem` command is not installed (pip install -e .)")
    one = reference(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "--no-python", cem, "eval", *OVERRIDES,
               f"run_dir={tmp_path / 'two'}"]  # fmt: skip
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    said = " ".join((done.stdout + done.stderr).split())  # rich wraps lines
    assert "on 2 ranks" in said and said.count("scored 20 questions") == 1  # rank 0 talks
    assert_same_files(one, tmp_path / "two" / "eval")


@pytest.mark.e2e
def test_eval_devices_starts_the_ranks_itself(tmp_path, monkeypatch, compose):
    """``eval.devices=2`` (what ``cem run`` passes to its eval stages), in generate mode."""
    from cem.evaluation.runner import run_eval

    for key, value in child_env().items():
        monkeypatch.setenv(key, value)
    one = reference(tmp_path, "eval.mode=generate", "eval.max_new_tokens=4")
    metrics = run_eval(compose("eval", *OVERRIDES, f"run_dir={tmp_path / 'two'}",
                               "eval.mode=generate", "eval.max_new_tokens=4", "eval.devices=2"))  # fmt: skip
    assert_same_files(one, tmp_path / "two" / "eval")
    assert json.loads(json.dumps(metrics)) == json.loads((one / "metrics.json").read_text())


def test_cem_run_s_eval_stages_start_eval_devices_ranks(tmp_path, monkeypatch, compose):
    from cem.evaluation import runner
    from cem.loop import stages

    started = []

    def launch(cfg, root):
        started.append((cfg.eval.devices, cfg.eval.sets, root))
        return {"exam": {"acc": 0.5, "n": 2}}

    monkeypatch.setattr(runner, "launch", launch)
    cfg = compose("run", "model=tiny_random_llama", "eval.devices=2", f"run_dir={tmp_path}")
    folder = tmp_path / "round_0"
    assert stages.eval_task(cfg, folder, None, ["exam"]) == {"exam": {"acc": 0.5, "n": 2}}
    assert started == [(2, ["exam"], folder)]
