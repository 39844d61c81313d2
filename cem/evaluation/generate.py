"""Generation mode: let a chat model answer, then read the option it chose."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from cem.benchmarks.schema import LETTERS

if TYPE_CHECKING:
    from cem.evaluation.parallel import Ranks

# The word "answer" in any case, then an upper-case letter: "The answer is B",
# "Answer: (B)", "answer - B". A lower-case letter is too often the article "a".
_ANSWER_IS = re.compile(
    r"(?i:\banswer(?:\s+is)?|\bcorrect\s+(?:option|choice)\s+is)\s*[:\-]?\s*\(?([A-Z])(?![A-Za-z])"
)
# A reply that opens with the letter alone: "B", "(B)", "B.", "B) Paris", "B: Paris".
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:[.):\]]|\s*$|\s*\n)")
# A bracketed letter anywhere: "I would pick (B)".
_BRACKETED = re.compile(r"\(([A-Z])\)")


def generate_texts(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
    shard: Ranks | None = None,
) -> list[str | None]:  # fmt: skip
    """Greedy continuations of each prompt, decoded without the prompt, in input order.

    Prompts are batched by length with left padding, so that every row's next token sits
    in the last column. Special tokens are added as lm-eval does: unless the prompt already
    starts with the BOS text (as chat-templated prompts do). With ``shard``, only this
    rank's batches are generated (``cem.evaluation.parallel``); the others' texts are None.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    bos = tokenizer.bos_token
    device = next(model.parameters()).device
    out: list[str | None] = [None if shard is not None else ""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            if shard is not None and not shard.mine(start // batch_size):
                continue
            idx = order[start : start + batch_size]
            texts = [prompts[i] for i in idx]
            kwargs = {"add_special_tokens": False} if bos and texts[0].startswith(bos) else {}
            batch = tokenizer(texts, return_tensors="pt", padding=True, **kwargs).to(device)
            with torch.inference_mode():
                gen = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
            new = gen[:, batch["input_ids"].shape[1] :]
            for i, text in zip(
                idx, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True
            ):
                out[i] = text
    finally:
        tokenizer.padding_side = side
    return out


def extract_choice(text: str, choices: list[str]) -> int | None:
    """The option a generated answer names, or None.

    Tried in order: "answer is B" / "Answer: B"; a reply opening with the letter ("B",
    "(B)", "B.", "B) Paris"); the option text itself (case-insensitive, whole words; the
    earliest mention wins, the longest option on a tie); a bracketed letter anywhere.
    Letters beyond the number of choices are ignored.
    """
    text = text.replace("*", "")  # markdown bold: "**B**"
    letters = LETTERS[: len(choices)]
    for pattern in (_ANSWER_IS, _LEADING):
        m = pattern.search(text)
        if m and m.group(1) in letters:
            return letters.index(m.group(1))
    found = []
    for i, choice in enumerate(choices):
        m = _option_pattern(choice).search(text) if choice.strip() else None
        if m:
            found.append((m.start(), -len(choice), i))
    if found:
        return min(found)[2]
    for m in _BRACKETED.finditer(text):
        if m.group(1) in letters:
            return letters.index(m.group(1))
    return None


def _option_pattern(choice: str) -> re.Pattern:
    """The option text as a whole word or phrase: "Niger" does not match in "Nigeria"."""
    body = re.escape(choice.strip())
    left = r"(?<!\w)" if choice.strip()[0].isalnum() else ""
    right = r"(?!\w)" if choice.strip()[-1].isalnum() else ""
    return re.compile(left + body + right, re.IGNORECASE)
