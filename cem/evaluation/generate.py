"""Generation mode: let a chat model answer, then read the option it chose."""

from __future__ import annotations

import re

import torch

from cem.benchmarks.schema import LETTERS

# "The answer is B", "Answer: (B)", "B.", "B) Paris", a lone "B".
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)?\s*[:\-]?\s*\(?([A-Z])\b(?![a-z])", re.IGNORECASE)
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[.):\]]|\s|$)")


def generate_texts(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), decoded without the prompt."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.inference_mode():
                gen = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = gen[:, batch["input_ids"].shape[1] :]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def extract_choice(text: str, choices: list[str]) -> int | None:
    """The option a generated answer names: a letter, or the option text; None if neither."""
    letters = LETTERS[: len(choices)]
    for pattern in (_ANSWER_IS, _LEADING):
        m = pattern.search(text)
        if m and m.group(1).upper() in letters:
            return letters.index(m.group(1).upper())
    lowered = text.lower()
    found = [(lowered.find(c.lower()), -len(c), i) for i, c in enumerate(choices) if c and c.lower() in lowered]
    if found:
        return min(found)[2]  # earliest mention; the longer option wins a tie ("Niger" vs "Nigeria")
    return None
