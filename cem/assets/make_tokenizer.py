"""Rebuild the bundled tiny tokenizer: ``python -m cem.assets.make_tokenizer SUMMARIES_JSON``.

It was trained on the Wikipedia summaries asset (``cem assets fetch``); the result is
committed, so nobody needs to run this unless the tokenizer must change.
"""

from __future__ import annotations

import json
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cem.assets.bundled import TINY_TOKENIZER_DIR

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(summaries_json: str, vocab_size: int = 2048) -> None:
    with open(summaries_json, encoding="utf-8") as fh:
        texts = [v["extract"] for v in json.load(fh).values()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(TINY_TOKENIZER_DIR)


if __name__ == "__main__":
    build(sys.argv[1])
