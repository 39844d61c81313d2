"""load_model / save_model with the tiny random Llama and the bundled tokenizer (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, ValidationError
from transformers import AutoTokenizer

from cem.assets.bundled import TINY_TOKENIZER_DIR
from cem.config import ModelConfig
from cem.errors import ConfigError, ModelError
from cem.models import load_model, random_llama, save_model, torch_dtype

TINY_YAML = Path(__file__).parents[1] / "conf" / "model" / "tiny_random_llama.yaml"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def tiny_cfg(**overrides):
    """The shipped tiny config, composed over the schema as Hydra would."""
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(TINY_YAML))
    return OmegaConf.merge(cfg, overrides)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, tok = load_model(tiny_cfg(), seed=7)
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is not disturbed
    b, _ = load_model(tiny_cfg(), seed=7)
    c, _ = load_model(tiny_cfg(), seed=8)
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(
        wa["model.layers.0.mlp.up_proj.weight"], wc["model.layers.0.mlp.up_proj.weight"]
    )
    assert not a.training and a.config.vocab_size == len(tok) == 2048
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()


def test_forward_and_pad_token():
    model, tok = load_model(tiny_cfg())
    enc = tok(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, enc["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    assert model.config.pad_token_id == tok.pad_token_id is not None


def test_missing_pad_token_becomes_eos(tmp_path):
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tok")
    _, tok = load_model(tiny_cfg(tokenizer=str(tmp_path / "tok")))
    assert tok.pad_token == tok.eos_token


def test_dtype(monkeypatch):
    model, _ = load_model(tiny_cfg(dtype="bfloat16"))
    assert model.dtype == torch.bfloat16
    with pytest.raises(
        ValidationError, match=r"Invalid value 'fp8', expected one of \[auto, float32"
    ):
        tiny_cfg(dtype="fp8")  # the schema refuses it
    with pytest.raises(
        ConfigError, match=r"model.dtype must be one of .*got 'fp8'.*try model.dtype="
    ):
        torch_dtype("fp8")  # and so does the model's loader, for a config built in code


def test_missing_local_path_names_key_and_fix(tmp_path):
    for path in (str(tmp_path / "nope"), "./no/such/model", "~/no-such-model-here"):
        cfg = ModelConfig(name="m", path=path)
        with pytest.raises(ModelError, match=r"model.path=.*is not a folder.*model.path=/"):
            load_model(cfg)


def test_config_errors():
    with pytest.raises(ConfigError, match="model.arch.hidden_sizes"):
        load_model(tiny_cfg(arch={"hidden_sizes": 32}))
    with pytest.raises(ConfigError, match="model.asset must be one of"):
        load_model(ModelConfig(name="m", asset="no-such-asset"))
    with pytest.raises(ConfigError, match="needs one of model.asset, model.path"):
        load_model(ModelConfig(name="m"))


def test_save_model_round_trip(tmp_path):
    model, tok = load_model(tiny_cfg(), seed=3)
    out = save_model(model, tok, tmp_path / "ckpt")
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    save_model(model, tok, out)  # replacing an existing folder works and leaves no temp
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    again, tok2 = load_model(ModelConfig(name="ckpt", path=str(out)))
    enc = tok2("Paris is the capital of", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, again(**enc).logits)


def test_tokenizer_larger_than_vocab_is_refused(tmp_path):
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    small = random_llama(OmegaConf.to_container(tiny_cfg().arch), tok, 0, torch.float32)
    small.resize_token_embeddings(100)
    save_model(small, tok, tmp_path / "small")
    with pytest.raises(ModelError, match="2048 tokens but the model small has 100"):
        load_model(ModelConfig(name="small", path=str(tmp_path / "small")))
