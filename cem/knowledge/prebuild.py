"""Indexes built once, when ``cem assets fetch`` brings their inputs, so that no run pays.

``knowledge=wiki_dense`` embeds 9,969 summaries (the corpus less the general probe's
passages): 44 s in bfloat16 on 2 idle CPU cores, 131 s in float32. Built here with the
settings that ``conf/knowledge/<kind>.yaml`` composes, it lands under the same cache key
(corpus hash, embedder, dtype) that a run computes, and the run loads it in about 0.1 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from cem.config import KnowledgeConfig, ModelConfig

# Knowledge option -> the assets its index is built from.
PREBUILT: dict[str, tuple[str, ...]] = {"wiki_dense": ("wiki-summaries-en", "minilm-l6-v2")}


@dataclass
class Prebuilt:
    """One index: where it lies, whether it was already there, and the seconds it took."""

    kind: str
    folder: Path
    cached: bool
    seconds: float


def due(names: list[str]) -> list[str]:
    """The knowledge options whose every input asset is among ``names``."""
    return [kind for kind, needs in PREBUILT.items() if set(needs) <= set(names)]


def source_config(kind: str):
    """The first source of ``conf/knowledge/<kind>.yaml``, composed over the schema."""
    from cem.config import conf_dir

    node = OmegaConf.merge(
        OmegaConf.structured(KnowledgeConfig),
        OmegaConf.load(conf_dir() / "knowledge" / f"{kind}.yaml"),
    )
    return node.sources[0]


def prebuild(kind: str, device: str = ModelConfig.device) -> Prebuilt:
    """Build (or find) the index that ``knowledge=<kind>`` loads; the embedder runs on ``device``."""
    from cem.knowledge.sources import build_source

    start = time.perf_counter()
    source = build_source(source_config(kind), device=device)
    index = source.index
    return Prebuilt(kind, index.folder, index.cached, time.perf_counter() - start)
