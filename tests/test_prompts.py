"""Prompt rendering in the MCF and CF formulations."""

from __future__ import annotations

import pytest

from cem.benchmarks.prompts import mcf_prompt, render
from cem.benchmarks.schema import MCItem


def item(**kw):
    base = dict(
        id="x",
        question="What is the capital of Bhutan?",
        choices=["Thimphu", "Paro", "Lhasa", "Delhi"],
        answer=0,
    )
    return MCItem(**{**base, **kw})


def test_mcf_letters_follow_the_lettered_options():
    req = render(item(), "mcf")
    assert (
        req.context
        == "What is the capital of Bhutan?\nA. Thimphu\nB. Paro\nC. Lhasa\nD. Delhi\nAnswer:"
    )
    assert req.continuations == [" A", " B", " C", " D"]


def test_mcf_text_target_and_instruction():
    req = render(item(), "mcf", mcf_target="text", instruction="Answer the question.")
    assert req.context.startswith("Answer the question.\n\nWhat is the capital")
    assert req.continuations == [" Thimphu", " Paro", " Lhasa", " Delhi"]


def test_cf_scores_the_option_after_the_stem():
    req = render(item(stem="The capital of Bhutan is"), "cf")
    assert req.context == "The capital of Bhutan is"
    assert req.continuations[0] == " Thimphu"


def test_cf_blank_takes_the_option_and_the_rest_follows():
    q = "The founder of the association was _____, who lived in Tokyo."
    req = render(item(question=q, choices=["Sun Yat-sen", "Yuan Shikai"]), "cf")
    assert req.context == "The founder of the association was"
    assert req.continuations == [
        " Sun Yat-sen, who lived in Tokyo.",
        " Yuan Shikai, who lived in Tokyo.",
    ]


def test_cf_chinese_blank_of_four_underscores_has_no_space():
    req = render(item(question="下列表述，能够成立的是____。", choices=["甲", "乙"]), "cf")
    assert req.context == "下列表述，能够成立的是"
    assert req.continuations == ["甲。", "乙。"]


def test_cf_without_stem_or_blank_uses_question_answer():
    req = render(item(), "cf")
    assert req.context == "Question: What is the capital of Bhutan?\nAnswer:"
    assert req.continuations[1] == " Paro"


def test_mcf_prompt_rejects_too_many_options_and_unknown_formulation():
    with pytest.raises(ValueError, match="at most 26"):
        mcf_prompt(item(choices=[str(i) for i in range(27)]))
    with pytest.raises(ValueError, match="expected mcf or cf"):
        render(item(), "open")
