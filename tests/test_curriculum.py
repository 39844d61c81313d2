"""Training-set building: each instruction type, rendering, the heldout filter, ``run_build``."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
from _records import eval_record
from omegaconf import OmegaConf

from cem.assets.bundled import TINY_TOKENIZER_DIR
from cem.benchmarks.prompts import render
from cem.benchmarks.schema import MCItem
from cem.config import ExtractiveConfig, GeneralConfig, ReviewConfig, conf_dir
from cem.curriculum import build as build_mod
from cem.curriculum import render as render_mod
from cem.curriculum.build import guard_pairs, run_build, write_train_set
from cem.curriculum.extractive import BLANK, extractive_rows, split_sentences
from cem.curriculum.general import article_rows, file_rows
from cem.curriculum.normative import normative_rows
from cem.curriculum.render import COLUMNS, Renderer, Row
from cem.curriculum.review import key_sentences, review_rows
from cem.errors import CemError, ConfigError, DataError
from cem.knowledge.leak import LeakGuard
from cem.knowledge.types import Passage
from cem.records import Mistake, write_records
from cem.validate import ConfigInvalid

COUNTRIES = {  # set -> (country, capital); invented, so nothing is known in advance
    "pool": [("Zorland", "Zorburg"), ("Quendia", "Quenton"), ("Milaro", "Milport")],
    "exam": [("Angolia", "Luandra"), ("Brevia", "Bremont"), ("Corsat", "Corvale")],
    "test": [("Dalmar", "Dalton")],
}
CAPITALS = [c for pairs in COUNTRIES.values() for _, c in pairs]
PASSAGES = {
    "Angolia": "Angolia is a country on the west coast of Testland. Its capital and largest "
    "city is Luandra. The country has about thirty million people. Angolia is rich in oil.",
    "Brevia": "Brevia is a small kingdom in the north. Brevia borders the sea and has many "
    "rivers. Farming is the main industry.",
    # A planted leak: the exam item's stem followed by its answer.
    "Corsat": "The capital of Corsat is Corvale. Corsat is known for its high mountains.",
}


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))


@pytest.fixture
def tok():
    return _tokenizer()


def item(set_: str, country: str, capital: str) -> MCItem:
    others = [c for c in CAPITALS if c != capital][:3]
    return MCItem(
        id=f"{set_}-capital-{country.lower()}",
        question=f"What is the capital of {country}?",
        choices=[*others, capital],
        answer=3,
        subject="capital",
        set=set_,
        stem=f"The capital of {country} is",
        meta={"country": country, "relation": "capital", "wiki_title": country},
    )


def items(set_: str) -> list[MCItem]:
    return [item(set_, *pair) for pair in COUNTRIES[set_]]


def mistake(it: MCItem) -> Mistake:
    return Mistake(
        id=it.id, set=it.set, subject=it.subject, question=it.question, choices=it.choices,
        gold=it.answer, gold_text=it.gold, pred=0, pred_text=it.choices[0], margin=-1.0,
        reason="wrong", meta=it.meta, keywords=[it.meta["country"], it.gold],
        queries=[f"{it.meta['country']} {it.gold}"],
    )  # fmt: skip


def passages() -> list[Passage]:
    return [
        Passage(text, "wiki_offline", title, 1.0, title, [f"exam-capital-{title.lower()}"], title)
        for title, text in PASSAGES.items()
    ]


def benchmark_cfg():
    return OmegaConf.create({"instruction": "", "answer_cue": "Answer:"})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ALPACA = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    # A planted leak: an exam question with its answer.
    {"instruction": "What is the capital of Angolia?", "output": "Luandra"},
]


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A round's run folder with mistakes and knowledge, a benchmark file and a general file."""
    monkeypatch.setattr(render_mod, "load_tokenizer", lambda model: _tokenizer())
    bench = [it.to_dict() for s in COUNTRIES for it in items(s)]
    write_jsonl(tmp_path / "bench.jsonl", bench)
    write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    d = tmp_path / "D"
    write_records(d / "mistakes/mistakes.jsonl", [mistake(it) for it in items("exam")])
    write_jsonl(d / "knowledge/knowledge.jsonl", [p.to_dict() for p in passages()])
    return tmp_path


def round_of(root: Path) -> tuple[str, ...]:
    """The overrides of a ``cem build`` of ``run``'s round: compose("build", *round_of(run))."""
    return ("model=tiny_random_llama", "benchmark=jsonl", f"benchmark.path={root / 'bench.jsonl'}",
            f"run_dir={root / 'D'}", f"instructions.general.path={root / 'alpaca.jsonl'}")  # fmt: skip


def load_rows(root: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(root / "D/train_set/train.parquet").to_pylist()


# --- rendering -------------------------------------------------------------------------


def test_chat_and_plain_rendering(tok):
    prompt, response = Renderer(tok, chat=True).instruction("Say hi.", "Hi.")
    assert prompt == "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    assert response == "Hi.<|im_end|>\n"
    prompt, response = Renderer(tok, chat=False).instruction("Say hi.", "Hi.")
    assert prompt == "### Instruction:\nSay hi.\n\n### Response:\n"
    assert response == "Hi." + tok.eos_token
    no_template = copy.copy(tok)
    no_template.chat_template = None
    assert Renderer(no_template, chat=True).instruction("Say hi.", "Hi.")[0].startswith("###")
    rows = Renderer(tok, chat=True).count([Row(prompt, response, "general", 1)])
    n = len(tok(prompt, add_special_tokens=False).input_ids)
    assert rows[0].n_tokens == n + len(tok(response, add_special_tokens=False).input_ids)


# --- the four instruction types -------------------------------------------------------


def test_normative_matches_evaluation_byte_for_byte():
    pool = items("pool")
    rows = normative_rows(pool, ["cf", "mcf"], benchmark_cfg(), round_=2)
    assert len(rows) == 2 * len(pool)
    for it, (cf, mcf) in zip(pool, zip(rows[::2], rows[1::2], strict=True), strict=True):
        want = render(it, "cf")
        assert (cf.prompt, cf.response) == (want.context, want.continuations[it.answer])
        assert cf.prompt == "The capital of " + it.meta["country"] + " is"
        assert cf.response == " " + it.gold
        want = render(it, "mcf", mcf_target="letter")
        assert (mcf.prompt, mcf.response) == (want.context, " D")
        assert (cf.kind, cf.round, cf.source_ids) == ("normative", 2, [it.id])


def test_extractive_blanks_the_missing_fact(tok):
    cfg = OmegaConf.structured(ExtractiveConfig(paraphrases=2))
    ms = [mistake(it) for it in items("exam")]
    rows = extractive_rows(ms, passages(), cfg, Renderer(tok, chat=False), round_=1)
    angolia = [r for r in rows if r.source_ids[0] == "exam-capital-angolia"]
    assert len(angolia) == 2 * 2  # one fact x 2 wordings x (open + closed book)
    assert all(r.response == "Luandra" + tok.eos_token for r in angolia)
    assert all(f"Its capital and largest city is {BLANK}." in r.prompt for r in angolia)
    closed = [r for r in angolia if PASSAGES["Angolia"] not in r.prompt]
    assert len(closed) == 2 and all("Angolia" in r.prompt for r in closed)
    # No gold answer and no other option in the passage: no row. The subject's name
    # ("Brevia") is never the blank: it is not the missing fact.
    assert not [r for r in rows if r.source_ids[0] == "exam-capital-brevia"]
    assert {r.response.removesuffix(tok.eos_token) for r in rows} <= {"Luandra", "Corvale"}
    closed_only = OmegaConf.structured(ExtractiveConfig(paraphrases=1, open_book=False))
    rows = extractive_rows(ms[:1], passages(), closed_only, Renderer(tok, chat=True), round_=1)
    assert len(rows) == 1 and PASSAGES["Angolia"] not in rows[0].prompt


def test_extractive_without_the_gold_blanks_another_value_of_the_relation(tok):
    cfg = OmegaConf.structured(ExtractiveConfig(paraphrases=1, open_book=False))
    brevia = mistake(items("exam")[1])  # gold Bremont; other options Zorburg, Quenton...
    text = "Brevia trades with Zorland. The capital of Zorland is Zorburg, on the coast."
    other = Passage(text, "wiki_offline", "Zorland", 1.0, mistake_ids=[brevia.id])
    rows = extractive_rows([brevia], [other], cfg, Renderer(tok, chat=False), round_=1)
    assert [r.response for r in rows] == ["Zorburg" + tok.eos_token]
    assert f"The capital of Zorland is {BLANK}, on the coast." in rows[0].prompt


def test_extractive_puts_sentences_naming_the_subject_first():
    from cem.curriculum.extractive import facts_of

    m = mistake(items("exam")[0])  # Angolia, gold Luandra
    text = "Luandra hosts a port. Angolia's capital is Luandra. Angolia is large."
    facts = facts_of(m, Passage(text, "wiki_offline", "Angolia", 1.0))
    assert [f.sentence for f in facts] == ["Angolia's capital is Luandra.", "Luandra hosts a port."]
    assert {f.answer for f in facts} == {"Luandra"}


def test_split_sentences():
    assert split_sentences('A b. C d? "E" f! 3 g.\nH') == ["A b.", "C d?", '"E" f!', "3 g.", "H"]


def test_review_recalls_key_sentences(tok):
    text = PASSAGES["Angolia"]
    assert key_sentences(passages()[:1], ["Angolia", "Luandra"], 2) == [
        "Angolia is a country on the west coast of Testland.",
        "Its capital and largest city is Luandra.",
    ]
    ms = [mistake(it) for it in items("exam")]
    cfg = OmegaConf.structured(ReviewConfig(max_sentences=1, earlier_rounds_sample=0.5))
    old = [
        Passage(f"Old fact {i}. More.", "wiki_offline", f"old{i}", 1.0, title=f"Old{i}")
        for i in range(4)
    ]
    rows = review_rows(passages(), ms, [(old, [])], cfg, Renderer(tok, chat=True), 3, seed=0)
    assert len(rows) == 3 + 2  # this round's three documents, half of the earlier four
    first = rows[0]
    assert "What do you know about Angolia?" in first.prompt
    assert first.response.startswith(split_sentences(text)[0]) and first.kind == "review"
    assert first.source_ids == ["Angolia", "exam-capital-angolia"]


def test_general_from_unrelated_articles(tok):
    summaries = {
        t: {"title": t, "extract": f"{t} is a thing. It has parts."}
        for t in ["Angolia", "Violin", "Tea", "Basalt"]
    }
    rows = article_rows(summaries, ["angolia"], 10, Renderer(tok, chat=True), 1, seed=0)
    assert sorted(r.source_ids[0] for r in rows) == ["Basalt", "Tea", "Violin"]
    for r in rows:
        t = r.source_ids[0]
        assert r.response.startswith(f"{t} is a thing.")
        assert (
            f"What is {t}?" in r.prompt or f"Summarise what Wikipedia says about {t}." in r.prompt
        )
    assert len(article_rows(summaries, [], 2, Renderer(tok, chat=True), 1, seed=0)) == 2


def test_general_from_alpaca_and_sharegpt_files(tok, tmp_path):
    cfg = OmegaConf.structured(GeneralConfig(path=str(write_jsonl(tmp_path / "a.jsonl", ALPACA))))
    rows = file_rows(cfg, Renderer(tok, chat=False), 1, seed=0)
    assert len(rows) == 3
    added = next(r for r in rows if "Add the numbers." in r.prompt)
    assert "Add the numbers.\n\n2 and 3" in added.prompt and added.response.startswith("5")
    chat = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye?"},
                               {"from": "gpt", "value": "Bye."}]}]  # fmt: skip
    path = tmp_path / "s.json"
    path.write_text(json.dumps(chat), encoding="utf-8")
    cfg = OmegaConf.structured(GeneralConfig(path=str(path), format="sharegpt"))
    (row,) = file_rows(cfg, Renderer(tok, chat=True), 1, seed=0)
    assert row.prompt.startswith("<|im_start|>system\nBe brief.")
    assert "Hello<|im_end|>" in row.prompt and row.response == "Bye.<|im_end|>\n"


def test_general_bad_rows_name_the_file_and_line(tok, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [ALPACA[0], {"instruction": "x", "output": ""}])
    cfg = OmegaConf.structured(GeneralConfig(path=str(bad)))
    with pytest.raises(DataError, match=r"bad.jsonl:2: bad alpaca row: 'output' must be"):
        file_rows(cfg, Renderer(tok, chat=True), 1, seed=0)
    arr = tmp_path / "bad.json"
    arr.write_text(json.dumps([{"conversations": [{"from": "robot", "value": "x"}]}]))
    cfg = OmegaConf.structured(GeneralConfig(path=str(arr), format="sharegpt"))
    with pytest.raises(DataError, match=r"bad.json: bad sharegpt row: row 1: each turn needs"):
        file_rows(cfg, Renderer(tok, chat=True), 1, seed=0)
    cfg = OmegaConf.structured(GeneralConfig(path=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match=r"instructions.general.path must be an existing file"):
        file_rows(cfg, Renderer(tok, chat=True), 1, seed=0)


# --- the heldout filter ---------------------------------------------------------------


def test_guard_catches_planted_leaks_in_any_row():
    sets = {s: items(s) for s in COUNTRIES}
    guard = LeakGuard.from_items(guard_pairs(sets), 13)
    assert guard.is_leak("Did you know? The capital of Corsat is Corvale, a port.")
    assert guard.is_leak("Question: What is the capital of Dalmar?\nAnswer: Dalton")  # test set
    assert not guard.is_leak("The capital of Zorland is Zorburg.")  # the pool is not guarded
    assert not guard.is_leak(PASSAGES["Angolia"])  # the fact in other words is knowledge


# --- run_build --------------------------------------------------------------------------


def test_run_build_writes_rows_and_stats(run, compose):
    import datasets

    stats = run_build(compose("build", *round_of(run), "mix.cit_ratio=0.9"))
    path = str(run / "D/train_set/train.parquet")
    rows = datasets.load_dataset("parquet", data_files=path, split="train").to_list()
    assert rows and set(rows[0]) == set(COLUMNS)
    assert {r["kind"] for r in rows} == {"cpt", "normative", "extractive", "review", "general"}
    assert all(r["response"] == "" for r in rows if r["kind"] == "cpt")
    assert all(r["round"] == 1 and r["phase"] == 0 and r["n_tokens"] > 0 for r in rows)
    stored = json.loads((run / "D/train_set/stats.json").read_text())
    assert stored == json.loads(json.dumps(stats))
    assert abs(stats["cit_ratio"] - 0.9) <= 0.02 and stats["protocol"] == "heldout"
    assert stats["tokens"]["total"] == sum(r["n_tokens"] for r in rows)
    # The planted leaks (Corsat's passage, an Alpaca row) are gone from every kind.
    drops = stats["leak_drops"]
    assert drops["cpt"] == 1 and drops["general"] == 1 and drops["review"] == 1
    assert drops["extractive"] > 0 and drops["normative"] == 0
    assert not any("Corsat is Corvale" in r["prompt"] + r["response"] for r in rows)
    assert not any("capital of Angolia?" in r["prompt"] for r in rows)
    assert not any(r["source_ids"][0].startswith("exam-") for r in rows if r["kind"] == "normative")


def test_retest_keeps_exam_items_and_skips_the_filter(run, compose):
    stats = run_build(
        compose("build", *round_of(run), "protocol=retest", "instructions=normative_only")
    )
    rows = load_rows(run)
    assert stats["protocol"] == "retest" and stats["leak_drops"] is None
    assert stats["normative_sets"] == ["pool", "exam"]
    ids = {r["source_ids"][0] for r in rows if r["kind"] == "normative"}
    assert any(i.startswith("exam-") for i in ids)
    assert any("Corsat is Corvale" in r["prompt"] for r in rows if r["kind"] == "cpt")


@pytest.mark.parametrize("paradigm", ["sequential", "cpt_only", "cit_only"])
def test_run_build_paradigms(run, paradigm, compose):
    stats = run_build(compose("build", *round_of(run), f"paradigm={paradigm}"))
    rows = load_rows(run)
    kinds = {r["kind"] for r in rows}
    if paradigm == "sequential":
        assert [r["phase"] for r in rows] == sorted(r["phase"] for r in rows)
        assert all((r["phase"] == 0) == (r["kind"] == "cpt") for r in rows)
    elif paradigm == "cpt_only":
        assert kinds == {"cpt"} and stats["cit_ratio"] == 0
    else:
        assert "cpt" not in kinds and stats["cit_ratio"] == 1


def test_replay_of_earlier_rounds_and_correct_items(run, compose):
    earlier = run / "R1"
    old = [Row(f"old text {i}", "", "cpt", 1, [f"d{i}"], 0, 3) for i in range(10)]
    write_train_set(earlier, old, {})
    write_jsonl(earlier / "knowledge/knowledge.jsonl", [p.to_dict() for p in passages()[:1]])
    records = [eval_record(it.id, "pool", True) for it in items("pool")[:2]]
    write_records(run / "D/eval/records.jsonl", records)
    cfg = compose(
        "build", *round_of(run), "round=2", "replay.fraction=0.5", "replay.correct_items=1"
    )
    stats = run_build(cfg, earlier_rounds=[earlier])
    replay = [r for r in load_rows(run) if r["kind"] == "replay"]
    assert len([r for r in replay if r["prompt"].startswith("old text")]) == 5
    assert len([r for r in replay if r["source_ids"][0].startswith("pool-")]) == 2  # cf + mcf
    assert stats["earlier_rounds"] == [str(earlier)] and stats["round"] == 2
    missing = run / "R0"
    missing.mkdir()
    with pytest.raises(CemError, match=r"train.parquet not found.*cem build run_dir="):
        run_build(cfg, earlier_rounds=[missing])


def test_missing_inputs_name_the_command(run, compose):
    (run / "D/knowledge/knowledge.jsonl").unlink()
    with pytest.raises(CemError, match=r"knowledge.jsonl not found.*`cem retrieve run_dir=.*`"):
        run_build(compose("build", *round_of(run)))
    (run / "D/knowledge/knowledge.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"paradigm needs CPT passages.*paradigm=cit_only"):
        run_build(compose("build", *round_of(run)))
    assert run_build(compose("build", *round_of(run), "paradigm=cit_only"))["rows"] > 0


def test_bad_rows_of_inputs_name_file_and_line(run, compose):
    write_jsonl(run / "D/knowledge/knowledge.jsonl", [passages()[0].to_dict(), {"text": "x"}])
    with pytest.raises(DataError, match=r"knowledge.jsonl:2: missing field 'source'"):
        run_build(compose("build", *round_of(run)))


def test_bad_config_values_are_reported_at_once(run, compose):
    cfg = compose("build", *round_of(run), "mix.cit_ratio=1.5",
                  "instructions.extractive.question_source=llm",
                  "instructions.extractive.paraphrases=9")  # fmt: skip
    with pytest.raises(ConfigInvalid) as err:
        run_build(cfg)
    msg = str(err.value)
    assert "mix.cit_ratio must be in [0, 1]; got 1.5 (try mix.cit_ratio=0.5)" in msg
    assert "knowledge.extractor_model must name an instruct model for instructions." in msg
    assert "instructions.extractive.paraphrases must be in [1, 3]; got 9" in msg
    cfg = compose("build", *round_of(run), "mix.cit_ratio=1")
    with pytest.raises(
        ConfigInvalid, match=r"mix.cit_ratio=1 leaves no CPT text.*paradigm=cit_only"
    ):
        run_build(cfg)


GROUPS = ("instructions", "mix", "paradigm", "replay", "protocol")
OPTIONS = {g: sorted(p.stem for p in (conf_dir() / g).glob("*.yaml")) for g in GROUPS}


@pytest.mark.parametrize("i", range(max(map(len, OPTIONS.values()))))
def test_every_option_composes_and_validates(i, compose):
    # Composing is the slow part, so each compose takes the i-th option of every group.
    chosen = {g: opts[i % len(opts)] for g, opts in OPTIONS.items()}
    overrides = [f"{g}={name}" for g, name in chosen.items()]
    cfg = compose("build", *overrides, "run_dir=/tmp/x")
    for group, name in chosen.items():
        assert cfg[group].name == name
        first = (conf_dir() / group / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# ")  # says what it is, in the paper's words
    assert build_mod.check_build(cfg) == []
