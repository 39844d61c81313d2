"""How CPT and CIT share the training tokens, the paradigm's order, and replay.

``mix.cit_ratio`` r is the CIT share of this round's new tokens (replay comes on top and
is reported apart), counted as ``mix.count`` says: ``loss_tokens`` counts the tokens that
bear loss (a CIT row's response, every token of a CPT row), ``all_tokens`` counts prompts
too. The budgets below are in that count. The CPT text is the anchor: the CIT budget is CPT tokens x r/(1-r),
unless ``mix.max_tokens`` caps the total, in which case the CPT text is first cut to
(1-r) x max_tokens. The CIT budget is split over the enabled types by ``share``
(normalised over the types that have items); a seeded sampler draws each type's items,
repeating them when a type has too few, and ends with the item that lands closest to the
target. Each type's shortfall or excess carries to the next, so the realised ratio is
exact to within about half an item.

Paradigms: ``parallel`` (one shuffled stream, the paper's), ``sequential`` (CPT in phase 0,
then CIT in phase 1), ``cpt_only`` and ``cit_only`` (every CIT item once, or max_tokens).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence

from omegaconf import DictConfig

from cem.choices import TokenCount
from cem.curriculum.render import CIT_KINDS, Row
from cem.errors import ConfigError

Size = Callable[[Row], int]  # how many tokens a row counts for


def all_tokens(row: Row) -> int:
    return row.n_tokens


def loss_tokens(row: Row) -> int:
    return row.n_loss_tokens


SIZES: dict[TokenCount, Size] = {
    TokenCount.loss_tokens: loss_tokens,
    TokenCount.all_tokens: all_tokens,
}


def tokens_of(rows: Sequence[Row], size: Size = all_tokens) -> int:
    return sum(size(r) for r in rows)


def fill_repeat(
    items: Sequence[Row], target: int, rng: random.Random, size: Size = all_tokens
) -> list[Row]:
    """Seeded passes over ``items`` (reshuffled each pass) until ``target`` tokens, closest."""
    items = [r for r in items if size(r) > 0]
    chosen: list[Row] = []
    total, order = 0, []
    while items and total < target:
        if not order:
            order = list(items)
            rng.shuffle(order)
        row = order.pop()
        if total + size(row) > target:
            # The next draw overshoots: take whichever item lands closest instead, and stop
            # unless it still leaves room.
            row = min(items, key=lambda r: abs(target - total - size(r)))
            if abs(target - total - size(row)) >= target - total:
                break
        chosen.append(dataclasses.replace(row))
        total += size(row)
    return chosen


def fill_subset(
    items: Sequence[Row], target: int, rng: random.Random, size: Size = all_tokens
) -> list[Row]:
    """A seeded subset of ``items`` (each at most once) whose tokens come closest to ``target``."""
    order = [r for r in items if size(r) > 0]
    rng.shuffle(order)
    chosen, skipped, total = [], [], 0
    for row in order:
        if total + size(row) <= target:
            chosen.append(row)
            total += size(row)
        else:
            skipped.append(row)
    if skipped and total < target:
        row = min(skipped, key=lambda r: abs(target - total - size(r)))
        if abs(target - total - size(row)) < target - total:
            chosen.append(row)
    return chosen


def normalised_shares(
    by_type: Mapping[str, Sequence[Row]], shares: Mapping[str, float]
) -> dict[str, float]:
    """Shares of the types that have items and a positive share, summing to 1."""
    live = {k: shares[k] for k in CIT_KINDS if k in by_type and by_type[k] and shares[k] > 0}
    total = sum(live.values())
    return {k: v / total for k, v in live.items()} if total else {}


def sample_cit(
    by_type: Mapping[str, Sequence[Row]],
    shares: Mapping[str, float],
    budget: int,
    rng: random.Random,
    size: Size = all_tokens,
) -> list[Row]:
    """CIT rows filling ``budget`` tokens, split over the types by ``shares`` (normalised)."""
    norm = normalised_shares(by_type, shares)
    if budget > 0 and not norm:
        raise ConfigError(
            "instructions",
            sorted(by_type),
            f"left no CIT items with a positive share to fill the CIT budget of {budget} tokens",
            "instructions=all, or mix.cit_ratio=0 / paradigm=cpt_only",
        )
    chosen: list[Row] = []
    cum_share = 0.0
    for kind, share in norm.items():
        cum_share += share
        # Aim each type at the cumulative target, so one type's shortfall carries forward.
        target = round(cum_share * budget) - tokens_of(chosen, size)
        chosen += fill_repeat(by_type[kind], target, rng, size)
    return chosen


class NoCptText(ConfigError):
    """The paradigm needs CPT text but the round has none (nothing retrieved, or every
    passage dropped); ``cem run`` stops there, ``cem build`` reports it."""


def select(
    cpt: Sequence[Row],
    cit_by_type: Mapping[str, Sequence[Row]],
    shares: Mapping[str, float],
    mix: DictConfig,
    paradigm: str,
) -> tuple[list[Row], dict]:
    """This round's CPT and CIT rows under the paradigm and ratio, and the budget stats.

    Raises:
        ConfigError: the ratio or paradigm is impossible with the rows at hand.
    """
    rng = random.Random(mix.seed)
    r, cap, count = mix.cit_ratio, mix.max_tokens, TokenCount(mix.count)
    size = SIZES[count]
    all_cit = [row for kind in CIT_KINDS for row in cit_by_type.get(kind, [])]
    if paradigm == "cit_only":
        if not all_cit:
            raise ConfigError(
                "paradigm",
                paradigm,
                "needs CIT items; none were built",
                "instructions=all, or paradigm=parallel",
            )
        cit = sample_cit(cit_by_type, shares, cap, rng, size) if cap else list(all_cit)
        return cit, _budget(cpt, [], cit, tokens_of(cit, size), cit_by_type, shares, count)
    if not cpt:
        raise NoCptText(
            "paradigm",
            paradigm,
            f"needs CPT passages (mix.cit_ratio={r}) but the knowledge file has none left",
            "paradigm=cit_only",
        )
    kept = list(cpt)
    if paradigm == "cpt_only":
        if cap and tokens_of(cpt, size) > cap:
            kept = fill_subset(cpt, cap, rng, size)
        return kept, _budget(cpt, kept, [], 0, cit_by_type, shares, count)
    if r >= 1:
        raise ConfigError(
            "mix.cit_ratio",
            r,
            f"must be < 1 under paradigm={paradigm} (the CPT text anchors the budget)",
            "mix.cit_ratio=0.5 or paradigm=cit_only",
        )
    if cap and tokens_of(cpt, size) > (1 - r) * cap:
        kept = fill_subset(cpt, round((1 - r) * cap), rng, size)
        if not kept:
            raise ConfigError(
                "mix.max_tokens",
                cap,
                "is smaller than any CPT passage",
                f"mix.max_tokens={10 * cap}",
            )
    budget = round(tokens_of(kept, size) * r / (1 - r))
    cit = sample_cit(cit_by_type, shares, budget, rng, size)
    return kept + cit, _budget(cpt, kept, cit, budget, cit_by_type, shares, count)


def _budget(
    cpt: Sequence[Row],
    kept: Sequence[Row],
    cit: Sequence[Row],
    budget: int,
    by_type: Mapping[str, Sequence[Row]],
    shares: Mapping[str, float],
    count: TokenCount,
) -> dict:
    size = SIZES[count]
    return {
        "count": count.value,
        "cpt_available_tokens": tokens_of(cpt, size),
        "cpt_tokens": tokens_of(kept, size),
        "cit_budget": budget,
        "cit_tokens": tokens_of(cit, size),
        "shares": normalised_shares(by_type, shares),
        "empty_types": [k for k in CIT_KINDS if k in by_type and not by_type[k]],
    }


def replay_rows(earlier: Sequence[dict], fraction: float, seed: int) -> list[Row]:
    """A seeded ``fraction`` of earlier rounds' rows (their own replays left out), as ``replay``."""
    originals = [row for row in earlier if row["kind"] != "replay"]
    n = round(fraction * len(originals))
    picked = random.Random(seed).sample(originals, n)
    return [
        Row(
            prompt=row["prompt"],
            response=row["response"],
            kind="replay",
            round=int(row["round"]),
            source_ids=list(row["source_ids"]),
        )
        for row in picked
    ]


def order_rows(rows: Sequence[Row], paradigm: str, seed: int) -> list[Row]:
    """Set phases (sequential: text without a response in 0, the rest in 1) and shuffle each."""
    rng = random.Random(seed)
    for row in rows:
        row.phase = int(paradigm == "sequential" and row.response != "")
    out: list[Row] = []
    for phase in sorted({r.phase for r in rows}):
        part = [r for r in rows if r.phase == phase]
        rng.shuffle(part)
        out += part
    return out


def cit_ratio(rows: Sequence[Row], size: Size = all_tokens) -> float | None:
    """The CIT share of the tokens of this round's new rows (replay left out)."""
    cpt = sum(size(r) for r in rows if r.kind == "cpt")
    cit = sum(size(r) for r in rows if r.kind in CIT_KINDS)
    return cit / (cpt + cit) if cpt + cit else None
