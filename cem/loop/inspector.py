"""``cem inspect RUN_DIR``: ``RUN_DIR/inspect.html``, one page on why each mistake was fixed.

One row per exam mistake of each round k (``round_k/mistakes``): the question, the gold
answer and the model's, the knowledge points and queries, the passages kept for it
(``round_k/knowledge``) with the gold answer marked, the training rows made from them
(``round_k/train_set``: CPT passages, Extractive and Review items, and whether a step reached
them), and its answer in every later evaluation (``round_j/eval``, j > k), the first of which
decides fixed or not (``round_k/diagnostics.json``). Filters: fixed / not fixed / not scored
yet, hit / no hit, relation (the item's subject) and round; the page's address keeps them.

The page is self-contained and makes no network request: a jinja2 template
(``templates/inspect.html.j2``) with its style and script inline, and the per-round accuracy
plot as an inline SVG drawn by matplotlib.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass, field
from pathlib import Path

from cem.errors import CemError
from cem.io import atomic_open, read_json
from cem.knowledge.types import Passage
from cem.layout import INSPECT_PAGE, SUMMARY, RoundDir, RunDir
from cem.loop import diagnostics
from cem.loop.diagnostics import MistakeFlag
from cem.records import EvalRecord, Mistake, RunSummary, read_records, read_summary

TEMPLATE = "inspect.html.j2"


def run_files(root: Path) -> list[Path]:
    """What makes a folder a `cem run` folder (cem.loop.run writes them all by round 1's eval)."""
    run = RunDir(root)
    return [run.config, run.summary, run.round(0).records]


Segments = list[tuple[str, bool]]  # text pieces; True: the gold answer


@dataclass
class Evidence:
    """A kept passage or a training row made for the mistake, with the answer marked."""

    label: str  # the passage's source and title, or the row's kind
    segments: Segments
    holds_answer: bool
    reached: bool | None = None  # training rows: did an optimizer step reach it


@dataclass
class Later:
    """The mistake's answer under a later model."""

    model: str  # "round 1": M_1, scored in round_2/eval
    answer: str
    correct: bool


@dataclass
class MistakeRow:
    """One exam mistake of one round, and what became of it."""

    round: int
    id: str
    relation: str
    question: str
    gold: str
    answer: str
    reason: str
    margin: float | None
    keywords: list[str]
    queries: list[str]
    status: str  # fixed | unfixed | pending (the round's model is not scored yet)
    hit: bool
    trained: bool | None
    passages: list[Evidence] = field(default_factory=list)
    items: list[Evidence] = field(default_factory=list)
    later: list[Later] = field(default_factory=list)


def check_run_dir(root: Path) -> None:
    """Raise ``CemError`` unless ``root`` is a ``cem run`` folder, saying what it lacks."""
    expected = [p.relative_to(root).as_posix() for p in run_files(root)]
    missing = [name for name in expected if not (root / name).is_file()]
    if not missing:
        return
    runs = sorted(p.parent for p in root.glob(f"*/**/{SUMMARY}")) if root.is_dir() else []
    hint = (f"; it holds {len(runs)} run folder(s): inspect one, e.g. cem inspect {runs[0]}"
            if runs else "; give the run_dir of a `cem run`, e.g. runs/run/<time>")  # fmt: skip
    what = "is not a folder" if not root.is_dir() else f"lacks {', '.join(missing)}"
    raise CemError(
        f"{root} is not a `cem run` folder: expected {', '.join(expected)} and "
        f"round_<k>/mistakes/ folders, as `cem run run_dir={root}` writes them; it {what}{hint}"
    )


def mark(text: str, answer: str) -> Segments:
    """``text`` cut into pieces, each whole-word, any-case occurrence of ``answer`` marked:
    the rule that makes a passage a hit (``cem.knowledge.keypoints.holds_answer``)."""
    from cem.knowledge.keypoints import find_span

    out: Segments = []
    rest = text
    while (m := find_span(rest, answer)) is not None:
        if m.start():
            out.append((rest[: m.start()], False))
        out.append((m.group(0), True))
        rest = rest[m.end() :]
    if rest:
        out.append((rest, False))
    return out


def evidence(label: str, text: str, gold: str, reached: bool | None = None) -> Evidence:
    segments = mark(text, gold)
    return Evidence(label, segments, any(m for _, m in segments), reached)


def answer_text(record: EvalRecord) -> str:
    """The option a record's model chose (generation mode may have found none)."""
    pred = record.pred
    return record.choices[pred] if pred is not None else "(no answer found)"


def exam_records(root: Path) -> dict[int, dict[str, EvalRecord]]:
    """``{j: {item id: record}}`` of the exam set, for every ``round_j/eval``."""
    out = {}
    for folder in RunDir(root).rounds():
        path = folder.records
        if path.is_file():
            out[folder.index] = {r.id: r for r in read_records(path, EvalRecord) if r.set == "exam"}
    return out


def train_rows(folder: RoundDir) -> dict[str, list[tuple[dict, bool]]]:
    """The round's training rows by the ids they were made from (``source_ids``), each with
    whether an optimizer step reached it; replayed rows belong to earlier rounds."""
    import pyarrow.parquet as pq

    path = folder.train_set
    if not path.is_file():
        return {}
    metrics = folder.train_metrics
    reached = set(read_json(metrics).get("reached_rows", [])) if metrics.is_file() else set()
    rows = pq.read_table(path, columns=["prompt", "response", "kind", "source_ids"]).to_pylist()
    out: dict[str, list[tuple[dict, bool]]] = {}
    for i, row in enumerate(rows):
        if row["kind"] != "replay":
            for sid in row["source_ids"]:
                out.setdefault(sid, []).append((row, i in reached))
    return out


def round_rows(root: Path, k: int, evals: dict[int, dict[str, EvalRecord]]) -> list[MistakeRow]:
    """One ``MistakeRow`` per exam mistake of round ``k``, in the mistakes file's order."""
    folder = RunDir(root).round(k)
    knowledge = folder.knowledge
    passages: dict[str, list[Passage]] = {}
    for p in read_records(knowledge, Passage) if knowledge.is_file() else []:
        for mid in p.mistake_ids:
            passages.setdefault(mid, []).append(p)
    items = train_rows(folder)
    flags = diagnostics.flags_by_id(diagnostics.load(root, k))
    later = [(j, recs) for j, recs in sorted(evals.items()) if j > k]
    rows = []
    for m in read_records(folder.mistakes, Mistake):
        if m.set == "exam":
            found = passages.get(m.id, [])
            rows.append(mistake_row(k, m, found, items.get(m.id, []), flags.get(m.id), later))
    return rows


def mistake_row(k: int, m: Mistake, passages: list[Passage], items: list[tuple[dict, bool]],
                flag: MistakeFlag | None,
                later: list[tuple[int, dict[str, EvalRecord]]]) -> MistakeRow:  # fmt: skip
    """A mistake with its evidence; ``flag`` is its diagnostics entry (None while the
    round's model is not scored: then it is pending and its hit is read off the passages)."""
    gold = m.gold_text
    kept = [evidence(f"{p.source} · {p.title or p.doc_id}", p.text, gold) for p in passages]
    made = [evidence(row["kind"], row["prompt"] + row["response"], gold, reached)
            for row, reached in items]  # fmt: skip
    answers = [Later(f"round {j - 1}", answer_text(recs[m.id]), recs[m.id].correct)
               for j, recs in later if m.id in recs]  # fmt: skip
    return MistakeRow(
        round=k, id=m.id, relation=m.subject, question=m.question, gold=gold,
        answer=m.pred_text or "(no answer found)", reason=m.reason, margin=m.margin,
        keywords=list(m.keywords), queries=list(m.queries),
        status="pending" if flag is None else "fixed" if flag.fixed else "unfixed",
        hit=flag.hit if flag else any(p.holds_answer for p in kept),
        trained=flag.trained if flag else None,
        passages=kept, items=made, later=answers,
    )  # fmt: skip


def summary_svg(summary: RunSummary) -> str:
    """``summary.png``'s figure as an ``<svg>`` element to inline (no font or image fetched:
    text is drawn as paths), without matplotlib's metadata block."""
    from cem.loop.plots import summary_figure

    fig = summary_figure(summary)
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=dict.fromkeys(("Date", "Creator", "Format", "Type")))
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def render(root: Path) -> str:
    """The page of the run in ``root`` (checked with ``check_run_dir``)."""
    import jinja2

    summary = read_summary(RunDir(root).summary)
    evals = exam_records(root)
    rows = [row for f in RunDir(root).rounds()
            if f.index != 0 and f.mistakes.is_file()
            for row in round_rows(root, f.index, evals)]  # fmt: skip
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cem.loop", "templates"),
        autoescape=True,  # every text is escaped but the SVG, which matplotlib escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(
        root=root, summary=summary, rows=rows, plot=summary_svg(summary),
        relations=sorted({r.relation for r in rows}), rounds=sorted({r.round for r in rows}),
    )  # fmt: skip


def write_page(root: Path, out: Path | None = None) -> Path:
    """Check ``root``, render its page and write it (``root/inspect.html`` by default)."""
    check_run_dir(root)
    out = out or RunDir(root).inspect_page
    html = render(root)
    with atomic_open(out) as fh:
        fh.write(html)
    return out


def main(argv: list[str]) -> int:
    """``cem inspect RUN_DIR [--out PATH]``."""
    from cem.ui import console

    parser = argparse.ArgumentParser(
        prog="cem inspect",
        description="One self-contained page on a run's exam mistakes: evidence, training "
        "rows and later answers, with filters (fixed, not fixed, no hit, relation).",
    )
    parser.add_argument("run_dir", type=Path, help="the run_dir of a `cem run`")
    parser.add_argument("--out", type=Path, default=None, help=f"default: RUN_DIR/{INSPECT_PAGE}")
    args = parser.parse_args(argv)
    out = write_page(args.run_dir, args.out)
    console.print(f"[bold]cem inspect[/] wrote {out}")
    return 0
