"""The benchmark scripts still run (slow tier): each in its smallest setting, figures not kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_parallel_eval import child_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_bench_gpu_smoke_runs_its_three_parts_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    script = "benchmarks/bench_gpu.py"
    cmd = [sys.executable, script, "--smoke", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["score"]["cpu/fp32"]["q_per_s"] > 0
    assert got["score"]["cpu/bf16"]["agreement_vs_cpu_fp32"] >= 0.5
    for mode in ("lora", "full"):
        assert got["train"][mode]["tokens_per_s"] > 0 and got["train"][mode]["flops_per_token"] > 0
    assert got["train"]["lora"]["flops_per_token"] < got["train"]["full"]["flops_per_token"]
    assert got["run"]["returncode"] == 0 and "delta" in got["run"]["knowledge_gain"]


def test_bench_train_smoke_runs(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, "benchmarks/bench_train.py", "--smoke", "--bucketed", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["ours/lora/32-true"]["tokens_per_s"] > 0
    assert got["hf_trainer_peft_grouped/lora/32-true"]["sampler"] == "LengthGroupedSampler"
    bucketed = got["ours_bucketed/lora/32-true"]  # unpacked: one row per sequence
    assert bucketed["rows_per_batch"] == round(got["ours/lora/32-true"]["rows_per_batch"])
    assert bucketed["padding_waste"] > got["ours/lora/32-true"]["padding_waste"]
