"""cem.weights: a checkpoint streamed tensor by tensor equals the one from_pretrained loads."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from cem.config import ModelConfig
from cem.models import load_model, save_model
from cem.weights import stream_load


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny model saved in float32, as the default asset is."""
    return save_model(tiny_model(seed=3), tiny_tokenizer(), tmp_path_factory.mktemp("m") / "tiny")


def test_a_cast_load_is_streamed_and_equals_from_pretrained(folder):
    streamed = stream_load(folder, torch.bfloat16, "cpu")
    assert streamed is not None
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    a, b = streamed.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype == torch.bfloat16 for k in a)
    for (name, x), (_, y) in zip(streamed.named_buffers(), ref.named_buffers(), strict=True):
        assert torch.equal(x, y) and x.dtype == y.dtype, name
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight  # tied again
    assert streamed.config.to_dict() == ref.config.to_dict()
    assert streamed.generation_config.to_dict() == ref.generation_config.to_dict()
    ids = torch.tensor([[1, 17, 90, 5, 2]])
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, ref(ids).logits)


def test_load_model_takes_the_streamed_path_for_a_cast(folder, monkeypatch):
    import cem.weights

    calls = []
    real = cem.weights.stream_load

    def spy(*args):
        calls.append(model := real(*args))
        return model

    monkeypatch.setattr(cem.weights, "stream_load", spy)
    model, _ = load_model(ModelConfig(name="t", path=str(folder), dtype="bfloat16", device="cpu"))
    assert calls and calls[0] is model and next(model.parameters()).dtype == torch.bfloat16


def test_nothing_to_cast_on_the_cpu_is_left_to_from_pretrained(folder):
    # The mapping of a file already in the wanted dtype is zero-copy and shared.
    assert stream_load(folder, torch.float32, "cpu") is None


def test_a_checkpoint_with_other_keys_is_left_to_from_pretrained(folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "generation_config.json"):
        (other / name).write_bytes((folder / name).read_bytes())
    weights = load_file(folder / "model.safetensors")
    weights["model.extra.weight"] = torch.zeros(2)  # a key the model does not have
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    assert stream_load(other, torch.bfloat16, "cpu") is None


def test_sharded_checkpoints_are_streamed(folder, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    streamed = stream_load(tmp_path / "sharded", torch.bfloat16, "cpu")
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in streamed.state_dict().items())
