"""The records that pass between stages through the run folder, as dataclasses.

``EvalRecord`` is one line of ``eval/records.jsonl`` (``cem eval``), ``Mistake`` one line of
``mistakes/mistakes.jsonl`` (``cem retrieve``); ``Passage`` (``cem.knowledge.types``) and
``Row`` (``cem.curriculum.render``) are the others. ``from_json`` checks every field
against its type, so a file with a missing or wrong field fails where it is read, with the
file, the line and the field named (``read_records``), not a stage later as a ``KeyError``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cem.errors import DataError
from cem.io import iter_jsonl, write_jsonl

T = TypeVar("T", bound="Record")


class FieldError(ValueError):
    """A field of a record is missing or of the wrong type."""


class Record:
    """``to_json`` / ``from_json`` for the dataclasses below."""

    # Fields written only when they are not None (a loglik record has no ``generation``).
    OPTIONAL: typing.ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        for name in self.OPTIONAL:
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_json(cls: type[T], d: Any) -> T:
        """The record of ``d``; a ``FieldError`` names the first missing or wrong field.

        Keys the dataclass does not know are ignored (files written by a newer version).
        """
        if not isinstance(d, dict):
            raise FieldError(f"expected an object, got {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in d:
                required = (f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)  # fmt: skip
                if required:
                    raise FieldError(f"missing field {f.name!r}")
                continue
            if not _fits(d[f.name], hints[f.name]):
                raise FieldError(
                    f"field {f.name!r} must be {_type_name(hints[f.name])}; got {d[f.name]!r}"
                )
            values[f.name] = d[f.name]
        return cls(**values)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits the annotation (str, int, float, bool, list, dict, X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


@dataclass
class EvalRecord(Record):
    """One scored question of ``eval/records.jsonl``.

    Attributes:
        id, set, subject, question, choices: the item (``cem.benchmarks.schema.MCItem``).
        gold: the index of the right option.
        pred: the option the model chose (the highest log-likelihood, or the one its
            generation names; None when a generation names none).
        pred_norm: the same with each log-likelihood divided by the option's length.
        scores: each option's log-likelihood (None in generation mode).
        margin: best minus second-best score (None in generation mode).
        correct, correct_norm: ``pred`` (``pred_norm``) is ``gold``.
        generation: the model's reply (generation mode only).
        formulation: ``cf``, ``mcf`` or ``generate``.
        meta: the item's facts (country, relation...).
    """

    OPTIONAL = ("generation",)

    id: str
    set: str
    subject: str
    question: str
    choices: list[str]
    gold: int
    pred: int | None
    pred_norm: int | None
    scores: list[float] | None
    margin: float | None
    correct: bool
    correct_norm: bool
    generation: str | None = None
    formulation: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Mistake(Record):
    """One exam item to learn from, in ``mistakes/mistakes.jsonl`` (METHOD.md, step 2).

    Attributes:
        gold_text, pred_text: the right option and the chosen one (None: none chosen).
        reason: ``wrong``, or ``ambiguous`` (right by a margin under the threshold).
        keywords, queries, extractor: the knowledge points and the search queries made of
            them, and which extractor made them (``rule``, ``llm``, ``rule_fallback``).
    """

    # In the order the file has them (kw_only lets a required field follow a default one).
    id: str
    set: str = "exam"
    subject: str = ""
    question: str
    choices: list[str] = field(default_factory=list)
    gold: int | None = None
    gold_text: str
    pred: int | None = None
    pred_text: str | None = None
    margin: float | None = None
    reason: str = "wrong"
    meta: dict[str, Any] = field(default_factory=dict)
    keywords: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    extractor: str = ""

    @classmethod
    def of(cls, record: EvalRecord, reason: str) -> Mistake:
        """The mistake an evaluation record makes, before its knowledge points are known."""
        choices = record.choices
        pred = record.pred
        return cls(
            id=record.id, set=record.set, subject=record.subject, question=record.question,
            choices=choices, gold=record.gold, gold_text=choices[record.gold], pred=pred,
            pred_text=choices[pred] if pred is not None else None, margin=record.margin,
            reason=reason, meta=record.meta,
        )  # fmt: skip


def read_records(path: str | Path, cls: type[T]) -> list[T]:
    """Every line of ``path`` as a ``cls``; a bad line raises DataError with its field."""
    out = []
    for lineno, row in iter_jsonl(path):
        try:
            out.append(cls.from_json(row))
        except FieldError as e:
            raise DataError(path, lineno, f"{e} (a {cls.__name__})") from None
    return out


def write_records(path: str | Path, records: Iterable[Record]) -> Path:
    return write_jsonl(path, (r.to_json() for r in records))
