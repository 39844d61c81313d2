"""``cem eval``: score a model on a benchmark and write its records and metrics."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cem.benchmarks.registry import load_benchmark, select_sets
from cem.config import resolve_run_dir
from cem.errors import CemError
from cem.evaluation.parallel import Ranks, launch, launched, ranks
from cem.io import remove_stale, write_json
from cem.layout import RoundDir, write_stage_config
from cem.records import write_records
from cem.ui import console, metrics_table
from cem.validate import EVAL_CHECKS, validate

log = logging.getLogger(__name__)


def run_eval(cfg: DictConfig, *, run_dir: Path | None = None) -> dict:
    """Validate, load, score and write ``<run_dir>/eval/`` (records, metrics, its config).

    Args:
        cfg: a composed ``EvalJob`` (``conf/eval.yaml``).
        run_dir: where to write; None: ``run_dir`` (or the sweep job's folder). The loop
            passes each round's folder.

    Returns:
        The metrics, shaped ``{set: {"acc", "acc_norm", "n", "acc_ci", "acc_norm_ci"}}``.

    With ``eval.devices`` above 1, or under ``torchrun``, the items are scored by several
    ranks (``cem.evaluation.parallel``); the files are the same.
    """
    validate(cfg, EVAL_CHECKS)
    from cem.evaluation.evaluate import chat_template_problem

    if (problem := chat_template_problem(cfg.eval, cfg.benchmark)) is not None:
        raise problem  # before the model loads
    root = run_dir or resolve_run_dir(cfg)
    if cfg.eval.devices > 1 and not launched():
        return launch(cfg, root)  # eval.devices ranks, each running this function
    with ranks(cfg.model.device) as group:
        metrics = _evaluate_and_write(cfg, RoundDir(root), group)
        return group.broadcast(metrics)


def _evaluate_and_write(cfg: DictConfig, folder: RoundDir, group: Ranks) -> dict | None:
    """Score every item, this rank's share of them; rank 0 writes the files (and returns
    the metrics, None elsewhere)."""
    # Heavy imports (torch, transformers) only once the config is known to be good.
    from cem.evaluation.evaluate import evaluate, formulation_of
    from cem.evaluation.metrics import summarise
    from cem.evaluation.stream import PartialRecords, fingerprint
    from cem.models import load_model

    out = folder.eval
    say = console.print if group.leader else lambda *_, **__: None
    if group.leader:
        remove_stale(out)  # temp files of a write that a kill cut short
    sets = select_sets(
        load_benchmark(cfg.benchmark),
        OmegaConf.to_object(cfg.eval.sets) if cfg.eval.sets is not None else None,
    )
    n = sum(len(v) for v in sets.values())
    ranks_note = f" on {group.world} ranks" if group.world > 1 else ""
    say(
        f"[bold]cem eval[/] {cfg.model.name} on {cfg.benchmark.name}: {n} questions "
        f"in {len(sets)} sets, formulation={formulation_of(cfg.eval, cfg.benchmark)}{ranks_note}"
    )
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model, seed=cfg.seed)
    t1 = time.perf_counter()
    # More than one chunk: keep each finished chunk, so that a stop loses one chunk at most.
    # Rank 0 alone keeps them.
    chunked = n > cfg.eval.chunk_size and group.leader
    partial = PartialRecords(folder.partial_records, fingerprint(cfg, n)) if chunked else None
    records = evaluate(
        model, tokenizer, sets, cfg.eval, cfg.benchmark, cfg.model.max_length, partial, group
    )
    t2 = time.perf_counter()
    if not group.leader:
        return None
    metrics = summarise(records)
    if cfg.eval.general_probe:
        from cem.benchmarks.probe import probe_passages
        from cem.evaluation.probe import general_nll

        probe = general_nll(model, tokenizer, probe_passages())
        write_json(folder.general, probe)
        console.print(f"general probe: {probe['general_nll']:.4f} NLL per token "
                      f"({probe['tokens']} tokens of {probe['passages']} passages)")  # fmt: skip
    t3 = time.perf_counter()
    write_records(folder.records, records)
    if partial is not None:
        partial.remove()
    write_json(folder.eval_metrics, metrics)
    write_json(
        folder.eval_timing,
        {
            "load_s": t1 - t0,
            "score_s": t2 - t1,
            "probe_s": t3 - t2,
            "questions_per_s": n / max(t2 - t1, 1e-9),
            "device": str(next(model.parameters()).device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),  # auto resolved
        },  # fmt: skip
    )
    write_stage_config(folder, "eval", cfg)
    console.print(metrics_table(metrics, title=f"{cfg.model.name} · {cfg.benchmark.name}"))
    console.print(
        f"scored {n} questions in {t2 - t1:.1f}s ({n / max(t2 - t1, 1e-9):.1f}/s); wrote {out}"
    )
    return metrics


def main(argv: list[str]) -> None:
    """One rank of ``cem.evaluation.parallel.launch``: ``python -m cem.evaluation.runner
    JOB.yaml RUN_DIR``."""
    from cem.config import EvalJob

    job, run_dir = argv
    cfg = OmegaConf.merge(OmegaConf.structured(EvalJob), OmegaConf.load(job))
    try:
        run_eval(cfg, run_dir=Path(run_dir))
    except CemError as e:
        print(f"cem eval (rank {os.environ.get('RANK', '?')}): error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
