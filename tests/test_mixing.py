"""The CIT:CPT token ratio is exact by construction; paradigms, phases and replay."""

from __future__ import annotations

import random

import pytest
from omegaconf import OmegaConf

from cem.config import MixConfig
from cem.curriculum.mixing import (
    cit_ratio,
    fill_repeat,
    fill_subset,
    loss_tokens,
    order_rows,
    replay_rows,
    sample_cit,
    select,
)
from cem.curriculum.render import CIT_KINDS, Row
from cem.errors import ConfigError

SHARES = dict.fromkeys(CIT_KINDS, 0.25)


def rows(kind: str, n: int, lo: int, hi: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    return [
        Row(
            f"{kind} {i}",
            "" if kind == "cpt" else "answer",
            kind,
            1,
            [f"{kind}-{i}"],
            0,
            rng.randint(lo, hi),
        )
        for i in range(n)
    ]


def corpus(seed: int = 0, few_general: bool = False) -> tuple[list[Row], dict[str, list[Row]]]:
    cpt = rows("cpt", 30, 80, 300, seed)
    cit = {k: rows(k, 25, 10, 120, seed + i) for i, k in enumerate(CIT_KINDS)}
    if few_general:
        cit["general"] = cit["general"][:2]  # too few: must repeat
    return cpt, cit


def mix_cfg(**kw):
    return OmegaConf.structured(MixConfig(**kw))


def with_loss_tokens(cpt: list[Row], cit: dict[str, list[Row]]) -> None:
    """CPT rows bear loss on every token; a CIT row on its short response only."""
    for r in cpt:
        r.n_loss_tokens = r.n_tokens
    for part in cit.values():
        for r in part:
            r.n_loss_tokens = max(1, r.n_tokens // 10)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_loss_token_count_puts_the_ratio_on_loss_bearing_tokens(ratio):
    cpt, cit = corpus(0)
    with_loss_tokens(cpt, cit)
    by_all, _ = select(cpt, cit, SHARES, mix_cfg(cit_ratio=ratio), "parallel")
    by_loss, budget = select(cpt, cit, SHARES, mix_cfg(cit_ratio=ratio, count="loss_tokens"),
                             "parallel")  # fmt: skip
    assert budget["count"] == "loss_tokens"
    assert abs(cit_ratio(by_loss, loss_tokens) - ratio) <= 0.02
    # Counted by all tokens, the CIT share is far from the target: prompts bear no loss.
    assert cit_ratio(by_all, loss_tokens) < ratio / 2
    assert len(by_loss) > len(by_all)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_realised_ratio_is_within_two_percent(ratio, seed):
    cpt, cit = corpus(seed, few_general=seed == 2)
    chosen, budget = select(cpt, cit, SHARES, mix_cfg(cit_ratio=ratio, seed=seed), "parallel")
    assert abs(cit_ratio(chosen) - ratio) <= 0.02
    assert budget["cpt_tokens"] == budget["cpt_available_tokens"]  # every passage once
    assert abs(budget["cit_tokens"] - budget["cit_budget"]) <= 60  # about half an item


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_max_tokens_caps_the_total_and_keeps_the_ratio(ratio):
    cpt, cit = corpus(3)
    chosen, budget = select(cpt, cit, SHARES, mix_cfg(cit_ratio=ratio, max_tokens=3000), "parallel")
    # The CPT text is cut to (1 - r) x max_tokens, to within half a passage (<= 300 tokens).
    assert abs(budget["cpt_tokens"] - (1 - ratio) * 3000) <= 150
    assert budget["cpt_tokens"] < budget["cpt_available_tokens"]
    assert abs(cit_ratio(chosen) - ratio) <= 0.02


def test_shares_split_the_cit_budget_and_few_items_repeat():
    cpt, cit = corpus(4, few_general=True)
    shares = {"normative": 0.5, "extractive": 0.2, "review": 0.2, "general": 0.1}
    chosen, budget = select(cpt, cit, shares, mix_cfg(cit_ratio=0.5), "parallel")
    by = {k: sum(r.n_tokens for r in chosen if r.kind == k) for k in CIT_KINDS}
    for k, s in shares.items():
        assert abs(by[k] / budget["cit_budget"] - s) < 0.05, k
    general = [r for r in chosen if r.kind == "general"]
    assert len(general) > len({r.prompt for r in general})  # repeated


def test_disabled_or_empty_types_are_renormalised():
    cpt, cit = corpus(5)
    cit["review"] = []
    del cit["general"]
    chosen, budget = select(cpt, cit, SHARES, mix_cfg(cit_ratio=0.5), "parallel")
    assert budget["shares"] == {"normative": 0.5, "extractive": 0.5}
    assert budget["empty_types"] == ["review"]
    assert abs(cit_ratio(chosen) - 0.5) <= 0.02


def test_the_sampler_is_seeded():
    cpt, cit = corpus(6)
    a, _ = select(cpt, cit, SHARES, mix_cfg(seed=7), "parallel")
    b, _ = select(cpt, cit, SHARES, mix_cfg(seed=7), "parallel")
    c, _ = select(cpt, cit, SHARES, mix_cfg(seed=8), "parallel")
    assert [r.prompt for r in a] == [r.prompt for r in b] != [r.prompt for r in c]


def test_fill_lands_closest():
    items = rows("general", 5, 100, 100, 0)
    assert sum(r.n_tokens for r in fill_repeat(items, 1040, random.Random(0))) == 1000
    assert sum(r.n_tokens for r in fill_repeat(items, 1060, random.Random(0))) == 1100
    assert len(fill_subset(items, 1060, random.Random(0))) == 5  # each at most once
    assert fill_repeat(items, 0, random.Random(0)) == []


def test_paradigms():
    cpt, cit = corpus(7)
    only_cpt, _ = select(cpt, cit, SHARES, mix_cfg(), "cpt_only")
    assert {r.kind for r in only_cpt} == {"cpt"} and len(only_cpt) == len(cpt)
    only_cit, _ = select(cpt, cit, SHARES, mix_cfg(), "cit_only")
    assert sorted(r.prompt for r in only_cit) == sorted(r.prompt for v in cit.values() for r in v)
    capped, _ = select(cpt, cit, SHARES, mix_cfg(max_tokens=500), "cit_only")
    assert abs(sum(r.n_tokens for r in capped) - 500) <= 60
    seq, _ = select(cpt, cit, SHARES, mix_cfg(), "sequential")
    ordered = order_rows(seq, "sequential", 0)
    phases = [r.phase for r in ordered]
    assert phases == sorted(phases) and set(phases) == {0, 1}
    assert all((r.phase == 0) == (r.kind == "cpt") for r in ordered)
    par = order_rows(select(cpt, cit, SHARES, mix_cfg(), "parallel")[0], "parallel", 0)
    assert {r.phase for r in par} == {0}
    assert [r.kind for r in par] != sorted((r.kind for r in par), key=("cpt", *CIT_KINDS).index)


def test_impossible_ratios_name_the_key():
    cpt, cit = corpus(8)
    with pytest.raises(ConfigError, match=r"paradigm needs CPT passages.*try paradigm=cit_only"):
        select([], cit, SHARES, mix_cfg(), "cpt_only")
    with pytest.raises(ConfigError, match=r"paradigm needs CPT passages"):
        select([], cit, SHARES, mix_cfg(cit_ratio=0.5), "parallel")
    with pytest.raises(ConfigError, match=r"mix.cit_ratio must be < 1"):
        select(cpt, cit, SHARES, mix_cfg(cit_ratio=1.0), "parallel")
    with pytest.raises(ConfigError, match=r"instructions left no CIT items"):
        select(cpt, {k: [] for k in CIT_KINDS}, SHARES, mix_cfg(), "parallel")
    with pytest.raises(ConfigError, match=r"mix.max_tokens is smaller than any CPT passage"):
        select(cpt, cit, SHARES, mix_cfg(max_tokens=20), "parallel")
    with pytest.raises(ConfigError, match=r"paradigm needs CIT items"):
        select(cpt, {}, SHARES, mix_cfg(), "cit_only")
    zero, _ = select(cpt, {}, SHARES, mix_cfg(cit_ratio=0.0), "parallel")
    assert {r.kind for r in zero} == {"cpt"}
    assert sample_cit({}, SHARES, 0, random.Random(0)) == []


def test_replay_draws_a_seeded_fraction_of_earlier_originals():
    earlier = [r.to_dict() for r in rows("cpt", 10, 5, 5, 0) + rows("review", 10, 5, 5, 0)]
    earlier += [dict(earlier[0], kind="replay")]
    picked = replay_rows(earlier, 0.5, seed=3)
    assert len(picked) == 10 and {r.kind for r in picked} == {"replay"}
    assert [r.prompt for r in picked] == [r.prompt for r in replay_rows(earlier, 0.5, seed=3)]
    assert replay_rows(earlier, 0.0, seed=3) == []
    seq = order_rows(picked, "sequential", 0)
    assert all((r.phase == 0) == (r.response == "") for r in seq)
