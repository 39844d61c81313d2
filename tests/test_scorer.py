"""The prefix-cache scorer against naive full-sequence scoring on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer

from cem.benchmarks.schema import Request
from cem.errors import CemError
from cem.evaluation.scorer import build_units, score_requests, score_requests_full

REQUESTS = [
    Request("Question: What is the capital of France?\nAnswer:", [" Paris", " Lyon", " Marseille"]),
    Request("The sky is", [" blue", " green because of the trees", " red", " not", " up"]),
    Request("Q: 2+2?\nA: ", ["4", "five", "twenty-two"]),  # trailing space moves to the options
    Request("Which letter?\nA. one\nB. two\nAnswer:", [" A", " B"]),
    Request("A much longer context about astronomy, stars and planets. " * 3, [" yes"]),
    Request("", ["Hello world", "Goodbye"]),  # empty context: the prefix token stands in
    Request("Short", [" x", " a somewhat longer option text here"]),
]


INSTRUCTION = "The following are multiple choice questions (with answers) about geography.\n\n"
SHARED = [  # a long common opening: forwarded once per batch, its cache shared
    Request(INSTRUCTION + "Capital of Bhutan?\nA. Thimphu\nB. Paro\nAnswer:", [" A", " B"]),
    Request(INSTRUCTION + "Longest river?\nAnswer:", [" the Nile", " the Amazon river", " Po"]),
    Request(INSTRUCTION + "Q", [" yes", " no"]),
    Request(INSTRUCTION.rstrip(), [" Paris", " Rome"]),
]


def naive_scores(model, tok, requests: list[Request], max_length: int) -> list[list[float]]:
    """One full forward per option, no cache, no padding: the reference."""
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = []
    for req in requests:
        row = []
        for option in req.continuations:
            ctx, cont = req.context, option
            n = len(ctx) - len(ctx.rstrip())
            if n:
                ctx, cont = ctx[:-n], ctx[-n:] + cont
            if ctx:
                ctx_enc = tok.encode(ctx)
                cont_enc = tok.encode(ctx + cont)[len(ctx_enc) :]
            else:
                ctx_enc, cont_enc = [prefix], tok.encode(cont)
            inp = (ctx_enc + cont_enc)[-(max_length + 1) :][:-1]
            with torch.no_grad():
                logits = model(torch.tensor([inp])).logits[0].float()
            lp = logits.log_softmax(-1)[-len(cont_enc) :]
            row.append(float(lp.gather(-1, torch.tensor(cont_enc)[:, None]).sum()))
        out.append(row)
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_matches_naive(model, batch_size):
    tok = tiny_tokenizer()
    ours = score_requests(model, tok, REQUESTS, batch_size=batch_size)
    ref = naive_scores(model, tok, REQUESTS, max_length=2048)
    assert [len(r) for r in ours] == [len(r.continuations) for r in REQUESTS]
    for a, b in zip(ours, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_shared_opening_matches_naive(model, batch_size):
    tok = tiny_tokenizer()
    ours = score_requests(model, tok, SHARED + REQUESTS[:2], batch_size=batch_size)
    ref = naive_scores(model, tok, SHARED + REQUESTS[:2], max_length=2048)
    for a, b in zip(ours, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_a_transformers_without_keep_masks_gets_the_same_scores(model, batch_size, monkeypatch):
    """Before ``slice_logits_to_keep`` (transformers 5.17, say) ``logits_to_keep`` takes
    positions only: the scorer passes every position that some row scores, then keeps its
    own."""
    from cem.evaluation import scorer

    tok = tiny_tokenizer()
    with_mask = score_requests(model, tok, SHARED + REQUESTS, batch_size=batch_size)
    monkeypatch.setattr(scorer, "KEEP_MASK", False)
    calls = []
    real_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(k["logits_to_keep"])
                        or real_forward(*a, **k))  # fmt: skip
    by_columns = score_requests(model, tok, SHARED + REQUESTS, batch_size=batch_size)
    assert calls and all(c.ndim == 1 and c.dtype == torch.int64 for c in calls)
    for a, b in zip(by_columns, with_mask, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("max_length", [15, 24])
def test_left_truncation_matches_naive(model, max_length):
    tok = tiny_tokenizer()
    ours = score_requests(model, tok, REQUESTS, batch_size=4, max_length=max_length)
    ref = naive_scores(model, tok, REQUESTS, max_length=max_length)
    for a, b in zip(ours, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_truncation_splits_prefixes():
    # Options of different lengths keep different amounts of context once truncated.
    units = build_units(tiny_tokenizer(), REQUESTS[6:7], max_length=15)
    assert len(units) == 2
    assert sorted(o for u in units for o in u.opts) == [0, 1]


def test_order_preserved(model):
    tok = tiny_tokenizer()
    forward = score_requests(model, tok, REQUESTS, batch_size=2)
    backward = score_requests(model, tok, REQUESTS[::-1], batch_size=2)
    for a, b in zip(forward, backward[::-1], strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_token_counts(model):
    tok = tiny_tokenizer()
    scored = score_requests_full(model, tok, REQUESTS[3:4])
    assert scored[0].n_tokens == [len(tok.encode(" A")), len(tok.encode(" B"))]


def test_bf16_close_to_fp32():
    tok = tiny_tokenizer()
    fp32 = score_requests(tiny_model(seed=0), tok, REQUESTS)
    bf16 = score_requests(tiny_model(seed=0, dtype=torch.bfloat16), tok, REQUESTS)
    for a, b in zip(fp32, bf16, strict=True):
        assert a == pytest.approx(b, rel=0.05, abs=0.3)


def test_tokenizer_padding_side_is_irrelevant(model):
    tok = tiny_tokenizer()
    side = tok.padding_side
    try:
        tok.padding_side = "left"
        left = score_requests(model, tok, REQUESTS, batch_size=4)
        tok.padding_side = "right"
        right = score_requests(model, tok, REQUESTS, batch_size=4)
    finally:
        tok.padding_side = side
    assert left == right


def test_empty_continuation_is_an_error(model):
    with pytest.raises(CemError, match="no tokens"):
        score_requests(model, tiny_tokenizer(), [Request("Question", [""])])


def test_progress_bar_runs(model):
    assert len(score_requests(model, tiny_tokenizer(), REQUESTS, progress=True)) == len(REQUESTS)


def test_training_mode_is_restored(model):
    model.train()
    try:
        score_requests(model, tiny_tokenizer(), REQUESTS[:2])
        assert model.training
    finally:
        model.eval()


def test_eager_attention_matches_sdpa():
    tok = tiny_tokenizer()
    sdpa = score_requests(tiny_model(seed=0), tok, REQUESTS + SHARED, batch_size=4)
    eager_model = tiny_model(seed=0)
    eager_model.set_attn_implementation("eager")
    eager = score_requests(eager_model, tok, REQUESTS + SHARED, batch_size=4)
    for a, b in zip(sdpa, eager, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_attention_without_4d_masks_is_an_error(model, monkeypatch):
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(CemError, match="attn_implementation='sdpa'"):
        score_requests(model, tiny_tokenizer(), REQUESTS[:1])


LETTERS_ONLY = [  # single-token options: one causal forward, no tree mask
    SHARED[0],
    REQUESTS[3],
    Request(INSTRUCTION + "Pick one of these, please.\nAnswer:", [" A", " B", " C"]),
]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_single_token_options_match_naive(model, batch_size):
    tok = tiny_tokenizer()
    assert all(len(tok.encode(c)) == 1 for r in LETTERS_ONLY for c in r.continuations)
    ours = score_requests(model, tok, LETTERS_ONLY, batch_size=batch_size)
    ref = naive_scores(model, tok, LETTERS_ONLY, max_length=2048)
    for a, b in zip(ours, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
