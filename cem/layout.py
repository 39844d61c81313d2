"""The run folder, one typed contract: every file and marker a stage reads or writes.

``RunDir`` is the folder of a ``cem run``; ``RoundDir`` is one of its round folders
(``round_<k>`` or ``warmup``), and also the ``run_dir`` of a standalone ``cem eval``,
``cem retrieve``, ``cem build`` or ``cem train``, which write the same stage folders. No
other module spells these names; ``docs/run_folder.md`` lists them (a test holds it to
this module).

A stage's done-marker, ``<round>/done/<stage>.json``, is written last and atomically. It
records the stage's wall and CPU time, a small result and the sha256 of every file in the
folders the stage writes (``OUTPUTS``); ``read_marker`` is the one reading of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cem.io import atomic_open, read_json
from cem.ui import warn

if TYPE_CHECKING:
    from omegaconf import DictConfig

STAGES = ("eval", "retrieve", "build", "train")
# The folders (inside a round folder) that each stage writes and its marker vouches for.
# Checkpoints and training logs are left out: no later stage reads them.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "eval": ("eval",),
    "retrieve": ("mistakes", "knowledge"),
    "build": ("train_set",),
    "train": ("train", "model"),
}
# The folder that holds the config a stage ran with (``model/`` is the Hugging Face
# model's own, whose ``config.json`` is the model's config).
CONFIG_FOLDER = {"eval": "eval", "retrieve": "knowledge", "build": "train_set", "train": "train"}
STAGE_CONFIG = "config.yaml"
ROUND_PREFIX = "round_"
WARMUP = "warmup"
RUN_CONFIG = "config.yaml"
HYDRA = ".hydra"
DONE = "done"
MARKERS = f"{DONE}/*.json"  # every done-marker under a folder, as a glob


@dataclass(frozen=True)
class RoundDir:
    """One round folder: the stage folders of ``cem eval``, ``retrieve``, ``build``, ``train``."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def index(self) -> int | None:
        """``k`` of a ``round_<k>`` folder; None for the warm-up or a standalone run_dir."""
        return round_index(self.path)

    # eval/ (cem eval): the records and metrics of the model the round starts from
    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def records(self) -> Path:
        return self.eval / "records.jsonl"

    @property
    def partial_records(self) -> Path:
        """Finished chunks of an evaluation that has not ended (``cem.evaluation.stream``)."""
        return self.eval / "records.partial.jsonl"

    @property
    def eval_metrics(self) -> Path:
        return self.eval / "metrics.json"

    @property
    def general(self) -> Path:
        """The general probe's NLL (``eval.general_probe``)."""
        return self.eval / "general.json"

    @property
    def eval_timing(self) -> Path:
        return self.eval / "timing.json"

    # mistakes/ and knowledge/ (cem retrieve)
    @property
    def mistakes(self) -> Path:
        return self.path / "mistakes" / "mistakes.jsonl"

    @property
    def knowledge(self) -> Path:
        return self.path / "knowledge" / "knowledge.jsonl"

    @property
    def knowledge_stats(self) -> Path:
        return self.path / "knowledge" / "stats.json"

    # train_set/ (cem build)
    @property
    def train_set(self) -> Path:
        return self.path / "train_set" / "train.parquet"

    @property
    def train_set_stats(self) -> Path:
        return self.path / "train_set" / "stats.json"

    # model_in, checkpoints/, train_logs/, train/, model/ (cem train)
    @property
    def model_in(self) -> Path:
        """A link to the model training starts from (the loop leaves it; else ``model``)."""
        return self.path / "model_in"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        """What a re-run of the training resumes from."""
        return self.checkpoints / "last.ckpt"

    @property
    def train_logs(self) -> Path:
        """Lightning's CSV logs, ``version_<n>/metrics.csv``, one version per start."""
        return self.path / "train_logs"

    @property
    def train_metrics(self) -> Path:
        return self.path / "train" / "metrics.json"

    @property
    def model(self) -> Path:
        """The merged model (safetensors and tokenizer)."""
        return self.path / "model"

    # the loop's own files in a round folder
    @property
    def diagnostics(self) -> Path:
        """Hit, trained, fixed per mistake (``cem.loop.diagnostics``)."""
        return self.path / "diagnostics.json"

    @property
    def done(self) -> Path:
        return self.path / DONE

    def marker(self, stage: str) -> Path:
        """Where ``stage``'s done-marker lives."""
        return self.done / f"{stage}.json"

    def outputs(self, stage: str) -> list[Path]:
        """The folders ``stage`` writes and its marker vouches for."""
        return [self.path / sub for sub in OUTPUTS.get(stage, ())]

    def stage_config(self, stage: str) -> Path:
        """The config ``stage`` last ran with, inside its own folder, so that commands run
        one after another in one folder each keep theirs (Hydra's ``.hydra/`` holds only
        the last command's)."""
        return self.path / CONFIG_FOLDER[stage] / STAGE_CONFIG


@dataclass(frozen=True)
class RunDir:
    """The folder of a ``cem run``: its round folders, the warm-up and the results."""

    path: Path

    def round(self, k: int) -> RoundDir:
        """``round_<k>``: its ``eval/`` scores the model round k starts from (M_{k-1})."""
        return RoundDir(self.path / f"{ROUND_PREFIX}{k}")

    @property
    def warmup(self) -> RoundDir:
        """The schema warm-up's build and training."""
        return RoundDir(self.path / WARMUP)

    def scored(self, eval_dir: str) -> RoundDir:
        """The round folder of an evaluation named by its ``eval_dir`` (relative to the run,
        as a ``RoundSummary`` records it: ``round_1/eval``)."""
        return RoundDir((self.path / eval_dir).parent)

    def rounds(self) -> list[RoundDir]:
        """The ``round_<k>`` folders there are, in the order of k."""
        found = [p for p in self.path.glob(f"{ROUND_PREFIX}*") if round_index(p) is not None]
        return [RoundDir(p) for p in sorted(found, key=round_index)]

    @property
    def config(self) -> Path:
        """The resolved config the run started with (a continuation must match it)."""
        return self.path / RUN_CONFIG

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def summary_plot(self) -> Path:
        return self.path / SUMMARY_PLOT

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def inspect_page(self) -> Path:
        return self.path / INSPECT_PAGE

    @property
    def hydra(self) -> Path:
        """Hydra's own record of the last command run here."""
        return self.path / HYDRA

    @property
    def overrides(self) -> Path:
        """The command line overrides of the Hydra job that ran here."""
        return self.hydra / "overrides.yaml"

    @property
    def hydra_config(self) -> Path:
        """The config Hydra composed for the last command run here."""
        return self.hydra / "config.yaml"


# The files of a run folder that belong to the run as a whole, beside its round folders:
# the results the loop rewrites at its end (and `cem inspect`'s page), the reports `cem report`
# writes into a folder of runs, the lock and its holder (``cem.loop.lock``), W&B's folder.
SUMMARY, SUMMARY_PLOT, METRICS_CSV = "summary.json", "summary.png", "metrics.csv"
INSPECT_PAGE = "inspect.html"
RESULTS = (SUMMARY, SUMMARY_PLOT, METRICS_CSV, INSPECT_PAGE)
REPORT_MD, REPORT_CSV, REPORT_PNG = "report.md", "report.csv", "report.png"
REPORTS = (REPORT_MD, REPORT_CSV, REPORT_PNG)
LOCK, LOCK_HOLDER = ".lock", ".lock.json"
LOCKS = (LOCK, LOCK_HOLDER)
WANDB = "wandb"  # W&B's own folder (``dir=<run folder>``)


def evidence(run: RunDir, rows_of: Iterable[RoundDir] | None = None) -> list[Path]:
    """The files of a finished run that ``cem report`` and ``cem inspect`` read, the ones
    ``cem archive`` keeps (those that exist). Always: the run's configs, overrides and
    results, and per round folder the small ones (eval metrics, the general probe, timing,
    the knowledge, training-set and training stats, the diagnostics). The per-item files
    (eval records, mistakes, kept passages, training rows) of the round folders in
    ``rows_of``, or of every round folder when None. Models, checkpoints and logs never."""
    files = [run.config, run.summary, run.metrics_csv, run.overrides, run.hydra_config]
    folders = [*run.rounds(), run.warmup]
    with_rows = None if rows_of is None else {f.path for f in rows_of}
    for folder in folders:
        files += [folder.eval_metrics, folder.general, folder.eval_timing,
                  folder.knowledge_stats, folder.train_set_stats, folder.train_metrics,
                  folder.diagnostics]  # fmt: skip
        if with_rows is None or folder.path in with_rows:
            files += [folder.records, folder.mistakes, folder.knowledge, folder.train_set]
    return [f for f in files if f.is_file()]


def round_index(folder: Path) -> int | None:
    """``k`` of a ``round_<k>`` folder; None for any other folder."""
    k = folder.name.removeprefix(ROUND_PREFIX)
    return int(k) if folder.name.startswith(ROUND_PREFIX) and k.isdigit() else None


def read_marker(folder: Path | RoundDir, stage: str) -> dict | None:
    """The stage's marker, or None when the stage has not finished (or its marker is bad)."""
    path = as_round(folder).marker(stage)
    if not path.is_file():
        return None
    try:
        done = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        done = f"not valid JSON ({e})"
    if isinstance(done, dict) and "seconds" in done:
        return done
    warn(
        f"{path} is not a done-marker ({done if isinstance(done, str) else 'no seconds'}); "
        "the stage runs again"
    )
    return None


def as_round(folder: Path | RoundDir) -> RoundDir:
    return folder if isinstance(folder, RoundDir) else RoundDir(Path(folder))


def write_stage_config(folder: Path | RoundDir, stage: str, cfg: DictConfig) -> Path:
    """Write the resolved config ``stage`` ran with into its own folder
    (``RoundDir.stage_config``)."""
    from omegaconf import OmegaConf

    path = as_round(folder).stage_config(stage)
    with atomic_open(path) as fh:
        fh.write(OmegaConf.to_yaml(cfg, resolve=True))
    return path
