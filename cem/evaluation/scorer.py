"""Log-likelihood scoring of multiple-choice requests, with the question's KV cache shared.

Tokenisation follows lm-evaluation-harness's ``HFLM`` exactly (``_encode_pair``, empty
contexts, left truncation), so that per-question predictions agree with lm-eval. What
differs is the layout, which is why it is several times faster:

1. the prefixes (context tokens) of a batch of questions are forwarded once, left-padded,
   keeping only the last position's logits, which score every option's first token;
2. the cache is expanded to one row per option with two or more tokens, and only the
   continuation tokens (minus the last) are forwarded, with ``position_ids`` that carry on
   from each prefix and a 2-D mask over cache + new tokens; the LM head runs only on real
   (non-pad) positions.

Single-token options (MCF letters " A".." D") need step 1 only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from cem.errors import CemError

# Continuation rows are grouped so that padded positions stay under 25% more than real
# ones, and no group exceeds this many positions (bounds the logits' memory).
_PAD_SLACK = 1.25
_CHUNK_TOKENS = 2048


@dataclass
class Request:
    """One question: a context and the continuations to score after it.

    Attributes:
        context: the prompt, e.g. "Question: ...\\nAnswer:".
        continuations: the options as scored text, e.g. [" A", " B"] or [" Paris", " Lyon"].
    """

    context: str
    continuations: list[str]


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
) -> list[list[float]]:
    """Summed log-probability of each continuation of each request, in input order.

    Args:
        model: a causal LM (``transformers`` or PEFT-wrapped), any dtype and device.
        tokenizer: its tokenizer.
        requests: the questions to score.
        batch_size: questions per forward pass.
        max_length: longest input; longer inputs lose tokens on the left, as in lm-eval.
        progress: show a progress bar with questions per second.
    """
    scored = score_requests_full(
        model, tokenizer, requests, batch_size=batch_size, max_length=max_length, progress=progress
    )
    return [s.logliks for s in scored]


def score_requests_full(
    model,
    tokenizer,
    requests: list[Request],
    *,
    batch_size: int = 32,
    max_length: int = 2048,
    progress: bool = False,
) -> list[Scored]:
    """As ``score_requests`` but also returns each continuation's token count."""
    if batch_size < 1:
        raise CemError(f"batch_size must be >= 1; got {batch_size}")
    units = build_units(tokenizer, requests, max_length)
    logliks = [[0.0] * len(r.continuations) for r in requests]
    n_tokens = [[0] * len(r.continuations) for r in requests]
    parts = [0] * len(requests)
    for u in units:
        parts[u.req] += 1
    # Longest first, so that an out-of-memory error comes at once, not at the end.
    order = sorted(units, key=lambda u: (-len(u.ctx), -max(map(len, u.conts))))
    device = next(model.parameters()).device
    with torch.inference_mode(), _Progress(progress, len(requests)) as advance:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            sums = _score_batch(model, batch, device)
            for u, unit_sums in zip(batch, sums, strict=True):
                for opt, cont, value in zip(u.opts, u.conts, unit_sums, strict=True):
                    logliks[u.req][opt] = value
                    n_tokens[u.req][opt] = len(cont)
            advance(sum(1 / parts[u.req] for u in batch))
    return [Scored(ll, n) for ll, n in zip(logliks, n_tokens, strict=True)]


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
    """Summed log-probabilities of every option of every unit in ``batch``."""
    rows = [(b, k) for b, u in enumerate(batch) for k, c in enumerate(u.conts) if len(c) > 1]
    prefix_len = torch.tensor([len(u.ctx) for u in batch], device=device)
    width = int(prefix_len.max())
    ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(batch), width, dtype=torch.long, device=device)
    for b, u in enumerate(batch):
        ids[b, width - len(u.ctx) :] = torch.tensor(u.ctx, device=device)
        mask[b, width - len(u.ctx) :] = 1
    # Left padding puts every prefix's last token in the last column; positions skip the pads.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=bool(rows),
        logits_to_keep=1,
    )
    # The last prefix position predicts every option's first token.
    last = out.logits[:, -1, :].float()
    first_lp = last - last.logsumexp(-1, keepdim=True)
    sums = [[float(first_lp[b, c[0]]) for c in u.conts] for b, u in enumerate(batch)]
    if not rows:
        return sums
    kv = [(k, v) for k, v, *_ in out.past_key_values]
    # Options vary a lot in length: group rows of similar length so that little is padding.
    rows.sort(key=lambda r: -len(batch[r[0]].conts[r[1]]))
    for chunk in _length_chunks([len(batch[b].conts[k]) - 1 for b, k in rows]):
        part = rows[chunk.start : chunk.stop]
        rest = _continuation_logprobs(model, batch, part, kv, mask, prefix_len)
        for (b, k), value in zip(part, rest, strict=True):
            sums[b][k] += value
    return sums


def _length_chunks(lengths: list[int]) -> list[range]:
    """Split rows sorted longest first into runs with little padding and bounded size."""
    chunks, start, real = [], 0, 0
    for i, n in enumerate(lengths):
        padded = (i - start + 1) * lengths[start]
        if i > start and (padded > _PAD_SLACK * (real + n) or padded > _CHUNK_TOKENS):
            chunks.append(range(start, i))
            start, real = i, 0
        real += n
    chunks.append(range(start, len(lengths)))
    return chunks


def _continuation_logprobs(
    model,
    batch: list[_Unit],
    rows: list[tuple[int, int]],
    kv: list[tuple[torch.Tensor, torch.Tensor]],
    prefix_mask: torch.Tensor,
    prefix_len: torch.Tensor,
) -> list[float]:
    """Log-probability of tokens 2.. of each option row, reading its prefix from ``kv``."""
    device = prefix_mask.device
    conts = [batch[b].conts[k] for b, k in rows]
    width = max(len(c) for c in conts) - 1
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    targets = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    cont_mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for r, c in enumerate(conts):
        ids[r, : len(c) - 1] = torch.tensor(c[:-1], device=device)
        targets[r, : len(c) - 1] = torch.tensor(c[1:], device=device)
        cont_mask[r, : len(c) - 1] = 1
    unit_idx = torch.tensor([b for b, _ in rows], device=device)
    # One cache row per option, copied from its question's prefix.
    cache = DynamicCache([(k[unit_idx], v[unit_idx]) for k, v in kv], config=model.config)
    keep = cont_mask.bool()
    out = model(
        input_ids=ids,
        attention_mask=torch.cat([prefix_mask[unit_idx], cont_mask], dim=1),
        position_ids=prefix_len[unit_idx, None] + torch.arange(width, device=device),
        past_key_values=cache,
        use_cache=True,
        # A boolean mask runs the LM head on real tokens only: (n_real, vocab).
        logits_to_keep=keep,
    )
    logits = out.logits.float()
    token_lp = logits.gather(-1, targets[keep][:, None])[:, 0] - logits.logsumexp(-1)
    row_of_token = torch.arange(len(rows), device=device)[:, None].expand_as(keep)[keep]
    sums = torch.zeros(len(rows), dtype=token_lp.dtype, device=device)
    sums.index_add_(0, row_of_token, token_lp)
    return sums.tolist()


class _Progress:
    """A rich progress bar counting questions per second; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from cem.ui import console

        self.start = time.perf_counter()
        self.bar = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            console=console,
            transient=True,
        )
        self.bar.__enter__()
        task = self.bar.add_task("scoring", total=self.total, rate="")
        done = [0.0]

        def advance(n: float) -> None:
            done[0] += n
            rate = done[0] / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(task, completed=round(done[0]), rate=f"{rate:.1f} questions/s")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
