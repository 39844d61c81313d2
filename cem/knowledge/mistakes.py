"""Step 2 of the loop: the exam items to learn from.

The wrong items of the exam set E, plus (ambiguity-aware) the right items whose margin
between the best and second-best option is below ``mistakes.margin_threshold``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from omegaconf import DictConfig

from cem.records import EvalRecord, Mistake

EXAM = "exam"


def is_ambiguous(record: EvalRecord, threshold: float) -> bool:
    """Right, but only just: the margin is known and under the threshold."""
    return record.correct and record.margin is not None and record.margin < threshold


def select_mistakes(
    records: Iterable[EvalRecord], cfg: DictConfig, exam_set: str = EXAM
) -> list[Mistake]:
    """Mistakes of the exam set, in record order, capped to ``max_mistakes`` by a seeded draw.

    Args:
        records: evaluation records (``eval/records.jsonl``).
        cfg: the ``mistakes`` config (margin_threshold, max_mistakes, seed).
        exam_set: the set whose mistakes drive collection.
    """
    chosen = []
    for rec in records:
        if rec.set != exam_set:
            continue
        if not rec.correct:
            chosen.append(Mistake.of(rec, "wrong"))
        elif cfg.margin_threshold > 0 and is_ambiguous(rec, cfg.margin_threshold):
            chosen.append(Mistake.of(rec, "ambiguous"))
    if cfg.max_mistakes is not None and len(chosen) > cfg.max_mistakes:
        keep = set(random.Random(cfg.seed).sample(range(len(chosen)), cfg.max_mistakes))
        chosen = [m for i, m in enumerate(chosen) if i in keep]
    return chosen
