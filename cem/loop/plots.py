"""The run's and the report's figures (matplotlib, Agg), each written atomically."""

from __future__ import annotations

import math
from pathlib import Path

from cem.io import atomic_open
from cem.records import RunSummary


def curve(s: RunSummary, name: str) -> list[float]:
    """Accuracy of one set over round 0, the warm-up (when on) and each round."""
    return [e.metrics.get(name, {}).get("acc", math.nan) for e in s.timeline]


def plot_summary(summary: RunSummary, path: Path) -> Path:
    """Accuracy per set over rounds (matplotlib, Agg), written atomically."""
    fig = summary_figure(summary)  # selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
    return path


def summary_figure(summary: RunSummary):
    """The figure of ``plot_summary``: accuracy per set over round 0, the warm-up and each
    round (also drawn as SVG into ``cem inspect``'s page)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = summary.timeline
    xs = list(range(len(entries)))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name in entries[0].metrics:
        ax.plot(xs, curve(summary, name), marker="o", label=name)
    ax.set_xticks(xs, [e.tick for e in entries])
    ax.set_xlabel("round (W: after the schema warm-up)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{summary.model} · {summary.benchmark} · {summary.protocol}")
    fig.tight_layout()
    return fig


def plot_report(root: Path, variants: list, stats: list[dict[str, dict]], path: Path) -> None:
    """Exam and test accuracy per round for each variant, and the gain split per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, v in enumerate(variants):
        for name, style in (("exam", "-"), ("test", "--")):
            curves = [curve(r.summary, name) for r in v.runs]
            width = max(len(c) for c in curves)
            ys = np.array([c + [c[-1]] * (width - len(c)) for c in curves], dtype=float)
            mean, lo, hi = ys.mean(0), ys.min(0), ys.max(0)
            xs = np.arange(width)
            ax.plot(xs, mean, style, color=f"C{i % 10}", marker="o", ms=3,
                    label=f"{v.label} · {name}")  # fmt: skip
            ax.fill_between(xs, lo, hi, color=f"C{i % 10}", alpha=0.12)
    width = max(len(curve(r.summary, "exam")) for v in variants for r in v.runs)
    warm = any(r.summary.warmup for v in variants for r in v.runs)
    ticks = ["0", "W", *map(str, range(1, width - 1))] if warm else list(map(str, range(width)))
    ax.set_xticks(range(width), ticks[:width])
    ax.set_xlabel("round (W: after the schema warm-up)" if warm else "round")
    ax.set_ylabel("accuracy (mean; band: min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    xs = np.arange(len(variants))
    for j, (key, name) in enumerate((("gain/schema", "schema gain (Δtest)"),
                                     ("gain/knowledge", "knowledge gain (Δexam−Δtest)"))):  # fmt: skip
        means = [100 * st[key]["mean"] if key in st else np.nan for st in stats]
        errs = [100 * (st[key]["sd"] or 0) if key in st else 0 for st in stats]
        bx.bar(xs + (j - 0.5) * 0.38, means, 0.38, yerr=errs, capsize=3, label=name)
    bx.axhline(0, color="black", lw=0.8)
    bx.set_xticks(xs, [v.label for v in variants], rotation=30, ha="right", fontsize=7)
    bx.set_ylabel("points (mean ± std over seeds)")
    bx.legend(fontsize=7)
    fig.suptitle(root.name)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
