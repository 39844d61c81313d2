"""Our scorer against lm-evaluation-harness's HFLM on real MMLU items, tiny random model."""

from __future__ import annotations

import csv
import time

import pytest
from _tiny import tiny_model, tiny_tokenizer
from conftest import shared_benchmarks_dir

from cem.evaluation.metrics import argmax
from cem.evaluation.peer import LETTERS, lm_eval_scores, mmlu_requests
from cem.evaluation.scorer import score_requests

N_QUESTIONS = 152  # the whole astronomy test file
NEAR_TIE = 1e-4


def astronomy_rows(n: int) -> list[list[str]]:
    root = shared_benchmarks_dir()
    path = root / "mmlu" / "test" / "astronomy_test.csv" if root else None
    if path is None or not path.is_file():
        pytest.skip("MMLU astronomy file not found under ../shared/benchmarks (set CEM_SHARED_DIR)")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[:n]


def near_tie(xs: list[float]) -> bool:
    top = sorted(xs, reverse=True)
    return len(top) > 1 and top[0] - top[1] < NEAR_TIE


@pytest.mark.parametrize("formulation", ["mcf", "cf"])
def test_agrees_with_lm_eval(formulation):
    rows = astronomy_rows(N_QUESTIONS)
    requests = mmlu_requests(rows, formulation, subject="astronomy")
    gold = [LETTERS.index(r[-1].strip()) for r in rows]
    model, tok = tiny_model(seed=0), tiny_tokenizer()

    t0 = time.perf_counter()
    ours = score_requests(model, tok, requests, batch_size=8)
    t1 = time.perf_counter()
    ref = lm_eval_scores(model, tok, requests, batch_size=8)
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
