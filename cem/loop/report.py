"""``cem report DIR``: one table from every ``summary.json`` under a sweep folder.

Runs are grouped into *variants* by what sets them apart: the Hydra overrides of each job
(``<run>/.hydra/overrides.yaml``) without ``seed``, and without the overrides every run
shares. Each variant's row holds the mean ± standard deviation over its runs (the seeds)
of the final model's accuracy per set, the gain over the reference (the schema warm-up,
or round 0 without it) split into schema gain (Δtest) and knowledge gain (Δexam − Δtest),
forgetting, the CPT and CIT tokens, data efficiency and wall time.

Written next to the runs (or to ``--out``), atomically:

- ``report.md``: the markdown table, with the runs it was made from (runs still going,
  whose summary has no ``stopped`` yet, are left out and listed);
- ``report.csv``: one line per variant and metric: mean, std, the 95% t-interval and n;
- ``report.png``: accuracy per round per variant (mean, with the spread over seeds), and
  the schema and knowledge gains per variant.

A run that stopped early keeps its last model for the rounds it did not make, so the
per-round curves of a variant average over the same number of runs at every round.
Results of the ``retest`` protocol are labelled as such and never pooled with ``heldout``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from cem.errors import CemError
from cem.io import atomic_open, read_json

# Overrides that never tell variants apart (they do not change results, or are the seeds).
IGNORED = ("seed", "table", "run_dir", "logger", "eval.progress", "trainer.enable_progress_bar")
# t quantiles (two-sided 95%) by degrees of freedom; beyond the table 1.96 is close enough.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip


@dataclass
class Run:
    path: Path
    summary: dict
    overrides: dict[str, str] | None  # None: not a sweep job (no .hydra/overrides.yaml)


@dataclass
class Variant:
    label: str
    runs: list[Run] = field(default_factory=list)


def find_runs(root: Path) -> list[Run]:
    """Every run below ``root`` that has a ``summary.json``, in path order (finished or not:
    ``summary.stopped`` is None while a run is still going)."""
    if not root.is_dir():
        raise CemError(f"{root} is not a folder; give the sweep folder, e.g. multirun/paradigm")
    runs = []
    for path in sorted(root.rglob("summary.json")):
        folder = path.parent
        try:
            summary = read_json(path)
        except ValueError as e:
            raise CemError(f"{path} is not valid JSON ({e}); re-run its job to rewrite it") from e
        if "rounds" not in summary or not summary["rounds"]:
            raise CemError(f"{path} has no rounds; is it a `cem run` summary?")
        runs.append(Run(folder, summary, _overrides(folder)))
    if not runs:
        raise CemError(f"no summary.json under {root}; run a sweep first (cem run table=NAME)")
    return runs


def _overrides(folder: Path) -> dict[str, str] | None:
    """The job's own Hydra overrides, ``key -> value`` (None for a run made outside Hydra)."""
    from omegaconf import OmegaConf

    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    out = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)):
        key, _, value = str(item).lstrip("+~").partition("=")
        if not key.startswith("hydra") and key not in IGNORED:
            out[key] = value
    return out


def group(runs: list[Run]) -> tuple[list[Variant], dict[str, str]]:
    """Variants by their distinguishing overrides, and the overrides all runs share.

    Runs without overrides (made one by one, not by a sweep) are told apart by their folder
    name. The protocol always splits variants, so that retest and heldout never pool.
    """
    given = [r.overrides or {} for r in runs]
    keys = sorted({k for o in given for k in o})
    shared = {k: given[0][k] for k in keys
              if all(o.get(k) == given[0].get(k) for o in given)}  # fmt: skip
    varying = [k for k in keys if k not in shared]
    protocols = {r.summary["protocol"] for r in runs}
    variants: dict[str, Variant] = {}
    for r, o in zip(runs, given, strict=True):
        parts = [f"{k}={o[k]}" for k in varying if k in o]
        if r.overrides is None:
            parts = [r.path.name]
        if len(protocols) > 1 and "protocol" not in varying:
            parts.append(f"protocol={r.summary['protocol']}")
        label = " ".join(parts) or "all runs"
        variants.setdefault(label, Variant(label)).runs.append(r)
    return list(variants.values()), shared


# --- the numbers of one run ------------------------------------------------------------------


def run_metrics(s: dict, folder: Path | None = None) -> dict[str, float | None]:
    """The report's columns for one summary (accuracies and gains as fractions).

    ``folder`` (the run's) supplies the trained tokens of summaries written before they
    were recorded there.
    """
    from cem.loop.summary import trained_tokens

    final = s["rounds"][-1]
    ref = s["warmup"] if s["reference"] == "warmup" else s["rounds"][0]
    out: dict[str, float | None] = {}
    for name, m in final["metrics"].items():
        out[f"acc/{name}"] = m["acc"]
    for name in ("exam", "test"):
        out[f"acc0/{name}"] = s["rounds"][0]["metrics"].get(name, {}).get("acc")
        out[f"ref/{name}"] = ref["metrics"].get(name, {}).get("acc")
    g = (s.get("gains") or {}).get(f"vs_{s['reference']}") or {}
    for key in ("exam", "schema", "knowledge"):
        out[f"gain/{key}"] = g.get(key)
    for name, rate in final.get("forgetting", {}).items():
        out[f"forget/{name}"] = rate
    entries = s["rounds"][1:]
    out["cpt_tokens"] = float(sum(e["cpt_tokens"] for e in entries))
    out["cit_tokens"] = float(sum(e["cit_tokens"] for e in entries))
    trained = [e.get("trained_tokens") or (trained_tokens(folder / f"round_{e['round']}")
               if folder else {}) for e in entries]  # fmt: skip
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
    out["minutes"] = s["seconds"]["total"] / 60
    return out


@dataclass
class Stat:
    mean: float
    std: float | None  # None for a single run
    n: int

    @property
    def ci95(self) -> float | None:
        if self.std is None:
            return None
        df = self.n - 1
        t = T95.get(df) or next((T95[d] for d in sorted(T95) if d >= df), 1.96)
        return t * self.std / math.sqrt(self.n)


def aggregate(values: list[float | None]) -> Stat | None:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return None
    return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def variant_stats(v: Variant) -> dict[str, Stat]:
    per_run = [run_metrics(r.summary, r.path) for r in v.runs]
    keys = list(dict.fromkeys(k for m in per_run for k in m))
    stats = {k: aggregate([m.get(k) for m in per_run]) for k in keys}
    return {k: s for k, s in stats.items() if s is not None}


def curve(s: dict, name: str) -> list[float]:
    """Accuracy of one set over round 0, the warm-up (when on) and each round."""
    entries = [s["rounds"][0], *([s["warmup"]] if s["warmup"] else []), *s["rounds"][1:]]
    return [e["metrics"].get(name, {}).get("acc", math.nan) for e in entries]


# --- the table --------------------------------------------------------------------------------

COLUMNS = [  # (key, header, scale, digits)
    ("acc/exam", "exam", 100, 1), ("acc/test", "test", 100, 1),
    ("gain/exam", "Δexam", 100, 1), ("gain/schema", "schema gain", 100, 1),
    ("gain/knowledge", "knowledge gain", 100, 1),
    ("forget/exam", "forget. E", 100, 1), ("forget/test", "forget. T", 100, 1),
    ("cpt_tokens", "CPT tok (set)", 1, 0), ("cit_tokens", "CIT tok (set)", 1, 0),
    ("cpt_tokens_trained", "CPT tok trained", 1, 0),
    ("cit_response_tokens_trained", "CIT resp. tok trained", 1, 0),
    ("knowledge_gain_per_1k_cpt", "kn. gain / 1k trained CPT", 100, 2), ("minutes", "min", 1, 1),
]  # fmt: skip


def _cell(st: Stat | None, scale: float, digits: int) -> str:
    if st is None:
        return ""
    text = f"{st.mean * scale:.{digits}f}"
    return text if st.std is None else f"{text} ± {st.std * scale:.{digits}f}"


def columns(stats: list[dict[str, Stat]]) -> list[tuple[str, str, float, int]]:
    """The fixed columns, then each out-of-domain set's accuracy after ``test``."""
    other = sorted({k for s in stats for k in s if k.startswith("acc/") and k not in
                  ("acc/exam", "acc/test", "acc/pool")})  # fmt: skip
    extra = [(k, k.split("/", 1)[1], 100, 1) for k in other]
    return COLUMNS[:2] + extra + COLUMNS[2:]


def markdown(root: Path, variants: list[Variant], stats: list[dict[str, Stat]],
             shared: dict[str, str]) -> str:  # fmt: skip
    cols = columns(stats)
    protocols = sorted({r.summary["protocol"] for v in variants for r in v.runs})
    ref = sorted({r.summary["reference"] for v in variants for r in v.runs})
    lines = [
        f"# {root.name}",
        "",
        f"Protocol: {', '.join(protocols)}"
        + (
            " (RE-TEST results: the exam questions may be trained on)"
            if "retest" in protocols
            else ""
        )
        + f". Accuracy (%) of the final model; gains (points) against {' / '.join(ref)};"
        " forgetting (%) against round 0. Mean ± std over the runs of each row (n)."
        " Tokens summed over rounds: (set) as built; trained: loss-bearing tokens training"
        " reached (CIT: responses only).",
    ]
    if shared:
        lines += ["", "Common overrides: " + " ".join(f"`{k}={v}`" for k, v in shared.items())]
    lines += ["", "| variant | n | " + " | ".join(c[1] for c in cols) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]  # fmt: skip
    for v, st in zip(variants, stats, strict=True):
        cells = [_cell(st.get(k), scale, d) for k, _, scale, d in cols]
        lines.append(f"| {v.label} | {len(v.runs)} | " + " | ".join(cells) + " |")
    lines += ["", "Runs:", ""]
    lines += [f"- {v.label}: " + ", ".join(f"`{r.path.relative_to(root)}`" for r in v.runs)
              for v in variants]  # fmt: skip
    return "\n".join(lines) + "\n"


def csv_text(variants: list[Variant], stats: list[dict[str, Stat]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "metric", "mean", "std", "ci95", "n"])
    for v, st in zip(variants, stats, strict=True):
        for key, s in st.items():
            w.writerow([v.label, key, f"{s.mean:.6g}", "" if s.std is None else f"{s.std:.6g}",
                        "" if s.ci95 is None else f"{s.ci95:.6g}", s.n])  # fmt: skip
    return buf.getvalue()


def plot(root: Path, variants: list[Variant], stats: list[dict[str, Stat]], path: Path) -> None:
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
    warm = any(r.summary["warmup"] for v in variants for r in v.runs)
    ticks = ["0", "W", *map(str, range(1, width - 1))] if warm else list(map(str, range(width)))
    ax.set_xticks(range(width), ticks[:width])
    ax.set_xlabel("round (W: after the schema warm-up)" if warm else "round")
    ax.set_ylabel("accuracy (mean; band: min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    xs = np.arange(len(variants))
    for j, (key, name) in enumerate((("gain/schema", "schema gain (Δtest)"),
                                     ("gain/knowledge", "knowledge gain (Δexam−Δtest)"))):  # fmt: skip
        means = [100 * st[key].mean if key in st else np.nan for st in stats]
        errs = [100 * (st[key].std or 0) if key in st else 0 for st in stats]
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


def make_report(root: Path, out: Path | None = None, *, draw: bool = True) -> dict[str, Path]:
    """Collect the runs under ``root`` and write report.md, report.csv and report.png."""
    root = Path(root)
    out = Path(out) if out else root
    runs = find_runs(root)
    unfinished = [r for r in runs if not r.summary.get("stopped")]
    runs = [r for r in runs if r.summary.get("stopped")]
    if not runs:
        raise CemError(f"no finished run under {root} yet ({len(unfinished)} still going); "
                       "run `cem report` again when a job has finished")  # fmt: skip
    variants, shared = group(runs)
    stats = [variant_stats(v) for v in variants]
    paths = {"md": out / "report.md", "csv": out / "report.csv"}
    with atomic_open(paths["md"]) as fh:
        fh.write(markdown(root, variants, stats, shared))
        if unfinished:
            fh.write("\nLeft out, not finished yet: "
                     + ", ".join(f"`{r.path.relative_to(root)}`" for r in unfinished) + "\n")  # fmt: skip
    with atomic_open(paths["csv"]) as fh:
        fh.write(csv_text(variants, stats))
    if draw:
        paths["png"] = out / "report.png"
        plot(root, variants, stats, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="cem report",
        description="Collect every summary.json under a sweep folder into report.md, "
        "report.csv and report.png (mean ± std over seeds).",
    )
    p.add_argument("root", type=Path, help="the sweep folder, e.g. multirun/paradigm")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: root)")
    p.add_argument("--no-plot", action="store_true", help="skip report.png")
    args = p.parse_args(argv)
    from cem.ui import console

    paths = make_report(args.root, args.out, draw=not args.no_plot)
    # The markdown itself (wide tables stay readable when piped or pasted into a doc).
    print(paths["md"].read_text(encoding="utf-8"))
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
