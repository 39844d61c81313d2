"""Our scorer against lm-evaluation-harness's HFLM on real MMLU items, tiny random model."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest
from _tiny import tiny_model, tiny_tokenizer

from cem.evaluation.scorer import Request, score_requests

N_QUESTIONS = 152  # the whole astronomy test file
LETTERS = "ABCD"
NEAR_TIE = 1e-4


def shared_benchmarks() -> Path | None:
    env = os.environ.get("CEM_SHARED_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
    return path if path.is_dir() else None


def astronomy_rows(n: int) -> list[list[str]]:
    root = shared_benchmarks()
    path = root / "mmlu" / "test" / "astronomy_test.csv" if root else None
    if path is None or not path.is_file():
        pytest.skip("MMLU astronomy file not found under ../shared/benchmarks (set CEM_SHARED_DIR)")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[:n]


def mcf_request(row: list[str]) -> Request:
    question, *options, _ = row
    lines = [f"{letter}. {text}" for letter, text in zip(LETTERS, options, strict=True)]
    context = (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        + question
        + "\n"
        + "\n".join(lines)
        + "\nAnswer:"
    )
    return Request(context, [f" {letter}" for letter in LETTERS])


def cf_request(row: list[str]) -> Request:
    question, *options, _ = row
    return Request(f"Question: {question}\nAnswer:", [f" {text}" for text in options])


def lm_eval_scores(model, tok, requests: list[Request]) -> list[list[float]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8)
    flat = [(r.context, c) for r in requests for c in r.continuations]
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(flat)
    ]
    values = iter(ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True))
    return [[next(values) for _ in r.continuations] for r in requests]


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def near_tie(xs: list[float]) -> bool:
    top = sorted(xs, reverse=True)
    return len(top) > 1 and top[0] - top[1] < NEAR_TIE


@pytest.mark.parametrize("formulation", ["mcf", "cf"])
def test_agrees_with_lm_eval(formulation):
    rows = astronomy_rows(N_QUESTIONS)
    build = mcf_request if formulation == "mcf" else cf_request
    requests = [build(r) for r in rows]
    gold = [LETTERS.index(r[-1].strip()) for r in rows]
    model, tok = tiny_model(seed=0), tiny_tokenizer()

    t0 = time.perf_counter()
    ours = score_requests(model, tok, requests, batch_size=8)
    t1 = time.perf_counter()
    ref = lm_eval_scores(model, tok, requests)
    t2 = time.perf_counter()

    kept = [i for i in range(len(rows)) if not (near_tie(ours[i]) or near_tie(ref[i]))]
    agree = sum(argmax(ours[i]) == argmax(ref[i]) for i in kept) / len(kept)
    acc_ours = sum(argmax(s) == g for s, g in zip(ours, gold, strict=True)) / len(rows)
    acc_ref = sum(argmax(s) == g for s, g in zip(ref, gold, strict=True)) / len(rows)
    max_diff = max(
        abs(a - b) for o, r in zip(ours, ref, strict=True) for a, b in zip(o, r, strict=True)
    )
    print(
        f"\n{formulation}: n={len(rows)} compared={len(kept)} agreement={agree:.3f} "
        f"acc ours={acc_ours:.3f} lm-eval={acc_ref:.3f} max|dLL|={max_diff:.2e} "
        f"time ours={t1 - t0:.2f}s lm-eval={t2 - t1:.2f}s"
    )
    assert len(kept) >= 0.8 * len(rows)
    assert agree >= 0.99
    assert abs(acc_ours - acc_ref) <= 0.005
    assert max_diff < 1e-3
