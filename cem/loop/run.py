"""``cem run``: the CEM loop, round after round, resumable stage by stage.

Layout of the run folder ``D`` (a round folder's ``eval/`` scores the model that round
*starts* from, so each stage finds its inputs where its standalone command looks)::

    D/round_0/eval/          M0, the untouched model ("round 0, before warm-up")
    D/warmup/                schema warm-up (loop.warmup.enabled): Normative pool items only,
                             paradigm cit_only; train_set/, checkpoints/, train/, model/ (W)
    D/round_1/eval/          the model round 1 starts from: W ("round 0, after warm-up"),
                             or a copy of round_0/eval when the warm-up is off
    D/round_k/               mistakes/ and knowledge/ (cem retrieve), train_set/ (cem build),
                             checkpoints/, train/ and model/ = M_k (cem train), model_in -> base
    D/round_{k+1}/eval/      M_k; the last folder holds only eval/ (the final model)
    D/<folder>/done/<stage>.json   done-marker per stage, written last (wall time, result)
    D/config.yaml            the resolved config the run started with (a re-run must match)
    D/summary.json, D/summary.png, D/metrics.csv   results (cem.loop.summary)

Running the same command again continues from the last finished stage. The loop stops
after ``loop.rounds`` rounds, when the exam has no mistakes left, or when exam accuracy has
not risen for ``loop.patience`` rounds; or, under a paradigm that needs CPT text, when a
round's retrieval leaves no passage to train on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from cem.config import RESULT_NEUTRAL, resolve_run_dir
from cem.errors import CemError
from cem.io import atomic_open
from cem.knowledge.retrieve import check_knowledge
from cem.layout import RoundDir, RunDir
from cem.loop import share, stages
from cem.loop.summary import report, write_summary
from cem.records import EvalRecord, read_records
from cem.ui import console
from cem.validate import (
    ConfigInvalid,
    check_benchmark,
    check_logger,
    check_loop,
    check_loop_eval,
    check_mistakes,
    check_model,
)

if TYPE_CHECKING:  # the mirror imports lightning: only once the loop starts
    from cem.loop.mirror import RunLogger

# Node-level checks of ``cem run``; cem.loop.run adds the build and train checks.
RUN_CHECKS = {
    "model": check_model,
    "benchmark": check_benchmark,
    "eval": check_loop_eval,
    "knowledge": check_knowledge,
    "mistakes": check_mistakes,
    "loop": check_loop,
    "logger": check_logger,
}
# Keys that may change between a run and its continuation: they alter no result so far
# (a continuation may go on for more rounds, or stop at another patience).
MAY_CHANGE = (*RESULT_NEUTRAL, "loop.rounds", "loop.patience", "loop.min_delta")


def check_run(cfg: DictConfig) -> list[str]:
    """Every problem of a ``cem run`` config: each stage's checks, reported together."""
    from cem.curriculum.build import check_build
    from cem.evaluation.evaluate import chat_template_problem
    from cem.training.train import check_train

    problems: list[str] = []
    for key, check in RUN_CHECKS.items():
        problems += check(cfg[key])
    if (problem := chat_template_problem(cfg.eval, cfg.benchmark)) is not None:
        problems.append(str(problem))
    # check_build also covers run_dir, model and benchmark, which RUN_CHECKS has reported.
    build_view = OmegaConf.create({**OmegaConf.to_container(cfg), "round": 1})
    problems += [p for p in check_build(build_view) if p not in problems]
    from cem.training.checks import check_lora_targets, check_trainer

    problems += check_train(cfg.train) + check_trainer(cfg.trainer)
    if not problems:  # builds the model's skeleton: only once the config is otherwise sound
        problems += check_lora_targets(cfg.model, cfg.train)
    return problems


def guard_config(root: Path, cfg: DictConfig) -> None:
    """Save the config at the first start; a continuation must match it (but ``MAY_CHANGE``)."""
    path = RunDir(root).config
    if not path.is_file():
        with atomic_open(path) as fh:
            fh.write(OmegaConf.to_yaml(cfg))
        return
    old, new = _flat(OmegaConf.load(path)), _flat(cfg)
    changed = [k for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k) and not k.startswith(MAY_CHANGE)]  # fmt: skip
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise CemError(
            f"{root} holds a run started with another config ({diffs}); continue it with the "
            f"same overrides, or pick a new run_dir (the original is {path})"
        )


def _flat(cfg: DictConfig) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def loop_sets(cfg: DictConfig) -> list[str]:
    """The sets the loop scores: ``eval.sets``, or every set but the pool; the pool too when
    ``replay.correct_items > 0`` (build replays pool items the model already gets right)."""
    from cem.benchmarks.registry import load_benchmark

    names = list(load_benchmark(cfg.benchmark))
    if "exam" not in names:
        raise CemError(
            f"benchmark={cfg.benchmark.name} has the sets {names} but `cem run` needs an exam "
            "set: give rows a `set` field (exam, test, pool) or set benchmark.set_name=exam"
        )
    sets = list(cfg.eval.sets) if cfg.eval.sets is not None else [n for n in names if n != "pool"]
    if cfg.replay.correct_items > 0 and "pool" in names and "pool" not in sets:
        sets.append("pool")
    return sets


def stop_reason(
    cfg: DictConfig, k: int, exam_accs: list[float], records: list[EvalRecord]
) -> str | None:
    """Why the loop stops at the start of round ``k``, or None to go on.

    Args:
        exam_accs: exam accuracy of the model each round 1..k started from.
        records: this round's evaluation records.
    """
    from cem.knowledge.mistakes import select_mistakes

    if k > cfg.loop.rounds:
        return "rounds"
    if not select_mistakes(records, cfg.mistakes):
        return "no_mistakes"
    if cfg.loop.patience is not None:
        best, stale = exam_accs[0], 0
        for acc in exam_accs[1:]:
            if acc > best + cfg.loop.min_delta:
                best, stale = acc, 0
            else:
                stale += 1
        if stale >= cfg.loop.patience:
            return "patience"
    return None


def warm_up(cfg: DictConfig, root: Path, logger: RunLogger) -> tuple[Path, str]:
    """The schema warm-up: build the Normative-only set and train M0 on it; its model folder
    and the key its training is shared under (``cem.loop.share``)."""
    w_dir, on = RunDir(root).warmup, cfg.loop.share_round0
    folder = w_dir.path
    built = share.stage_key("build", stages.warmup_build_job(cfg, folder), [])
    share.run_shared(on, folder, "build", w_dir.outputs("build"), built,
                     lambda: stages.warmup_build_task(cfg, folder))  # fmt: skip
    w = cfg.loop.warmup
    steps = {"max_steps": w.max_steps, "epochs": w.epochs}
    trained = share.stage_key("train", stages.train_job(cfg, folder, steps, warmup=True), [built])
    loggers = logger.step_loggers(folder)
    # train_logs too: a job that reuses the warm-up replays its steps into W&B from them.
    outputs = [*w_dir.outputs("train"), w_dir.train_logs]
    share.run_shared(on, folder, "train", outputs, trained,
                     lambda: stages.train_task(cfg, folder, None, steps, warmup=True,
                                               loggers=loggers))  # fmt: skip
    return w_dir.model, trained


def run_round(cfg: DictConfig, root: Path, k: int, base: Path | None,
              logger: RunLogger) -> Path | None:  # fmt: skip
    """Retrieve, build and train round ``k`` (its eval is done); the new model's folder, or
    None when the round has no CPT text for a paradigm that needs it (the loop stops)."""
    from cem.curriculum.mixing import NoCptText

    run = RunDir(root)
    folder = run.round(k).path
    earlier = [run.round(j).path for j in range(1, k)]
    stages.run_stage(folder, "retrieve", lambda: stages.retrieve_task(cfg, folder))
    try:
        stages.run_stage(folder, "build", lambda: stages.build_task(cfg, folder, k, earlier))
    except NoCptText as e:
        console.print(f"[bold]cem run[/] round {k} has no CPT text left: {e}")
        return None
    steps = {"max_steps": cfg.train.max_steps, "epochs": cfg.train.epochs}
    loggers = logger.step_loggers(folder)
    train = lambda: stages.train_task(cfg, folder, base, steps, loggers=loggers)  # noqa: E731
    stages.run_stage(folder, "train", train)
    return RoundDir(folder).model


def evaluate_round(cfg: DictConfig, root: Path, k: int, base: Path | None, sets: list[str],
                   shared: list[str] | None = None) -> dict:  # fmt: skip
    """Score the model round ``k`` starts from into ``round_k/eval`` (round 0: M0).

    ``shared``: the keys of the stages that made ``base`` when the result may be shared
    across jobs (round 0, and round 1 after the warm-up); None: this run's own work.
    """
    folder = RunDir(root).round(k).path
    if k == 1 and base is None:  # no warm-up: round 1 starts from M0, scored in round 0
        task = lambda: stages.copy_eval(RunDir(root).round(0).path, folder)  # noqa: E731
    else:
        task = lambda: stages.eval_task(cfg, folder, base, sets)  # noqa: E731
    if shared is None:
        return stages.run_stage(folder, "eval", task)
    # The key names the model by the stages that made it, not by its path in this run.
    key = share.stage_key("eval", stages.eval_job(cfg, folder, None, sets), shared)
    return share.run_shared(cfg.loop.share_round0, folder, "eval", RoundDir(folder).outputs("eval"),
                            key, task)  # fmt: skip


def run_loop(cfg: DictConfig) -> dict:
    """The task behind ``cem run``: every round, resumably; returns the summary.

    Raises:
        ConfigInvalid: any config problem, all listed, before any compute.
        RunLocked: another process is writing to the run folder.
        CemError: the run folder holds a run with another config, or a stage failed.
    """
    from cem.loop.lock import run_lock
    from cem.training.checks import check_devices, check_loop_ranks

    if OmegaConf.is_missing(cfg, "run_dir") or not cfg.run_dir:
        raise ConfigInvalid(["run_dir must be set to the run's folder (try run_dir=runs/my_run)"])
    root = resolve_run_dir(cfg)
    # One writer per run folder; locked first, so that a second one leaves before any check.
    with run_lock(root):
        problems = check_run(cfg)
        if not problems:  # what this machine lacks, and what cem run cannot start
            problems += check_devices(cfg.trainer) + check_loop_ranks(cfg.trainer)
        if problems:
            raise ConfigInvalid(problems)
        # Resolved once, choices as plain strings: the run folder's config, its keys and the
        # summary hold the same text as before the choices were enums.
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        summary = _loop(cfg, root)
    report(summary)
    return summary


def _loop(cfg: DictConfig, root: Path) -> dict:
    """``run_loop`` on the locked run folder ``root``: every stage not done yet."""
    from cem.loop.mirror import RunLogger

    guard_config(root, cfg)
    sets = loop_sets(cfg)
    console.print(f"[bold]cem run[/] {cfg.model.name} on {cfg.benchmark.name}, "
                  f"{cfg.loop.rounds} rounds, protocol {cfg.protocol.name}: {root}")  # fmt: skip
    if cfg.loop.reuse_runs:
        share.reuse_run(root, cfg)
    logger = RunLogger(cfg, root)
    try:
        evaluate_round(cfg, root, 0, None, sets, shared=[])
        base, warm_key = warm_up(cfg, root, logger) if cfg.loop.warmup.enabled else (None, None)
        if warm_key is not None:  # round 1 starts from the warm-up's model, shareable
            evaluate_round(cfg, root, 1, base, sets, shared=[warm_key])
        reason = _rounds(cfg, root, base, sets, logger, scored=warm_key is not None)
        stages.prune(root, cfg.loop.keep_models, final=True)
        summary = write_summary(root, cfg, reason, plot=True)
        share.register_run(root, cfg)
        logger.update(summary, final=True)
    finally:
        logger.finish()
    return summary


def _rounds(cfg: DictConfig, root: Path, base: Path | None, sets: list[str],
            logger: RunLogger, scored: bool = False) -> str:  # fmt: skip
    """Rounds 1, 2, ... until a stop reason, which is returned; ``scored``: round 1's
    eval is done already (after the warm-up)."""
    from cem.loop import diagnostics

    run = RunDir(root)
    accs: list[float] = []
    k = 1
    while True:
        if not (k == 1 and scored):
            evaluate_round(cfg, root, k, base, sets)
        if k > 1:  # M_{k-1} is scored: round k-1's mistakes can be judged fixed or not
            d = diagnostics.write(root, k - 1)
            logger.log_mistakes(k - 1, run.round(k - 1).mistakes, d)
        logger.update(write_summary(root, cfg, None))
        records = read_records(run.round(k).records, EvalRecord)
        accs.append(_exam_acc(records))
        reason = stop_reason(cfg, k, accs, records)
        if reason:
            why = {"rounds": f"all {cfg.loop.rounds} rounds done",
                   "no_mistakes": "no exam mistakes left",
                   "patience": f"no exam gain for {cfg.loop.patience} round(s)"}[reason]  # fmt: skip
            console.print(f"[bold]cem run[/] stops before round {k}: {why}")
            return reason
        trained = run_round(cfg, root, k, base, logger)
        stages.prune(root, cfg.loop.keep_models)
        if trained is None:
            logger.log_mistakes(k, run.round(k).mistakes, None)
            console.print(f"[bold]cem run[/] stops in round {k}: no knowledge passages to train on")
            return "no_knowledge"
        base = trained
        k += 1


def _exam_acc(records: list[EvalRecord]) -> float:
    exam = [r for r in records if r.set == "exam"]
    return sum(r.correct for r in exam) / max(len(exam), 1)
