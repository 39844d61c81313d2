"""The wiki_dense index is built at `cem assets fetch` (all assets), under the key a run computes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_knowledge_sources import FakeEmbedder

from cem.assets.cli import main as assets_main
from cem.assets.registry import ASSETS
from cem.knowledge import dense, prebuild

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def make_test_assets() -> list[str]:
    """What `make test` fetches (the Makefile's DATA_ASSETS)."""
    return re.search(r"^DATA_ASSETS := (.*)$", MAKEFILE.read_text(), re.M).group(1).split()


def test_only_a_fetch_of_both_inputs_builds_the_index():
    assert prebuild.due(make_test_assets()) == []  # the default test tier never embeds
    assert prebuild.due(list(ASSETS)) == ["wiki_dense"]


def test_fetch_builds_after_the_assets(monkeypatch, capsys):
    import cem.assets.cli as cli

    fetched, built = [], []
    monkeypatch.setattr(cli, "fetch_asset", lambda name, force: fetched.append(name) or Path("/a"))

    def fake_prebuild(kind):
        built.append((kind, list(fetched)))
        return prebuild.Prebuilt(kind, Path("/idx/wiki_dense-dense-x"), False, 1.5)

    monkeypatch.setattr(prebuild, "prebuild", fake_prebuild)
    assert assets_main(["fetch", *make_test_assets()]) == 0 and built == []
    assert assets_main(["fetch"]) == 0
    assert built == [("wiki_dense", [*make_test_assets(), *ASSETS])]
    assert "knowledge=wiki_dense index: built in 1.5s -> /idx/wiki_dense-dense-x" in (
        capsys.readouterr().out
    )


def test_the_prebuilt_source_is_the_one_a_run_composes(compose):
    cfg = compose("run", "knowledge=wiki_dense")
    run_side = OmegaConf.to_container(cfg.knowledge.sources[0], resolve=True)
    assert OmegaConf.to_container(prebuild.source_config("wiki_dense")) == run_side


def test_prebuild_then_a_run_loads_it(tmp_path, monkeypatch):
    from cem.knowledge.sources import build_source

    monkeypatch.setattr(dense, "load_embedder", lambda *args: (FakeEmbedder(), "fake@float32"))
    summaries = tmp_path / "s.json"
    summaries.write_text(json.dumps({t: {"title": t, "extract": f"{t} is a place."}
                                     for t in ("Paris", "Berlin", "Rome")}))  # fmt: skip
    real = prebuild.source_config
    overrides = {"path": str(summaries), "index_dir": str(tmp_path / "idx")}
    monkeypatch.setattr(prebuild, "source_config", lambda k: OmegaConf.merge(real(k), overrides))
    first = prebuild.prebuild("wiki_dense")
    assert not first.cached and first.folder.parent == tmp_path / "idx"
    again = prebuild.prebuild("wiki_dense")
    assert again.cached and again.folder == first.folder
    run = build_source(prebuild.source_config("wiki_dense"))
    assert run.index.cached and run.index.folder == first.folder


def test_a_corrupt_prebuilt_index_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
    import logging

    from cem.knowledge.sources import build_source

    names = iter(["fake@float32", "fake@float32", "fake@bfloat16"])
    monkeypatch.setattr(dense, "load_embedder", lambda *args: (FakeEmbedder(), next(names)))
    summaries = tmp_path / "s.json"
    summaries.write_text(json.dumps({"Paris": {"title": "Paris", "extract": "Paris is a city."}}))
    real = prebuild.source_config
    overrides = {"path": str(summaries), "index_dir": str(tmp_path / "idx")}
    monkeypatch.setattr(prebuild, "source_config", lambda k: OmegaConf.merge(real(k), overrides))
    built = prebuild.prebuild("wiki_dense")
    (built.folder / dense.INDEX_FILE).write_bytes(b"half a file")
    with caplog.at_level(logging.WARNING):
        run = build_source(prebuild.source_config("wiki_dense"))
    assert "is corrupt or stale" in caplog.text and "rebuilding" in caplog.text
    assert not run.index.cached and run.index.folder == built.folder
    assert run.search(["Paris"], 1)[0][0].doc_id == "Paris"
    # The embedder's dtype is part of the key: a bf16 run does not load the fp32 index.
    other = build_source(prebuild.source_config("wiki_dense"))
    assert not other.index.cached and other.index.folder != built.folder


@pytest.mark.slow
def test_prebuilt_default_index_loads_within_the_budget():
    """The real index (built by `make assets`, or here): a run pays < 30 s for it."""
    import time

    from cem.assets.fetch import asset_dir
    from cem.errors import AssetError
    from cem.knowledge.sources import build_source

    try:
        for name in prebuild.PREBUILT["wiki_dense"]:
            asset_dir(name, fetch=False)
    except AssetError as e:
        pytest.skip(str(e))
    prebuild.prebuild("wiki_dense")
    start = time.perf_counter()
    source = build_source(prebuild.source_config("wiki_dense"))
    assert source.index.cached and time.perf_counter() - start < 30
    assert "Paris" in [p.doc_id for p in source.search(["capital city of France"], 5)[0]]
