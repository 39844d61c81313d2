"""Log-likelihood scoring of multiple-choice requests, each question's prefix computed once.

Tokenisation follows lm-evaluation-harness's ``HFLM`` exactly (``_encode_pair``, empty
contexts, left truncation), so that per-question predictions agree with lm-eval. What
differs is the layout, which is why it is faster (``benchmarks/bench_eval.py``). lm-eval
forwards context + option once per option and runs the LM head on every position; here
a batch of questions takes one forward pass:

- each question is one row: its context, then every option's tokens but the last. A
  tree-shaped 4-D attention mask lets each option attend to the context and to itself
  only, and its ``position_ids`` carry on from the context, so the context's keys and
  values serve every option and each option is scored as if it followed the context alone;
- tokens that open every context of the batch (an instruction, few-shot examples) are
  forwarded once and their KV cache, repeated per row, is passed as ``past_key_values``;
- the LM head runs only on the scored positions (``logits_to_keep`` as a boolean mask):
  the context's last token, which predicts every option's first token, and the options'.
  A transformers release that takes positions only (before ``slice_logits_to_keep``, e.g.
  5.17) is given every position that some row scores, and the rest are dropped after;
- rows are sorted by length, so that little of a batch is padding.

Single-token options (MCF letters " A".." D") cost one forward of the context alone.
(An earlier layout that expanded the context's cache to one row per option and forwarded
the options in a second pass was 2.3x slower on CPU: copying the cache dominated.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from cem.benchmarks.schema import Request
from cem.errors import CemError

if TYPE_CHECKING:
    from cem.evaluation.parallel import Ranks

# A batch closes early rather than pad more than 10% over its real tokens.
_PAD_SLACK = 1.1
# Below this many tokens, a prefix common to a batch is not worth its own forward pass.
_MIN_SHARED = 8


def _takes_keep_mask() -> bool:
    """Does this transformers take a boolean ``(batch, length)`` ``logits_to_keep``?"""
    from transformers import modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")


KEEP_MASK = _takes_keep_mask()


@dataclass
class Scored:
    """The scores of one request.

    Attributes:
        logliks: summed log-probability of each continuation given the context.
        n_tokens: tokens in each continuation (after lm-eval's trailing-space move).
    """

    logliks: list[float]
    n_tokens: list[int]


@dataclass
class _Unit:
    """Options of one request that share one prefix (usually all of them)."""

    req: int
    ctx: list[int]
    opts: list[int]
    conts: list[list[int]]


def score_requests(
    model,
    tokenizer,
    requests: list[Request],
    *,
    batch_size: int = 32,
    max_length: int = 2048,
    progress: bool = False,
    shard: Ranks | None = None,
) -> list[list[float | None]]:
    """Summed log-probability of each continuation of each request, in input order.

    Args:
        model: a causal LM (``transformers`` or PEFT-wrapped), any dtype and device.
        tokenizer: its tokenizer.
        requests: the questions to score.
        batch_size: questions per forward pass.
        max_length: longest input; longer inputs lose tokens on the left, as in lm-eval.
        progress: show a progress bar with questions per second.
        shard: score only the batches this rank owns (``cem.evaluation.parallel``); the
            options of the other batches are None.
    """
    scored = score_requests_full(
        model, tokenizer, requests, batch_size=batch_size, max_length=max_length,
        progress=progress, shard=shard,
    )  # fmt: skip
    return [s.logliks for s in scored]


def score_requests_full(
    model,
    tokenizer,
    requests: list[Request],
    *,
    batch_size: int = 32,
    max_length: int = 2048,
    progress: bool = False,
    shard: Ranks | None = None,
) -> list[Scored]:
    """As ``score_requests`` but also returns each continuation's token count."""
    if batch_size < 1:
        raise CemError(f"batch_size must be >= 1; got {batch_size}")
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in ("sdpa", "eager"):
        raise CemError(
            f"scoring needs attention that takes a 4-D mask (options share their question's "
            f"tokens); the model uses {attn!r} (load it with attn_implementation='sdpa')"
        )
    units = build_units(tokenizer, requests, max_length)
    unset = None if shard is not None else 0.0  # a shard leaves the others' options unset
    logliks = [[unset] * len(r.continuations) for r in requests]
    n_tokens = [[0] * len(r.continuations) for r in requests]
    parts = [0] * len(requests)
    for u in units:
        parts[u.req] += 1
    # Longest rows first, so that an out-of-memory error comes at once, not at the end;
    # rows of similar length share a batch, so that little of it is padding.
    order = sorted(units, key=lambda u: -_row_len(u))
    batches = list(_batches(order, batch_size))
    if shard is not None:  # every rank plans the same batches and scores its own
        batches = [b for i, b in enumerate(batches) if shard.mine(i)]
    total = round(sum(1 / parts[u.req] for b in batches for u in b))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout (LoRA's included) would make scores random
    try:
        with torch.inference_mode(), _progress(progress, total) as advance:
            for batch in batches:
                sums = _score_batch(model, batch, device)
                for u, unit_sums in zip(batch, sums, strict=True):
                    for opt, cont, value in zip(u.opts, u.conts, unit_sums, strict=True):
                        logliks[u.req][opt] = value
                        n_tokens[u.req][opt] = len(cont)
                advance(sum(1 / parts[u.req] for u in batch))
    finally:
        model.train(was_training)
    return [Scored(ll, n) for ll, n in zip(logliks, n_tokens, strict=True)]


def _row_len(u: _Unit) -> int:
    return len(u.ctx) + sum(len(c) - 1 for c in u.conts)


def _batches(order: list[_Unit], batch_size: int) -> Iterator[list[_Unit]]:
    """Consecutive units, longest first, at most ``batch_size`` of them, closing a batch
    early when padding would exceed ``_PAD_SLACK`` of its real tokens (the long tail)."""
    batch: list[_Unit] = []
    real = 0
    for u in order:
        n = _row_len(u)
        if batch and (
            len(batch) == batch_size
            or (len(batch) + 1) * _row_len(batch[0]) > _PAD_SLACK * (real + n)
        ):
            yield batch
            batch, real = [], 0
        batch.append(u)
        real += n
    if batch:
        yield batch


def build_units(tokenizer, requests: list[Request], max_length: int) -> list[_Unit]:
    """Tokenise as lm-eval's HFLM does and group each request's options by their prefix.

    A request gives one unit, unless left truncation (or an empty context whose option
    starts with the prefix token) gives its options different prefixes.
    """
    prefix_id = tokenizer.bos_token_id
    if prefix_id is None:
        prefix_id = tokenizer.eos_token_id
    pairs = [[_split(r.context, o) for o in r.continuations] for r in requests]
    texts = []
    for req, ps in zip(requests, pairs, strict=True):
        if req.context and ps:
            texts.append(ps[0][0])  # the context, once per question
            texts.extend(c + o for c, o in ps)
        else:
            texts.extend(o for _, o in ps)
    encoded = iter(_encode(tokenizer, texts, tokenizer.decode(prefix_id)))
    units = []
    for i, (req, ps) in enumerate(zip(requests, pairs, strict=True)):
        groups: dict[tuple[int, ...], _Unit] = {}
        ctx = next(encoded) if req.context and ps else None
        for j in range(len(ps)):
            enc = next(encoded)
            if ctx is not None:
                # lm-eval: encode(context + option) minus the tokens of encode(context).
                _add_option(groups, i, j, ctx, enc[len(ctx) :], max_length)
            elif enc[:1] == [prefix_id]:
                _add_option(groups, i, j, enc[:1], enc[1:], max_length)
            else:
                # lm-eval: an empty context becomes the prefix token.
                _add_option(groups, i, j, [prefix_id], enc, max_length)
        units.extend(groups.values())
    return units


def _split(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation, as lm-eval does."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def _encode(tokenizer, texts: list[str], bos_text: str) -> list[list[int]]:
    """``tokenizer.encode`` with HFLM's default special tokens, batched for speed.

    HFLM adds the tokenizer's default special tokens, unless the text already starts
    with the prefix token's text.
    """
    out: list[list[int]] = [[] for _ in texts]
    starts = [bool(bos_text) and t.startswith(bos_text) for t in texts]
    for has_bos in (False, True):
        idx = [i for i, s in enumerate(starts) if s == has_bos]
        if not idx:
            continue
        kwargs = {"add_special_tokens": False} if has_bos else {}
        ids = tokenizer([texts[i] for i in idx], **kwargs)["input_ids"]
        for i, seq in zip(idx, ids, strict=True):
            out[i] = list(seq)
    return out


def _add_option(
    groups: dict[tuple[int, ...], _Unit],
    req: int,
    opt: int,
    ctx: list[int],
    cont: list[int],
    max_length: int,
) -> None:
    if not ctx:
        raise CemError(f"request {req}: the context encodes to no tokens")
    if not cont:
        raise CemError(f"request {req}, option {opt}: the continuation encodes to no tokens")
    if len(cont) > max_length:
        raise CemError(
            f"request {req}, option {opt}: the continuation has {len(cont)} tokens, more than "
            f"max_length={max_length}; raise max_length"
        )
    # lm-eval feeds (ctx + cont)[-(max_length + 1):][:-1]: the context loses tokens on the left.
    excess = len(ctx) + len(cont) - (max_length + 1)
    if excess > 0:
        ctx = ctx[excess:]
    unit = groups.setdefault(tuple(ctx), _Unit(req, ctx, [], []))
    unit.opts.append(opt)
    unit.conts.append(cont)


def _score_batch(model, batch: list[_Unit], device: torch.device) -> list[list[float]]:
    """Summed log-probabilities of every option of every unit in ``batch``, in one forward."""
    shared = _shared_len([u.ctx for u in batch]) if len(batch) > 1 else 0
    shared = shared if shared >= _MIN_SHARED else 0
    cache = _shared_cache(model, batch[0].ctx[:shared], len(batch), device) if shared else None
    lay = _Layout(batch, shared)
    mask = pos = None
    # Rows are right-padded, so without option tokens plain causal attention is exact and
    # takes SDPA's fast path; options need the tree mask and their own positions.
    if any(len(c) > 1 for u in batch for c in u.conts):
        seg = torch.tensor(lay.seg, device=device)
        dtype = model.get_input_embeddings().weight.dtype
        mask = _tree_mask(seg, shared, model.config._attn_implementation, dtype)
        pos = torch.tensor(lay.pos, device=device)
    keep = torch.tensor(lay.keep, device=device)
    # A boolean mask runs the LM head on the scored positions only: (n_kept, vocab). Without
    # it, the positions any row scores: (batch, n_columns, vocab), then the scored ones.
    columns = None if KEEP_MASK else keep.any(0).nonzero().squeeze(1)
    out = model(
        input_ids=torch.tensor(lay.ids, device=device),
        attention_mask=mask,
        position_ids=pos,
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=keep if columns is None else columns,
    )
    logits = out.logits if columns is None else out.logits[keep[:, columns]]
    logits = logits.float()
    rows = torch.tensor(lay.rows, device=device)
    token_lp = logits[rows, torch.tensor(lay.targets, device=device)] - logits.logsumexp(-1)[rows]
    sums = torch.zeros(len(lay.option_of), dtype=token_lp.dtype, device=device)
    sums.index_add_(0, torch.tensor(lay.option_of, device=device), token_lp)
    flat = iter(sums.tolist())
    return [[next(flat) for _ in u.conts] for u in batch]


class _Layout:
    """One row per unit: its own context tokens, then every option's tokens but the last.

    ``seg`` is 0 for context, k + 1 for option k and -1 for padding; the tree mask lets an
    option see the context and itself only, and its positions carry on from the context,
    so each option is scored exactly as if it followed the context alone. ``rows`` and
    ``targets`` list, per scored token, its row among the kept logits and its token id;
    ``option_of`` numbers the options of the batch in order.
    """

    def __init__(self, batch: list[_Unit], shared: int):
        width = max(len(u.ctx) - shared + sum(len(c) - 1 for c in u.conts) for u in batch)
        self.ids, self.seg, self.pos, self.keep = [], [], [], []
        self.rows, self.targets, self.option_of = [], [], []
        kept = n_options = 0
        for u in batch:
            own = u.ctx[shared:]
            ids, seg, pos = list(own), [0] * len(own), list(range(shared, len(u.ctx)))
            last_ctx = kept  # the last context token predicts every option's first token
            kept += 1
            for k, cont in enumerate(u.conts):
                option = n_options
                n_options += 1
                ids += cont[:-1]
                seg += [k + 1] * (len(cont) - 1)
                pos += range(len(u.ctx), len(u.ctx) + len(cont) - 1)
                self.rows += [last_ctx, *range(kept, kept + len(cont) - 1)]
                self.targets += cont
                self.option_of += [option] * len(cont)
                kept += len(cont) - 1
            pad = width - len(ids)
            self.keep.append(
                [False] * (len(own) - 1) + [True] * (len(ids) - len(own) + 1) + [False] * pad
            )
            self.ids.append(ids + [0] * pad)
            self.seg.append(seg + [-1] * pad)
            self.pos.append(pos + [0] * pad)


def _tree_mask(seg: torch.Tensor, shared: int, attn: str, dtype: torch.dtype) -> torch.Tensor:
    """4-D mask (batch, 1, query, shared + key): causal, and an option sees only the context
    and itself; every token sees the shared opening.

    Boolean (True: attend) for SDPA, additive for eager attention.
    """
    width = seg.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
    same = seg[:, :, None] == seg[:, None, :]
    allowed = causal & (same | (seg == 0)[:, None, :])
    if shared:
        allowed = torch.cat([allowed.new_ones(len(seg), width, shared), allowed], dim=2)
    if attn == "sdpa":
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _shared_cache(model, tokens: list[int], n: int, device: torch.device) -> DynamicCache:
    """The cache of ``tokens`` forwarded once, repeated for ``n`` rows."""
    head = model(input_ids=torch.tensor([tokens], device=device), use_cache=True).past_key_values
    kv = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v, *_ in head]
    return DynamicCache(kv, config=model.config)


def _shared_len(contexts: list[list[int]]) -> int:
    """Tokens common to the start of every context, leaving each at least one of its own."""
    limit = min(len(c) for c in contexts) - 1
    n = 0
    while n < limit and all(c[n] == contexts[0][n] for c in contexts):
        n += 1
    return n


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(n)`` for a rich progress bar in questions per second (or a no-op)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cem.ui import console

    start, done = time.perf_counter(), [0.0]
    columns = [
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
    ]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("scoring", total=total, rate="")

        def advance(n: float) -> None:
            done[0] += n
            rate = done[0] / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=round(done[0]), rate=f"{rate:.1f} questions/s")

        yield advance
