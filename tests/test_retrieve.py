"""``cem retrieve`` end to end on a small corpus: mistakes, queries, leak guard, hit rate."""

from __future__ import annotations

import pytest

from cem.errors import CemError
from cem.io import read_json, read_jsonl, write_jsonl
from cem.knowledge.retrieve import run_retrieve

ITEMS = [
    ("What is the capital of Bhutan?", ["Thimphu", "Paro", "Lhasa", "Delhi"], 0),
    ("What is the capital of Chad?", ["Abuja", "N'Djamena", "Niamey", "Bamako"], 1),
    ("What is the capital of Peru?", ["Lima", "Quito", "Cusco", "La Paz"], 0),
]
CORPUS = [
    (
        "Bhutan",
        "Bhutan is a landlocked country in South Asia. Its capital and largest city is Thimphu.",
    ),
    (
        "Chad",
        "Chad is a landlocked country in Central Africa. Its capital is N'Djamena, on the Chari.",
    ),
    # A planted leak: the exam question and its answer, word for word.
    ("Quiz", "Trivia night. What is the capital of Bhutan? Thimphu, said the winner of the night."),
    ("Peru", "Peru is a country in western South America. Lima is its capital and largest city."),
    ("Nepal", "Nepal is a landlocked country in South Asia between China and India."),
]


@pytest.fixture
def run(tmp_path):
    """The round folder (tmp_path/run) with its eval records, and the overrides of a ``cem
    retrieve`` there: the tiny model, the benchmark file, the corpus file."""
    bench = tmp_path / "bench.jsonl"
    write_jsonl(bench, [{"id": f"q{i}", "question": q, "choices": c, "answer": a}
                        for i, (q, c, a) in enumerate(ITEMS)])  # fmt: skip
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"id": t, "title": t, "text": x} for t, x in CORPUS])
    # Bhutan and Chad were answered wrongly; Peru rightly but with a small margin.
    records = []
    for i, (q, c, a) in enumerate(ITEMS):
        correct = i == 2
        records.append({"id": f"q{i}", "set": "exam", "subject": "", "question": q, "choices": c,
                        "gold": a, "pred": a if correct else (a + 1) % 4,
                        "pred_norm": a, "scores": None, "margin": 0.05 if correct else 0.5,
                        "correct": correct, "correct_norm": True})  # fmt: skip
    write_jsonl(tmp_path / "run" / "eval" / "records.jsonl", records)
    return tmp_path, (
        f"run_dir={tmp_path / 'run'}", "model=tiny_random_llama", "benchmark=jsonl",
        f"benchmark.path={bench}", "knowledge=local_corpus",
        f"knowledge.sources.0.path={corpus}", f"knowledge.sources.0.index_dir={tmp_path / 'idx'}",
    )  # fmt: skip


def test_retrieve_writes_mistakes_knowledge_and_stats(run, compose):
    tmp_path, overrides = run
    stats = run_retrieve(compose("retrieve", *overrides, "mistakes.margin_threshold=0.1"))
    mistakes = read_jsonl(tmp_path / "run" / "mistakes" / "mistakes.jsonl")
    assert [(m["id"], m["reason"]) for m in mistakes] == [
        ("q0", "wrong"),
        ("q1", "wrong"),
        ("q2", "ambiguous"),
    ]
    assert mistakes[0]["queries"][0] == "Bhutan Thimphu"
    passages = read_jsonl(tmp_path / "run" / "knowledge" / "knowledge.jsonl")
    assert passages and set(passages[0]) >= {
        "text",
        "source",
        "doc_id",
        "score",
        "query",
        "mistake_ids",
    }
    assert not any("Trivia night" in p["text"] for p in passages)  # the planted leak is gone
    assert stats["leak_dropped"] >= 1
    assert stats["hit_rate"] == 1.0  # every mistake's answer is in one of its passages
    assert read_json(tmp_path / "run" / "knowledge" / "stats.json")["passages"] == len(passages)
    by_mistake = {mid for p in passages for mid in p["mistake_ids"]}
    assert by_mistake == {"q0", "q1", "q2"}


def test_retrieve_without_records_says_what_to_run(run, compose):
    tmp_path, overrides = run
    (tmp_path / "run" / "eval" / "records.jsonl").unlink()
    with pytest.raises(CemError, match=r"run `cem eval run_dir=.*` first"):
        run_retrieve(compose("retrieve", *overrides))


def test_llm_extractor_needs_a_model(run, compose):
    _, overrides = run
    with pytest.raises(CemError, match="knowledge.extractor_model must name an instruct model"):
        run_retrieve(compose("retrieve", *overrides, "knowledge.extractor=llm"))
