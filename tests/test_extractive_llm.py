"""Extractive questions written by the LLM extractor (``question_source=llm``).

Canned replies test the parsing, the rejections and the cloze fallbacks without a model;
one ``cem build`` runs the tiny random Llama as the extractor, whose garbage all falls back.
"""

from __future__ import annotations

import json

import pytest
from conftest import compose_config
from omegaconf import OmegaConf
from test_curriculum import (
    ALPACA,
    COUNTRIES,
    PASSAGES,
    _tokenizer,
    items,
    load_rows,
    mistake,
    passages,
    round_of,
    write_jsonl,
)

from cem.config import ExtractiveConfig
from cem.curriculum import render as render_mod
from cem.curriculum.extractive import (
    BLANK,
    MAX_QUESTION_WORDS,
    QUESTION_PROMPT,
    Fact,
    check_question,
    extractive_rows,
    llm_questions,
    question_of,
)
from cem.curriculum.render import Renderer
from cem.errors import CemError
from cem.knowledge import retrieve as retrieve_mod
from cem.knowledge.types import Passage
from cem.records import write_records
from cem.validate import ConfigInvalid

SENTENCE = "Its capital and largest city is Luandra."
GOOD = "What is the largest city of Angolia?"


def angolia_fact() -> Fact:
    p = Passage(PASSAGES["Angolia"], "wiki_offline", "Angolia", 1.0, "Angolia")
    start = SENTENCE.index("Luandra")
    return Fact(SENTENCE, (start, start + len("Luandra")), p)


def llm_cfg(**kw) -> ExtractiveConfig:
    return OmegaConf.structured(ExtractiveConfig(question_source="llm", **kw))


def canned(replies: dict[str, str], calls: list[list[str]] | None = None):
    """A ``generate`` answering each prompt by the first key found in it (else nothing)."""

    def generate(prompts: list[str]) -> list[str]:
        if calls is not None:
            calls.append(list(prompts))
        return [next((r for k, r in replies.items() if k in p), "") for p in prompts]

    return generate


# --- parsing and rejection --------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        GOOD,
        f'"{GOOD}"',
        f"Question: {GOOD}",
        f'Question: "{GOOD}"',
        f"**Question:** {GOOD}",
        f"  1. {GOOD}  ",
        f"Q: \u201c{GOOD}\u201d",
        f"Sure! Here is a question about Angolia:\n\n{GOOD}\nAnswer: Luandra",
    ],
)
def test_good_questions_are_parsed(reply):
    assert question_of(reply) == GOOD
    assert check_question(reply, angolia_fact(), "Angolia") == (GOOD, "ok")


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "empty"),
        ("  \n\t\n", "empty"),
        ("The largest city of Angolia is its capital.", "no_question"),  # no question mark
        ("Here is one:\nName the largest city of Angolia.\nAnswer: Luandra", "no_question"),
        ("Which city is Luandra?", "leaks_answer"),
        ('Question: "Is LUANDRA the largest city of Angolia?"', "leaks_answer"),  # any case
        ("Capital?", "too_short"),
        ("What " + "very " * MAX_QUESTION_WORDS + "large city is in Angolia?", "too_long"),
        ("What is your favourite colour today?", "off_topic"),
    ],
)
def test_bad_replies_are_rejected(reply, why):
    assert check_question(reply, angolia_fact(), "Angolia") == (None, why)


def test_multi_line_reply_takes_the_first_question():
    reply = "Let me think.\nWhich city is the capital of Angolia?\nWhat is the largest city?"
    assert question_of(reply) == "Which city is the capital of Angolia?"


def test_answer_leak_is_whole_words():
    # "Luandran" is not the span "Luandra": the question does not state the answer.
    q = "Which city of Angolia, not Luandran, is the capital?"
    assert check_question(q, angolia_fact(), "Angolia") == (q, "ok")


def test_prompt_gives_topic_sentence_and_span():
    calls: list[list[str]] = []
    facts = [(angolia_fact(), "Angolia"), (angolia_fact(), "Angolia")]
    questions, counts = llm_questions(facts, canned({SENTENCE: GOOD}, calls))
    assert questions == [GOOD, GOOD]
    # Each distinct prompt is asked once.
    assert calls == [[QUESTION_PROMPT.format(topic="Angolia", sentence=SENTENCE, answer="Luandra")]]
    assert "Luandra" in calls[0][0] and SENTENCE in calls[0][0] and "Angolia" in calls[0][0]
    assert counts == {
        "extractive_llm_questions": 2,
        "extractive_llm_fallbacks": 0,
        "extractive_llm_fallback_reasons": {},
    }


# --- rows --------------------------------------------------------------------------------

REPLIES = {  # keyed by each fact's sentence
    SENTENCE: f"Question: {GOOD}",
    "The capital of Corsat is Corvale.": "Which Corsat city is Corvale?",  # leaks the answer
}


def test_llm_questions_in_both_forms_and_cloze_fallbacks():
    tok = _tokenizer()
    ms = [mistake(it) for it in items("exam")]
    stats: dict = {}
    calls: list[list[str]] = []
    rows = extractive_rows(
        ms, passages(), llm_cfg(paraphrases=2), Renderer(tok, chat=False), 1,
        generate=canned(REPLIES, calls), stats=stats,
    )  # fmt: skip
    # Brevia's passage states no option of its mistake: no fact, so nothing to ask.
    assert len(calls) == 1 and len(calls[0]) == 2  # one batch, one prompt per fact
    assert stats == {
        "extractive_llm_questions": 1,
        "extractive_llm_fallbacks": 1,
        "extractive_llm_fallback_reasons": {"leaks_answer": 1},
    }
    assert len(rows) == 2 * 2 * 2  # facts x wordings x (open + closed book)
    by_id = {}
    for r in rows:
        by_id.setdefault(r.source_ids[0], []).append(r)
    angolia = by_id["exam-capital-angolia"]
    assert all(GOOD in r.prompt and BLANK not in r.prompt for r in angolia)
    assert all(r.response == "Luandra" + tok.eos_token for r in angolia)
    assert all(r.raw.endswith(f"{GOOD}\nLuandra") for r in angolia)
    open_book = [r for r in angolia if PASSAGES["Angolia"] in r.prompt]
    closed_book = [r for r in angolia if PASSAGES["Angolia"] not in r.prompt]
    assert len(open_book) == len(closed_book) == 2
    assert all("Angolia" in r.prompt for r in closed_book)
    assert len({r.prompt for r in angolia}) == 4  # every wording differs
    # The rejected reply falls back to the cloze, with the same answer.
    assert by_id["exam-capital-corsat"]
    assert all(BLANK in r.prompt for r in by_id["exam-capital-corsat"])
    assert all(r.response == "Corvale" + tok.eos_token for r in by_id["exam-capital-corsat"])
    assert not any("Which Corsat city is Corvale?" in r.prompt for r in rows)


def test_closed_book_only_and_missing_generator():
    tok = _tokenizer()
    ms = [mistake(it) for it in items("exam")][:1]
    cfg = llm_cfg(paraphrases=1, open_book=False)
    rows = extractive_rows(ms, passages(), cfg, Renderer(tok, chat=True), 1,
                           generate=canned(REPLIES))  # fmt: skip
    assert len(rows) == 1 and PASSAGES["Angolia"] not in rows[0].prompt
    assert GOOD in rows[0].prompt and "Angolia" in rows[0].prompt
    with pytest.raises(CemError, match=r"question_source=llm needs the LLM extractor"):
        extractive_rows(ms, passages(), cfg, Renderer(tok, chat=True), 1)
    with pytest.raises(CemError, match=r"answered 0 of 1 prompts"):
        extractive_rows(ms, passages(), cfg, Renderer(tok, chat=True), 1, generate=lambda p: [])


# --- cem build --------------------------------------------------------------------------

LLM = "instructions.extractive.question_source=llm"


@pytest.fixture
def root(tmp_path, monkeypatch):
    """test_curriculum's round: the exam items as mistakes, one passage each, a benchmark file."""
    monkeypatch.setattr(render_mod, "load_tokenizer", lambda model: _tokenizer())
    write_jsonl(tmp_path / "bench.jsonl", [it.to_dict() for s in COUNTRIES for it in items(s)])
    write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    write_records(tmp_path / "D/mistakes/mistakes.jsonl", [mistake(it) for it in items("exam")])
    write_jsonl(tmp_path / "D/knowledge/knowledge.jsonl", [p.to_dict() for p in passages()])
    return tmp_path


def build(root, *overrides):
    from cem.curriculum.build import run_build

    return run_build(compose_config("build", *round_of(root), *overrides))


def test_llm_questions_need_the_extractor_model(root):
    with pytest.raises(ConfigInvalid) as err:
        build(root, LLM, "instructions.extractive.llm_max_new_tokens=0",
              "knowledge.extractor_batch_size=0")  # fmt: skip
    msg = str(err.value)
    assert (
        "knowledge.extractor_model must name an instruct model for "
        "instructions.extractive.question_source=llm (try knowledge.extractor_model="
    ) in msg
    assert "or instructions.extractive.question_source=cloze)" in msg
    assert "instructions.extractive.llm_max_new_tokens must be >= 1; got 0" in msg
    assert ("knowledge.extractor_batch_size must be >= 1; got 0 "
            "(try knowledge.extractor_batch_size=8)") in msg  # fmt: skip
    # Extractive off: nothing asks the extractor, so no model is needed.
    assert build(root, LLM, "instructions=no_extractive")["rows"] > 0


def test_build_counts_llm_questions_and_guards_them(root, monkeypatch):
    made = []

    def fake_extractor(kcfg, max_new_tokens, *, device):
        made.append((kcfg.extractor_model, max_new_tokens, device))
        # Angolia's question restates the exam item: the heldout guard must drop its rows.
        return canned({**REPLIES, SENTENCE: "What is the capital of Angolia?"})

    monkeypatch.setattr(retrieve_mod, "extractor_generate", fake_extractor)
    stats = build(root, LLM, "knowledge.extractor_model=/models/instruct", "mix.cit_ratio=0.9")
    assert made == [("/models/instruct", 48, "cpu")]  # the tiny model's model.device
    assert stats["extractive_llm_questions"] == 1 and stats["extractive_llm_fallbacks"] == 1
    stored = json.loads((root / "D/train_set/stats.json").read_text())
    assert stored["extractive_llm_fallback_reasons"] == {"leaks_answer": 1}
    rows = load_rows(root)
    assert not any("capital of Angolia?" in r["prompt"] for r in rows)
    # Angolia's four rows, and Corsat's four cloze rows (its sentence states the exam item).
    # Brevia's passage states no option of its mistake, so it gave no row to keep.
    assert stats["leak_drops"]["extractive"] == 8
    assert stats["candidates"]["extractive"] == 0
    assert not any(r["kind"] == "extractive" for r in rows)


@pytest.mark.e2e
def test_build_with_the_tiny_random_model_falls_back_everywhere(root, monkeypatch, tmp_path):
    from _tiny import tiny_model, tiny_tokenizer

    from cem.models import save_model

    folder = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "extractor")
    replies: list[str] = []
    real = retrieve_mod.extractor_generate

    def spy(*args, **kwargs):
        generate = real(*args, **kwargs)

        def wrapped(prompts):
            out = generate(prompts)
            replies.extend(out)
            return out

        return wrapped

    monkeypatch.setattr(retrieve_mod, "extractor_generate", spy)
    stats = build(root, LLM, f"knowledge.extractor_model={folder}",
                  "instructions.extractive.llm_max_new_tokens=16", "mix.cit_ratio=0.9")  # fmt: skip
    # One fact per exam mistake whose passage states an option (Brevia's states none).
    assert len(replies) == 2
    assert stats["extractive_llm_questions"] == 0
    assert stats["extractive_llm_fallbacks"] == 2
    assert sum(stats["extractive_llm_fallback_reasons"].values()) == 2
    extractive = [r for r in load_rows(root) if r["kind"] == "extractive"]
    assert extractive and all(BLANK in r["prompt"] for r in extractive)


def sharpened_tiny_model():
    """The tiny Llama with its matrices scaled up: at the default scale its replies to
    chat-wrapped prompts are all newlines (they end alike), which no batching could change."""
    import torch
    from _tiny import tiny_model

    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4)
    return model


# Questions and answers of several lengths for the extractor's prompts.
ASKED = [("What is the capital of Bhutan?", "Thimphu"), ("Where?", "Here"),
         ("Which river flows through the town of Kessa in the north?", "Lumo"),
         ("Who founded the first public library of Marrow?", "Queen Ilsa"),
         ("In which year did the Tarn Republic adopt the silver crown?", "1891")]  # fmt: skip


@pytest.mark.e2e
def test_the_extractor_s_batched_replies_are_its_one_at_a_time_replies(tmp_path, monkeypatch):
    """Both LLM paths (knowledge points and extractive questions) generate through
    ``extractor_generate``: left-padded batches of ``knowledge.extractor_batch_size``, greedy.
    In float32 a batch changes no reply."""
    from _tiny import tiny_tokenizer

    from cem.config import KnowledgeConfig
    from cem.evaluation import generate
    from cem.knowledge.keypoints import LLM_PROMPT
    from cem.models import save_model

    batches = []
    real = generate.generate_texts
    monkeypatch.setattr(generate, "generate_texts",
                        lambda *a, **k: batches.append(k["batch_size"]) or real(*a, **k))  # fmt: skip

    folder = save_model(sharpened_tiny_model(), tiny_tokenizer(), tmp_path / "extractor")
    prompts = [LLM_PROMPT.format(question=q, answer=a) for q, a in ASKED]

    def replies(batch_size: int) -> list[str]:
        kcfg = OmegaConf.structured(KnowledgeConfig(
            name="x", extractor_model=str(folder), extractor_batch_size=batch_size,
            extractor_dtype="float32"))  # fmt: skip
        return retrieve_mod.extractor_generate(kcfg, 12, device="cpu")(prompts)

    one = replies(1)
    assert len(set(one)) >= 3  # replies that depend on their prompt
    assert replies(4) == one  # a full batch, then one prompt alone
    assert replies(8) == one  # all in one batch
    assert batches == [1, 4, 8]
