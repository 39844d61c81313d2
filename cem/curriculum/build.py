"""``cem build``: the training set of one round (METHOD.md, step 5).

Reads ``D/mistakes/mistakes.jsonl`` and ``D/knowledge/knowledge.jsonl`` (from ``cem
retrieve``), builds the CPT rows and the four CIT types, drops every row that states an
evaluation question with its answer (protocol ``heldout``), mixes them by tokens under the
paradigm, adds replay, and writes ``D/train_set/{train.parquet,stats.json}``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cem.benchmarks.schema import MCItem
from cem.choices import TokenCount
from cem.config import resolve_run_dir
from cem.curriculum.extractive import MAX_PARAPHRASES
from cem.curriculum.mixing import cit_ratio, order_rows, replay_rows, select
from cem.curriculum.render import CIT_KINDS, COLUMNS, KINDS, Renderer, Row
from cem.errors import CemError
from cem.knowledge.leak import guard_pairs
from cem.knowledge.types import Passage
from cem.layout import RoundDir, write_stage_config
from cem.records import EvalRecord, Mistake, read_records
from cem.validate import (
    ConfigInvalid,
    at_least,
    check_benchmark,
    check_model,
    in_unit,
)


def check_instructions(ins: DictConfig) -> list[str]:
    n, e, r, g = ins.normative, ins.extractive, ins.review, ins.general
    problems = [at_least(f"instructions.{k}.share", ins[k].share, 0, 0.25) for k in CIT_KINDS]
    if n.enabled and not n.formulations:
        problems.append("instructions.normative.formulations must not be empty "
                        "(try instructions.normative.formulations=[cf,mcf])")  # fmt: skip
    if e.question_source == "llm":
        problems.append(
            at_least("instructions.extractive.llm_max_new_tokens", e.llm_max_new_tokens, 1, 48)
        )
    if not 1 <= e.paraphrases <= MAX_PARAPHRASES:
        problems.append(
            f"instructions.extractive.paraphrases must be in [1, {MAX_PARAPHRASES}]; "
            f"got {e.paraphrases} (try instructions.extractive.paraphrases=2)"
        )
    if e.enabled and not (e.open_book or e.closed_book):
        problems.append(
            "instructions.extractive needs open_book or closed_book "
            "(try instructions.extractive.closed_book=true)"
        )
    problems += [
        at_least("instructions.review.max_sentences", r.max_sentences, 1, 3),
        in_unit("instructions.review.earlier_rounds_sample", r.earlier_rounds_sample, 0.3),
        at_least("instructions.general.max_items", g.max_items, 1, 64),
    ]
    return problems


def check_build(cfg: DictConfig) -> list[str]:
    """Every problem of a build config, each naming the key and the fix."""
    p, mix = cfg.paradigm.name, cfg.mix
    problems = []
    if OmegaConf.is_missing(cfg, "run_dir") or not cfg.run_dir:
        problems.append("run_dir must be set to the round's run folder (try run_dir=runs/my_run)")
    problems += check_model(cfg.model) + check_benchmark(cfg.benchmark)
    problems += check_instructions(cfg.instructions)
    problems += [
        in_unit("mix.cit_ratio", mix.cit_ratio, 0.5),
        in_unit("replay.fraction", cfg.replay.fraction, 0.1),
        at_least("replay.correct_items", cfg.replay.correct_items, 0, 0),
        at_least("round", cfg.round, 1, 1),
        at_least("knowledge.leak_ngram", cfg.knowledge.leak_ngram, 1, 13),
    ]
    e = cfg.instructions.extractive
    if e.enabled and e.question_source == "llm" and not cfg.knowledge.extractor_model:
        problems.append(
            "knowledge.extractor_model must name an instruct model for "
            "instructions.extractive.question_source=llm (try knowledge.extractor_model="
            "Qwen/Qwen2-7B-Instruct or instructions.extractive.question_source=cloze)"
        )
    if e.enabled and e.question_source == "llm":
        problems.append(
            at_least("knowledge.extractor_batch_size", cfg.knowledge.extractor_batch_size, 1, 8)
        )
    if mix.max_tokens is not None:
        problems.append(at_least("mix.max_tokens", mix.max_tokens, 1, 100000))
    if p in ("parallel", "sequential") and mix.cit_ratio == 1:
        problems.append(
            f"mix.cit_ratio=1 leaves no CPT text under paradigm={p} "
            "(try mix.cit_ratio=0.5 or paradigm=cit_only)"
        )
    needs_cit = p == "cit_only" or (p in ("parallel", "sequential") and mix.cit_ratio > 0)
    if needs_cit and not any(cfg.instructions[k].enabled for k in CIT_KINDS):
        problems.append(
            f"paradigm={p} with mix.cit_ratio={mix.cit_ratio} needs an instruction "
            "type enabled (try instructions=all or paradigm=cpt_only)"
        )
    return [x for x in problems if x]


def read_passages(path: Path) -> list[Passage]:
    """The round's kept passages (``knowledge.jsonl``)."""
    return read_records(path, Passage)


def read_mistakes(path: Path) -> list[Mistake]:
    """The round's mistakes (``mistakes.jsonl``)."""
    return read_records(path, Mistake)


def load_inputs(run_dir: Path, cfg: DictConfig) -> tuple[list[Mistake], list[Passage]]:
    """This round's mistakes and passages; under ``cit_only`` either may be missing."""
    folder = RoundDir(run_dir)
    for path in (folder.mistakes, folder.knowledge):
        if not path.is_file() and cfg.paradigm.name != "cit_only":
            raise CemError(
                f"{path} not found: paradigm={cfg.paradigm.name} with mix.cit_ratio="
                f"{cfg.mix.cit_ratio} needs the mistakes and their CPT text; run "
                f"`cem retrieve run_dir={run_dir}` first (or build with paradigm=cit_only)"
            )
    mistakes = read_mistakes(folder.mistakes) if folder.mistakes.is_file() else []
    passages = read_passages(folder.knowledge) if folder.knowledge.is_file() else []
    return mistakes, passages


@dataclass
class Earlier:
    """What an earlier round left in its run folder."""

    folder: Path
    passages: list[Passage] = field(default_factory=list)
    mistakes: list[Mistake] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def load_earlier(folders: Sequence[str | Path], need_rows: bool) -> list[Earlier]:
    """Passages, mistakes and training rows of each earlier round's run folder."""
    import pyarrow.parquet as pq

    out = []
    for path in map(Path, folders):
        e, folder = Earlier(path), RoundDir(path)
        if folder.knowledge.is_file():
            e.passages = read_passages(folder.knowledge)
        if folder.mistakes.is_file():
            e.mistakes = read_mistakes(folder.mistakes)
        if folder.train_set.is_file():
            e.rows = pq.read_table(folder.train_set).to_pylist()
        elif need_rows:
            raise CemError(
                f"{folder.train_set} not found: replay.fraction>0 replays earlier rounds' "
                f"rows; run `cem build run_dir={path}` first (or replay=none)"
            )
        out.append(e)
    return out


def by_set(sets: dict[str, list[MCItem]]) -> dict[str, list[MCItem]]:
    """Items grouped by their own ``set``: one file may hold pool, exam and test rows."""
    out: dict[str, list[MCItem]] = {}
    for items in sets.values():
        for it in items:
            out.setdefault(it.set, []).append(it)
    return out


def drop_leaks(rows: list[Row], guard) -> tuple[list[Row], int]:
    """Rows whose rendered text and raw instruction both pass the guard, and the drop count."""
    texts, owner = [], []
    for i, row in enumerate(rows):
        for t in row.guard_texts:
            texts.append(t)
            owner.append(i)
    bad = {owner[j] for j, leak in enumerate(guard.leaks(texts)) if leak} if texts else set()
    return [r for i, r in enumerate(rows) if i not in bad], len(bad)


def write_train_set(run_dir: Path, rows: Sequence[Row], stats: dict) -> Path:
    """``train.parquet`` and ``stats.json``, each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cem.io import atomic_open, write_json

    schema = pa.schema(
        [
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("kind", pa.string()),
            ("round", pa.int64()),
            ("source_ids", pa.list_(pa.string())),
            ("phase", pa.int64()),
            ("n_tokens", pa.int64()),
            ("n_loss_tokens", pa.int64()),
        ]
    )
    table = pa.Table.from_pylist([r.to_dict() for r in rows], schema=schema)
    assert tuple(table.column_names) == COLUMNS
    folder = RoundDir(run_dir)
    with atomic_open(folder.train_set, "wb") as fh:
        pq.write_table(table, fh)
    write_json(folder.train_set_stats, stats)
    return folder.train_set


def kind_stats(rows: Sequence[Row]) -> dict[str, dict[str, int]]:
    out = {}
    for kind in KINDS:
        part = [r for r in rows if r.kind == kind]
        if part:
            unique = len({(r.prompt, r.response) for r in part})
            out[kind] = {
                "rows": len(part),
                "tokens": sum(r.n_tokens for r in part),
                "loss_tokens": sum(r.n_loss_tokens for r in part),
                "unique": unique,
            }
    return out


def correct_item_rows(run_dir: Path, sets: dict, cfg: DictConfig) -> list[Row]:
    """``replay.correct_items`` pool items the model already answers right, in the task format."""
    from cem.curriculum.normative import normative_rows

    path = RoundDir(run_dir).records
    if cfg.replay.correct_items == 0 or not path.is_file():
        return []
    right = {r.id for r in read_records(path, EvalRecord) if r.set == "pool" and r.correct}
    items = [it for it in sets.get("pool", []) if it.id in right]
    items = random.Random(cfg.replay.seed).sample(items, min(cfg.replay.correct_items, len(items)))
    formulations = list(cfg.instructions.normative.formulations)
    return normative_rows(
        items, formulations, cfg.benchmark, cfg.round, kind="replay", mcf_target=cfg.eval.mcf_target
    )


def cpt_rows(passages: Sequence[Passage], round_: int) -> list[Row]:
    """One CPT row per distinct passage text: its document and every mistake it serves."""
    ids: dict[str, list[str]] = {}
    for p in passages:
        ids.setdefault(p.text, [p.doc_id]).extend(p.mistake_ids)
    return [Row(text, "", "cpt", round_, list(dict.fromkeys(i))) for text, i in ids.items()]


def related_titles(passages: Sequence[Passage], sets: dict[str, list[MCItem]]) -> list[str]:
    """Titles General must avoid: every passage's, every article a benchmark item is about,
    and the general probe's (held out to measure forgetting)."""
    from cem.benchmarks.probe import probe_passages

    titles = [t for p in passages for t in (p.title, p.doc_id)]
    titles += [p.title for p in probe_passages()]
    for items in sets.values():
        titles += [
            str(it.meta[k]) for it in items for k in ("wiki_title", "country") if k in it.meta
        ]
    return titles


def build_candidates(
    cfg: DictConfig,
    sets: dict[str, list[MCItem]],
    mistakes: list[Mistake],
    passages: list[Passage],
    earlier: list[Earlier],
    renderer: Renderer,
    counts: dict | None = None,
) -> tuple[list[Row], dict[str, list[Row]]]:
    """Every CPT row and every row of each enabled CIT type, before filtering and mixing.

    ``counts``, when given, receives the extractive LLM question counts
    (``question_source=llm``: ``extractive_llm_questions``, ``extractive_llm_fallbacks``...).
    """
    from cem.curriculum.extractive import extractive_rows
    from cem.curriculum.general import general_rows
    from cem.curriculum.normative import normative_items, normative_rows
    from cem.curriculum.review import review_rows

    ins, rnd = cfg.instructions, cfg.round
    cpt = cpt_rows(passages, rnd)
    cit: dict[str, list[Row]] = {}
    if ins.normative.enabled:
        items = normative_items(sets, cfg.protocol.name)
        cit["normative"] = normative_rows(
            items, list(ins.normative.formulations), cfg.benchmark, rnd,
            mcf_target=cfg.eval.mcf_target,
        )  # fmt: skip
    if ins.extractive.enabled:
        generate = None
        if ins.extractive.question_source == "llm":
            from cem.knowledge.retrieve import extractor_generate

            generate = extractor_generate(
                cfg.knowledge, ins.extractive.llm_max_new_tokens, device=cfg.model.device
            )
        cit["extractive"] = extractive_rows(
            mistakes, passages, ins.extractive, renderer, rnd, generate=generate, stats=counts
        )
    if ins.review.enabled:
        old = [(e.passages, e.mistakes) for e in earlier]
        cit["review"] = review_rows(passages, mistakes, old, ins.review, renderer, rnd, cfg.seed)
    if ins.general.enabled:
        related = related_titles([*passages, *(q for e in earlier for q in e.passages)], sets)
        cit["general"] = general_rows(ins.general, renderer, rnd, cfg.seed, related)
    return cpt, cit


def run_build(
    cfg: DictConfig,
    earlier_rounds: Sequence[str | Path] | None = None,
    *,
    run_dir: Path | None = None,
) -> dict:
    """Validate, build, filter, mix and write ``<run_dir>/train_set/``.

    Args:
        cfg: a composed ``BuildJob`` (``conf/build.yaml``).
        earlier_rounds: run folders of earlier rounds, for review and replay.
        run_dir: the round folder to read and write; None: ``run_dir`` (or the sweep job's folder).

    Returns:
        The stats written to ``train_set/stats.json``.
    """
    problems = check_build(cfg)
    if problems:
        raise ConfigInvalid(problems)
    from cem.benchmarks.registry import load_benchmark
    from cem.curriculum.render import load_tokenizer
    from cem.ui import console

    run_dir = run_dir or resolve_run_dir(cfg)
    mistakes, passages = load_inputs(run_dir, cfg)
    if earlier_rounds is None:
        earlier_rounds = list(cfg.earlier_rounds)
    earlier = load_earlier(earlier_rounds, need_rows=cfg.replay.fraction > 0)
    sets = by_set(load_benchmark(cfg.benchmark))
    renderer = Renderer(load_tokenizer(cfg.model), cfg.instructions.chat_template)
    extractive_counts: dict = {}  # question_source=llm: questions and cloze fallbacks
    cpt, cit = build_candidates(cfg, sets, mistakes, passages, earlier, renderer, extractive_counts)
    replay = replay_rows([r for e in earlier for r in e.rows], cfg.replay.fraction, cfg.replay.seed)
    replay += correct_item_rows(run_dir, sets, cfg)
    for rows in (cpt, replay, *cit.values()):
        renderer.count(rows)
    drops = Counter()
    if cfg.protocol.name == "heldout":
        from cem.knowledge.leak import LeakGuard

        guard = LeakGuard.from_items(guard_pairs(sets), cfg.knowledge.leak_ngram)
        cpt, drops["cpt"] = drop_leaks(cpt, guard)
        replay, drops["replay"] = drop_leaks(replay, guard)
        for kind in cit:
            cit[kind], drops[kind] = drop_leaks(cit[kind], guard)
    shares = {k: cfg.instructions[k].share for k in CIT_KINDS}
    chosen, budget = select(cpt, cit, shares, cfg.mix, cfg.paradigm.name)
    rows = order_rows(chosen + replay, cfg.paradigm.name, cfg.mix.seed)
    if not rows:
        raise CemError(
            f"no training rows for {run_dir}: check mistakes and knowledge, or use instructions=all"
        )
    stats = _stats(cfg, rows, budget, cit, drops, earlier, passages, mistakes)
    stats.update(extractive_counts)  # per fact, before the leak guard and mixing
    path = write_train_set(run_dir, rows, stats)
    write_stage_config(run_dir, "build", cfg)
    console.print(
        f"[bold]cem build[/] round {cfg.round}: {len(rows)} rows, "
        f"{stats['tokens']['total']} tokens, cit_ratio={stats['cit_ratio']}, "
        f"leak drops {sum(drops.values())}; wrote {path}"
    )
    return stats


def _stats(cfg, rows, budget, cit, drops, earlier, passages, mistakes) -> dict:
    from cem.curriculum.mixing import SIZES, all_tokens, loss_tokens

    by_kind = kind_stats(rows)
    ratio = cit_ratio(rows, SIZES[TokenCount(cfg.mix.count)])

    def tokens(key: str) -> dict[str, int]:
        return {
            "cpt": by_kind.get("cpt", {}).get(key, 0),
            "cit": sum(by_kind.get(k, {}).get(key, 0) for k in CIT_KINDS),
            "replay": by_kind.get("replay", {}).get(key, 0),
            "total": sum(v[key] for v in by_kind.values()),
        }

    shares = {name: cit_ratio(rows, size) for name, size in
              (("all_tokens", all_tokens), ("loss_tokens", loss_tokens))}  # fmt: skip
    return {
        "round": cfg.round,
        "paradigm": cfg.paradigm.name,
        "protocol": cfg.protocol.name,
        "seed": {"build": cfg.seed, "mix": cfg.mix.seed, "replay": cfg.replay.seed},
        "cit_ratio_target": cfg.mix.cit_ratio,
        "count": TokenCount(cfg.mix.count).value,
        "cit_ratio": None if ratio is None else round(ratio, 6),
        "cit_ratio_by_count": {k: None if v is None else round(v, 6) for k, v in shares.items()},
        "rows": len(rows),
        "tokens": tokens("tokens"),  # every token, prompts included
        "loss_tokens": tokens("loss_tokens"),  # the tokens that bear loss
        "by_kind": by_kind,
        "candidates": {k: len(v) for k, v in cit.items()},  # per CIT type, after the guard
        "leak_drops": dict(drops) if cfg.protocol.name == "heldout" else None,
        "budget": budget,
        "normative_sets": ["pool", "exam"] if cfg.protocol.name == "retest" else ["pool"],
        "inputs": {"mistakes": len(mistakes), "passages": len(passages)},
        "earlier_rounds": [str(e.folder) for e in earlier],
    }
