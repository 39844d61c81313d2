"""Mirrors of the run's results: ``D/metrics.csv`` always, Weights & Biases when enabled.

The files in the run folder stay the record; these only copy them. W&B runs offline
unless ``WANDB_MODE=online`` (and a login), and not at all under ``WANDB_MODE=disabled``
(the tests). What a W&B run holds:

- per round, on the x-axis ``round`` (0.5 for the warm-up): accuracy per set, forgetting,
  gains, each paired 95% interval and p (``interval_<ref>/<set>_low|_high|_p``), the
  general NLL and the mistakes' fix rates (``fix_rate/<group>``);
- per training step, on the x-axis ``trainer/global_step``, which runs on across the warm-up
  and the rounds (``round`` in the same row says whose training it is): ``train/loss``,
  ``train/loss_cpt``, ``train/loss_cit``, the per-kind losses, ``train/lr``,
  ``train/tokens_per_s`` and the epoch means;
- each round's mistakes as a table with their hit / trained / fixed columns, the round plot
  (``summary_plot``) and the totals in the run summary.

A continued run is a new W&B run in the same group that logs the whole history again: the
steps of trainings finished before it come from their CSV logs, so every W&B run is complete
on its own and holds each step once. A table's jobs share ``logger.group``; each job's
``job_type`` is its overrides without the seed, the way ``cem report`` makes its rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cem.choices import LoggerBackend
from cem.io import atomic_open
from cem.layout import RoundDir, RunDir, read_marker
from cem.loop.diagnostics import flags_by_id
from cem.provenance import provenance
from cem.records import EntryKind, Mistake, RoundSummary, RunSummary, read_records
from cem.ui import console, warn

CSV_COLUMNS = ("protocol", "round", "label", "set", "acc", "acc_norm", "n", "forgetting",
               "cpt_tokens", "cit_tokens", "seconds")  # fmt: skip
MISTAKE_COLUMNS = ("id", "set", "subject", "question", "gold_text", "pred_text", "margin",
                   "reason", "keywords", "queries")  # fmt: skip
DIAGNOSTIC_COLUMNS = ("hit", "trained", "fixed")  # cem.loop.diagnostics.MistakeFlag
STEP, ROUND = "trainer/global_step", "round"  # the two x-axes
JOB_TYPE_MAX = 64  # W&B refuses a longer job_type
UNNAMED_JOB = "cem-run"  # the job_type of a run made without overrides


def write_csv(root: Path, summary: RunSummary) -> Path:
    """``D/metrics.csv``: one row per (round, set), round 0 and the warm-up first."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for e in summary.timeline:
        for name, m in e.metrics.items():
            writer.writerow([e.protocol, e.round, e.label, name, m["acc"], m["acc_norm"], m["n"],
                             e.forgetting.get(name), e.cpt_tokens, e.cit_tokens,
                             round(sum(e.seconds.values()), 3)])  # fmt: skip
    path = RunDir(root).metrics_csv
    with atomic_open(path) as fh:
        fh.write(buf.getvalue())
    return path


def flat_entry(e: RoundSummary) -> dict[str, Any]:
    """One timeline entry as W&B metrics; x is ``round`` (0.5 for the warm-up)."""
    out: dict[str, Any] = {ROUND: e.round + (0.5 if e.kind is EntryKind.WARMUP else 0)}
    for name, m in e.metrics.items():
        out[f"acc/{name}"] = m["acc"]
        out[f"acc_norm/{name}"] = m["acc_norm"]
    for name, rate in e.forgetting.items():
        if rate is not None:
            out[f"forgetting/{name}"] = rate
    for ref, g in (e.gains or {}).items():
        out.update({f"gain_{ref}/{k}": v for k, v in g.items() if v is not None})
    out.update(interval_metrics(e.intervals or {}))
    out.update(fix_rate_metrics(e.diagnostics or {}))
    out.update({f"seconds/{k}": v for k, v in e.seconds.items()})
    out.update(cpt_tokens=e.cpt_tokens, cit_tokens=e.cit_tokens)
    extra = {"general_nll": e.general_nll, "mistakes": e.mistakes, "passages": e.passages}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def interval_metrics(intervals: dict[str, dict]) -> dict[str, float]:
    """``interval_<ref>/<name>`` (the paired Δ) with ``_low``, ``_high`` and ``_p`` beside it,
    for every set, the knowledge gain and the general NLL (``cem.evaluation.stats``)."""
    out: dict[str, float] = {}
    for ref, by_name in intervals.items():
        for name, iv in by_name.items():
            if not iv:
                continue
            key = f"interval_{ref}/{name}"
            out[key] = iv["delta"]
            out[f"{key}_low"], out[f"{key}_high"] = iv["ci"]
            if iv.get("p") is not None:
                out[f"{key}_p"] = iv["p"]
    return out


def fix_rate_metrics(diagnostics: dict) -> dict[str, float]:
    """The round's fix rates by hit / trained, and the test set's flip rate (the control)."""
    rates = {**diagnostics.get("fix_rates", {}), "test_control": diagnostics.get("control")}
    return {f"fix_rate/{g}": r["rate"] for g, r in rates.items() if r and r["rate"] is not None}


def trainings(root: Path) -> list[Path]:
    """The run's training folders in the order they train: the warm-up, then each round."""
    run = RunDir(root)
    return [run.warmup.path, *(r.path for r in run.rounds() if r.index != 0)]


def round_x(folder: Path) -> float:
    """A training's place on the ``round`` axis: that of the model it makes."""
    k = RoundDir(folder).index
    return 0.5 if k is None else float(k)


def step_base(root: Path, folder: Path) -> int:
    """Where ``folder``'s training starts on the run's step axis: the optimizer steps of
    every training before it (all finished: the loop trains one after another)."""
    total = 0
    for f in trainings(root):
        if f.name == folder.name:
            break
        done = read_marker(f, "train")
        total += done["result"]["steps"] if done else 0
    return total


def csv_steps(folder: Path, before: int | None = None) -> list[tuple[int, dict[str, float]]]:
    """The rows of a training's CSV logs (``train_logs/version_<n>/metrics.csv``), each step
    once: a resumed training's version replaces the earlier ones from its first step on.

    Args:
        before: keep only steps below this one (the first step a resumed training logs).
    """
    paths = sorted(RoundDir(folder).train_logs.glob("version_*/metrics.csv"),
                   key=lambda p: int(p.parent.name.removeprefix("version_")))  # fmt: skip
    versions = []
    for path in paths:
        with path.open(newline="") as fh:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)}
                    for r in csv.DictReader(fh)]  # fmt: skip
        versions.append([(int(r.pop("step")), r) for r in rows if "step" in r])
    out = []
    for i, rows in enumerate(versions):
        later = [v[0][0] for v in versions[i + 1 :] if v] + ([before] if before is not None else [])
        out += [(s, r) for s, r in rows if not later or s < min(later)]
    return out


class StepFeed:
    """``launch_training``'s poll: hands the steps that launched ranks log to ``folder``'s CSV
    to ``loggers`` as they train, each row once and in order. While the ranks run, the last
    row is held back and a file that does not parse is left for the next poll: rank 0 may be
    writing it (Lightning appends rows, and rewrites the file when a new column appears).
    One that still does not parse after the ranks end costs W&B those live steps, with a
    warning, not the finished stage."""

    def __init__(self, folder: Path, loggers: Sequence[Logger]):
        self.folder, self.loggers = folder, list(loggers)
        self.sent = (-1, 0)  # the last row sent: its step, and its place among that step's rows

    def __call__(self, final: bool) -> None:
        try:
            rows = csv_steps(self.folder)
        except (OSError, ValueError, csv.Error) as e:
            if final:
                warn(
                    f"W&B misses the live training steps of {self.folder.name}: its CSV log "
                    f"under {RoundDir(self.folder).train_logs} does not read ({e})"
                )
            return
        seen: dict[int, int] = {}
        for step, metrics in rows if final else rows[:-1]:
            seen[step] = seen.get(step, 0) + 1
            if (step, seen[step]) > self.sent:
                for logger in self.loggers:
                    logger.log_metrics(metrics, step)
                self.sent = (step, seen[step])


class StepLogger(Logger):
    """Lightning logger that hands every logged training step of ``folder`` to the mirror."""

    def __init__(self, mirror: RunLogger, folder: Path):
        super().__init__()
        self.mirror, self.folder = mirror, folder

    @property
    def name(self) -> str:
        return "wandb"

    @property
    def version(self) -> str:
        return self.folder.name

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        # Lightning always passes the step while training (its optimizer-step count).
        self.mirror.log_step(self.folder, int(step or 0), metrics)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: the W&B run's config already holds the whole run config."""


class RunLogger:
    """CSV always; W&B (``logger.backend=wandb``) gets each new result as the loop reaches it."""

    def __init__(self, cfg: DictConfig, root: Path):
        self.cfg, self.root = cfg, root
        self.logged: set[str] = set()  # timeline entries sent
        self.trained: set[str] = set()  # training folders whose steps were sent
        self.defined: set[str] = set()  # keys given their x-axis
        self.bases: dict[str, int] = {}
        self.run = init_wandb(cfg, root) if cfg.logger.backend == LoggerBackend.wandb else None

    def step_loggers(self, folder: Path) -> list[Logger]:
        """The Lightning loggers that copy ``folder``'s training steps to W&B (none without it)."""
        return [] if self.run is None else [StepLogger(self, folder)]

    def update(self, summary: RunSummary, final: bool = False) -> None:
        """Rewrite the CSV; log what W&B has not seen; at the end, the plot and totals."""
        write_csv(self.root, summary)
        if self.run is None:
            return
        self._replay_finished()
        for e in summary.timeline:
            if e.key not in self.logged:
                self._log(flat_entry(e), ROUND)
                self.logged.add(e.key)
        if final:
            self._final(summary)

    def log_step(self, folder: Path, step: int, metrics: dict[str, float]) -> None:
        """One logged step of the training now running in ``folder``. Before its first: the
        trainings finished before this W&B run began, and the steps an interrupted process
        ran before the checkpoint this one resumes from, so the step axis only rises."""
        if folder.name not in self.trained:
            self._replay_finished()
            self.trained.add(folder.name)
            for s, m in csv_steps(folder, before=step):
                self._log_step(folder, s, m)
        self._log_step(folder, step, metrics)

    def _replay_finished(self) -> None:
        """Send the steps of every finished training not sent yet, from its CSV logs."""
        for folder in trainings(self.root):
            if folder.name not in self.trained and read_marker(folder, "train"):
                self.trained.add(folder.name)
                for step, metrics in csv_steps(folder):
                    self._log_step(folder, step, metrics)

    def _log_step(self, folder: Path, step: int, metrics: dict[str, float]) -> None:
        if folder.name not in self.bases:
            self.bases[folder.name] = step_base(self.root, folder)
        row = {k if k.startswith("train/") else f"train/{k}": v for k, v in metrics.items()}
        row.update({STEP: self.bases[folder.name] + step, ROUND: round_x(folder)})
        self._log(row, STEP)

    def _log(self, row: dict[str, Any], axis: str) -> None:
        """``run.log`` without a step (W&B counts its own), each new key put on ``axis``."""
        for key in sorted(row.keys() - self.defined - {STEP, ROUND}):
            self.run.define_metric(key, step_metric=axis)
        self.defined |= row.keys()
        self.run.log(row)

    def _final(self, summary: RunSummary) -> None:
        import wandb

        png = RunDir(self.root).summary_plot
        if png.is_file():
            self.run.log({"summary_plot": wandb.Image(str(png))})
        for key in ("reference", "best_round", "stopped", "gains", "protocol"):
            self.run.summary[key] = getattr(summary, key)
        self.run.summary["seconds_total"] = summary.seconds["total"]

    def log_mistakes(self, k: int, path: Path, diagnostics: dict | None) -> None:
        """Round ``k``'s mistakes as a ``wandb.Table`` (the first ``logger.mistakes_rows``),
        with the hit / trained / fixed columns once the round's model is scored."""
        n = self.cfg.logger.mistakes_rows
        if self.run is None or n == 0 or not path.is_file():
            return
        import wandb

        flags = flags_by_id(diagnostics)
        columns = [*MISTAKE_COLUMNS, *DIAGNOSTIC_COLUMNS]
        rows = [
            [_cell(getattr(m, c)) for c in MISTAKE_COLUMNS]
            + [getattr(flags[m.id], c) if m.id in flags else None for c in DIAGNOSTIC_COLUMNS]
            for m in read_records(path, Mistake)[:n]
        ]
        self.run.log({f"mistakes/round_{k}": wandb.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        """Close the W&B run (always, also after an error)."""
        if self.run is not None:
            self.run.finish()
            self.run = None


def _cell(v: Any) -> Any:
    return "; ".join(map(str, v)) if isinstance(v, list) else v


def wandb_mode(cfg: DictConfig) -> str:
    """``$WANDB_MODE`` when set (the tests set ``disabled``), else ``logger.mode``."""
    return os.environ.get("WANDB_MODE") or cfg.logger.mode


def job_type(cfg: DictConfig, root: Path) -> str:
    """``logger.job_type``, else the job's own overrides without the seed (and without what
    never changes results), as ``cem report`` tells its rows apart; at most 64 characters."""
    from cem.loop.variants import IGNORED, job_overrides  # the one reading of a job's overrides

    text = cfg.logger.job_type
    if not text:
        own = {
            k: v
            for k, v in (job_overrides(root) or {}).items()
            if not k.startswith(tuple(f"{i}." for i in IGNORED))
        }  # logger.group=... too
        text = " ".join(f"{k}={v}" for k, v in sorted(own.items())) or UNNAMED_JOB
    if len(text) <= JOB_TYPE_MAX:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]  # keeps shortened ones apart
    return f"{text[: JOB_TYPE_MAX - 9]}~{digest}"


def init_wandb(cfg: DictConfig, root: Path):
    """Start the W&B run; an online start that fails (no login) falls back to offline."""
    import wandb

    lg = cfg.logger
    kwargs = dict(
        project=lg.project,
        entity=lg.entity,
        group=lg.group or root.name,
        name=root.name,
        job_type=job_type(cfg, root),
        tags=list(dict.fromkeys([*lg.tags, cfg.protocol.name])),
        # the code beside the config: W&B's own git record misses a wheel install and threads
        config={**OmegaConf.to_container(cfg, resolve=True), "code": provenance()},
        dir=str(root),
    )
    mode = wandb_mode(cfg)
    try:
        run = wandb.init(mode=mode, **kwargs)
    except Exception as e:  # wandb raises several types for a missing login or no network
        if mode != "online":
            raise
        console.print(f"[yellow]W&B online start failed ({e}); logging offline instead[/]")
        run = wandb.init(mode="offline", **kwargs)
    run.define_metric(ROUND)
    run.define_metric(STEP)
    return run
