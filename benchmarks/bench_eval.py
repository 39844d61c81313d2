"""Questions per second of our scorer against lm-eval's HFLM on SmolLM2.

Both score the same requests (MCF: letters " A".." D"; CF: the option texts) with the
same model object; the figures are printed, nothing is asserted. The items are MMLU
astronomy (long questions, lm-eval's own prompt) or the embedded ``world`` benchmark's
exam and test sets rendered exactly as ``cem eval`` renders them (short cloze stems).

    .venv/bin/python benchmarks/bench_eval.py --n 150 --dtype fp32 bf16
    .venv/bin/python benchmarks/bench_eval.py --benchmark world --n 400 --dtype fp32
    .venv/bin/python benchmarks/bench_eval.py --memory 2000 20000   # peak RSS of `cem eval`
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from cem.evaluation.metrics import argmax  # noqa: E402
from cem.evaluation.peer import LETTERS, lm_eval_scores, mmlu_requests  # noqa: E402
from cem.evaluation.scorer import Request, score_requests  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CSV = Path("mmlu") / "test" / "astronomy_test.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=150, help="questions (default 150)")
    p.add_argument("--batch-size", type=int, default=32, help="our questions per batch")
    p.add_argument("--lm-eval-batch-size", type=int, default=32, help="lm-eval requests per batch")
    p.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    p.add_argument("--model-dir", type=Path, default=None, help="an HF model folder")
    p.add_argument("--shared-dir", type=Path, default=None, help="the shared benchmarks folder")
    p.add_argument("--formulation", nargs="+", choices=["mcf", "cf"], default=["mcf", "cf"])
    p.add_argument("--repeat", type=int, default=1, help="runs per timing; the best is kept")
    p.add_argument("--skip-lm-eval", action="store_true", help="time ours only")
    p.add_argument(
        "--benchmark",
        choices=["mmlu", "world"],
        default="mmlu",
        help="mmlu: astronomy test file; world: the default benchmark's exam+test",
    )
    p.add_argument("--memory", type=int, nargs="+", metavar="N", default=None,
                   help="instead: peak RSS of a whole `cem eval` of N synthetic questions each "
                        "(the tiny random model unless --model-dir), e.g. --memory 2000 20000")  # fmt: skip
    return p.parse_args(argv)


def peak_rss(sizes: list[int], model_dir: Path | None) -> None:
    """Peak resident memory of ``cem eval`` (a fresh process each) on ``sizes`` questions."""
    import json
    import random
    import subprocess
    import tempfile

    words = "river mount lake city crown queen north south valley coast island bay".split()
    model = (
        [f"model.path={model_dir}", "model.asset=null"]
        if model_dir
        else ["model=tiny_random_llama"]
    )
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            rng, path = random.Random(0), Path(tmp) / f"{n}.jsonl"
            with open(path, "w") as fh:
                for i in range(n):
                    q = " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
                    ch = [" ".join(rng.choices(words, k=rng.randint(1, 4))) for _ in range(4)]
                    fh.write(json.dumps({"id": f"q{i}", "question": f"Where is {q}?",
                                         "choices": ch, "answer": i % 4}) + "\n")  # fmt: skip
            cmd = [sys.executable, "-m", "cem.cli", "eval", f"run_dir={tmp}/run{n}", *model,
                   "benchmark=jsonl", f"benchmark.path={path}", "eval.progress=false",
                   "eval.general_probe=false"]  # fmt: skip
            start, log = time.perf_counter(), Path(tmp) / f"{n}.log"
            with open(log, "wb") as err:  # a file, not a pipe: a full pipe would block it
                child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
                _, status, usage = os.wait4(child.pid, 0)  # this child's own peak
            if status != 0:
                sys.exit(f"cem eval failed: {log.read_text()[-2000:]}")
            mb = usage.ru_maxrss / 1024  # KB on Linux
            first = first or mb
            print(f"{n:>8} questions: peak RSS {mb:7.0f} MB ({mb / first:.2f}x the first), "
                  f"{time.perf_counter() - start:6.1f} s")  # fmt: skip


def default_model_dir() -> Path:
    try:
        from cem.assets.fetch import asset_dir

        return Path(asset_dir("smollm2-135m-instruct"))
    except Exception as e:  # the asset module may not exist yet, or be offline
        fallback = Path("/tmp/assets/smollm/hf")
        print(f"asset_dir failed ({e!r}); using {fallback}", file=sys.stderr)
        return fallback


def load_rows(shared: Path | None, n: int) -> list[list[str]]:
    root = shared or Path(
        os.environ.get(
            "CEM_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
        )
    )
    with open(root / CSV, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[:n]


def world_items(n: int) -> list:
    """The first ``n`` exam+test items of ``world`` (seed 0)."""
    from omegaconf import OmegaConf

    from cem.benchmarks.registry import load_benchmark
    from cem.config import BenchmarkConfig

    sets = load_benchmark(OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), {"name": "world"}))
    return (sets["exam"] + sets["test"])[:n]


def world_requests(items: list, formulation: str, tok) -> list[Request]:
    """``items`` rendered exactly as ``cem eval`` renders them in ``formulation``."""
    from omegaconf import OmegaConf

    from cem.config import BenchmarkConfig, EvalConfig
    from cem.evaluation.evaluate import loglik_requests

    bcfg = OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), {"name": "world"})
    ecfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"formulation": formulation})
    return loglik_requests(items, tok, ecfg, bcfg)


def timed(fn, repeat: int):
    """The result and the best wall and CPU seconds of ``repeat`` runs (other jobs add noise)."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def _ours(model, tok, batch_size: int, requests: list[Request]) -> list[list[float]]:
    return score_requests(model, tok, requests, batch_size=batch_size)


def _lm_eval(model, tok, batch_size: int, requests: list[Request]) -> list[list[float]]:
    return lm_eval_scores(model, tok, requests, batch_size)


def run_one(fn, requests, gold, repeat: int, label: str) -> dict:
    """Time ``fn(requests)`` after a short warm-up and print one line."""
    fn(requests[:4])
    scores, wall, cpu = timed(lambda: fn(requests), repeat)
    n = len(requests)
    preds = [argmax(s) for s in scores]
    acc = sum(p == g for p, g in zip(preds, gold, strict=True)) / n
    print(f"{label:18s} {n / wall:7.2f} q/s  ({wall:6.1f} s, cpu {cpu:6.1f} s)  acc={acc:.3f}")
    return {"wall": wall, "cpu": cpu, "scores": scores, "preds": preds}


def compare(a: dict, b: dict, label: str) -> None:
    """Agreement of predictions and speed-up of ``a`` over ``b``."""
    agree = sum(x == y for x, y in zip(a["preds"], b["preds"], strict=True)) / len(a["preds"])
    diff = max(
        abs(x - y)
        for sa, sb in zip(a["scores"], b["scores"], strict=True)
        for x, y in zip(sa, sb, strict=True)
    )
    print(
        f"  {label:34s} agreement={agree:.3f}  max|dLL|={diff:.1e}  "
        f"speed-up={b['wall'] / a['wall']:.2f}x (cpu {b['cpu'] / a['cpu']:.2f}x)"
    )


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args(argv)
    if args.memory:
        return peak_rss(args.memory, args.model_dir)
    model_dir = args.model_dir or default_model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    if args.benchmark == "mmlu":
        rows = load_rows(args.shared_dir, args.n)
        gold = [LETTERS.index(r[-1].strip()) for r in rows]
        make = partial(mmlu_requests, rows, subject="astronomy")
    else:
        items = world_items(args.n)
        gold = [it.answer for it in items]
        make = partial(world_requests, items, tok=tok)
    print(
        f"model={model_dir} benchmark={args.benchmark} n={len(gold)} "
        f"threads={torch.get_num_threads()}"
    )
    res: dict[tuple[str, str, str], dict] = {}
    for dtype in args.dtype:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).eval()
        for form in args.formulation:
            reqs = make(form)
            ours = partial(_ours, model, tok, args.batch_size)
            res[form, dtype, "ours"] = run_one(
                ours, reqs, gold, args.repeat, f"{form}/{dtype} ours"
            )
            if args.skip_lm_eval:
                continue
            ref = partial(_lm_eval, model, tok, args.lm_eval_batch_size)
            res[form, dtype, "lm-eval"] = run_one(
                ref, reqs, gold, args.repeat, f"{form}/{dtype} lm-eval"
            )
    summarise(res, args)


def summarise(res: dict, args: argparse.Namespace) -> None:
    """Ours against lm-eval at the same dtype, ours in bf16 against fp32, and all formulations."""
    print("summary")
    for form in args.formulation:
        for dtype in args.dtype:
            if (form, dtype, "lm-eval") in res:
                compare(
                    res[form, dtype, "ours"],
                    res[form, dtype, "lm-eval"],
                    f"{form}/{dtype} ours vs lm-eval",
                )
        if {"fp32", "bf16"} <= set(args.dtype):
            compare(
                res[form, "bf16", "ours"],
                res[form, "fp32", "ours"],
                f"{form} ours bf16 vs ours fp32",
            )
            if (form, "fp32", "lm-eval") in res:
                compare(
                    res[form, "bf16", "ours"],
                    res[form, "fp32", "lm-eval"],
                    f"{form} ours bf16 vs lm-eval fp32",
                )
    for dtype in args.dtype:
        if all((f, dtype, "lm-eval") in res for f in args.formulation):  # not --skip-lm-eval
            runs = {impl: [res[f, dtype, impl] for f in args.formulation]
                    for impl in ("ours", "lm-eval")}  # fmt: skip
            wall = sum(r["wall"] for r in runs["lm-eval"]) / sum(r["wall"] for r in runs["ours"])
            cpu = sum(r["cpu"] for r in runs["lm-eval"]) / sum(r["cpu"] for r in runs["ours"])
            print(f"  all formulations, {dtype}: speed-up={wall:.2f}x (cpu {cpu:.2f}x)")


if __name__ == "__main__":
    main()
