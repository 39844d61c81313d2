"""Evaluation in chunks: finished chunks are kept, an interrupted eval resumes from them
(tied to the model's files and the settings), and the records come out the same."""

from __future__ import annotations

import json

import pytest
from _records import eval_record

import cem.evaluation.evaluate as ev
from cem.evaluation.runner import run_eval
from cem.evaluation.stream import PartialRecords, score_in_chunks
from cem.io import read_jsonl
from cem.layout import RoundDir


class Item:
    def __init__(self, i: int):
        self.id = f"q{i}"


def fake_score(chunk):
    return [eval_record(it.id, margin=float(int(it.id[1:]) ** 2)) for it in chunk]


def test_finished_chunks_are_resumed_and_a_torn_one_is_scored_again(tmp_path):
    items = [Item(i) for i in range(10)]
    path = RoundDir(tmp_path).partial_records
    partial = PartialRecords(path, "fp")
    calls = []

    def stop_in_the_third(chunk):
        if chunk[0].id == "q8":
            raise KeyboardInterrupt
        calls.append(chunk[0].id)
        return fake_score(chunk)

    with pytest.raises(KeyboardInterrupt):
        score_in_chunks(items, 4, partial, stop_in_the_third)
    with open(partial.path, "a") as fh:  # a write cut short: no chunk_end after it
        fh.write('{"id": "q8", "sc')
    calls.clear()
    records = score_in_chunks(items, 4, partial, lambda c: calls.append(c[0].id) or fake_score(c))
    assert calls == ["q8"] and records == fake_score(items)
    # Another fingerprint (another model or setting): nothing is taken from the file.
    assert PartialRecords(path, "other").load([it.id for it in items]) == []
    assert PartialRecords(path, "fp").load(["x"] * 10) == []  # other items
    # A chunk whose lines are not records (written by another version): not resumed.
    assert PartialRecords(path, "fp").load([it.id for it in items]) == records[:8]  # torn after
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"id": "q0"}', *lines[1:]]) + "\n")
    assert PartialRecords(path, "fp").load([it.id for it in items]) == []


def tiny_eval(folder) -> tuple[str, ...]:
    """The overrides of a ``cem eval`` of the tiny model on ``folder/items.jsonl``, in chunks of 8."""
    return (f"run_dir={folder}", "model=tiny_random_llama", "benchmark=jsonl",
            f"benchmark.path={folder / 'items.jsonl'}", "eval.progress=false",
            "eval.general_probe=false", "eval.chunk_size=8")  # fmt: skip


def write_items(tmp_path, n: int = 20) -> None:
    with open(tmp_path / "items.jsonl", "w") as fh:
        for i in range(n):
            row = {"id": f"q{i}", "question": f"Which river flows through town {i}?",
                   "choices": ["the Lumo", "the Kessa river", "the Grey", "none"], "answer": i % 4}  # fmt: skip
            fh.write(json.dumps(row) + "\n")


@pytest.mark.e2e
def test_an_interrupted_eval_resumes_to_the_same_records(tmp_path, monkeypatch, capsys, compose):
    ref = tmp_path / "ref"
    for folder in (tmp_path, ref):
        folder.mkdir(exist_ok=True)
        write_items(folder)
    run_eval(compose("eval", *tiny_eval(ref)))  # uninterrupted, with the same chunks
    expected = read_jsonl(ref / "eval/records.jsonl")
    assert not RoundDir(ref).partial_records.exists()

    score, seen = ev.score_loglik, []

    def stop_at_the_third_chunk(model, tok, chunk, *args):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(chunk[0].id)
        return score(model, tok, chunk, *args)

    monkeypatch.setattr(ev, "score_loglik", stop_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        run_eval(compose("eval", *tiny_eval(tmp_path)))
    assert len(read_jsonl(RoundDir(tmp_path).partial_records)) == 1 + 8 + 1 + 8 + 1  # 2 chunks kept
    monkeypatch.setattr(ev, "score_loglik", score)
    run_eval(compose("eval", *tiny_eval(tmp_path)))
    assert "resuming the evaluation: 16 of 20 questions scored" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "eval/records.jsonl") == expected  # bit for bit
    assert not RoundDir(tmp_path).partial_records.exists()
    # Another model (another seed of the random weights): scored from the start.
    RoundDir(tmp_path).partial_records.write_text(
        (ref / "eval/records.jsonl").read_text()  # not even a partial file
    )
    run_eval(compose("eval", *tiny_eval(tmp_path), "seed=1"))
    assert "resuming" not in capsys.readouterr().err
