"""``cem report DIR [--against ROW]``: one table from every ``summary.json`` under a sweep.

Runs are grouped into *variants* (rows) by what sets them apart: the Hydra overrides of
each job (``<run>/.hydra/overrides.yaml``) without ``seed``, and without the overrides every
run shares. Per row:

- the mean over its runs (the seeds) of the final accuracy per set, the gain over the
  reference (the schema warm-up, or round 0 without it) split into schema gain (Δtest)
  and knowledge gain (Δexam − Δtest), forgetting on every set, Δgeneral_nll, tokens, time;
  gains carry a t-interval over seeds (scipy's t, df = n − 1, stated);
- the same gains pooled over seeds at the item level: a stratified paired bootstrap
  interval and a permutation p (``cem.loop.compare``), and a verdict;
- the mistakes' fix rates (hit and trained / hit, not trained / no hit) pooled over runs
  and rounds, beside the test set's flip rate;
- with ``--against ROW`` (e.g. ``--against paradigm=parallel``): every other row's gains
  minus ROW's, paired per item on the seeds both have, with interval and p.

A row with one run gets its run's own paired intervals only (no spread over seeds), and
says so. Written next to the runs (or to ``--out``), atomically: ``report.md``,
``report.csv`` (one line per row and metric: mean, sd, t-interval, df, n) and
``report.png``. Runs still going are left out and listed. Results of the ``retest``
protocol are labelled as such and never pooled with ``heldout``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

from cem.errors import CemError
from cem.io import atomic_open
from cem.layout import REPORT_CSV, REPORT_MD, REPORT_PNG
from cem.loop.variants import Variant, find_runs, group
from cem.records import RunSummary

# --- the numbers of one run ------------------------------------------------------------------


def run_metrics(s: RunSummary) -> dict[str, float | None]:
    """The report's columns for one summary (accuracies and gains as fractions)."""
    final, ref = s.final, s.reference_entry
    out: dict[str, float | None] = {}
    for name, m in final.metrics.items():
        out[f"acc/{name}"] = m["acc"]
    for name in ("exam", "test"):
        out[f"acc0/{name}"] = s.rounds[0].metrics.get(name, {}).get("acc")
        out[f"ref/{name}"] = ref.metrics.get(name, {}).get("acc")
    g = (s.gains or {}).get(f"vs_{s.reference}") or {}
    for key in ("exam", "schema", "knowledge"):
        out[f"gain/{key}"] = g.get(key)
    for name, rate in final.forgetting.items():
        out[f"forget/{name}"] = rate
    if final.general_nll is not None and ref.general_nll is not None:
        out["gain/general_nll"] = final.general_nll - ref.general_nll
    entries = s.rounds[1:]
    out["cpt_tokens"] = float(sum(e.cpt_tokens for e in entries))
    out["cit_tokens"] = float(sum(e.cit_tokens for e in entries))
    trained = [e.trained_tokens or {} for e in entries]
    out["cpt_tokens_trained"] = float(sum(t.get("cpt", 0) for t in trained))
    out["cit_response_tokens_trained"] = float(
        sum(n for t in trained for k, n in t.items() if k not in ("cpt", "replay"))
    )
    knowledge = out.get("gain/knowledge")
    per_1k = out["cpt_tokens_trained"] / 1000
    out["knowledge_gain_per_1k_cpt"] = (
        knowledge / per_1k if knowledge is not None and per_1k else None
    )
    out["rounds"] = float(len(entries))
    out["minutes"] = s.seconds["total"] / 60
    return out


def aggregate(values: list[float | None]) -> dict | None:
    """Mean over runs, with the sd and t-interval (``t_interval``) when there are two or more."""
    from cem.evaluation.stats import t_interval

    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None
    return t_interval(xs) or {"mean": xs[0], "sd": None, "ci": None, "df": None, "n": 1}


def variant_stats(v: Variant) -> dict[str, dict]:
    per_run = [run_metrics(r.summary) for r in v.runs]
    keys = list(dict.fromkeys(k for m in per_run for k in m))
    stats = {k: aggregate([m.get(k) for m in per_run]) for k in keys}
    return {k: s for k, s in stats.items() if s is not None}


def csv_text(variants: list[Variant], stats: list[dict[str, dict]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "metric", "mean", "sd", "ci_low", "ci_high", "df", "n"])

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.6g}"

    for v, st in zip(variants, stats, strict=True):
        for key, s in st.items():
            lo, hi = s["ci"] or (None, None)
            w.writerow([v.label, key, fmt(s["mean"]), fmt(s["sd"]), fmt(lo), fmt(hi),
                        "" if s["df"] is None else s["df"], s["n"]])  # fmt: skip
    return buf.getvalue()


def _items(v: Variant):
    """The row's runs' item-level evidence, or None when their records are missing."""
    from cem.loop.compare import load_items

    try:
        return [load_items(r.path, r.summary) for r in v.runs]
    except CemError:
        return None


def make_report(root: Path, out: Path | None = None, *, draw: bool = True,
                against: str | None = None) -> dict[str, Path]:  # fmt: skip
    """Collect the runs under ``root`` and write report.md, report.csv and report.png."""
    from cem.loop.plots import plot_report

    root = Path(root)
    out = Path(out) if out else root
    runs = find_runs(root)
    unfinished = [r for r in runs if not r.summary.stopped]
    runs = [r for r in runs if r.summary.stopped]
    if not runs:
        raise CemError(f"no finished run under {root} yet ({len(unfinished)} still going); "
                       "run `cem report` again when a job has finished")  # fmt: skip
    variants, shared = group(runs)
    stats = [variant_stats(v) for v in variants]
    from cem.loop.markdown import markdown

    text = markdown(root, variants, stats, shared, against, [_items(v) for v in variants])
    paths = {"md": out / REPORT_MD, "csv": out / REPORT_CSV}
    with atomic_open(paths["md"]) as fh:
        fh.write(text)
        if unfinished:
            fh.write("\nLeft out, not finished yet: "
                     + ", ".join(f"`{r.path.relative_to(root)}`" for r in unfinished) + "\n")  # fmt: skip
    with atomic_open(paths["csv"]) as fh:
        fh.write(csv_text(variants, stats))
    if draw:
        paths["png"] = out / REPORT_PNG
        plot_report(root, variants, stats, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cem report",
        description="Collect every summary.json under a sweep folder into report.md, "
        "report.csv and report.png: means with t-intervals over seeds, item-level paired "
        "intervals, and with --against a paired comparison of every row with one row.",
    )
    p.add_argument("root", type=Path, help="the sweep folder, e.g. multirun/paradigm")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: root)")
    p.add_argument("--against", default=None, metavar="ROW",
                   help="compare every row with this one, e.g. paradigm=parallel")  # fmt: skip
    p.add_argument("--no-plot", action="store_true", help="skip report.png")
    args = p.parse_args(argv)
    from cem.ui import console

    paths = make_report(args.root, args.out, draw=not args.no_plot, against=args.against)
    # The markdown itself (wide tables stay readable when piped or pasted into a doc).
    print(paths["md"].read_text(encoding="utf-8"))
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
