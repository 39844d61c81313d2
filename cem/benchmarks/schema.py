"""One record schema for every multiple-choice item, whatever file it came from, and the
scoring request a prompt formulation makes of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class MCItem:
    """A multiple-choice question.

    Attributes:
        id: unique within its set.
        question: the question as shown in the multiple-choice formulation (MCF).
        choices: option texts, in order (lettered A, B, ... where they are shown).
        answer: index of the right option in ``choices``.
        subject: discipline or relation (``capital``, ``History``...).
        set: ``pool``, ``exam``, ``test``, ``transfer_reverse``, ``transfer_borders`` or a user's name.
        source: where it came from (``path:line`` for files, the asset name otherwise).
        stem: the cloze stem for the cloze formulation (CF), e.g. "The capital of Bhutan is";
            None means CF uses ``question`` (a ``_____`` blank takes the option in its place).
        meta: free-form facts about the item (country, relation) kept in the records.
    """

    id: str
    question: str
    choices: list[str]
    answer: int
    subject: str = ""
    set: str = "exam"
    source: str = ""
    stem: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gold(self) -> str:
        return self.choices[self.answer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MCItem:
        return cls(**d)


@dataclass
class Request:
    """One question: a context and the continuations to score after it.

    Attributes:
        context: the prompt, e.g. "Question: ...\\nAnswer:".
        continuations: the options as scored text, e.g. [" A", " B"] or [" Paris", " Lyon"].
    """

    context: str
    continuations: list[str]
