"""Whole records for tests, made of the few fields a test cares about: the stages read them
as typed records (``cem.records``), so a line with a field missing is refused."""

from __future__ import annotations

from typing import Any

from cem.records import ROUND_0_LABEL, WARMUP_LABEL, EvalRecord, Mistake, round_label


def eval_record(id: str = "q1", set: str = "exam", correct: bool = False,  # noqa: A002
                **changes: Any) -> EvalRecord:  # fmt: skip
    """A two-option record of ``id`` in ``set``, right (option 0) or wrong (option 1)."""
    pred = 0 if correct else 1
    fields: dict[str, Any] = dict(
        id=id, set=set, subject="", question=f"{id}?", choices=["a", "b"], gold=0, pred=pred,
        pred_norm=pred, scores=None, margin=None, correct=correct, correct_norm=correct,
        formulation="cf",
    )  # fmt: skip
    return EvalRecord(**{**fields, **changes})


def mistake(id: str, gold: str, reason: str = "wrong", **changes: Any) -> Mistake:  # noqa: A002
    """An exam mistake whose right answer is ``gold``."""
    fields: dict[str, Any] = dict(id=id, question=f"{id}?", gold_text=gold, reason=reason,
                                  subject="capital")  # fmt: skip
    return Mistake(**{**fields, **changes})


def entry(k: int, metrics: dict, *, warmup: bool = False, cpt: int = 0, cit: int = 0,
          **fields: Any) -> dict[str, Any]:  # fmt: skip
    """One entry of ``summary.json`` (a ``RoundSummary``): round 0, the warm-up, or round k,
    with every field its kind needs."""
    label = WARMUP_LABEL if warmup else ROUND_0_LABEL if k == 0 else round_label(k)
    e: dict[str, Any] = {
        "round": k, "label": label, "protocol": "heldout", "eval_dir": f"round_{k + 1}/eval",
        "metrics": metrics, "general_nll": None, "cpt_tokens": cpt, "cit_tokens": cit,
        "replay_tokens": 0, "seconds": {}, "cpu_seconds": {}, "forgetting": {},
    }  # fmt: skip
    if warmup or k > 0:
        e |= {"trained_tokens": {}, "gains": {}, "intervals": {}}
    if k > 0:
        e |= {"mistakes": 0, "passages": 0}
    return e | fields


def run_summary(rounds: list[dict], warmup: dict | None = None, **fields: Any) -> dict[str, Any]:
    """A whole ``summary.json`` (a ``RunSummary``) around its entries."""
    return {
        "protocol": "heldout", "model": "m", "benchmark": "b", "seed": 0,
        "reference": "warmup" if warmup else "round_0", "rounds": rounds, "warmup": warmup,
        "gains": None, "best_round": None, "stopped": None,
        "seconds": {"total": 0.0, "cpu_total": 0.0}, "code": [],
    } | fields  # fmt: skip
