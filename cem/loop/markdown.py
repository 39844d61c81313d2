"""The markdown of ``cem report``: one table per question a reader asks of a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cem.errors import CemError

if TYPE_CHECKING:
    from cem.loop.variants import Run, Variant

CLAIMS = ("exam", "test", "knowledge")  # the gains every row is judged on
CLAIM_NAMES = {"exam": "Δexam", "test": "schema gain (Δtest)", "knowledge": "knowledge gain"}

COLUMNS = [  # (key, header, scale, digits)
    ("acc/exam", "exam", 100, 1), ("acc/test", "test", 100, 1),
    ("gain/exam", "Δexam", 100, 1), ("gain/schema", "schema gain", 100, 1),
    ("gain/knowledge", "knowledge gain", 100, 1),
    ("gain/general_nll", "Δgen. NLL", 1, 3),
    ("cpt_tokens", "CPT tok (set)", 1, 0), ("cit_tokens", "CIT tok (set)", 1, 0),
    ("cpt_tokens_trained", "CPT tok trained", 1, 0),
    ("cit_response_tokens_trained", "CIT resp. tok trained", 1, 0),
    ("knowledge_gain_per_1k_cpt", "kn. gain / 1k trained CPT", 100, 2), ("minutes", "min", 1, 1),
]  # fmt: skip
WITH_CI = ("gain/exam", "gain/schema", "gain/knowledge")  # cells that show the t-interval


def _cell(st: dict | None, scale: float, digits: int, ci: bool = False) -> str:
    if st is None:
        return ""
    text = f"{st['mean'] * scale:.{digits}f}"
    if st["sd"] is None:
        return text
    if ci:
        lo, hi = (c * scale for c in st["ci"])
        return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{text} ± {st['sd'] * scale:.{digits}f}"


def _set_order(name: str) -> tuple[bool, str]:
    """Sort key of a set's columns: exam, test, then the other sets by name."""
    return name not in ("exam", "test"), name


def columns(stats: list[dict[str, dict]]) -> list[tuple[str, str, float, int]]:
    """The fixed columns, with every other set's accuracy after ``test`` and every set's
    forgetting after the gains."""
    found = {k for s in stats for k in s}
    other = sorted(k for k in found if k.startswith("acc/") and k not in
                   ("acc/exam", "acc/test", "acc/pool"))  # fmt: skip
    forget = sorted((k for k in found if k.startswith("forget/")),
                    key=lambda k: _set_order(k.split("/", 1)[1]))  # fmt: skip
    acc = [(k, k.split("/", 1)[1], 100, 1) for k in other]
    forg = [(k, f"forget. {k.split('/', 1)[1]}", 100, 1) for k in forget]
    return COLUMNS[:2] + acc + COLUMNS[2:6] + forg + COLUMNS[6:]


def _iv(g: dict | None) -> str:
    if not g:
        return ""
    lo, hi = g["ci"]
    p = f", p={g['p']:.3g}" if g.get("p") is not None else ""
    return f"{100 * g['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{p}"


def main_table(variants: list[Variant], stats: list[dict[str, dict]]) -> list[str]:
    cols = columns(stats)
    dfs = sorted({st[k]["df"] for st in stats for k in WITH_CI if k in st and st[k]["df"]})
    lines = [
        "Accuracy (%) of the final model, mean ± sd over the row's runs (n); gains (points)"
        " against the reference, mean [95% t-interval over seeds"
        + (f", df {', '.join(map(str, dfs))}" if dfs else "")
        + "]; forgetting (%): share of round-0 right items now wrong; Δgen. NLL: change of"
        " the general probe's NLL per token (positive: forgetting). Tokens summed over rounds.",
        "",
        "| variant | n | " + " | ".join(c[1] for c in cols) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for v, st in zip(variants, stats, strict=True):
        cells = [_cell(st.get(k), scale, d, k in WITH_CI) for k, _, scale, d in cols]
        lines.append(f"| {v.label} | {len(v.runs)} | " + " | ".join(cells) + " |")
    return lines


def pooled_table(variants: list[Variant], pooled: list[dict | None],
                 stats: list[dict[str, dict]]) -> list[str]:  # fmt: skip
    """Each row's gains pooled over its seeds at the item level, with a verdict, and the
    knowledge gain per 1k trained CPT tokens with the same interval (the tokens are fixed
    per run, so the ratio's interval is the gain's, scaled)."""
    from cem.evaluation.stats import verdict

    lines = [
        "Item level, pooled over seeds: each gain with its paired 95% interval (stratified"
        " bootstrap over items within seed and set) and paired permutation p. Verdict on the"
        " claim knowledge gain > 0: confirmed when the interval excludes 0 above,"
        " refuted below, else inconclusive.",
        "",
        "| variant | seeds | " + " | ".join(CLAIM_NAMES[c] for c in CLAIMS)
        + " | kn. gain / 1k trained CPT tok | verdict |",
        "| --- | ---: | " + " | ".join("---:" for _ in CLAIMS) + " | ---: | --- |",
    ]  # fmt: skip
    for v, g, st in zip(variants, pooled, stats, strict=True):
        if g is None:
            lines.append(f"| {v.label} | {len(v.runs)} | " + " | ".join("" for _ in CLAIMS)
                         + " |  | (records not found) |")  # fmt: skip
            continue
        kn = g.get("knowledge")
        cells = " | ".join(_iv(g.get(c)) for c in CLAIMS)
        lines.append(f"| {v.label} | {len(v.runs)} | {cells} | {_per_1k(kn, st)} | "
                     f"{verdict(kn['ci'] if kn else None)} |")  # fmt: skip
    return lines


def _per_1k(kn: dict | None, st: dict[str, dict]) -> str:
    tokens = (st.get("cpt_tokens_trained") or {}).get("mean")
    if not kn or not tokens:
        return ""
    scale = 100 * 1000 / tokens  # points per 1k tokens
    lo, hi = (c * scale for c in kn["ci"])
    return f"{kn['delta'] * scale:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def against_table(label: str, rows: list[tuple[Variant, dict]]) -> list[str]:
    from cem.evaluation.stats import holm, verdict

    lines = [
        f"Paired against `{label}`: each row's gain minus that row's, per item on the seeds"
        " both have (same seeds, so the same splits), pooled by a stratified paired bootstrap;"
        " p from a paired sign-flip permutation test. Verdict on the row's knowledge gain"
        f" being larger than `{label}`'s; Holm p: the knowledge gain's p adjusted over the"
        f" {len(rows)} rows compared with `{label}` (Holm's step-down). The verdict reads"
        " the interval; p comes from another test, so near the edge it can fall on the"
        " other side of 0.05.",
        "",
        "| variant | seeds | " + " | ".join(f"Δ {CLAIM_NAMES[c]}" for c in CLAIMS)
        + " | Δ gen. NLL | verdict | Holm p |",
        "| --- | --- | " + " | ".join("---:" for _ in CLAIMS) + " | ---: | --- | ---: |",
    ]  # fmt: skip
    kns = [c.get("knowledge") for _, c in rows]
    adjusted = holm([kn.get("p") if kn else None for kn in kns])
    for (v, c), kn, q in zip(rows, kns, adjusted, strict=True):
        nll = c.get("general_nll")
        nll_cell = (
            "" if not nll else f"{nll['delta']:+.3f} [{nll['ci'][0]:+.3f}, {nll['ci'][1]:+.3f}]"
        )
        lines.append(f"| {v.label} | {','.join(map(str, c['seeds']))} | "
                     + " | ".join(_iv(c.get(x)) for x in CLAIMS)
                     + f" | {nll_cell} | {verdict(kn['ci'] if kn else None)} | "
                     + ("" if q is None else f"{q:.3g}") + " |")  # fmt: skip
    return lines


def start_warnings(label: str, rows: list[tuple[Variant, dict]]) -> list[str]:
    """A warning for each row whose round-0 scores differ from ``label``'s at some seed:
    the pair did not start from the same numbers, so its difference mixes the row with a
    machine, dtype or model difference (``cem.loop.compare.start_difference``)."""
    out = []
    for v, c in rows:
        for d in c.get("start_differs") or []:
            out += ["", f"**Warning: `{v.label}` and `{label}` start apart at seed "
                    f"{d['seed']}**: their round-0 models score {d['differ']} of {d['items']}"
                    f" items differently (up to {d['max_nat']:.2f} nat per option;"
                    f" {d['predictions']} of them predicted otherwise), though the rows of a"
                    " seed start from one model. They ran on different kinds of machine"
                    " (the code lines below name the CPU where it was recorded), in different"
                    " dtypes, or from different models, so the difference at this seed mixes"
                    " the row with that. Rerun one of them where the other ran, or leave the"
                    " seed out."]  # fmt: skip
    return out


def forgetting_against_table(label: str, rows: list[tuple[Variant, dict]]) -> list[str]:
    """Each row's forgetting minus ``label``'s, per set, paired per item (empty when no row
    has round 0's records)."""
    sets = sorted({n for _, c in rows for n in c.get("forgetting") or {}}, key=_set_order)
    if not sets:
        return []
    lines = [
        f"Forgetting paired against `{label}` (points): each row's share of round-0 right"
        " items now wrong minus that row's, on the items both rows' round-0 models got right,"
        " pooled over the common seeds by a stratified paired bootstrap; p from a paired"
        " sign-flip permutation test. Negative: the row forgets less.",
        "",
        "| variant | seeds | " + " | ".join(f"Δ forget. {n}" for n in sets) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in sets) + " |",
    ]
    for v, c in rows:
        f = c.get("forgetting") or {}
        lines.append(f"| {v.label} | {','.join(map(str, c['seeds']))} | "
                     + " | ".join(_iv(f.get(n)) for n in sets) + " |")  # fmt: skip
    return lines


def diagnostics_table(variants: list[Variant]) -> list[str]:
    """Fix rates of the wrong mistakes pooled over every run and round of each row."""
    from cem.loop.diagnostics import GROUPS

    lines = [
        "Mistakes fixed by the next round (wrong items, pooled over runs and rounds): hit ="
        " a kept passage states the answer; trained = a row that states it was reached by a"
        " step. Control: test items wrong at a round's start that are right after it.",
        "",
        "| variant | hit + trained | hit, not trained | no hit | test flips (control) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for v in variants:
        counts = {g: [0, 0] for g in (*GROUPS, "control")}
        for r in v.runs:
            for e in r.summary.rounds[1:]:
                d = e.diagnostics or {}
                fr = d.get("fix_rates_by_reason", {}).get("wrong", {})
                for g in GROUPS:
                    counts[g][0] += (fr.get(g) or {}).get("fixed", 0)
                    counts[g][1] += (fr.get(g) or {}).get("n", 0)
                if d.get("control"):
                    counts["control"][0] += d["control"]["fixed"]
                    counts["control"][1] += d["control"]["n"]
        cells = [f"{k}/{n} ({100 * k / n:.0f}%)" if n else "" for k, n in counts.values()]
        lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
    return lines


def find_against(variants: list[Variant], against: str) -> Variant:
    """The row ``against`` names: its label, or every ``key=value`` of it among its overrides."""
    wanted = dict(part.partition("=")[::2] for part in against.split())
    for v in variants:
        if v.label == against or (
            wanted and all(v.overrides.get(k) == x for k, x in wanted.items())
        ):
            return v
    rows = "\n".join(f"  {v.label}" for v in variants)
    raise CemError(f"--against {against!r} names no row of this report; the rows are:\n{rows}")


def markdown(root: Path, variants: list[Variant], stats: list[dict[str, dict]],
             shared: dict[str, str], against: str | None, items: list) -> str:  # fmt: skip
    """The report: the main table, the pooled item-level gains, the comparison with the
    ``against`` row, the fix rates, and the runs. ``items``: each row's ``RunItems`` (None
    where the records are missing)."""
    from cem.loop.compare import compare, pooled_gain

    protocols = sorted({r.summary.protocol for v in variants for r in v.runs})
    ref = sorted({r.summary.reference for v in variants for r in v.runs})
    retest = (
        " (RE-TEST results: the exam questions may be trained on)" if "retest" in protocols else ""
    )
    lines = [f"# {root.name}", "", f"Protocol: {', '.join(protocols)}{retest}. Reference:"
             f" {' / '.join(ref)}."]  # fmt: skip
    if shared:
        lines += ["", "Common overrides: " + " ".join(f"`{k}={v}`" for k, v in shared.items())]
    lines += ["", *main_table(variants, stats), ""]
    lines += pooled_table(variants, [pooled_gain(i) if i else None for i in items], stats)
    if against is not None:
        base = find_against(variants, against)
        b_items = items[variants.index(base)]
        if b_items is None:
            raise CemError(f"the runs of {base.label!r} have no eval records to pair")
        rows = [(v, compare(i, b_items, v.label, base.label))
                for v, i in zip(variants, items, strict=True) if v is not base and i]  # fmt: skip
        lines += ["", *against_table(base.label, rows), *start_warnings(base.label, rows)]
        forgetting = forgetting_against_table(base.label, rows)
        if forgetting:
            lines += ["", *forgetting]
    lines += ["", *diagnostics_table(variants)]
    single = [v.label for v in variants if len(v.runs) < 2]
    if single:
        lines += ["", "One run only (no spread over seeds; the item-level intervals are the"
                  " run's own): " + ", ".join(f"`{s}`" for s in single)]  # fmt: skip
    lines += ["", *code_lines([r for v in variants for r in v.runs])]
    lines += ["", "Runs:", ""]
    lines += [f"- {v.label}: " + ", ".join(f"`{r.path.relative_to(root)}`" for r in v.runs)
              for v in variants]  # fmt: skip
    return "\n".join(lines) + "\n"


def code_lines(runs: list[Run]) -> list[str]:
    """What code the runs ran with (``RunSummary.code``), and a warning when it differs."""
    versions: dict[str, dict] = {}
    users: dict[str, int] = {}
    unrecorded = 0
    for r in runs:
        if not r.summary.code:
            unrecorded += 1
        for c in r.summary.code:
            versions.setdefault(c["code"], c)
            users[c["code"]] = users.get(c["code"], 0) + 1

    def describe(c: dict) -> str:
        commit = (c["commit"] or "")[:9]
        where = f"commit {commit}{' with changes' if c['dirty'] else ''}" if commit else "no git"
        cpu = f", CPU {c['cpu']}" if c.get("cpu") else ""  # older runs did not record it
        return (f"`{c['code']}` ({where}; cem {c['cem']}, torch {c['torch']}, transformers "
                f"{c['transformers']}, {c['threads']} threads{cpu}): "
                f"{users[c['code']]} runs")  # fmt: skip

    if not versions:
        return [f"Code: not recorded (the {unrecorded} runs were made before cem recorded it)."]
    out = ["Code (source, library versions, threads and CPU, by fingerprint): "
           + "; ".join(describe(c) for c in versions.values())]  # fmt: skip
    if unrecorded:
        out[0] += f"; not recorded by {unrecorded} runs (made before cem recorded it)"
    if len(versions) > 1:
        out += ["", f"**Warning: the runs ran on {len(versions)} code versions**; a row that "
                "differs from another in code or machine as well as in its overrides may "
                "owe the difference to either."]  # fmt: skip
    return out
