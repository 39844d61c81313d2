"""``D/summary.json`` and ``D/summary.png``: accuracy over rounds, gains, forgetting, cost.

Everything is recomputed from the round folders' files, so a resumed run summarises alike.
Round 0 is the untouched model; the ``warmup`` entry is round 0 after the schema warm-up;
round k is M_k, scored in ``round_{k+1}/eval``. Gains use ``acc``:

- schema gain = Δtest (held-out items, which the mistakes' knowledge cannot help);
- knowledge gain = Δexam − Δtest;
- both against the warm-up (``vs_warmup``, the reference when it is on) and against the
  untouched model (``vs_round_0``);
- forgetting rate per set = share of the items right at round 0 that are now wrong;
- data efficiency = gain per 1k CPT tokens trained on so far (``trained_tokens``: with
  ``train.max_steps`` below an epoch, training reaches only part of the set's tokens);
- ``intervals``: each gain's paired 95% interval over items and its p
  (``cem.evaluation.stats``): every set's Δ (exact McNemar), the knowledge gain
  (permutation p) and the change of ``general_nll``, the general probe's NLL per token;
- ``diagnostics`` (round k): the fix rate of the round's mistakes given hit-and-trained,
  hit-not-trained and no hit, and the test set's flip rate (``cem.loop.diagnostics``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cem.io import read_json
from cem.layout import STAGES, RoundDir, RunDir, read_marker
from cem.loop import diagnostics
from cem.records import (
    ROUND_0_LABEL,
    WARMUP_LABEL,
    EntryKind,
    EvalRecord,
    RoundSummary,
    RunSummary,
    read_records,
    round_label,
    write_summary_file,
)

EXAM, TEST = "exam", "test"


def set_metrics(records: Iterable[EvalRecord]) -> dict[str, dict]:
    """``{set: {"acc", "acc_norm", "n"}}`` in the order the sets first appear."""
    from cem.evaluation.metrics import summarise

    return {
        s: {k: m[k] for k in ("acc", "acc_norm", "n")} for s, m in summarise(list(records)).items()
    }


def forgetting(reference: Iterable[EvalRecord],
               records: Iterable[EvalRecord]) -> dict[str, float | None]:  # fmt: skip
    """Per set, the share of items right in ``reference`` that are wrong in ``records``.

    None for a set with no item right in the reference. Items are matched by (set, id).
    """
    right = {(r.set, r.id) for r in reference if r.correct}
    now = {(r.set, r.id): r.correct for r in records}
    out: dict[str, float | None] = {}
    for name in dict.fromkeys(r.set for r in records):
        keys = [k for k in right if k[0] == name and k in now]
        out[name] = sum(not now[k] for k in keys) / len(keys) if keys else None
    return out


def gains(reference: dict[str, dict], metrics: dict[str, dict]) -> dict[str, float | None]:
    """Δexam, Δtest, schema gain (Δtest) and knowledge gain (Δexam − Δtest), in acc.

    A delta is None when either side lacks the set.
    """

    def delta(name: str) -> float | None:
        if name in reference and name in metrics:
            return metrics[name]["acc"] - reference[name]["acc"]
        return None

    exam, test = delta(EXAM), delta(TEST)
    knowledge = exam - test if exam is not None and test is not None else None
    return {"exam": exam, "test": test, "schema": test, "knowledge": knowledge}


def paired_gains(reference: list[EvalRecord], records: list[EvalRecord], ref_probe: dict | None,
                 probe: dict | None) -> dict[str, dict | None]:  # fmt: skip
    """Each set's paired Δ (items matched by id), the knowledge gain and Δgeneral_nll."""
    from cem.evaluation.stats import delta_difference, paired_delta, ratio_delta

    ref = {(r.set, r.id): r.correct for r in reference}
    pairs: dict[str, tuple[list[bool], list[bool]]] = {}
    for r in records:
        key = (r.set, r.id)
        if key in ref:
            before, after = pairs.setdefault(r.set, ([], []))
            before.append(ref[key])
            after.append(r.correct)
    out: dict[str, dict | None] = {name: paired_delta(b, a) for name, (b, a) in pairs.items()}
    if EXAM in pairs and TEST in pairs:
        diffs = {n: [int(x) - int(y) for y, x in zip(*pairs[n], strict=True)] for n in (EXAM, TEST)}
        out["knowledge"] = delta_difference(diffs[EXAM], diffs[TEST])
    if ref_probe and probe:
        before = [p["nll_sum"] for p in ref_probe["per_passage"]]
        after = [p["nll_sum"] for p in probe["per_passage"]]
        out["general_nll"] = ratio_delta(before, after, [p["tokens"] for p in probe["per_passage"]])
    return out


def efficiency(g: dict[str, float | None], cpt_tokens: int) -> dict[str, float | None]:
    """Exam and knowledge gain per 1k CPT tokens (None without CPT tokens or a gain)."""
    per_1k = cpt_tokens / 1000

    def rate(x: float | None) -> float | None:
        return x / per_1k if x is not None and per_1k > 0 else None

    return {
        "exam_gain_per_1k_cpt": rate(g["exam"]),
        "knowledge_gain_per_1k_cpt": rate(g["knowledge"]),
    }


def _timing(*parts: tuple[RoundDir, list[str]]) -> dict[str, dict[str, float]]:
    """``seconds`` (wall) and ``cpu_seconds`` of each finished stage of each (folder, stages)."""
    out: dict[str, dict[str, float]] = {"seconds": {}, "cpu_seconds": {}}
    for folder, names in parts:
        for name in names:
            m = read_marker(folder, name)
            for key in out:
                if m is not None and key in m:
                    out[key][name] = m[key]
    return out


def _tokens(folder: RoundDir) -> dict:
    """Tokens of the round's training set (``cpt_tokens``...) and what training reached
    (``train/metrics.json``): the rows, and the loss-bearing tokens per kind
    (``trained_tokens``). CPT tokens all bear loss, a CIT item's only its response; with
    ``train.max_steps`` below one epoch, training reaches less than the set holds, so data
    efficiency uses them."""
    path, m = folder.train_set_stats, folder.train_metrics
    t = read_json(path)["tokens"] if path.is_file() else {}
    reached = read_json(m) if m.is_file() else {}
    return {**{f"{k}_tokens": int(t.get(k, 0)) for k in ("cpt", "cit", "replay")},
            "trained_tokens": {k: int(v) for k, v in reached.get("target_tokens", {}).items()},
            "rows_reached": reached.get("rows_reached"), "rows_total": reached.get("rows_total"),
            "epoch_losses": reached.get("epoch_losses")}  # fmt: skip


@dataclass
class Scored:
    """An entry with the evaluation behind it, which the gains and forgetting compare."""

    entry: RoundSummary
    records: list[EvalRecord]
    probe: dict | None  # eval/general.json


def _scored(round_: int, label: str, protocol: str, scored: RoundDir, root: Path,
            reference: list[EvalRecord] | None, **fields) -> Scored:  # fmt: skip
    """The entry of the model scored in ``scored``; ``reference``: round 0's records (None:
    these are round 0's), which its forgetting is measured against."""
    records = read_records(scored.records, EvalRecord)
    probe = read_json(scored.general) if scored.general.is_file() else None
    entry = RoundSummary(
        round=round_, label=label, protocol=protocol, eval_dir=str(scored.eval.relative_to(root)),
        metrics=set_metrics(records), general_nll=probe["general_nll"] if probe else None,
        forgetting=forgetting(records if reference is None else reference, records), **fields,
    )  # fmt: skip
    return Scored(entry, records, probe)


def _trained_and_scored(root: Path, k: int) -> bool:
    """Round k's model M_k is trained (round_k) and scored (in round_{k+1})."""
    run = RunDir(root)
    return bool(read_marker(run.round(k), "train")) and bool(read_marker(run.round(k + 1), "eval"))


def collect(root: Path, cfg: DictConfig) -> tuple[Scored, Scored | None, list[Scored]]:
    """Round 0, the warm-up (or None) and each trained round whose model has been scored."""
    proto = cfg.protocol.name
    run = RunDir(root)
    r0 = _scored(0, ROUND_0_LABEL, proto, run.round(0), root, None, cpt_tokens=0, cit_tokens=0,
                 replay_tokens=0, **_timing((run.round(0), ["eval"])))  # fmt: skip
    warm = None
    if cfg.loop.warmup.enabled and read_marker(run.round(1), "eval"):
        timing = _timing((run.warmup, ["build", "train"]), (run.round(1), ["eval"]))
        warm = _scored(0, WARMUP_LABEL, proto, run.round(1), root, r0.records,
                       **_tokens(run.warmup), **timing)  # fmt: skip
    rounds = []
    k = 1
    while _trained_and_scored(root, k):
        folder, scored = run.round(k), run.round(k + 1)
        retrieved = read_marker(folder, "retrieve")["result"]
        stats_path = folder.knowledge_stats
        by_reason = (read_json(stats_path).get("mistakes_by_reason", {})
                     if stats_path.is_file() else None)  # fmt: skip
        d = diagnostics.load(root, k)
        timing = _timing((folder, ["retrieve", "build", "train"]), (scored, ["eval"]))
        rounds.append(_scored(
            k, round_label(k), proto, scored, root, r0.records, **_tokens(folder),
            mistakes=retrieved["mistakes"], passages=retrieved["passages"],
            mistakes_by_reason=by_reason,
            diagnostics=None if d is None else {k_: v for k_, v in d.items() if k_ != "per_mistake"},
            **timing,
        ))  # fmt: skip
        k += 1
    return r0, warm, rounds


def build_summary(root: Path, cfg: DictConfig, stopped: str | None = None) -> RunSummary:
    """The summary of what ``root`` holds now (rounds still to come are left out)."""
    r0, warm, rounds = collect(root, cfg)
    ref = warm or r0
    if warm is not None:
        for s in [warm, *rounds]:
            s.entry.forgetting_vs_warmup = forgetting(warm.records, s.records)
    refs = {EntryKind.ROUND_0.value: r0, **({EntryKind.WARMUP.value: warm} if warm else {})}
    for s in [*([warm] if warm else []), *rounds]:
        mine = {f"vs_{k}": r for k, r in refs.items() if r is not s}
        s.entry.gains = {k: gains(r.entry.metrics, s.entry.metrics) for k, r in mine.items()}
        s.entry.intervals = {k: paired_gains(r.records, s.records, r.probe, s.probe)
                             for k, r in mine.items()}  # fmt: skip
    cpt_so_far = 0  # CPT tokens trained on so far
    for s in rounds:
        e = s.entry
        cpt_so_far += e.trained_tokens.get("cpt", e.cpt_tokens)
        e.data_efficiency = efficiency(gains(ref.entry.metrics, e.metrics), cpt_so_far)
    summary = _top(cfg, r0.entry, warm.entry if warm else None, [s.entry for s in rounds],
                   stopped)  # fmt: skip
    summary.code = stage_code(root)
    return summary


def stage_code(root: Path) -> list[dict]:
    """The code the run's finished stages ran with, one entry per fingerprint (the markers
    of runs made before cem recorded it hold none)."""
    run, seen = RunDir(root), {}
    for folder in [*run.rounds(), run.warmup]:
        for stage in STAGES:
            code = (read_marker(folder, stage) or {}).get("code")
            if isinstance(code, dict) and code.get("code") not in seen:
                seen[code.get("code")] = code
    return list(seen.values())


def _top(cfg: DictConfig, r0: RoundSummary, warm: RoundSummary | None,
         rounds: list[RoundSummary], stopped: str | None) -> RunSummary:  # fmt: skip
    last = rounds[-1] if rounds else None
    exam = [e.metrics.get(EXAM, {}).get("acc", float("nan")) for e in rounds]
    entries = [r0, *([warm] if warm else []), *rounds]
    return RunSummary(
        protocol=cfg.protocol.name,
        model=cfg.model.name,
        benchmark=cfg.benchmark.name,
        seed=cfg.seed,
        reference=(EntryKind.WARMUP if warm else EntryKind.ROUND_0).value,
        rounds=[r0, *rounds],
        warmup=warm,
        gains=None if last is None else {
            "round": last.round, **last.gains, "data_efficiency": last.data_efficiency,
            "intervals": last.intervals,
        },
        best_round=None if not rounds else rounds[exam.index(max(exam))].round,
        stopped=None if stopped is None else {"reason": stopped, "round": len(rounds)},
        seconds={
            "total": sum(s for e in entries for s in e.seconds.values()),
            "cpu_total": sum(s for e in entries for s in e.cpu_seconds.values()),
        },
    )  # fmt: skip


def write_summary(root: Path, cfg: DictConfig, stopped: str | None,
                  plot: bool = False) -> RunSummary:  # fmt: skip
    """Write ``summary.json`` (and ``summary.png`` when ``plot``); return the summary."""
    summary = build_summary(root, cfg, stopped)
    write_summary_file(RunDir(root).summary, summary)
    if plot:
        from cem.loop.plots import plot_summary

        plot_summary(summary, RunDir(root).summary_plot)
    return summary


def report(summary: RunSummary) -> None:
    """Print accuracy per round, the gains with their paired intervals, then per round the
    mistakes (wrong / ambiguous), their fix rates and the cost."""
    from rich.table import Table

    from cem.ui import console

    entries = summary.timeline
    acc = Table(title=f"accuracy (%) per round, {summary.protocol} protocol")
    acc.add_column("set")
    for e in entries:
        acc.add_column(e.tick, justify="right")
    for name in entries[0].metrics:
        acc.add_row(name, *(_pct(e.metrics.get(name, {}).get("acc")) for e in entries))
    if any(e.general_nll is not None for e in entries):
        acc.add_row("general NLL", *("" if e.general_nll is None
                                     else f"{e.general_nll:.3f}" for e in entries))  # fmt: skip
    console.print(acc)
    console.print(gains_table(summary, entries))
    console.print(mistakes_table(entries))
    if summary.stopped:
        console.print(
            f"stopped: {summary.stopped['reason']} after round {summary.stopped['round']}"
        )


def gains_table(summary: RunSummary, entries: list[RoundSummary]):
    """Δexam, schema gain (Δtest) and knowledge gain per round, each with its paired 95%
    interval and p, then forgetting and Δgeneral_nll: one column per round, so that it fits
    an 80-column terminal."""
    from rich.table import Table

    ref = summary.reference
    shown = [e for e in entries if (e.intervals or {}).get(f"vs_{ref}")]
    t = Table(title=f"gains vs {ref} (points; paired 95% CI over items; p: McNemar, "
              "permutation for the knowledge gain); forgetting vs round 0 (%)")  # fmt: skip
    t.add_column("", no_wrap=True)
    for e in shown:
        t.add_column(e.tick, justify="right")
    ivs = [e.intervals[f"vs_{ref}"] for e in shown]
    for name, key in (("Δexam", EXAM), ("schema (Δtest)", TEST), ("knowledge", "knowledge")):
        t.add_row(name, *(_ci(iv.get(key), multiline=True) for iv in ivs))
    for name, key in (("forgetting exam", EXAM), ("forgetting test", TEST)):
        t.add_row(name, *(_pct(e.forgetting.get(key)) for e in shown))
    t.add_row("Δgeneral NLL", *(_num((iv.get("general_nll") or {}).get("delta"), 3) for iv in ivs))
    return t


def mistakes_table(entries: list[RoundSummary]):
    """Per round (a column each): the mistakes by reason, how many of the wrong ones the
    next round fixed by hit / trained, the test set's flip rate (the control), and the
    tokens, rows reached and seconds."""
    from rich.table import Table

    t = Table(title="mistakes and cost per round; fixed/n by the next round (hit: a kept "
              "passage states the answer; trained: a reached row does)")  # fmt: skip
    t.add_column("", no_wrap=True)
    for e in entries:
        t.add_column(e.tick, justify="right")
    ds = [e.diagnostics or {} for e in entries]
    wrong = [d.get("fix_rates_by_reason", {}).get("wrong") or {} for d in ds]
    reasons = [e.mistakes_by_reason or {} for e in entries]
    rows = [
        ("mistakes: wrong", [str(r.get("wrong", "")) for r in reasons]),
        ("mistakes: ambiguous", [str(r.get("ambiguous", "")) for r in reasons]),
        ("fixed: hit + trained", [_frac(w.get("hit_trained")) for w in wrong]),
        ("fixed: hit, untrained", [_frac(w.get("hit_not_trained")) for w in wrong]),
        ("fixed: no hit", [_frac(w.get("no_hit")) for w in wrong]),
        ("control: test flips", [_frac(d.get("control")) for d in ds]),
        ("CPT tokens", [str(e.cpt_tokens) for e in entries]),
        ("CIT tokens", [str(e.cit_tokens) for e in entries]),
        ("rows reached", ["" if e.rows_total is None
                          else f"{e.rows_reached}/{e.rows_total}" for e in entries]),
        ("seconds", [f"{sum(e.seconds.values()):.0f}" for e in entries]),
    ]  # fmt: skip
    for name, cells in rows:
        t.add_row(name, *cells)
    return t


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int) -> str:
    return "" if x is None else f"{x:+.{digits}f}"


def _ci(g: dict | None, multiline: bool = False) -> str:
    """``+8.3 [+6.3, +10.4]``, with ``p=0.0002`` on a line of its own when ``multiline``."""
    if not g:
        return ""
    lo, hi = g["ci"]
    text = f"{100 * g['delta']:+.1f}" + ("\n" if multiline else " ")
    text += f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return text + (f"\np={g['p']:.2g}" if multiline and g.get("p") is not None else "")


def _frac(g: dict | None) -> str:
    return "" if not g or not g.get("n") else f"{g['fixed']}/{g['n']}"
