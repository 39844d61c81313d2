"""lm-evaluation-harness as a peer: the same requests through its ``HFLM``, for the parity
test (tests/test_lm_eval_parity.py) and the throughput benchmark (benchmarks/bench_eval.py).

``lm_eval`` comes with the ``dev`` extra; it is imported only when called.
"""

from __future__ import annotations

from cem.benchmarks.schema import Request

LETTERS = "ABCD"


def mmlu_requests(rows: list[list[str]], formulation: str, subject: str) -> list[Request]:
    """MMLU CSV rows (question, A-D, answer) as lm-eval poses them: ``mcf`` scores the
    letters after the lettered options, ``cf`` the option texts after the question."""
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    out = []
    for question, *options, _ in rows:
        if formulation == "mcf":
            lines = "\n".join(f"{k}. {t}" for k, t in zip(LETTERS, options, strict=True))
            context = f"{header}{question}\n{lines}\nAnswer:"
            out.append(Request(context, [f" {k}" for k in LETTERS]))
        else:
            out.append(Request(f"Question: {question}\nAnswer:", [f" {t}" for t in options]))
    return out


def lm_eval_scores(model, tokenizer, requests: list[Request], batch_size: int) -> list[list[float]]:
    """Each continuation's log-likelihood from lm-eval's ``HFLM`` over the same model object."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    flat = [(r.context, c) for r in requests for c in r.continuations]
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(flat)
    ]
    values = iter(ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True))
    return [[next(values) for _ in r.continuations] for r in requests]
