"""Training rows and how an instruction becomes a prompt/response pair of strings.

A row's ``prompt`` and ``response`` are fully rendered strings: the trainer tokenises each
without adding special tokens (the chat template already wrote any it needs) and puts the
loss on the response tokens, or on every token when the response is empty (CPT).

CIT rows use the model's chat template when ``instructions.chat_template`` is on and the
tokenizer has one; otherwise a plain Alpaca-style template ("### Instruction" / "### Response").
Normative rows never come through here: they copy the evaluation prompt byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import DictConfig

PLAIN_TURN = "### Instruction:\n{user}\n\n### Response:\n"
COLUMNS = ("prompt", "response", "kind", "round", "source_ids", "phase", "n_tokens",
           "n_loss_tokens")  # fmt: skip
CIT_KINDS = ("normative", "extractive", "review", "general")
KINDS = ("cpt", *CIT_KINDS, "replay")


@dataclass
class Row:
    """One training example (the columns of ``train.parquet``, plus the text the guard reads).

    Attributes:
        prompt: the rendered prompt; for CPT, the whole text.
        response: the rendered response (empty for CPT: loss on every prompt token).
        kind: cpt | normative | extractive | review | general | replay.
        round: the round that built it.
        source_ids: mistake ids, document ids or pool item ids it came from.
        phase: the trainer consumes phases in order (sequential: CPT 0, CIT 1).
        n_tokens: prompt + response tokens with the model's tokenizer.
        n_loss_tokens: the tokens that bear loss: the response's (CIT), every token (CPT).
        raw: the instruction and answer without template tokens, which the leak guard
            checks as well as the rendered text (not written).
    """

    prompt: str
    response: str
    kind: str
    round: int
    source_ids: list[str] = field(default_factory=list)
    phase: int = 0
    n_tokens: int = 0
    n_loss_tokens: int = 0
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in COLUMNS}

    @property
    def guard_texts(self) -> list[str]:
        return [self.prompt + self.response, *([self.raw] if self.raw else [])]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


class Renderer:
    """Renders chat messages into prompt/response strings and counts tokens.

    Args:
        tokenizer: the model's tokenizer.
        chat: use the chat template (when the tokenizer has one).
    """

    def __init__(self, tokenizer: Any, chat: bool):
        self.tokenizer = tokenizer
        self.chat = chat and has_chat_template(tokenizer)
        self.eos = tokenizer.eos_token or ""

    def instruction(self, user: str, answer: str) -> tuple[str, str]:
        """A single-turn instruction and its answer."""
        return self.messages(
            [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        )

    def messages(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        """A conversation whose last message is the assistant's answer (the only one learnt)."""
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        answer = messages[-1]["content"]
        if self.chat:
            tok = self.tokenizer
            prompt = tok.apply_chat_template(
                messages[:-1], tokenize=False, add_generation_prompt=True
            )
            full = tok.apply_chat_template(messages, tokenize=False)
            # The template's own end-of-turn marker belongs to the response, so the model
            # learns to stop; a template that rewrites history falls back to answer + EOS.
            if full.startswith(prompt):
                return prompt, full[len(prompt) :]
            return prompt, answer + self.eos
        return self._plain(messages[:-1]), answer + self.eos

    def _plain(self, history: list[dict[str, str]]) -> str:
        parts: list[str] = []
        for m in history:
            if m["role"] == "system":
                parts.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                parts.append(PLAIN_TURN.format(user=m["content"]))
            else:
                parts.append(m["content"] + self.eos + "\n\n")
        return "".join(parts)

    def count(self, rows: list[Row]) -> list[Row]:
        """Set each row's ``n_tokens`` and ``n_loss_tokens`` (prompt and response tokenised
        apart, as the trainer does)."""
        if not rows:
            return rows
        tok = self.tokenizer
        prompts = tok([r.prompt for r in rows], add_special_tokens=False)["input_ids"]
        responses = tok([r.response for r in rows], add_special_tokens=False)["input_ids"]
        for row, p, a in zip(rows, prompts, responses, strict=True):
            row.n_tokens = len(p) + len(a)
            row.n_loss_tokens = len(a) if row.response else len(p)
        return rows


def load_tokenizer(model: DictConfig) -> Any:
    """The tokenizer of the configured model, without loading its weights."""
    from cem.models import load_tokenizer as _load

    return _load(model)
