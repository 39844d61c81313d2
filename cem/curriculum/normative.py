"""Normative instructions: questions in the benchmark's exact prompt and answer format.

They teach the task schema (METHOD.md, step 5). The prompt is the evaluation context and
the response the gold continuation, from the same ``render`` that evaluation scores with,
so the trained string matches the evaluated one byte for byte (no chat template).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from omegaconf import DictConfig

from cem.benchmarks.prompts import render
from cem.benchmarks.schema import MCItem
from cem.curriculum.render import Row

POOL = "pool"
EXAM = "exam"


def normative_items(sets: dict[str, list[MCItem]], protocol: str) -> list[MCItem]:
    """The pool; under ``retest`` the exam items as well (the paper-style re-test)."""
    items = list(sets.get(POOL, []))
    if protocol == "retest":
        items += sets.get(EXAM, [])
    return items


def normative_rows(
    items: Iterable[MCItem],
    formulations: Sequence[str],
    benchmark: DictConfig,
    round_: int,
    kind: str = "normative",
    mcf_target: str = "letter",
) -> list[Row]:
    """One row per item and formulation: the evaluation context and its gold continuation.

    Args:
        items: the questions.
        formulations: ``cf`` and/or ``mcf``.
        benchmark: the ``benchmark`` config (its ``instruction`` and ``answer_cue``).
        round_: the round being built.
        kind: ``normative``, or ``replay`` for items the model already answers right.
        mcf_target: ``letter`` or ``text``, as evaluation scores MCF (``eval.mcf_target``).
    """
    rows = []
    for item in items:
        for f in formulations:
            req = render(
                item,
                f,
                mcf_target=mcf_target,
                instruction=benchmark.instruction,
                answer_cue=benchmark.answer_cue,
            )
            rows.append(
                Row(
                    prompt=req.context,
                    response=req.continuations[item.answer],
                    kind=kind,
                    round=round_,
                    source_ids=[item.id],
                )
            )
    return rows
