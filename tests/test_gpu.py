"""The GPU tier (``make test-gpu``): the inference, training and merge paths on the accelerator,
held to what the same code gives on the CPU.

Skipped without CUDA (tests/conftest.py). ``CEM_GPU_TIER_DEVICE=cpu make test-gpu`` runs the
tier on the CPU instead: a dry run of its code paths on a machine with no GPU, which is how
the tier is checked before a GPU is at hand. ``benchmarks/gpu_check.sh`` runs it, with
``benchmarks/bench_gpu.py``, on a GPU host.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer
from conftest import compose_config
from omegaconf import OmegaConf

from cem import device as devices

pytestmark = pytest.mark.gpu

ACCEL = os.environ.get("CEM_GPU_TIER_DEVICE", "cuda")
ON_GPU = ACCEL.startswith("cuda")
TRAINER = "gpu" if ON_GPU else "cpu"
REPO = Path(__file__).resolve().parents[1]
# The tiny model on a few items of each set, scored in float32.
TINY_EVAL = ("model=tiny_random_llama", "benchmark.limit=8", "eval.progress=false")
FAST = ("experiment=fast", "eval.progress=false", "logger=csv")


def resolved(spec: str) -> str:
    return devices.resolve_device(spec)


def world_requests(tok, limit: int = 24) -> list:
    """The ``world`` exam and test items as ``cem eval`` renders them for ``tok``."""
    from cem.benchmarks.registry import load_benchmark
    from cem.config import EvalConfig
    from cem.evaluation.evaluate import loglik_requests

    cfg = compose_config("eval", *TINY_EVAL, f"benchmark.limit={limit}")
    sets = load_benchmark(cfg.benchmark)
    items = sets["exam"] + sets["test"]
    ecfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg.eval)
    return loglik_requests(items, tok, ecfg, cfg.benchmark)


def test_scores_on_the_accelerator_are_the_cpu_s_in_float32():
    """The prefix-cached scorer on the accelerator gives the CPU's log-likelihoods (fp32;
    only the order of floating-point sums differs) and so the same answers."""
    from cem.evaluation.metrics import argmax
    from cem.evaluation.scorer import score_requests

    tok = tiny_tokenizer()
    requests = world_requests(tok)
    on_cpu = score_requests(tiny_model(), tok, requests, batch_size=16)
    on_accel = score_requests(tiny_model().to(resolved(ACCEL)), tok, requests, batch_size=16)
    diff = max(abs(a - b) for ra, rb in zip(on_cpu, on_accel, strict=True)
               for a, b in zip(ra, rb, strict=True))  # fmt: skip
    assert diff < 1e-3, f"max |dLL| {diff:.2e}"
    clear = [i for i, r in enumerate(on_cpu) if _gap(r) > 2e-3]  # no near-tie to flip
    assert len(clear) >= len(on_cpu) // 2
    assert [argmax(on_accel[i]) for i in clear] == [argmax(on_cpu[i]) for i in clear]


def _gap(scores: list[float]) -> float:
    top = sorted(scores, reverse=True)
    return top[0] - top[1]


@pytest.mark.parametrize("spec", [ACCEL, "auto"])
def test_cem_eval_scores_where_model_device_says(tmp_path, spec):
    """``cem eval`` places the model by ``model.device`` (``auto``: the GPU when there is
    one), says so in timing.json, and gives the CPU's answers."""
    from cem.evaluation.runner import run_eval
    from cem.records import EvalRecord, read_records

    runs = {}
    for name, device in (("cpu", "cpu"), ("here", spec)):
        run_eval(compose_config("eval", *TINY_EVAL, f"run_dir={tmp_path / name}",
                                f"model.device={device}"))  # fmt: skip
        runs[name] = tmp_path / name / "eval"
    timing = json.loads((runs["here"] / "timing.json").read_text())
    assert timing["device"] == resolved(spec)
    assert json.loads((runs["cpu"] / "timing.json").read_text())["device"] == "cpu"
    cpu, here = (read_records(runs[n] / "records.jsonl", EvalRecord) for n in ("cpu", "here"))
    assert [r.id for r in here] == [r.id for r in cpu]
    for a, b in zip(cpu, here, strict=True):
        assert max(abs(x - y) for x, y in zip(a.scores, b.scores, strict=True)) < 1e-3, a.id
        if a.margin > 2e-3:
            assert a.pred == b.pred, a.id


def test_a_two_round_run_trains_and_scores_on_the_accelerator(tmp_path):
    """``cem run trainer=gpu model.device=cuda``: every evaluation and every training step
    of a 2-round run on the accelerator, every row of each round's set reached."""
    from cem.loop.run import run_loop
    from cem.records import read_summary

    root = tmp_path / "run"
    run_loop(compose_config("run", *FAST, f"run_dir={root}", f"trainer={TRAINER}",
                            f"model.device={ACCEL}"))  # fmt: skip
    summary = read_summary(root / "summary.json")
    assert [e.round for e in summary.rounds] == [0, 1, 2]
    assert summary.stopped is not None
    want = resolved(ACCEL)
    for timing in sorted(root.glob("*/eval/timing.json")):
        assert json.loads(timing.read_text())["device"] == want, timing
    trained = sorted(root.glob("*/train/metrics.json"))
    assert [p.parent.parent.name for p in trained] == ["round_1", "round_2", "warmup"]
    for path in trained:
        m = json.loads(path.read_text())
        assert m["device"].split(":")[0] == want.split(":")[0], path
        assert m["rows_reached"] == m["rows_total"] > 0, path
        assert math.isfinite(m["loss_last"]) and m["tokens_per_s"] > 0, path


def test_the_merge_on_the_device_saves_sharded_safetensors_that_reload(tmp_path):
    """The end-of-round merge (``cem.training.finetune.save``) folds the LoRA weights in on
    ``model.device`` and writes shards of ``train.max_shard_size``; the saved model is the
    merged model, on the CPU too."""
    from transformers import AutoModelForCausalLM

    from cem.config import TrainConfig
    from cem.training.finetune import merged, prepare, save

    lora = OmegaConf.structured(TrainConfig).lora
    model = prepare(tiny_model(), "lora", lora)
    with torch.no_grad():  # LoRA's B starts at 0: give the adapters something to merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    ids = torch.tensor([[1, 5, 9, 42, 7, 300, 12, 8]])
    with torch.no_grad():
        want = merged(copy.deepcopy(model)).eval()(ids).logits  # merged on the CPU
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats()
    out = save(model, tiny_tokenizer(), tmp_path / "model", ACCEL, "200KB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    if ON_GPU:
        print(f"merge peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
    again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = again(ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_the_extractor_s_batched_replies_on_the_device_are_its_cpu_replies(tmp_path):
    """The LLM extractor and question writer generate on ``model.device`` in left-padded
    batches: in float32 a batch on the accelerator changes no greedy reply."""
    from test_extractive_llm import ASKED, sharpened_tiny_model

    from cem.config import KnowledgeConfig
    from cem.knowledge import retrieve as retrieve_mod
    from cem.knowledge.keypoints import LLM_PROMPT
    from cem.models import save_model

    folder = save_model(sharpened_tiny_model(), tiny_tokenizer(), tmp_path / "extractor")
    prompts = [LLM_PROMPT.format(question=q, answer=a) for q, a in ASKED]

    def replies(batch_size: int, device: str) -> list[str]:
        kcfg = OmegaConf.structured(KnowledgeConfig(
            name="x", extractor_model=str(folder), extractor_batch_size=batch_size,
            extractor_dtype="float32"))  # fmt: skip
        return retrieve_mod.extractor_generate(kcfg, 12, device=resolved(device))(prompts)

    one = replies(1, "cpu")
    assert len(set(one)) >= 3  # replies that depend on their prompt
    assert replies(4, ACCEL) == one
    assert replies(8, ACCEL) == one


@pytest.mark.skipif(not ON_GPU or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_score_what_one_process_scores(tmp_path):
    """``eval.devices=2`` on two GPUs (nccl) writes one process's files, byte for byte (fp32)."""
    from test_parallel_eval import OUTPUTS, OVERRIDES

    def folder(name: str, *extra: str) -> Path:
        cmd = [sys.executable, "-m", "cem.cli", "eval", *OVERRIDES, "model.device=cuda",
               f"run_dir={tmp_path / name}", *extra]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return tmp_path / name / "eval"

    one, two = folder("one"), folder("two", "eval.devices=2")
    for name in OUTPUTS:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name


@pytest.mark.skipif(not ON_GPU or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_cem_run_trains_each_stage_on_two_gpus(tmp_path):
    """``cem run trainer=ddp trainer.devices=2``: each stage trains on 2 GPU ranks (nccl) that
    the loop starts itself, and every row of each stage's set is reached."""
    from cem.loop.run import run_loop

    root = tmp_path / "run"
    run_loop(compose_config("run", *FAST, f"run_dir={root}", "trainer=ddp", "trainer.devices=2",
                            "model.device=auto"))  # fmt: skip
    for stage in ("warmup", "round_1", "round_2"):
        m = json.loads((root / stage / "train" / "metrics.json").read_text())
        assert m["device"].startswith("cuda") and m["rows_reached"] == m["rows_total"] > 0
