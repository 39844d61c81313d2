"""``cem train run_dir=D``: train on ``D/train_set/train.parquet``, save the merged model to ``D/model``.

What it reads and writes in ``D`` (METHOD.md, step 6; ``cem.layout.RoundDir``)::

    D/model_in/        the model to train, when the loop put one there (else ``model``)
    D/train_set/       train.parquet, from ``cem build``
    D/checkpoints/     last.ckpt every ``train.checkpoint_every_n_steps``; a re-run resumes
    D/train_logs/      CSV logs, one version_N per start (a resumed run adds one)
    D/train/           metrics.json and config.yaml (the config it ran with)
    D/model/           the merged model (safetensors + tokenizer), written atomically
"""

from __future__ import annotations

import re
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from cem import signals
from cem.config import resolve_run_dir
from cem.curriculum.render import CIT_KINDS, KINDS
from cem.errors import ConfigError
from cem.io import remove_stale, storage_errors, write_json
from cem.layout import RoundDir, write_stage_config
from cem.training import SHARDED_STRATEGIES
from cem.ui import console
from cem.validate import ConfigInvalid, at_least, check_model, in_unit, validate

# What save_pretrained's max_shard_size reads (transformers' convert_file_size_to_int).
SHARD_SIZE = re.compile(r"^\d+(KB|MB|GB|KiB|MiB|GiB)$", re.IGNORECASE)


def check_train(t: DictConfig) -> list[str]:
    """Every problem with the ``train`` node, each with the override that fixes it."""
    problems = [
        None if t.lr > 0 else f"train.lr must be > 0; got {t.lr!r} (try train.lr=2e-4)",
        at_least("train.weight_decay", t.weight_decay, 0, 0.0),
        in_unit("train.warmup_ratio", t.warmup_ratio, 0.05),
        at_least("train.epochs", t.epochs, 1, 1),
        at_least("train.seq_len", t.seq_len, 16, 512),
        at_least("train.batch_size", t.batch_size, 1, 8),
        at_least("train.grad_accum", t.grad_accum, 1, 1),
        at_least("train.checkpoint_every_n_steps", t.checkpoint_every_n_steps, 1, 50),
        at_least("train.lora.r", t.lora.r, 1, 16),
        in_unit("train.lora.dropout", t.lora.dropout, 0.05),
    ]
    if t.max_steps != -1 and t.max_steps < 1:
        problems.append(f"train.max_steps must be -1 (run train.epochs) or >= 1; got "
                        f"{t.max_steps} (try train.max_steps=-1)")  # fmt: skip
    if not SHARD_SIZE.match(str(t.max_shard_size)):
        problems.append(f"train.max_shard_size must be a size such as 5GB, 500MB or 2GiB; got "
                        f"{t.max_shard_size!r} (try train.max_shard_size=5GB)")  # fmt: skip
    if not t.lora.target_modules:
        problems.append("train.lora.target_modules must not be empty (try "
                        "train.lora.target_modules=[q_proj,v_proj])")  # fmt: skip
    for kind, w in t.loss_weights.items():
        if kind not in KINDS:
            problems.append(f"train.loss_weights.{kind} names no kind; the kinds are "
                            f"{', '.join(KINDS)} (try ~train.loss_weights.{kind})")  # fmt: skip
        else:
            problems.append(at_least(f"train.loss_weights.{kind}", w, 0, 1.0))
    return [p for p in problems if p]


def kind_weights(cfg: DictConfig) -> dict[str, float]:
    """Loss weight per kind: ``train.loss_weights[kind]``, else ``instructions.<kind>.loss_weight``."""
    weights = {}
    for kind in KINDS:
        if kind in cfg.train.loss_weights:
            weights[kind] = float(cfg.train.loss_weights[kind])
        elif kind in CIT_KINDS:
            weights[kind] = float(cfg.instructions[kind].loss_weight)
        else:
            raise ConfigError(f"train.loss_weights.{kind}", None, "must be set",
                              f"++train.loss_weights.{kind}=1.0")  # fmt: skip
    return weights


def run_train(cfg: DictConfig) -> dict:
    """The task behind ``cem train``: train ``D/model_in`` (if present) or ``model``.

    Returns:
        The metrics also written to ``D/train/metrics.json``.
    """
    from cem.training.checks import check_devices, check_lora_targets, check_trainer

    validate(cfg, {"model": check_model, "train": check_train, "trainer": check_trainer})
    problems = check_lora_targets(cfg.model, cfg.train) + check_devices(cfg.trainer)
    if problems:
        raise ConfigInvalid(problems)
    run_dir = resolve_run_dir(cfg)
    base = RoundDir(run_dir).model_in
    return train_round(cfg, run_dir, base if base.exists() else None)


def train_round(cfg: DictConfig, run_dir: Path, base: Path | None, loggers: Sequence = ()) -> dict:
    """Train on ``run_dir/train_set/train.parquet``; save the merged model to ``run_dir/model``.

    Args:
        cfg: a composed ``TrainJob``.
        run_dir: the round's folder.
        base: a saved model folder to start from; None starts from ``cfg.model``.
        loggers: Lightning loggers beside the CSV log (``cem run``'s W&B step mirror).
    """
    import lightning as L

    from cem.training.checkpoint import usable_checkpoint
    from cem.training.data import TrainDataModule, read_train_set
    from cem.training.finetune import load_base, prepare, save, trainable_share
    from cem.training.module import CemLM
    from cem.training.strategies import from_state, gather_callback

    t, folder = cfg.train, RoundDir(run_dir)
    weights = kind_weights(cfg)
    data_path = folder.train_set
    read_train_set(data_path)  # fail on bad data before loading the model
    L.seed_everything(t.seed, workers=True, verbose=False)
    model, tokenizer = load_base(cfg.model, base, cfg.seed)
    model = prepare(model, t.finetune, t.lora)
    module = CemLM(model, weights, t.lr, t.weight_decay, t.schedule, t.warmup_ratio)
    data = TrainDataModule(data_path, tokenizer, t.seq_len, t.batch_size, t.pack, t.seed)
    remove_stale(run_dir)  # temp files of a write that a kill cut short
    gather = gather_callback()  # the whole model back from a sharded strategy
    trainer = build_trainer(cfg, run_dir, loggers, model, gather)
    ckpt = usable_checkpoint(folder.last_ckpt)
    trained, total = trainable_share(model)
    console.print(
        f"[bold]cem train[/] {t.finetune} on {base or cfg.model.name}: {trained:,} of {total:,} "
        f"weights trainable" + (f"; resuming from {ckpt}" if ckpt else "")
    )
    # The data module resumes mid-epoch itself (TrainDataModule.state_dict), so Lightning's
    # warning that the dataloader is not resumable does not apply.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended")
    start = time.perf_counter()
    fit(trainer, module, data, ckpt, folder.last_ckpt)
    seconds = time.perf_counter() - start
    metrics = _metrics(trainer, module, data, seconds, trained, total)
    if trainer.is_global_zero:
        whole = module.model
        if gather.state is not None:
            rewrap = lambda m: prepare(m, t.finetune, t.lora)  # noqa: E731
            whole = from_state(gather.state, model.config, rewrap, cfg.model.trust_remote_code)
        out = save(whole, tokenizer, folder.model, cfg.model.device, t.max_shard_size)
        metrics["model_dir"] = str(out)
        write_json(folder.train_metrics, metrics)
        write_stage_config(folder, "train", cfg)
        console.print(
            f"trained {metrics['steps']} steps in {seconds:.1f}s "
            f"({metrics['tokens_per_s']:.0f} tokens/s, padding {metrics['padding_waste']:.1%}), "
            f"{metrics['rows_reached']} of {metrics['rows_total']} rows reached; "
            f"{epoch_loss_text(metrics['epoch_losses'])}; wrote {out}"
        )
    return metrics


def fit(trainer, module, data, ckpt: Path | None, last: Path) -> None:
    """``trainer.fit``, where SIGTERM or SIGINT stops at a batch end as ``Interrupted``.

    Checkpoints report a full disk themselves; what else fit writes is Lightning's CSV log.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from cem.training.checkpoint import resume_detail

    try:
        with (
            signals.graceful(),
            storage_errors(RoundDir(Path(trainer.default_root_dir)).train_logs),
        ):
            trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    except SIGTERMException:  # Lightning's own stop for the SIGTERM: a SystemExit with no code
        signals.stop(resume_detail(last))
        raise signals.Interrupted(signal.SIGTERM, resume_detail(last)) from None
    signals.check()


def epoch_loss_text(epochs: list[dict]) -> str:
    """ "epoch-mean loss 2.19 -> 1.96 (CPT 2.40 -> 2.10, CIT 1.80 -> 1.52)"."""
    if not epochs:
        return "no loss (no step ran)"
    first, last = epochs[0], epochs[-1]
    parts = [f"{name} {first[key]:.3f} -> {last[key]:.3f}"
             for name, key in (("CPT", "loss_cpt"), ("CIT", "loss_cit"))
             if key in first and key in last]  # fmt: skip
    kinds = f" ({', '.join(parts)})" if parts else ""
    return f"epoch-mean loss {first['loss']:.3f} -> {last['loss']:.3f}{kinds}"


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: Sequence, model, gather):
    """The ``trainer`` group's Lightning Trainer, with this job's steps and callbacks, the CSV
    log (``train_logs/version_<n>/metrics.csv``, one version per start), ``loggers``, the
    strategy fitted to ``model`` (``cem.training.strategies``) and ``gather``, which collects
    a sharded model at the end."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from cem.device import resolve_precision
    from cem.training.checkpoint import AtomicCheckpointIO, StopOnSignal
    from cem.training.strategies import for_model

    t, folder = cfg.train, RoundDir(run_dir)
    callbacks = [
        gather,
        StopOnSignal(folder.last_ckpt),
        ModelCheckpoint(
            dirpath=folder.last_ckpt.parent,
            every_n_train_steps=t.checkpoint_every_n_steps,
            save_top_k=0,  # only last.ckpt: it is what a re-run resumes from
            save_last=True,
        ),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RichProgressBar())
    # Sharded strategies write checkpoint folders with their own writers.
    sharded = str(cfg.trainer.get("strategy", "auto")).startswith(SHARDED_STRATEGIES)
    return instantiate(
        cfg.trainer,
        strategy=for_model(cfg.trainer.get("strategy", "auto"), model),
        precision=resolve_precision(
            cfg.trainer.get("precision", "32-true"), str(cfg.trainer.get("accelerator", "auto"))
        ),  # fmt: skip
        max_steps=t.max_steps,
        max_epochs=t.epochs if t.max_steps == -1 else -1,
        accumulate_grad_batches=t.grad_accum,
        callbacks=callbacks,
        plugins=None if sharded else [AtomicCheckpointIO()],
        # Lightning saves every logger after each log call, so the CSV on disk holds every
        # step logged so far: what a continued run's W&B mirror replays (cem.loop.mirror).
        logger=[CSVLogger(save_dir=run_dir, name=folder.train_logs.name), *loggers],
        enable_checkpointing=True,
        default_root_dir=run_dir,
        # The data module deals batches to ranks itself (phase order, resumable).
        use_distributed_sampler=False,
    )


def whole_run(trainer, totals: dict, throughput: dict) -> tuple[dict, dict]:
    """Every rank's totals and throughput, gathered and merged (a collective: every rank
    calls it): tokens and rows of all ranks, and tokens/s as all ranks' tokens over the
    slowest rank's seconds."""
    from cem.training.module import gather_objects, merge_totals

    mine = {**totals, "rows": sorted(totals["rows"]), "throughput": throughput}
    parts = gather_objects(mine, trainer.world_size)
    tp = {"tokens": sum(p["throughput"]["tokens"] for p in parts),
          "seconds": max(p["throughput"]["seconds"] for p in parts)}  # fmt: skip
    return merge_totals(parts), tp


def _metrics(trainer, module, data, seconds: float, trained: int, total: int) -> dict:
    """``train/metrics.json``: steps, epoch-mean losses, and how much of the set was reached.

    ``loss_first`` / ``loss_last`` are the first and last epoch's mean loss per
    loss-bearing token (a run stopped by ``train.max_steps`` mid-epoch closes a partial
    epoch); ``epoch_losses`` has every epoch, with the CPT and CIT means apart. Under
    several ranks, every figure is the whole run's (``whole_run``).
    """
    from cem.training.module import close_epoch

    tp, totals = module.throughput, module.totals
    close_epoch(totals)  # a run stopped by max_steps mid-epoch
    if trainer.world_size > 1:  # each rank trained its own share of the batches
        totals, tp = whole_run(trainer, totals, tp)
    epochs = totals["epochs"]
    rows = sorted(totals["rows"])
    return {
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "loss_first": epochs[0]["loss"] if epochs else None,
        "loss_last": epochs[-1]["loss"] if epochs else None,
        "epoch_losses": epochs,
        "target_tokens": {k: v for k, v in totals["tokens"].items() if v},
        "input_tokens": totals["input_tokens"],
        "rows_total": data.stats.get("examples", 0),
        "rows_reached": len(rows),
        "reached_rows": rows,
        "tokens_per_s": tp["tokens"] / tp["seconds"] if tp["seconds"] else 0.0,
        "padding_waste": data.stats.get("padding_waste", 0.0),
        "data": data.stats,
        "train_s": seconds,
        "precision": str(trainer.precision),
        "device": str(trainer.strategy.root_device),
        "trainable_params": trained,
        "total_params": total,
    }
