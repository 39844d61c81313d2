"""Questions per second of our scorer against lm-eval's HFLM on SmolLM2 and MMLU astronomy.

Both score the same requests (MCF: letters " A".." D"; CF: the option texts) with the
same model object; the figures are printed, nothing is asserted.

    .venv/bin/python benchmarks/bench_eval.py --n 150 --dtype fp32 bf16
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from cem.evaluation.scorer import Request, score_requests  # noqa: E402

LETTERS = "ABCD"
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
    return p.parse_args(argv)


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


def build_requests(rows: list[list[str]], formulation: str) -> list[Request]:
    out = []
    for question, *options, _ in rows:
        if formulation == "mcf":
            lines = "\n".join(f"{k}. {t}" for k, t in zip(LETTERS, options, strict=True))
            context = (
                "The following are multiple choice questions (with answers) about astronomy.\n\n"
                f"{question}\n{lines}\nAnswer:"
            )
            out.append(Request(context, [f" {k}" for k in LETTERS]))
        else:
            out.append(Request(f"Question: {question}\nAnswer:", [f" {t}" for t in options]))
    return out


def lm_eval_scores(model, tok, requests: list[Request], batch_size: int) -> list[list[float]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    flat = [(r.context, c) for r in requests for c in r.continuations]
    inst = [
        Instance(request_type="loglikelihood", doc={}, arguments=a, idx=i)
        for i, a in enumerate(flat)
    ]
    values = iter(ll for ll, _ in lm.loglikelihood(inst, disable_tqdm=True))
    return [[next(values) for _ in r.continuations] for r in requests]


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def timed(fn, repeat: int):
    """The result and the best wall and CPU seconds of ``repeat`` runs (other jobs add noise)."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def bench_one(model, tok, requests, gold, args, label: str) -> dict:
    """Score with ours (and lm-eval) once after a short warm-up; print one line each."""
    score_requests(model, tok, requests[:4], batch_size=args.batch_size)  # warm-up
    ours, t_ours, c_ours = timed(
        lambda: score_requests(model, tok, requests, batch_size=args.batch_size), args.repeat
    )
    n = len(requests)
    acc = sum(argmax(s) == g for s, g in zip(ours, gold, strict=True)) / n
    print(
        f"{label:10s} ours    {n / t_ours:7.2f} q/s  ({t_ours:6.1f} s, cpu {c_ours:6.1f} s)  "
        f"acc={acc:.3f}"
    )
    result = {"ours_qps": n / t_ours, "preds": [argmax(s) for s in ours]}
    if args.skip_lm_eval:
        return result
    lm_eval_scores(model, tok, requests[:4], args.lm_eval_batch_size)  # warm-up
    ref, t_ref, c_ref = timed(
        lambda: lm_eval_scores(model, tok, requests, args.lm_eval_batch_size), args.repeat
    )
    acc_ref = sum(argmax(s) == g for s, g in zip(ref, gold, strict=True)) / n
    agree = sum(argmax(a) == argmax(b) for a, b in zip(ours, ref, strict=True)) / n
    max_diff = max(
        abs(x - y) for a, b in zip(ours, ref, strict=True) for x, y in zip(a, b, strict=True)
    )
    print(
        f"{label:10s} lm-eval {n / t_ref:7.2f} q/s  ({t_ref:6.1f} s, cpu {c_ref:6.1f} s)  "
        f"acc={acc_ref:.3f}  agreement={agree:.3f}  max|dLL|={max_diff:.1e}  "
        f"speed-up={t_ref / t_ours:.2f}x (cpu {c_ref / c_ours:.2f}x)"
    )
    return result | {"lm_eval_qps": n / t_ref}


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args(argv)
    model_dir = args.model_dir or default_model_dir()
    rows = load_rows(args.shared_dir, args.n)
    gold = [LETTERS.index(r[-1].strip()) for r in rows]
    tok = AutoTokenizer.from_pretrained(model_dir)
    print(f"model={model_dir} n={len(rows)} threads={torch.get_num_threads()}")
    for dtype in args.dtype:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).eval()
        for formulation in args.formulation:
            requests = build_requests(rows, formulation)
            bench_one(model, tok, requests, gold, args, f"{formulation}/{dtype}")


if __name__ == "__main__":
    main()
