"""The general probe: held-out passages about no country, never retrievable or trainable."""

from __future__ import annotations

import pytest

from cem.benchmarks.probe import (
    PROBE_PASSAGES,
    mentions,
    probe_passages,
    probe_texts,
    probe_titles,
    select_probe,
)


def test_selection_skips_every_text_that_names_a_country():
    terms = {("bhutan",), ("thimphu",), ("united", "states")}
    summaries = {
        "Dzong": {"extract": "A fortress style of Bhutan."},
        "Photon": {"extract": "A photon is an elementary particle."},
        "Jazz": {"extract": "Jazz began in the United States."},
        "Mountain": {"extract": "A mountain is a raised landform, as near Thimphu."},
        "Empty": {"extract": ""},
    }
    assert [p.title for p in select_probe(summaries, terms, 5)] == ["Photon"]
    assert mentions("Born in the United  States!", terms)
    assert not mentions("The United Nations", terms)


def test_probe_is_fixed_and_about_no_country():
    from cem.assets.fetch import asset_dir
    from cem.benchmarks.probe import country_terms

    passages = probe_passages()
    assert len(passages) == PROBE_PASSAGES == len(probe_titles())
    terms = country_terms(asset_dir("countryinfo"))
    assert ("bhutan",) in terms and ("thimphu",) in terms
    assert not any(mentions(f"{p.title}. {p.text}", terms) for p in passages)


def test_probe_is_left_out_of_the_corpus_and_guarded():
    from cem.knowledge.corpus import load_wiki_summaries
    from cem.knowledge.leak import LeakGuard, guard_pairs

    titles = {d.title.casefold() for d in load_wiki_summaries()}
    assert not titles & probe_titles()
    guard = LeakGuard.from_items(guard_pairs({}), 13)
    copy = "Some words first. " + probe_texts()[0]
    assert guard.is_leak(copy) and not guard.is_leak("A sentence that is in no probe passage.")


@pytest.mark.e2e
def test_general_nll_is_per_token_and_paired_per_passage():
    from _tiny import tiny_model, tiny_tokenizer

    from cem.evaluation.probe import general_nll

    passages = probe_passages()[:3]
    out = general_nll(tiny_model(), tiny_tokenizer(), passages)
    per = out["per_passage"]
    assert [p["title"] for p in per] == [p.title for p in passages]
    assert out["tokens"] == sum(p["tokens"] for p in per) > 0
    assert out["general_nll"] == pytest.approx(sum(p["nll_sum"] for p in per) / out["tokens"])
    # A random model over a 2k vocabulary sits near ln(2048) = 7.6 nats per token.
    assert 6.5 < out["general_nll"] < 8.5
