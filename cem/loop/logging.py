"""Mirrors of the run's results: ``D/metrics.csv`` always, Weights & Biases when enabled.

The files in the run folder stay the record; these only copy them. W&B runs offline
unless ``WANDB_MODE=online`` (and a login), and not at all under ``WANDB_MODE=disabled``
(the tests). A continued run is a new W&B run in the same group that logs the whole
history again, so every W&B run is complete on its own.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cem.io import atomic_open, read_jsonl
from cem.ui import console

CSV = "metrics.csv"
CSV_COLUMNS = ("protocol", "round", "label", "set", "acc", "acc_norm", "n", "forgetting",
               "cpt_tokens", "cit_tokens", "seconds")  # fmt: skip
MISTAKE_COLUMNS = ("id", "set", "question", "gold_text", "pred_text", "margin", "reason", "queries")
DIAGNOSTIC_COLUMNS = ("hit", "trained", "fixed")  # cem.loop.diagnostics


def write_csv(root: Path, summary: dict) -> Path:
    """``D/metrics.csv``: one row per (round, set), round 0 and the warm-up first."""
    from cem.loop.summary import timeline

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for e in timeline(summary):
        for name, m in e["metrics"].items():
            writer.writerow([e["protocol"], e["round"], e["label"], name, m["acc"], m["acc_norm"],
                             m["n"], e["forgetting"].get(name), e["cpt_tokens"], e["cit_tokens"],
                             round(sum(e["seconds"].values()), 3)])  # fmt: skip
    with atomic_open(root / CSV) as fh:
        fh.write(buf.getvalue())
    return root / CSV


def entry_key(e: dict) -> str:
    return "warmup" if e["label"] == "after warm-up" else f"round_{e['round']}"


def flat_entry(e: dict) -> dict[str, Any]:
    """One timeline entry as W&B metrics; x is ``round`` (0.5 for the warm-up)."""
    out: dict[str, Any] = {"round": e["round"] + (0.5 if entry_key(e) == "warmup" else 0)}
    for name, m in e["metrics"].items():
        out[f"acc/{name}"] = m["acc"]
        out[f"acc_norm/{name}"] = m["acc_norm"]
    for name, rate in e["forgetting"].items():
        if rate is not None:
            out[f"forgetting/{name}"] = rate
    for ref, g in (e.get("gains") or {}).items():
        out.update({f"gain_{ref}/{k}": v for k, v in g.items() if v is not None})
    out.update({f"seconds/{k}": v for k, v in e["seconds"].items()})
    out.update(cpt_tokens=e["cpt_tokens"], cit_tokens=e["cit_tokens"])
    return out


class RunLogger:
    """CSV always; W&B (``logger.wandb``) gets each new result as the loop reaches it."""

    def __init__(self, cfg: DictConfig, root: Path):
        self.cfg, self.root = cfg, root
        self.logged: set[str] = set()
        self.run = init_wandb(cfg, root) if cfg.logger.wandb else None

    def update(self, summary: dict, final: bool = False) -> None:
        """Rewrite the CSV; log the entries W&B has not seen; at the end, the plot and totals."""
        from cem.loop.summary import timeline

        write_csv(self.root, summary)
        if self.run is None:
            return
        for e in timeline(summary):
            if entry_key(e) not in self.logged:
                self.run.log(flat_entry(e))
                self.logged.add(entry_key(e))
        if final:
            self._final(summary)

    def _final(self, summary: dict) -> None:
        import wandb

        png = self.root / "summary.png"
        if png.is_file():
            self.run.log({"summary_plot": wandb.Image(str(png))})
        for key in ("reference", "best_round", "stopped", "gains", "protocol"):
            self.run.summary[key] = summary[key]
        self.run.summary["seconds_total"] = summary["seconds"]["total"]

    def log_mistakes(self, k: int, path: Path, diagnostics: dict | None) -> None:
        """Round ``k``'s mistakes as a ``wandb.Table`` (the first ``logger.mistakes_rows``),
        with the hit / trained / fixed columns once the round's model is scored."""
        n = self.cfg.logger.mistakes_rows
        if self.run is None or n == 0 or not path.is_file():
            return
        import wandb

        flags = {f["id"]: f for f in (diagnostics or {}).get("per_mistake", [])}
        columns = [*MISTAKE_COLUMNS, *DIAGNOSTIC_COLUMNS]
        rows = [
            [_cell(m.get(c)) for c in MISTAKE_COLUMNS]
            + [flags.get(m["id"], {}).get(c) for c in DIAGNOSTIC_COLUMNS]
            for m in read_jsonl(path)[:n]
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


def init_wandb(cfg: DictConfig, root: Path):
    """Start the W&B run; an online start that fails (no login) falls back to offline."""
    import wandb

    lg = cfg.logger
    kwargs = dict(
        project=lg.project,
        entity=lg.entity,
        group=lg.group or root.name,
        name=root.name,
        tags=list(dict.fromkeys([*lg.tags, cfg.protocol.name])),
        config=OmegaConf.to_container(cfg, resolve=True),
        dir=str(root),
        job_type="cem-run",
    )
    mode = wandb_mode(cfg)
    try:
        run = wandb.init(mode=mode, **kwargs)
    except Exception as e:  # wandb raises several types for a missing login or no network
        if mode != "online":
            raise
        console.print(f"[yellow]W&B online start failed ({e}); logging offline instead[/]")
        run = wandb.init(mode="offline", **kwargs)
    run.define_metric("round")
    run.define_metric("*", step_metric="round")
    return run
