"""One-time conversions, run when an asset is fetched (``AssetSpec.convert`` names one).

``gguf_to_hf`` turns a llama-architecture GGUF file into a Hugging Face folder:
``config.json``, ``model.safetensors`` (float32), ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``.
transformers reads GGUF (de-quantising to float32) but refuses to save a GGUF-loaded
model, so a fresh model is built from its config, without ``quantization_config``, and
the state dict is copied in. Tied embeddings stay tied: the fresh model ties ``lm_head``
to ``embed_tokens`` from its config, and the saved file holds the matrix once. Before the
folder is accepted it is reloaded and must give the GGUF model's logits on a prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from cem.errors import AssetError

CHECK_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
# Same float32 weights and kernels on both sides, so any real difference is a bug.
LOGITS_ATOL = 1e-4


def load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file with transformers: a float32 model and its tokenizer."""
    kwargs = {"gguf_file": path.name}
    tok = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    return model.eval(), tok


def fresh_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain (serialisable) copy of a GGUF-loaded model, with the same weights."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.generation_config = copy.deepcopy(model.generation_config)
    if config.tie_word_embeddings:
        out, emb = fresh.get_output_embeddings(), fresh.get_input_embeddings()
        if out.weight.data_ptr() != emb.weight.data_ptr():
            raise AssetError("converted model lost its tied embeddings (lm_head != embed_tokens)")
    return fresh.eval()


def max_logit_diff(
    a: PreTrainedModel, b: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> float:
    """Largest absolute logit difference of two models on ``CHECK_PROMPT``."""
    if tokenizer.chat_template:
        enc = tokenizer.apply_chat_template(
            CHECK_PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        enc = tokenizer(CHECK_PROMPT[0]["content"], return_tensors="pt")
    with torch.no_grad():
        la = a(**enc).logits.float()
        lb = b(**enc).logits.float()
    return (la - lb).abs().max().item()


def gguf_to_hf(raw: Path, out: Path) -> None:
    """Convert the single ``*.gguf`` in ``raw`` into a Hugging Face folder ``out``.

    Raises:
        AssetError: no GGUF in ``raw``, or the saved folder differs from the GGUF model
            (logits or chat template).
    """
    ggufs = sorted(raw.rglob("*.gguf"))
    if len(ggufs) != 1:
        raise AssetError(f"expected one .gguf file in {raw}; found {ggufs}")
    gguf_model, tok = load_gguf(ggufs[0])
    model = fresh_copy(gguf_model)
    # GGUF carries no length limit for the tokenizer; the model's context is the right one.
    tok.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    saved_tok = AutoTokenizer.from_pretrained(out)
    if saved_tok.chat_template != tok.chat_template:
        raise AssetError(f"chat template was lost converting {ggufs[0].name} into {out}")
    diff = max_logit_diff(gguf_model, saved, saved_tok)
    if diff > LOGITS_ATOL:
        raise AssetError(
            f"converted {ggufs[0].name} gives different logits (max |diff| {diff:.2e} > "
            f"{LOGITS_ATOL}); please report this with your transformers version"
        )


CONVERTERS: dict[str, Callable[[Path, Path], None]] = {"gguf_to_hf": gguf_to_hf}
