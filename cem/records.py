"""The records that pass between stages through the run folder, as dataclasses.

``EvalRecord`` is one line of ``eval/records.jsonl`` (``cem eval``), ``Mistake`` one line of
``mistakes/mistakes.jsonl`` (``cem retrieve``), ``RunSummary`` the loop's ``summary.json``
with one ``RoundSummary`` per evaluated model; ``Passage`` (``cem.knowledge.types``) and
``Row`` (``cem.curriculum.render``) are the others. ``from_json`` checks every field
against its type, so a file with a missing or wrong field fails where it is read, with the
file, the line and the field named (``read_records``, ``read_summary``), not a stage later
as a ``KeyError``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from cem.errors import DataError
from cem.io import iter_jsonl, read_json, write_json, write_jsonl

T = TypeVar("T", bound="Record")


class FieldError(ValueError):
    """A field of a record is missing (``problem`` None) or of the wrong type; ``path`` names
    it, ``rounds[1].label`` inside a nested record ("" for the record itself)."""

    def __init__(self, path: str, problem: str | None):
        self.path, self.problem = path, problem
        if problem is None:
            text = f"missing field {path!r}"
        else:
            text = f"field {path!r} {problem}" if path else problem
        super().__init__(text)

    def inside(self, prefix: str) -> FieldError:
        return FieldError(f"{prefix}.{self.path}" if self.path else prefix, self.problem)


class Record:
    """``to_json`` / ``from_json`` for the dataclasses below (and records nested in them)."""

    # Fields written only when they are not None (a loglik record has no ``generation``).
    OPTIONAL: typing.ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        """The record as the file holds it, key for key in the fields' order."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if self.writes(f.name)
        }

    def writes(self, name: str) -> bool:
        """Whether the file holds the field ``name``: every field but an ``OPTIONAL`` one
        that is None."""
        return name not in self.OPTIONAL or getattr(self, name) is not None

    @classmethod
    def from_json(cls: type[T], d: Any) -> T:
        """The record of ``d``; a ``FieldError`` names the first missing or wrong field.

        Keys the dataclass does not know are ignored (files written by a newer version).
        """
        if not isinstance(d, dict):
            raise FieldError("", f"expected an object, got {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in d:
                required = (f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)  # fmt: skip
                if required:
                    raise FieldError(f.name, None)
                continue
            values[f.name] = _load(d[f.name], hints[f.name], f.name)
        return cls(**values)  # a ``__post_init__`` check raises FieldError itself


def _plain(value: Any) -> Any:
    """A field's value as JSON: nested records by their ``to_json``, containers copied."""
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _load(value: Any, hint: Any, name: str) -> Any:
    """``value`` for a field annotated ``hint``: a nested record is read with its own
    ``from_json`` (its errors say where it sits); anything else must fit the annotation."""
    record = _record_type(hint)
    if record is not None and value is not None:
        if typing.get_origin(hint) is list:
            if not isinstance(value, list):
                raise FieldError(name, f"must be a list of {record.__name__}; got {_short(value)}")
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(record.from_json(v))
                except FieldError as e:
                    raise e.inside(f"{name}[{i}]") from None
            return out
        try:
            return record.from_json(value)
        except FieldError as e:
            raise e.inside(name) from None
    if not _fits(value, hint):
        raise FieldError(name, f"must be {_type_name(hint)}; got {_short(value)}")
    return value


def _record_type(hint: Any) -> type[Record] | None:
    """The record class of ``R``, ``R | None`` or ``list[R]``; None for any other hint."""
    args = typing.get_args(hint) if typing.get_origin(hint) is not None else (hint,)
    found = [a for a in args if isinstance(a, type) and issubclass(a, Record)]
    return found[0] if found else None


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits the annotation (str, int, float, bool, list[X], dict[str, X],
    X | None)."""
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
        _, item = typing.get_args(hint) or (str, Any)
        return isinstance(value, dict) and all(_fits(v, item) for v in value.values())
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _short(value: Any, width: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


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


ROUND_0_LABEL, WARMUP_LABEL = "before warm-up", "after warm-up"  # RoundSummary.label


def round_label(k: int) -> str:
    """The ``label`` of round k's entry."""
    return f"round {k}"


class EntryKind(StrEnum):
    """Which model a ``RoundSummary`` scores. The value names it in the summary's
    ``reference`` and ``gains`` (``vs_round_0``, ``vs_warmup``)."""

    ROUND_0 = "round_0"  # M0, the untouched model (label "before warm-up")
    WARMUP = "warmup"  # M0 after the schema warm-up, W ("after warm-up")
    ROUND = "round"  # M_k, trained in round k ("round k")


@dataclass(kw_only=True)
class RoundSummary(Record):
    """One evaluated model in ``summary.json`` (``cem.loop.summary``): round 0, the warm-up
    or round k's model M_k, scored in ``eval_dir``.

    Every entry has the scores, the training set's tokens, the seconds and the forgetting;
    the warm-up and the rounds also what training reached and the gains over the other
    entries (``TRAINED``); the rounds alone their retrieval and diagnostics (``ROUND_ONLY``).

    Attributes:
        round: k (0 for round 0 and for the warm-up).
        label: ``before warm-up``, ``after warm-up`` or ``round <k>``: which model (``kind``).
        protocol: ``heldout`` or ``retest``.
        eval_dir: the evaluation's folder, relative to the run.
        metrics: ``{set: {"acc", "acc_norm", "n"}}``.
        general_nll: the general probe's NLL per token (None without the probe).
        cpt_tokens, cit_tokens, replay_tokens: the tokens of the entry's training set.
        trained_tokens: the loss-bearing tokens training reached, per kind.
        rows_reached, rows_total, epoch_losses: from ``train/metrics.json`` (None: not there);
            ``epoch_losses`` holds ``{"epoch", "loss", ...}`` per epoch.
        mistakes, passages: what the round's retrieval kept.
        mistakes_by_reason: the mistakes per reason (``knowledge/stats.json``, when there).
        diagnostics: the round's fix rates (``cem.loop.diagnostics``, without ``per_mistake``;
            None while its inputs are incomplete).
        seconds, cpu_seconds: wall and CPU time of each stage behind the entry.
        forgetting, forgetting_vs_warmup: per set, the share of the items right under round
            0 (the warm-up) that are now wrong (None: no item right there).
        gains, intervals: ``{"vs_round_0"|"vs_warmup": ...}``: the gains over each other
            entry, and their paired intervals.
        data_efficiency: the gains per 1k CPT tokens trained on so far.
    """

    # Fields the file holds for some kinds only; an OPTIONAL one only when it is not None.
    TRAINED: typing.ClassVar[tuple[str, ...]] = (
        "trained_tokens", "rows_reached", "rows_total", "epoch_losses",
        "forgetting_vs_warmup", "gains", "intervals",
    )  # fmt: skip
    ROUND_ONLY: typing.ClassVar[tuple[str, ...]] = (
        "mistakes", "passages", "mistakes_by_reason", "diagnostics", "data_efficiency",
    )  # fmt: skip
    OPTIONAL = ("mistakes_by_reason", "forgetting_vs_warmup")

    round: int
    label: str
    protocol: str
    eval_dir: str
    metrics: dict[str, dict[str, float]]
    general_nll: float | None
    cpt_tokens: int
    cit_tokens: int
    replay_tokens: int
    trained_tokens: dict[str, int] | None = None
    rows_reached: int | None = None
    rows_total: int | None = None
    epoch_losses: list[dict[str, float]] | None = None
    mistakes: int | None = None
    passages: int | None = None
    mistakes_by_reason: dict[str, int] | None = None
    diagnostics: dict[str, Any] | None = None
    seconds: dict[str, float]
    cpu_seconds: dict[str, float]
    forgetting: dict[str, float | None]
    forgetting_vs_warmup: dict[str, float | None] | None = None
    gains: dict[str, dict[str, float | None]] | None = None
    intervals: dict[str, dict[str, dict[str, Any] | None]] | None = None
    data_efficiency: dict[str, float | None] | None = None

    def __post_init__(self) -> None:
        kind = self.kind  # checks the label
        needed = [*(["trained_tokens"] if kind is not EntryKind.ROUND_0 else []),
                  *(["mistakes", "passages"] if kind is EntryKind.ROUND else [])]  # fmt: skip
        for name in needed:
            if getattr(self, name) is None:
                raise FieldError(name, None)

    @property
    def kind(self) -> EntryKind:
        """Which model the entry scores, read off its ``label``."""
        if self.label == ROUND_0_LABEL:
            return EntryKind.ROUND_0
        if self.label == WARMUP_LABEL:
            return EntryKind.WARMUP
        if self.label == round_label(self.round) and self.round > 0:
            return EntryKind.ROUND
        raise FieldError("label", f"must be {ROUND_0_LABEL!r}, {WARMUP_LABEL!r} or "
                         f"'round <k>' for round k > 0; got {self.label!r} in round {self.round}")  # fmt: skip

    @property
    def key(self) -> str:
        """``round_<k>``, or ``warmup``: the entry's name in W&B."""
        return EntryKind.WARMUP.value if self.kind is EntryKind.WARMUP else f"round_{self.round}"

    @property
    def tick(self) -> str:
        """The entry's tick on a plot's round axis: k, or W for the warm-up."""
        return "W" if self.kind is EntryKind.WARMUP else str(self.round)

    def writes(self, name: str) -> bool:
        kind = self.kind
        if name in self.TRAINED and kind is EntryKind.ROUND_0:
            return False
        if name in self.ROUND_ONLY and kind is not EntryKind.ROUND:
            return False
        return super().writes(name)


@dataclass(kw_only=True)
class RunSummary(Record):
    """``summary.json``: the entries of a ``cem run`` and its headline (``cem.loop.summary``).

    Attributes:
        protocol, model, benchmark, seed: what the run is.
        reference: the entry the gains are taken against, ``warmup`` or ``round_0``
            (an ``EntryKind`` value).
        rounds: round 0, then each trained round whose model has been scored.
        warmup: the warm-up's entry (None when it is off).
        gains: the last round's gains (``round``, ``vs_<reference>``...), its data
            efficiency and intervals; None before a round is scored.
        best_round: the round with the best exam accuracy (None before a round is scored).
        stopped: ``{"reason", "round"}`` once the loop has stopped; None while it runs.
        seconds: ``total`` and ``cpu_total`` over every stage.
        code: what the run's stages ran with (``cem.provenance.provenance``), one entry per
            distinct code fingerprint; empty for a run made before cem recorded it.
    """

    protocol: str
    model: str
    benchmark: str
    seed: int
    reference: str
    rounds: list[RoundSummary]
    warmup: RoundSummary | None
    gains: dict[str, Any] | None
    best_round: int | None
    stopped: dict[str, Any] | None
    seconds: dict[str, float]
    code: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rounds or self.rounds[0].kind is not EntryKind.ROUND_0:
            raise FieldError("rounds", "must start with round 0's entry")
        if self.reference not in (EntryKind.ROUND_0, EntryKind.WARMUP):
            raise FieldError("reference", f"must be 'round_0' or 'warmup'; got {self.reference!r}")
        if self.warmup is not None and self.warmup.kind is not EntryKind.WARMUP:
            raise FieldError("warmup.label", f"must be {WARMUP_LABEL!r}; got {self.warmup.label!r}")

    @property
    def timeline(self) -> list[RoundSummary]:
        """Round 0, the warm-up when there is one, then each round: the order results came in."""
        return [self.rounds[0], *([self.warmup] if self.warmup else []), *self.rounds[1:]]

    @property
    def reference_entry(self) -> RoundSummary:
        """The entry the gains are taken against."""
        if self.reference == EntryKind.WARMUP and self.warmup is not None:
            return self.warmup
        return self.rounds[0]

    @property
    def final(self) -> RoundSummary:
        """The last scored model's entry."""
        return self.rounds[-1]


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


def read_summary(path: str | Path) -> RunSummary:
    """A ``summary.json``; bad JSON or a missing or wrong field raises DataError naming it."""
    try:
        data = read_json(path)
    except ValueError as e:
        raise DataError(path, None, f"not valid JSON ({e}); re-run its job to rewrite it") from e
    try:
        return RunSummary.from_json(data)
    except FieldError as e:
        raise DataError(path, None, f"{e} (a `cem run` summary.json); re-run its job to "
                        "rewrite it") from None  # fmt: skip


def write_summary_file(path: str | Path, summary: RunSummary) -> Path:
    return write_json(path, summary.to_json())
