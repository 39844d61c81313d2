"""Corpus loading, BM25 and dense indexes with their caches, the source kinds, the mix."""

from __future__ import annotations

import json
import logging
import sys
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

from cem.config import KnowledgeConfig, SourceConfig
from cem.errors import AssetError, ConfigError, DataError
from cem.knowledge import dense, sparse
from cem.knowledge.corpus import (
    Document,
    chunk_documents,
    load_local_corpus,
    load_wiki_summaries,
)
from cem.knowledge.sources import (
    SOURCES,
    LocalCorpusSource,
    MixSource,
    WikiDenseSource,
    WikiOfflineSource,
    build_knowledge_source,
    build_source,
)
from cem.knowledge.types import Passage, SourceStats

SUMMARIES = {
    "Paris": "Paris is the capital and most populous city of France, on the river Seine.",
    "Berlin": "Berlin is the capital and largest city of Germany, on the river Spree.",
    "Danube": "The Danube is a river in Europe that flows into the Black Sea.",
    "Mount Everest": "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    "Photosynthesis": "Photosynthesis is how plants turn light energy into chemical energy.",
    "Empty": "",
}


@pytest.fixture
def summaries(tmp_path: Path) -> Path:
    folder = tmp_path / "wiki"
    folder.mkdir()
    data = {
        t: {"title": t, "extract": x, "description": "", "topic": ""} for t, x in SUMMARIES.items()
    }
    (folder / "summaries_en-us.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def _cfg(tmp_path: Path, **kw) -> SourceConfig:
    return SourceConfig(**{"index_dir": str(tmp_path / "indexes"), **kw})


class FakeEmbedder:
    """A stand-in sentence-transformers model: hashed bag of words, unit length."""

    dim = 64

    def encode(self, texts, **_):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(",", " ").replace(".", " ").split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    def get_embedding_dimension(self) -> int:
        return self.dim


@pytest.fixture
def fake_embedder(monkeypatch):
    monkeypatch.setattr(dense, "load_embedder", lambda *args: (FakeEmbedder(), "fake"))


# --------------------------------------------------------------------------- corpus


def test_load_wiki_summaries(summaries):
    docs = load_wiki_summaries(summaries)
    assert [d.doc_id for d in docs] == [
        "Paris",
        "Berlin",
        "Danube",
        "Mount Everest",
        "Photosynthesis",
    ]
    assert docs[0] == Document("Paris", "Paris", SUMMARIES["Paris"])


def test_load_wiki_summaries_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_wiki_summaries(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a":\n  oops}', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json:2: invalid JSON"):
        load_wiki_summaries(bad)


def test_local_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"id": "d1", "title": "T1", "body": "First text."}, {"body": "Second."}, {"body": " "}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    docs = load_local_corpus(path, text_field="body")
    assert docs == [Document("d1", "T1", "First text."), Document("c.jsonl:2", "", "Second.")]


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "ok"}\n{"text": oops}\n', r"c\.jsonl:2: invalid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', r"c\.jsonl:2: no 'text' field"),
        ('{"text": 5}\n', r"c\.jsonl:1: 'text' must be a string"),
        ("\n\n", r"c\.jsonl: the corpus is empty"),
    ],
)
def test_local_jsonl_errors(tmp_path, content, match):
    path = tmp_path / "c.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_local_corpus(path)


def test_local_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["Alpha text.", None, "Beta."], "id": ["a", "b", "c"]}), path)
    assert [d.doc_id for d in load_local_corpus(path)] == ["a", "c"]
    with pytest.raises(DataError, match=r"no column 'body' \(columns: \['text', 'id'\]\)"):
        load_local_corpus(path, text_field="body")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read as Parquet"):
        load_local_corpus(broken)


def test_local_folder(tmp_path):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("Alpha.", encoding="utf-8")
    (root / "sub" / "b.md").write_text("# Beta\nBeta text.", encoding="utf-8")
    (root / "sub" / "c.csv").write_text("ignored", encoding="utf-8")
    (root / ".git" / "d.txt").write_text("hidden", encoding="utf-8")
    (root / "e.txt").write_text("  ", encoding="utf-8")
    assert [d.doc_id for d in load_local_corpus(root)] == ["a.txt", "sub/b.md"]
    (root / "f.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataError, match=r"f\.txt: not UTF-8"):
        load_local_corpus(root)


def test_local_corpus_path_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_local_corpus(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt or .md files"):
        load_local_corpus(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type"):
        load_local_corpus(tmp_path / "x.csv")


def test_chunk_documents_ids():
    docs = [Document("long", "L", "One two three. Four five six. Seven."), Document("s", "", "Hi.")]
    out = chunk_documents(docs, 3)
    assert [(d.doc_id, d.text) for d in out] == [
        ("long#0", "One two three."),
        ("long#1", "Four five six."),
        ("long#2", "Seven."),
        ("s", "Hi."),
    ]


# --------------------------------------------------------------------------- BM25


def test_wiki_offline_search(summaries, tmp_path):
    src = build_source(_cfg(tmp_path, kind="wiki_offline", path=str(summaries)))
    assert isinstance(src, WikiOfflineSource) and src.name == "wiki_offline"
    res = src.search(["capital of Germany", "highest mountain", "the of and", ""], k=2)
    assert len(res) == 4
    top = res[0][0]
    assert (top.doc_id, top.title, top.source, top.query) == (
        "Berlin",
        "Berlin",
        "wiki_offline",
        "capital of Germany",
    )
    assert top.text == SUMMARIES["Berlin"] and top.score > 0
    assert len(res[0]) == 2 and res[0][0].score >= res[0][1].score
    assert res[1][0].doc_id == "Mount Everest"
    assert res[2] == [] and res[3] == []  # stopwords only / empty query
    assert src.stats.queries == 4 and src.stats.passages == 3
    assert src.search(["river"], k=50)[0]  # k above the corpus size is fine


def test_bm25_cache_reused(summaries, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, kind="wiki_offline", path=str(summaries))
    build_source(cfg)
    folders = list((tmp_path / "indexes").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("wiki_offline-bm25-")
    assert (folders[0] / "manifest.json").exists()

    def no_build(*a, **k):
        raise AssertionError("the cached index should have been loaded")

    monkeypatch.setattr(sparse.BM25Index, "build", no_build)
    assert build_source(cfg).search(["Danube"], 1)[0][0].doc_id == "Danube"


@pytest.mark.parametrize("damage", ["truncate", "manifest", "partial"])
def test_bm25_corrupt_cache_rebuilt(summaries, tmp_path, caplog, damage):
    cfg = _cfg(tmp_path, kind="wiki_offline", path=str(summaries))
    build_source(cfg)
    (folder,) = (tmp_path / "indexes").iterdir()
    if damage == "truncate":
        data = folder / "data.csc.index.npy"
        data.write_bytes(data.read_bytes()[:20])
    elif damage == "manifest":
        (folder / "manifest.json").write_text("{not json", encoding="utf-8")
    else:  # a crash between files and manifest: no manifest at all
        (folder / "manifest.json").unlink()
    with caplog.at_level(logging.WARNING, logger="cem.knowledge.corpus"):
        src = build_source(cfg)
    assert "corrupt or stale" in caplog.text and "rebuilding" in caplog.text
    assert src.search(["Danube"], 1)[0][0].doc_id == "Danube"
    assert (folder / "manifest.json").exists()
    assert [p.name for p in (tmp_path / "indexes").iterdir()] == [folder.name]


def test_corpus_change_gives_new_index(summaries, tmp_path):
    cfg = _cfg(tmp_path, kind="wiki_offline", path=str(summaries))
    build_source(cfg)
    data = json.loads((summaries / "summaries_en-us.json").read_text(encoding="utf-8"))
    data["Rome"] = {"title": "Rome", "extract": "Rome is the capital of Italy."}
    (summaries / "summaries_en-us.json").write_text(json.dumps(data), encoding="utf-8")
    src = build_source(cfg)
    assert len(list((tmp_path / "indexes").iterdir())) == 2
    assert src.search(["capital of Italy"], 1)[0][0].doc_id == "Rome"


def test_index_dir_defaults_to_cem_cache(summaries, tmp_path, monkeypatch):
    monkeypatch.setenv("CEM_CACHE", str(tmp_path / "cache"))
    build_source(SourceConfig(kind="wiki_offline", path=str(summaries)))
    assert len(list((tmp_path / "cache" / "indexes").glob("wiki_offline-bm25-*"))) == 1


# --------------------------------------------------------------------------- local corpus


def test_local_corpus_bm25_with_chunking(tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    long = " ".join(f"Filler sentence {i} about nothing." for i in range(30))
    (root / "a.txt").write_text(long + " The zebra lives in Africa.", encoding="utf-8")
    (root / "b.md").write_text("Kangaroos live in Australia.", encoding="utf-8")
    src = build_source(_cfg(tmp_path, kind="local_corpus", path=str(root)), passage_tokens=20)
    assert isinstance(src, LocalCorpusSource)
    hit = src.search(["zebra in Africa"], 1)[0][0]
    assert hit.doc_id.startswith("a.txt#") and "zebra" in hit.text
    assert len(hit.text.split()) <= 20
    assert src.search(["kangaroos"], 1)[0][0].doc_id == "b.md"


def test_local_corpus_token_counter(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "Aa bb. Cc dd. Ee ff."}) + "\n", encoding="utf-8")
    src = build_source(
        _cfg(tmp_path, kind="local_corpus", path=str(path)),
        count_tokens=lambda s: len(s),  # characters as tokens
        passage_tokens=7,
    )
    assert [d.text for d in src.docs] == ["Aa bb.", "Cc dd.", "Ee ff."]


def test_local_corpus_dense(tmp_path, fake_embedder):
    path = tmp_path / "c.jsonl"
    rows = [{"text": "apples and pears"}, {"text": "trains and buses"}, {"text": "cats and dogs"}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    src = build_source(_cfg(tmp_path, kind="local_corpus", path=str(path), retriever="dense"))
    assert src.search(["buses"], 1)[0][0].doc_id == "c.jsonl:2"
    assert next((tmp_path / "indexes").iterdir()).name.startswith("local_corpus-dense-")


def test_local_corpus_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"knowledge\.sources\.1\.path .*sources\.1\.path="):
        build_source(_cfg(tmp_path, kind="local_corpus"), index=1)
    with pytest.raises(ConfigError, match=r"retriever must be one of bm25, dense; got 'tfidf'"):
        build_source(_cfg(tmp_path, kind="local_corpus", path=str(tmp_path), retriever="tfidf"))


# --------------------------------------------------------------------------- dense


def test_wiki_dense_fake_model_and_cache(summaries, tmp_path, fake_embedder, caplog):
    cfg = _cfg(tmp_path, kind="wiki_dense", path=str(summaries))
    src = build_source(cfg)
    assert isinstance(src, WikiDenseSource)
    res = src.search(["Everest mountain Himalayas", "plants light energy"], 2)
    assert res[0][0].doc_id == "Mount Everest" and res[1][0].doc_id == "Photosynthesis"
    assert -1.0 <= res[0][1].score <= res[0][0].score <= 1.0 + 1e-6
    (folder,) = (tmp_path / "indexes").iterdir()
    assert folder.name.startswith("wiki_dense-dense-")
    (folder / "index.faiss").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        again = build_source(cfg)
    assert "corrupt or stale" in caplog.text
    assert again.search(["Danube Black Sea"], 1)[0][0].doc_id == "Danube"


def test_dense_cache_key_depends_on_model(tmp_path):
    texts = ["alpha beta", "gamma delta"]
    dense.DenseIndex.load_or_build(texts, FakeEmbedder(), "m1", tmp_path, "k")
    dense.DenseIndex.load_or_build(texts, FakeEmbedder(), "m2", tmp_path, "k")
    assert len(list(tmp_path.glob("k-dense-*"))) == 2


# --------------------------------------------------------------------------- factory, mix


def test_unknown_kind_names_the_key():
    with pytest.raises(ConfigError) as e:
        build_source(SourceConfig(kind="bing"), index=2)
    msg = str(e.value)
    assert "knowledge.sources.2.kind" in msg and "'bing'" in msg
    for kind in ("wiki_offline", "wiki_dense", "local_corpus", "wikipedia_api", "web_search"):
        assert kind in msg


def test_online_kinds_are_imported_lazily(monkeypatch):
    made = []

    class Fake:
        def __init__(self, cfg, index=0, **_):
            made.append((type(self).__name__, cfg.kind, index))
            self.name, self.stats = cfg.kind, SourceStats()

    module = types.ModuleType("cem.knowledge.online")
    module.WikipediaAPISource = type("WikipediaAPISource", (Fake,), {})
    module.WebSearchSource = type("WebSearchSource", (Fake,), {})
    monkeypatch.setitem(sys.modules, "cem.knowledge.online", module)
    build_source(SourceConfig(kind="wikipedia_api"), index=0)
    build_source(SourceConfig(kind="web_search"), index=1)
    assert made == [
        ("WikipediaAPISource", "wikipedia_api", 0),
        ("WebSearchSource", "web_search", 1),
    ]
    assert set(SOURCES) == {"wiki_offline", "wiki_dense", "local_corpus"}


class ListSource:
    """A fake source returning fixed ranked texts for every query."""

    def __init__(self, name: str, texts: list[str]):
        self.name, self.texts, self.stats = name, texts, SourceStats(errors=1)
        self.asked: list[int] = []

    def search(self, queries, k):
        self.asked.append(k)
        return [
            [Passage(t, self.name, t, 1.0 / (r + 1), q) for r, t in enumerate(self.texts[:k])]
            for q in queries
        ]


def test_mix_quotas_merge_and_dedupe():
    a = ListSource("a", ["a1", "a2", "a3", "a4", "shared"])
    b = ListSource("b", ["b1", "shared", "b2"])
    mix = MixSource([a, b], [3.0, 1.0])
    assert mix.counts(4) == [3, 1] and mix.counts(1) == [1, 1]
    res = mix.search(["q1", "q2"], 4)
    assert [p.text for p in res[0]] == ["a1", "b1", "a2", "a3"]
    assert [p.source for p in res[1]] == ["a", "b", "a", "a"]
    mix2 = MixSource([ListSource("a", ["x", "y"]), ListSource("b", ["x", "z"])], [0.5, 0.5])
    assert [p.text for p in mix2.search(["q"], 4)[0]] == ["x", "y", "z"]  # "x" once
    assert mix.stats.queries == 2 and mix.stats.passages == 8 and mix.stats.errors == 2


def test_mix_zero_quota_and_bad_quotas():
    a, b = ListSource("a", ["a1"]), ListSource("b", ["b1"])
    mix = MixSource([a, b], [1.0, 0.0])
    assert mix.counts(5) == [5, 0]
    assert [p.text for p in mix.search(["q"], 5)[0]] == ["a1"]
    assert b.asked == []
    with pytest.raises(ConfigError, match="quota"):
        MixSource([a, b], [0.0, 0.0])


def test_build_knowledge_source(summaries, tmp_path):
    one = SourceConfig(kind="wiki_offline", path=str(summaries), index_dir=str(tmp_path))
    local = tmp_path / "c.jsonl"
    local.write_text(json.dumps({"text": "The river Danube is long."}), encoding="utf-8")
    two = SourceConfig(kind="local_corpus", path=str(local), index_dir=str(tmp_path), quota=0.5)
    assert isinstance(
        build_knowledge_source(KnowledgeConfig(name="x", sources=[one])), WikiOfflineSource
    )
    mix = build_knowledge_source(KnowledgeConfig(name="mix", sources=[one, two]))
    assert isinstance(mix, MixSource) and mix.quotas == pytest.approx([2 / 3, 1 / 3])
    hits = mix.search(["Danube river"], 3)[0]
    assert {p.source for p in hits} == {"wiki_offline", "local_corpus"}
    with pytest.raises(ConfigError, match="knowledge.sources must list at least one"):
        build_knowledge_source(KnowledgeConfig(name="x", sources=[]))


# --------------------------------------------------------------------------- slow: real assets


def _asset(name: str) -> Path:
    from cem.assets.fetch import asset_dir

    try:
        return asset_dir(name, fetch=False)
    except AssetError as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_full_wiki_offline_bm25(tmp_path):
    _asset("wiki-summaries-en")
    cfg = SourceConfig(kind="wiki_offline", index_dir=str(tmp_path))
    t = time.perf_counter()
    src = build_source(cfg)
    assert time.perf_counter() - t < 30
    from cem.benchmarks.probe import probe_titles

    assert len(src.docs) == 10_033 - len(probe_titles())  # the general probe's are held out
    titles = [p.doc_id for p in src.search(["capital city of France"], 5)[0]]
    assert "Paris" in titles
    queries = [f"capital of {d.title}" for d in src.docs[:1000]]
    t = time.perf_counter()
    res = build_source(cfg).search(queries, 5)  # from the cache this time
    assert time.perf_counter() - t < 10 and len(res) == 1000


@pytest.mark.slow
def test_real_minilm_dense_subset(tmp_path):
    summaries = _asset("wiki-summaries-en")
    model = _asset("minilm-l6-v2")
    docs = load_wiki_summaries(summaries)[:300]
    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"id": d.doc_id, "title": d.title, "text": d.text}) for d in docs),
        encoding="utf-8",
    )
    cfg = SourceConfig(
        kind="local_corpus",
        path=str(tmp_path / "c.jsonl"),
        retriever="dense",
        embedding_model=str(model),
        index_dir=str(tmp_path / "idx"),
    )
    src = build_source(cfg, passage_tokens=10_000)
    probe = docs[123]
    hits = src.search([probe.text[:120]], 3)[0]
    assert hits[0].doc_id == probe.doc_id and hits[0].score > 0.5
