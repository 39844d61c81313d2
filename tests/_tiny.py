"""The tiny random Llama and bundled tokenizer that the unit tests score with.

Both come from ``cem.models.load_model`` with ``conf/model/tiny_random_llama.yaml``: a
seeded 2-layer Llama (hidden 64) over the 2,048-token tokenizer bundled in
``cem.assets.bundled``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import PreTrainedModel

from cem.config import ModelConfig
from cem.models import load_model

TINY_YAML = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny_random_llama.yaml"


def tiny_config(dtype: torch.dtype = torch.float32):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(TINY_YAML))
    cfg.dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    return cfg


@functools.cache
def tiny_tokenizer():
    """The bundled tokenizer, as ``load_model`` prepares it (cached: loading is the slow part)."""
    return load_model(tiny_config(), seed=0)[1]


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A freshly built seeded random 2-layer Llama, in eval mode."""
    return load_model(tiny_config(dtype), seed=seed)[0]
