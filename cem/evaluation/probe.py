"""``general_nll``: the model's negative log-likelihood per token on the general probe.

Each probe passage (``cem.benchmarks.probe``) is scored on its first ``PROBE_TOKENS``
tokens, BOS first when the tokenizer has one; every token after the first is predicted.
A rise over the rounds is forgetting outside the benchmark. The per-passage sums are
kept, so two models can be compared passage by passage (a paired interval).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cem.benchmarks.probe import PROBE_TOKENS, ProbePassage


def passage_ids(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [(bos + x)[:max_tokens] for x in ids]


@torch.no_grad()
def nll_sums(model, tokenizer, texts: Sequence[str], max_tokens: int = PROBE_TOKENS,
             batch_size: int = 16) -> list[tuple[float, int]]:  # fmt: skip
    """``(summed NLL, predicted tokens)`` of each text, in order."""
    seqs = passage_ids(tokenizer, texts, max_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start : start + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, s in enumerate(batch):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        keep = mask[:, 1:].bool()
        for i in range(len(batch)):
            # One row at a time in float32: the whole batch's float32 logits and their log-
            # softmax (16 x 128 x 49k vocabulary) were 0.8 GB, most of cem eval's peak memory.
            nll = torch.nn.functional.cross_entropy(
                logits[i : i + 1].float().transpose(1, 2), ids[i : i + 1, 1:], reduction="none"
            )[0]
            out.append((float(nll[keep[i]].sum()), int(keep[i].sum())))
    return out


def general_nll(model, tokenizer, passages: Sequence[ProbePassage]) -> dict:
    """The probe's result: mean NLL per token over all passages, and each passage's sum."""
    was_training = model.training
    model.eval()
    try:
        sums = nll_sums(model, tokenizer, [p.text for p in passages])
    finally:
        model.train(was_training)
    total, tokens = sum(s for s, _ in sums), sum(n for _, n in sums)
    return {
        "general_nll": total / tokens if tokens else None,
        "passages": len(passages),
        "tokens": tokens,
        "max_tokens": PROBE_TOKENS,
        "per_passage": [
            {"title": p.title, "nll_sum": s, "tokens": n}
            for p, (s, n) in zip(passages, sums, strict=True)
        ],
    }
