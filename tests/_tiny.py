"""The tiny random Llama and bundled tokenizer that the unit tests score with.

Once ``cem.models.load_model`` exists this can call it; until then it builds the same
model inline, so the two stay interchangeable.
"""

from __future__ import annotations

import functools

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from cem.testing import TOKENIZER_DIR


@functools.cache
def tiny_tokenizer():
    """The bundled 2,048-token BPE tokenizer (cached: loading it is the slow part)."""
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama over the bundled tokenizer, in eval mode."""
    tok = tiny_tokenizer()
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.to(dtype).eval()
