"""Mistake selection and knowledge-point extraction."""

from __future__ import annotations

from omegaconf import OmegaConf

from cem.config import MistakesConfig
from cem.knowledge.keypoints import entities, llm_keypoints, parse_keywords, rule_keypoints
from cem.knowledge.mistakes import select_mistakes
from cem.records import EvalRecord


def rec(i, set_="exam", correct=False, margin=1.0):
    pred = 1 if correct else 2
    return EvalRecord(id=f"q{i}", set=set_, subject="", question=f"Q{i}?",
                      choices=["a", "b", "c", "d"], gold=1, pred=pred, pred_norm=pred,
                      scores=None, margin=margin, correct=correct, correct_norm=correct)  # fmt: skip


def cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(MistakesConfig), kw)


def test_wrong_exam_items_only():
    records = [rec(0), rec(1, correct=True), rec(2, set_="test"), rec(3)]
    out = select_mistakes(records, cfg())
    assert [m.id for m in out] == ["q0", "q3"]
    assert (out[0].gold_text, out[0].pred_text, out[0].reason) == ("b", "c", "wrong")


def test_ambiguous_right_items_join_under_the_margin_threshold():
    records = [rec(0), rec(1, correct=True, margin=0.05), rec(2, correct=True, margin=0.9)]
    out = select_mistakes(records, cfg(margin_threshold=0.1))
    assert [(m.id, m.reason) for m in out] == [("q0", "wrong"), ("q1", "ambiguous")]
    assert [m.id for m in select_mistakes(records, cfg())] == ["q0"]


def test_cap_is_seeded_and_keeps_order():
    records = [rec(i) for i in range(50)]
    a = select_mistakes(records, cfg(max_mistakes=10, seed=1))
    b = select_mistakes(records, cfg(max_mistakes=10, seed=1))
    c = select_mistakes(records, cfg(max_mistakes=10, seed=2))
    ids = [m.id for m in a]
    assert ids == [m.id for m in b] and ids != [m.id for m in c]
    assert len(ids) == 10 and ids == sorted(ids, key=lambda s: int(s[1:]))


def test_rule_extractor_uses_entities_and_gold_answer():
    kp = rule_keypoints("What is the capital of Bosnia and Herzegovina?", "Sarajevo")
    assert "Bosnia and Herzegovina" in kp.keywords and "Sarajevo" in kp.keywords
    assert kp.queries[0] == "Bosnia and Herzegovina Sarajevo"
    assert kp.method == "rule"


def test_rule_extractor_without_entities_falls_back_to_content_words():
    kp = rule_keypoints("下列关于法律推理的表述，能够成立的是____。", "类比推理")
    assert kp.queries and "类比推理" in kp.queries[0]
    assert entities("which river flows through town?") == []


def test_llm_reply_parsing_is_robust():
    assert parse_keywords('Sure! ```json\n{"keywords": ["Bhutan", "Thimphu"]}\n```') == [
        "Bhutan",
        "Thimphu",
    ]
    assert parse_keywords('["Nile", "Egypt"] are the keys') == ["Nile", "Egypt"]
    assert parse_keywords("Bhutan, Thimphu") is None
    assert parse_keywords('{"keywords": []}') is None


def test_llm_fallback_to_rule_is_marked():
    kp = llm_keypoints("I cannot answer that.", "What is the capital of Bhutan?", "Thimphu")
    assert kp.method == "rule_fallback" and kp.queries[0] == "Bhutan Thimphu"
    kp = llm_keypoints(
        '{"keywords": ["Bhutan capital"]}', "What is the capital of Bhutan?", "Thimphu"
    )
    assert kp.method == "llm" and kp.queries[0] == "Bhutan capital Thimphu"
