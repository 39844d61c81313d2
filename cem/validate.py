"""Check a composed config before any compute, and report every problem at once.

Each message names the key, the bad value, what is allowed and the override that fixes it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum

from omegaconf import DictConfig, OmegaConf, ValidationError
from omegaconf.nodes import EnumNode

from cem.benchmarks.world import RELATIONS as WORLD_RELATIONS
from cem.benchmarks.world import TRANSFER_SETS as WORLD_TRANSFER
from cem.choices import values
from cem.config import RENAMED
from cem.device import device_problem
from cem.errors import CemError

LOOP_SETS = ("exam",)  # the loop's mistakes come from the exam set E


class ConfigInvalid(CemError):
    """One or more config values are wrong; the message lists them all."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


def override_value(value: object) -> str:
    """``value`` as Hydra's override grammar writes it: null, true, [a,b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(getattr(value, "value", value))


def choice(key: str, value: object, allowed: Iterable[object]) -> str | None:
    allowed = tuple(allowed)
    if value in allowed:
        return None
    shown = ", ".join(override_value(a) for a in allowed)
    fix = next((a for a in allowed if a is not None), allowed[0])
    return f"{key} must be one of {shown}; got {value!r} (try {key}={override_value(fix)})"


def members(key: str, values: Iterable[object], allowed: Iterable[object]) -> str | None:
    """A list-valued key whose every item must be one of ``allowed``; the fix drops the rest."""
    values, allowed = list(values), tuple(allowed)
    bad = [v for v in values if v not in allowed]
    if not bad:
        return None
    kept = [v for v in values if v in allowed] or [allowed[0]]
    shown = ", ".join(override_value(a) for a in allowed)
    return (f"{key} items must be among {shown}; got {override_value(bad)} "
            f"(try {key}={override_value(kept)})")  # fmt: skip


def at_least(key: str, value: object, low: float, fix: object) -> str | None:
    if isinstance(value, int | float) and value >= low:
        return None
    return f"{key} must be >= {low}; got {value!r} (try {key}={fix})"


def in_unit(key: str, value: object, fix: float, *, open_low: bool = False) -> str | None:
    ok = isinstance(value, int | float) and (value > 0 if open_low else value >= 0) and value <= 1
    if ok:
        return None
    span = "(0, 1]" if open_low else "[0, 1]"
    return f"{key} must be in {span}; got {value!r} (try {key}={fix})"


def check_model(m: DictConfig) -> list[str]:
    problems = [device_problem("model.device", m.device)]
    sources = [bool(m.asset), bool(m.path), bool(m.random_init)]
    if sum(sources) != 1:
        # Too many: keep the most specific (a path, then an asset) and clear the others.
        clear = (["model.asset=null"] if m.asset and m.path else []) + (
            ["model.random_init=false"] if m.random_init and (m.asset or m.path) else [])  # fmt: skip
        fix = (
            " ".join(clear)
            or "model.path=Qwen/Qwen2.5-0.5B-Instruct or model=smollm2_135m_instruct"
        )
        problems.append(
            "model needs exactly one of model.asset, model.path or model.random_init=true; "
            f"got asset={m.asset!r}, path={m.path!r}, random_init={m.random_init} (try {fix})"
        )
    problems.append(at_least("model.max_length", m.max_length, 16, 2048))
    return [p for p in problems if p]


def check_benchmark(b: DictConfig) -> list[str]:
    problems = []
    if b.name != "world" and not b.path:
        problems.append(
            f"benchmark.path is required for benchmark={b.name} (a file or a folder of files); "
            f"got None (try benchmark.path=/data/{b.name})"
        )
    problems.append(at_least("benchmark.max_row_bytes", b.max_row_bytes, 1, 1_000_000))
    if b.limit is not None:
        problems.append(at_least("benchmark.limit", b.limit, 1, 100))
    if b.name == "world" or b.split:
        problems += _check_split(b)
    if b.name == "world":
        problems += _check_world(b)
    return [p for p in problems if p]


def _check_split(b: DictConfig) -> list[str]:
    problems = [
        in_unit("benchmark.pool_fraction", b.pool_fraction, 0.2, open_low=True),
        in_unit("benchmark.exam_fraction", b.exam_fraction, 0.4, open_low=True),
    ]
    if not problems[0] and not problems[1] and b.pool_fraction + b.exam_fraction >= 1:
        problems.append(
            "benchmark.pool_fraction + benchmark.exam_fraction must be < 1 so the test set is "
            f"not empty; got {b.pool_fraction} + {b.exam_fraction} (try benchmark.exam_fraction=0.4)"
        )
    return problems


def _check_world(b: DictConfig) -> list[str]:
    problems = []
    problems.append(members("benchmark.relations", b.relations, WORLD_RELATIONS))
    if not b.relations:
        problems.append("benchmark.relations must not be empty (try benchmark.relations=[capital])")
    problems.append(members("benchmark.transfer", b.transfer, WORLD_TRANSFER))
    return problems


def check_eval(e: DictConfig) -> list[str]:
    problems = [
        at_least("eval.batch_size", e.batch_size, 1, 32),
        at_least("eval.chunk_size", e.chunk_size, 1, 2048),
        at_least("eval.max_new_tokens", e.max_new_tokens, 1, 24),
        at_least("eval.devices", e.devices, 1, 1),
    ]
    return [p for p in problems if p]


def validate(cfg: DictConfig, checks: dict[str, Callable[[DictConfig], list[str]]]) -> None:
    """Run each check on its config node; raise ConfigInvalid listing every problem."""
    problems: list[str] = []
    if OmegaConf.is_missing(cfg, "run_dir") or not cfg.run_dir:
        problems.append("run_dir must be set to the run's folder (try run_dir=runs/my_run)")
    for key, check in checks.items():
        problems += check(cfg[key])
    if problems:
        raise ConfigInvalid(problems)


def check_mistakes(m: DictConfig) -> list[str]:
    problems = [at_least("mistakes.margin_threshold", m.margin_threshold, 0, 0.5)]
    if m.max_mistakes is not None:
        problems.append(at_least("mistakes.max_mistakes", m.max_mistakes, 1, 200))
    return [p for p in problems if p]


EVAL_CHECKS = {"model": check_model, "benchmark": check_benchmark, "eval": check_eval}


def check_loop(loop: DictConfig) -> list[str]:
    problems = [
        at_least("loop.rounds", loop.rounds, 1, 2),
        at_least("loop.min_delta", loop.min_delta, 0, 0.0),
    ]
    if loop.patience is not None:
        problems.append(at_least("loop.patience", loop.patience, 1, 1))
    steps = loop.warmup.max_steps
    if steps != -1 and not (isinstance(steps, int) and steps >= 1):
        problems.append(
            "loop.warmup.max_steps must be -1 (loop.warmup.epochs over the warm-up set) or >= 1; "
            f"got {steps!r} (try loop.warmup.max_steps=4)"
        )
    problems.append(at_least("loop.warmup.epochs", loop.warmup.epochs, 1, 1))
    if loop.warmup.max_tokens is not None:
        problems.append(at_least("loop.warmup.max_tokens", loop.warmup.max_tokens, 1, 20000))
    return [p for p in problems if p]


def check_logger(lg: DictConfig) -> list[str]:
    return [p for p in [at_least("logger.mistakes_rows", lg.mistakes_rows, 0, 500)] if p]


def check_loop_eval(e: DictConfig) -> list[str]:
    """``check_eval`` plus what the loop needs: ``eval.sets`` must keep the exam set."""
    problems = check_eval(e)
    if e.sets is not None:
        for name in LOOP_SETS:
            if name not in e.sets:
                wanted = ",".join([*LOOP_SETS, *(s for s in e.sets if s not in LOOP_SETS)])
                problems.append(
                    f"eval.sets must include {name} in `cem run`; got {list(e.sets)} "
                    f"(try eval.sets=[{wanted}] or eval.sets=null)"
                )
    return problems


def override_problems(schema: type, overrides: Sequence[str]) -> list[str]:
    """The command line's overrides that give a choice field of ``schema`` a value outside
    its ``StrEnum``, every value of a sweep included.

    OmegaConf refuses them when Hydra composes; checked here first, so that ``cem`` reports
    them all at once in its own words, and no job of a sweep runs before a later job's bad
    value stops the sweep.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return []  # a malformed override: Hydra says what is wrong with it
    problems = []
    for o in parsed:
        if o.is_delete() or o.package:
            continue
        if o.key_or_group in RENAMED:
            given = o.input_line.partition("=")[2]  # a sweep's values too
            problems.append(renamed_problem(schema, o.key_or_group, given))
            continue
        field = choice_field(schema, o.key_or_group)
        if field is None or o.value_type == ValueType.GLOB_CHOICE_SWEEP:
            continue
        if o.is_choice_sweep():
            given = [getattr(v, "text", v) for v in o.sweep_iterator()]  # QuotedString -> str
        elif o.is_sweep_override():
            continue  # a range or an interval is numbers: OmegaConf refuses them
        else:
            given = [o.value()]
        given = [v for v in given if not (isinstance(v, str) and "${" in v)]  # resolved later
        problems += [choice_problem(o.key_or_group, v, *field) for v in given]
    return [p for p in problems if p]


def renamed_problem(schema: type, key: str, given: str) -> str | None:
    """A renamed ``key`` (``cem.config.RENAMED``) given the value ``given`` (as text): its new
    key and the override that fixes it; None when the new key is not ``schema``'s."""
    new, new_values = RENAMED[key]
    field = choice_field(schema, new)
    if field is None:  # not this command's key: Hydra refuses it as unknown
        return None
    allowed = values(field[0])
    fix = next((v for k, v in new_values.items() if override_value(k) == given.lower()), given)
    return (f"{key} is now {new} (one of {', '.join(allowed)}); got {key}={given} "
            f"(try {new}={fix if fix in allowed else allowed[0]})")  # fmt: skip


def field_type(schema: type, key: str) -> object | None:
    """The type of the field that the dotted ``key`` names in the dataclass ``schema`` (a list
    index is a part too), or None when there is no such field."""
    kind: object = schema
    for part in key.split("."):
        kind = not_optional(kind)[0]
        if dataclasses.is_dataclass(kind):
            hints = typing.get_type_hints(kind)
            if part not in hints:
                return None
            kind = hints[part]
        elif typing.get_origin(kind) is list and part.isdigit():
            kind = typing.get_args(kind)[0]
        else:
            return None
    return kind


def choice_field(schema: type, key: str) -> tuple[type[StrEnum], bool, bool] | None:
    """The ``StrEnum`` of the field that the dotted ``key`` names in the dataclass ``schema``,
    whether it may be null and whether it is a list of them; None for any other field."""
    kind = field_type(schema, key)
    if kind is None:
        return None
    kind, optional = not_optional(kind)
    is_list = typing.get_origin(kind) is list
    if is_list:
        kind = typing.get_args(kind)[0]
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return kind, optional, is_list
    return None


def not_optional(kind: object) -> tuple[object, bool]:
    """``kind`` without its ``| None``, and whether it had one."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else kind), True
    return kind, False


def choice_problem(
    key: str, value: object, choices: type[StrEnum], optional: bool, is_list: bool
) -> str | None:
    """``value`` for the choice field ``key`` as OmegaConf would take it, or what is wrong."""
    if is_list:  # a value that is not a list is OmegaConf's to refuse
        ok = not isinstance(value, list) or all(_member(choices, v) for v in value)
        return None if ok else members(key, value, values(choices))
    if (value is None and optional) or (value is not None and _member(choices, value)):
        return None
    return choice(key, value, [*([None] if optional else []), *values(choices)])


def _member(choices: type[StrEnum], value: object) -> bool:
    try:
        EnumNode.validate_and_convert_to_enum(choices, value)
    except ValidationError:
        return False
    return True
