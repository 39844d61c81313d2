"""The loop's stages, each run once: a done-marker written last makes a re-run skip it.

A stage is a call of the standalone command's own task (``run_eval``, ``run_retrieve``,
``run_build``, ``train_round``) on a job config cut from the loop's config, pointed at one
round folder. The stage's done-marker (``cem.layout``) is written atomically after the
stage's files, and records its wall time, a small result and the sha256 of the files it
vouches for; a stage without it, or whose files no longer match, is run again, and its
outputs are overwritten (training resumes from the round's last checkpoint).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cem.config import BuildJob, EvalJob, RetrieveJob, TrainJob
from cem.errors import CemError
from cem.io import public_perms, remove_stale, write_json
from cem.layout import RoundDir, RunDir, read_marker
from cem.loop.verify import check_marker, hash_outputs
from cem.provenance import provenance
from cem.ui import console, warn


def prune(root: Path, keep: str, final: bool = False) -> list[Path]:
    """Delete what no later stage of the run in ``root`` needs; the paths deleted.

    A finished training's checkpoints (they only resume an unfinished one), unless ``keep``
    is ``all``; every model but the newest trained one (a later training started from it,
    and the evaluation that scored it came before), unless ``keep`` is ``all``; and with
    ``keep=none`` and ``final`` (the run is over), the newest model too.
    """
    from cem.choices import KeepModels

    keep = KeepModels(keep)
    if keep == KeepModels.all:
        return []
    run = RunDir(root)
    trained = [f for f in (run.warmup, *run.rounds()) if read_marker(f, "train")]
    doomed = [f.checkpoints for f in trained] + [f.model for f in trained[:-1]]
    if keep == KeepModels.none and final and trained:
        doomed.append(trained[-1].model)
    gone = [p for p in doomed if p.is_dir()]
    for path in gone:
        _record_pruned(RoundDir(path.parent), path.name)
        shutil.rmtree(path)
    return gone


def _record_pruned(folder: RoundDir, name: str) -> None:
    """Note in the train marker that ``folder/name`` is deleted on purpose (not corrupt)."""
    done = read_marker(folder, "train")
    if done is not None and name not in done.get("pruned", []):
        write_json(folder.marker("train"), {**done, "pruned": [*done.get("pruned", []), name]})


def run_stage(folder: Path, stage: str, task: Callable[[], dict | None]) -> dict:
    """Run ``task`` unless ``stage`` is done in ``folder`` and its files check out; write
    its marker last, with the sha256 of every file it vouches for (``verify.OUTPUTS``).

    Returns:
        The marker: ``{"stage", "seconds", "cpu_seconds", "finished_at", "result", "files",
        "code"}`` (``code``: ``cem.provenance.provenance``).
    """
    done = read_marker(folder, stage)
    if done is not None:
        problems = check_marker(folder, done)
        if not problems:
            console.print(f"[dim]{folder.name}/{stage}: done ({done['seconds']:.1f}s), skipped[/]")
            return done
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        warn(f"{problems[0]}{more}; running {folder.name}/{stage} again")
    console.rule(f"[bold]{folder.name}[/] · {stage}")
    remove_stale(folder)  # temp files of a write that a kill cut short
    start, cpu = time.perf_counter(), time.process_time()
    result = task() or {}
    info = {
        "stage": stage,
        "seconds": time.perf_counter() - start,
        # CPU time of every thread: on a shared machine it tells the cost wall time hides.
        "cpu_seconds": time.process_time() - cpu,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "result": result,
        "files": hash_outputs(folder, stage),
        "code": provenance(),
    }
    write_json(RoundDir(folder).marker(stage), info)
    return info


def job_config(schema: type, cfg: DictConfig, run_dir: Path, **extra: Any) -> DictConfig:
    """The job config of a standalone command (``schema``), cut from the loop's config.

    Args:
        schema: ``EvalJob``, ``RetrieveJob``, ``BuildJob`` or ``TrainJob``.
        cfg: the loop's resolved config.
        run_dir: the round folder the stage reads and writes.
        extra: nested overrides, e.g. ``train={"max_steps": 10}``.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    keep = {k: plain[k] for k in schema.__dataclass_fields__ if k in plain}
    return OmegaConf.merge(
        OmegaConf.structured(schema), keep, {"run_dir": str(run_dir)}, OmegaConf.create(extra)
    )


def model_from(folder: Path) -> dict[str, Any]:
    """``model`` overrides that load a saved model folder (weights and tokenizer)."""
    return {
        "path": str(folder.resolve()),
        "asset": None,
        "random_init": False,
        "revision": None,
        "tokenizer": None,
    }


def eval_job(cfg: DictConfig, folder: Path, model_dir: Path | None, sets: list[str]) -> DictConfig:
    """The ``cem eval`` job that scores ``model_dir`` (or the configured model) on ``sets``."""
    extra: dict[str, Any] = {"eval": {"sets": sets}}
    if model_dir is not None:
        extra["model"] = model_from(model_dir)
    return job_config(EvalJob, cfg, folder, **extra)


def eval_task(cfg: DictConfig, folder: Path, model_dir: Path | None, sets: list[str]) -> dict:
    """Score the model (``model_dir``, or the configured one) on ``sets``; write ``folder/eval``."""
    from cem.evaluation.runner import run_eval

    if model_dir is not None:
        need_model(model_dir, f"{folder.name}/eval")
    metrics = run_eval(eval_job(cfg, folder, model_dir, sets), run_dir=folder)
    return {name: {"acc": m["acc"], "n": m["n"]} for name, m in metrics.items()}


def need_model(model_dir: Path, stage: str) -> None:
    """A stage that runs again (its files failed their check) needs the model it started
    from; ``loop.keep_models`` may have deleted it."""
    if not (model_dir / "config.json").is_file():
        raise CemError(
            f"{stage} must run again but the model it starts from, {model_dir}, is gone "
            "(loop.keep_models deletes superseded models); restore the stage's files or "
            "start a new run_dir (loop.keep_models=all keeps every model)"
        )


def copy_eval(src: Path, folder: Path) -> dict:
    """Copy ``src/eval`` into ``folder/eval`` (the same model, so the same records)."""
    out, src_eval = RoundDir(folder).eval, RoundDir(src).eval
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".eval.", suffix=".tmp", dir=folder))
    try:
        shutil.copytree(src_eval, tmp, dirs_exist_ok=True)
        public_perms(tmp)  # mkdtemp made it 0700
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"copied_from": str(src_eval)}


def retrieve_task(cfg: DictConfig, folder: Path) -> dict:
    """Mistakes of ``folder/eval`` -> knowledge points -> passages (``cem retrieve``)."""
    from cem.knowledge.retrieve import run_retrieve

    stats = run_retrieve(job_config(RetrieveJob, cfg, folder), run_dir=folder)
    keys = ("mistakes", "passages", "hit_rate", "tokens")
    return {k: stats[k] for k in keys}


def build_task(cfg: DictConfig, folder: Path, round_: int, earlier: list[Path]) -> dict:
    """This round's training set from its mistakes and passages (``cem build``)."""
    from cem.curriculum.build import run_build

    job = job_config(BuildJob, cfg, folder, round=round_)
    stats = run_build(job, earlier_rounds=[str(p) for p in earlier], run_dir=folder)
    return {"rows": stats["rows"], "tokens": stats["tokens"]}


def warmup_settings(cfg: DictConfig) -> dict[str, Any]:
    """What the warm-up reads, and nothing else: Normative pool items only (paradigm
    cit_only), no replay. Job settings the warm-up ignores (the mixing ratio, the other
    instruction types, the knowledge source) take fixed values, so that table rows that
    differ only there share one warm-up (``cem.loop.share``)."""
    off = {"enabled": False}
    ins = cfg.instructions
    return {
        "instructions": {"name": "warmup", "chat_template": ins.chat_template,
                         "normative": {**OmegaConf.to_container(ins.normative), "enabled": True},
                         "extractive": off, "review": off, "general": off},
        "paradigm": {"name": "cit_only"},
        "mix": {"name": "warmup", "cit_ratio": 1.0, "count": cfg.mix.count,
                "max_tokens": cfg.loop.warmup.max_tokens, "seed": cfg.mix.seed},
        "replay": {"name": "none", "fraction": 0.0, "correct_items": 0, "seed": cfg.replay.seed},
        "knowledge": {"name": "none", "sources": [], "leak_ngram": cfg.knowledge.leak_ngram},
    }  # fmt: skip


def warmup_build_job(cfg: DictConfig, folder: Path) -> DictConfig:
    """The ``cem build`` job of the schema warm-up (``warmup_settings``)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    # check_build wants round >= 1; the warm-up's rows are never replayed.
    job = {"seed": plain["seed"], "round": 1, "model": plain["model"],
           "benchmark": plain["benchmark"], "protocol": plain["protocol"],
           "eval": {"mcf_target": plain["eval"]["mcf_target"]}, **warmup_settings(cfg)}  # fmt: skip
    return OmegaConf.merge(OmegaConf.structured(BuildJob), job, {"run_dir": str(folder)})


def warmup_build_task(cfg: DictConfig, folder: Path) -> dict:
    """The schema warm-up's set: Normative pool items only, no CPT text (paradigm cit_only)."""
    from cem.curriculum.build import run_build

    stats = run_build(warmup_build_job(cfg, folder), earlier_rounds=[], run_dir=folder)
    return {"rows": stats["rows"], "tokens": stats["tokens"]}


def train_job(cfg: DictConfig, folder: Path, steps: dict[str, int], *,
              warmup: bool = False) -> DictConfig:  # fmt: skip
    """The ``cem train`` job of a round (or of the warm-up, with its instruction settings),
    for ``steps``."""
    extra = {"instructions": warmup_settings(cfg)["instructions"]} if warmup else {}
    return job_config(TrainJob, cfg, folder, train=steps, **extra)


def train_task(cfg: DictConfig, folder: Path, base: Path | None, steps: dict[str, int], *,
               warmup: bool = False, loggers: Sequence = ()) -> dict:  # fmt: skip
    """Train from ``base`` (a saved model folder, or the configured model) into ``folder/model``,
    for ``steps`` (``{"max_steps", "epochs"}``: the round's, or the warm-up's), with ``loggers``
    beside the CSV log (the loop's W&B step mirror).

    A ``model_in`` link to ``base`` is left in ``folder``, so that ``cem train
    run_dir=<folder>`` re-runs this stage alone.
    """
    from cem.loop.mirror import StepFeed
    from cem.training.checks import training_ranks
    from cem.training.launch import launch_training
    from cem.training.train import train_round

    if base is not None:
        need_model(base, f"{folder.name}/train")
        link = RoundDir(folder).model_in
        if not link.is_symlink() and not link.exists():
            link.symlink_to(os.path.relpath(base, folder), target_is_directory=True)
    job = train_job(cfg, folder, steps, warmup=warmup)
    ranks, _ = training_ranks(job.trainer)
    # One process per device, started here; the W&B mirror reads their steps from rank 0's
    # CSV log while they train (StepFeed).
    if ranks > 1:
        m = launch_training(
            job, folder, base, ranks, StepFeed(folder, loggers) if loggers else None
        )
    else:
        m = train_round(job, folder, base, loggers)
    keys = (
        "steps",
        "loss_first",
        "loss_last",
        "rows_reached",
        "rows_total",
        "train_s",
        "tokens_per_s",
    )
    return {k: m[k] for k in keys}
