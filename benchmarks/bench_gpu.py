"""The GPU figures: scoring on the GPU against the CPU, training throughput and MFU, and a
2-round ``cem run`` on the GPU. Prints them (and ``--out`` writes them as JSON); nothing is
asserted.

1. Scoring (the prefix-cached scorer, ``world``'s exam and test sets as ``cem eval``
   renders them, cloze formulation): q/s on the device in float32 and bfloat16, and on the
   CPU in float32 over the first ``--cpu-n`` items; the answers' agreement with the CPU's
   and the largest log-likelihood difference on those items.
2. Training (``cem train``'s own path: packing, Lightning, bf16-mixed): tokens/s for LoRA
   and full fine-tuning, and MFU: the model FLOPs per token, counted by torch's
   ``FlopCounterMode`` over one forward and backward of a packed batch, times tokens/s,
   over the chip's dense bf16 peak (``--peak-tflops``, else looked up by the GPU's name).
3. ``cem run loop.rounds=2 trainer=gpu model.device=cuda`` on the default: wall time, the
   seconds of each stage, and the knowledge gain with its interval.

    python benchmarks/bench_gpu.py --out gpu.json          # on a GPU host (benchmarks/gpu_check.sh)
    python benchmarks/bench_gpu.py --smoke --device cpu    # the code paths, tiny model, no GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 peak FLOP/s by GPU name (the vendors' data sheets, without sparsity).
PEAK_BF16 = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 NVL": 835.5e12, "H100 PCIe": 756.5e12,
             "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "A10G": 70e12}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--parts", nargs="+", choices=["score", "train", "run"],
                   default=["score", "train", "run"])  # fmt: skip
    p.add_argument("--n", type=int, default=None, help="scored items (default: all)")
    p.add_argument("--cpu-n", type=int, default=200, help="items also scored on the CPU")
    p.add_argument("--batch-size", type=int, default=64, help="scoring questions per batch")
    p.add_argument("--train-steps", type=int, default=30, help="optimizer steps per mode")
    p.add_argument("--seq-len", type=int, default=2048, help="packed training sequence length")
    p.add_argument("--train-batch", type=int, default=16, help="packed sequences per step")
    p.add_argument("--rows", type=int, default=4000, help="training rows (half CPT, half CIT)")
    p.add_argument("--modes", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    p.add_argument("--peak-tflops", type=float, default=None, help="the chip's dense bf16 peak")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("--smoke", action="store_true",
                   help="the tiny random model and the smallest sizes: do the paths run?")  # fmt: skip
    args = p.parse_args(argv)
    if args.smoke:
        args.n, args.cpu_n, args.batch_size = 16, 16, 8
        args.train_steps, args.seq_len, args.train_batch, args.rows = 3, 128, 2, 16
    return args


def model_overrides(args) -> list[str]:
    return ["model=tiny_random_llama"] if args.smoke else []


def compose(entry: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cem.config import conf_dir, register_configs

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose(entry, overrides)


# --- 1. scoring -------------------------------------------------------------------------


def bench_score(args) -> dict:
    from bench_eval import run_one

    from cem.benchmarks.registry import load_benchmark
    from cem.evaluation.evaluate import loglik_requests
    from cem.models import load_model

    cfg = compose("eval", model_overrides(args))
    sets = load_benchmark(cfg.benchmark)
    items = (sets["exam"] + sets["test"])[: args.n]
    gold = [it.answer for it in items]
    out, runs = {"items": len(items), "cpu_items": min(args.cpu_n, len(items))}, {}
    for label, device, dtype, n in ((f"{args.device}/fp32", args.device, "float32", len(items)),
                                    (f"{args.device}/bf16", args.device, "bfloat16", len(items)),
                                    ("cpu/fp32", "cpu", "float32", out["cpu_items"])):  # fmt: skip
        if label in runs:  # --device cpu: the CPU row is the first one
            continue
        cfg.model.device, cfg.model.dtype = device, dtype
        model, tok = load_model(cfg.model, seed=0)
        requests = loglik_requests(items[:n], tok, cfg.eval, cfg.benchmark)

        def score(reqs, model=model, tok=tok, device=device):
            return _scores(model, tok, reqs, args.batch_size, device)

        runs[label] = run_one(score, requests, gold[:n], 1, label)
        out[label] = {"q_per_s": n / runs[label]["wall"], "n": n}
        del model
    cpu = runs["cpu/fp32"]
    for label, run in runs.items():
        if label == "cpu/fp32":
            continue
        k = len(cpu["preds"])
        head = {key: run[key][:k] for key in ("preds", "scores")}
        agree = sum(a == b for a, b in zip(head["preds"], cpu["preds"], strict=True)) / k
        diff = max(abs(x - y) for sa, sb in zip(head["scores"], cpu["scores"], strict=True)
                   for x, y in zip(sa, sb, strict=True))  # fmt: skip
        speed = out[label]["q_per_s"] / out["cpu/fp32"]["q_per_s"]
        out[label].update(agreement_vs_cpu_fp32=agree, max_abs_dll=diff, speedup_vs_cpu=speed)
        print(f"  {label} vs cpu/fp32 on {k} items: agreement={agree:.3f} max|dLL|={diff:.1e} "
              f"speed-up={speed:.1f}x")  # fmt: skip
    return out


def _scores(model, tok, requests, batch_size: int, device: str) -> list[list[float]]:
    from cem.evaluation.scorer import score_requests

    scores = score_requests(model, tok, requests, batch_size=batch_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return scores


# --- 2. training ------------------------------------------------------------------------


def bench_train(args) -> dict:
    from bench_train import make_rows

    rows = make_rows(args.rows)
    out = {"rows": len(rows), "seq_len": args.seq_len, "batch": args.train_batch,
           "steps": args.train_steps, "peak_flops": peak_flops(args)}  # fmt: skip
    for mode in args.modes:
        out[mode] = train_once(rows, mode, args)
        flops = out[mode]["flops_per_token"]
        peak = out["peak_flops"]
        out[mode]["mfu"] = flops * out[mode]["tokens_per_s"] / peak if peak else None
        print(f"train/{mode}: {json.dumps(out[mode])}", flush=True)
    return out


def train_overrides(args, mode: str, run_dir: Path) -> list[str]:
    on_gpu = args.device.startswith("cuda")
    return [*model_overrides(args), f"run_dir={run_dir}", f"train.finetune={mode}",
            f"train.max_steps={args.train_steps}", f"train.seq_len={args.seq_len}",
            f"train.batch_size={args.train_batch}", "train.lr=1e-4",
            f"train.checkpoint_every_n_steps={args.train_steps + 1}",
            f"trainer={'gpu' if on_gpu else 'cpu'}", f"model.device={args.device}",
            f"trainer.precision={'bf16-mixed' if on_gpu else '32-true'}",
            "trainer.enable_progress_bar=false"]  # fmt: skip


def train_once(rows: list[dict], mode: str, args) -> dict:
    from cem.training.train import train_round

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        run_dir = Path(tmp)
        (run_dir / "train_set").mkdir()
        pd.DataFrame(rows).to_parquet(run_dir / "train_set" / "train.parquet")
        cfg = compose("train", train_overrides(args, mode, run_dir))
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        m = train_round(cfg, run_dir, None)
        peak_mem = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
        flops = flops_per_token(cfg, mode, args)
    return {"tokens_per_s": m["tokens_per_s"], "padding_waste": m["padding_waste"],
            "steps": m["steps"], "loss": [m["loss_first"], m["loss_last"]],
            "device": m["device"], "precision": m["precision"], "flops_per_token": flops,
            "peak_gpu_mem_gib": peak_mem / 2**30 if peak_mem else None}  # fmt: skip


def flops_per_token(cfg, mode: str, args) -> float:
    """Forward + backward FLOPs of one ``[train_batch, seq_len]`` batch, per token."""
    from torch.utils.flop_counter import FlopCounterMode

    from cem.training.finetune import load_base, prepare

    model, tok = load_base(cfg.model, None, cfg.seed)
    model = prepare(model, mode, cfg.train.lora).to(args.device)
    ids = torch.randint(0, len(tok), (args.train_batch, args.seq_len), device=args.device)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16,
                              enabled=args.device.startswith("cuda"))  # fmt: skip
    counter = FlopCounterMode(display=False)
    with counter, autocast:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops() / ids.numel()


def peak_flops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not args.device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(args.device))
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


# --- 3. a 2-round cem run ------------------------------------------------------------------


def bench_run(args) -> dict:
    on_gpu = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="bench_gpu_run_") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "cem.cli", "run", f"run_dir={run_dir}", "loop.rounds=2",
               f"trainer={'gpu' if on_gpu else 'cpu'}", f"model.device={args.device}",
               "logger=csv", "eval.progress=false", "trainer.enable_progress_bar=false",
               *(["experiment=fast"] if args.smoke else [])]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            return {"returncode": proc.returncode, "wall_s": wall}
        summary = json.loads((run_dir / "summary.json").read_text())
    last = summary["rounds"][-1]
    stages: dict[str, float] = {}
    for entry in [*summary["rounds"], *([summary["warmup"]] if summary["warmup"] else [])]:
        for stage, s in entry["seconds"].items():
            stages[stage] = stages.get(stage, 0.0) + s
    out = {"returncode": 0, "wall_s": wall, "stage_seconds": stages,
           "gains": summary["gains"], "exam_acc_last": last["metrics"]["exam"]["acc"]}  # fmt: skip
    print(f"cem run (2 rounds): {wall:.1f} s wall; stages {json.dumps(stages)}")
    ref = summary["reference"]
    knowledge = summary["gains"]["intervals"][f"vs_{ref}"]["knowledge"]
    out["knowledge_gain"] = knowledge
    print(
        f"  knowledge gain vs {ref}: {knowledge['delta']:+.3f} "
        f"[{knowledge['ci'][0]:+.3f}, {knowledge['ci'][1]:+.3f}], p {knowledge['p']:.3g}"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    info = {"device": args.device, "torch": torch.__version__, "smoke": args.smoke,
            "cpu_threads": torch.get_num_threads()}  # fmt: skip
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    print(json.dumps(info))
    results = {"info": info}
    for part, fn in (("score", bench_score), ("train", bench_train), ("run", bench_run)):
        if part in args.parts:
            start = time.perf_counter()
            results[part] = fn(args)
            results[part]["bench_s"] = time.perf_counter() - start
            if args.out:  # after each part: a later part that dies keeps the earlier ones
                args.out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
