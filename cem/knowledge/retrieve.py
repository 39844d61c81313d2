"""``cem retrieve``: mistakes -> knowledge points -> passages, guarded against leaks.

Reads ``D/eval/records.jsonl`` (from ``cem eval``) and writes ``D/mistakes/mistakes.jsonl``,
``D/knowledge/knowledge.jsonl`` and ``D/knowledge/stats.json``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig

from cem.config import resolve_run_dir
from cem.errors import CemError
from cem.io import write_json, write_jsonl
from cem.knowledge.keypoints import KeyPoints, holds_answer, llm_keypoints, rule_keypoints
from cem.knowledge.providers import check_web
from cem.knowledge.sources import check_sources
from cem.knowledge.types import Passage
from cem.layout import RoundDir, write_stage_config
from cem.records import EvalRecord, Mistake, read_records, write_records
from cem.validate import (
    at_least,
    check_benchmark,
    check_mistakes,
    check_model,
    in_unit,
    validate,
)


def check_knowledge(k: DictConfig) -> list[str]:
    problems = [
        in_unit("knowledge.corpus_fraction", k.corpus_fraction, 0.2, open_low=True),
        at_least("knowledge.extractor_batch_size", k.extractor_batch_size, 1, 8),
        at_least("knowledge.queries_per_mistake", k.queries_per_mistake, 1, 2),
        at_least("knowledge.top_k_per_mistake", k.top_k_per_mistake, 1, 3),
        at_least("knowledge.passage_tokens", k.passage_tokens, 16, 256),
        at_least("knowledge.leak_ngram", k.leak_ngram, 1, 13),
        in_unit("knowledge.dedup_jaccard", k.dedup_jaccard, 0.8, open_low=True),
    ]
    if k.extractor == "llm" and not k.extractor_model:
        problems.append(
            "knowledge.extractor_model must name an instruct model for knowledge.extractor=llm "
            "(the paper's, or a local folder) (try knowledge.extractor_model=Qwen/Qwen2-7B-Instruct)"
        )
    if not k.sources:
        problems.append(
            "knowledge.sources must list at least one source (try knowledge=wiki_offline)"
        )
    for i, s in enumerate(k.sources):
        problems.append(at_least(f"knowledge.sources.{i}.top_k", s.top_k, 1, 5))
    problems += check_sources(k)  # kinds, paths, retrievers, quotas: before round 0
    problems += check_web(k)  # provider, endpoint and key, before round 0 rather than in round 1
    return [p for p in problems if p]


RETRIEVE_CHECKS = {
    "model": check_model,
    "benchmark": check_benchmark,
    "knowledge": check_knowledge,
    "mistakes": check_mistakes,
}


def read_eval(run_dir: Path) -> list[EvalRecord]:
    path = RoundDir(run_dir).records
    if not path.exists():
        raise CemError(f"{path} not found: run `cem eval run_dir={run_dir}` first")
    return read_records(path, EvalRecord)


def extract_keypoints(mistakes: list[Mistake], kcfg: DictConfig, device: str) -> list[KeyPoints]:
    """Knowledge points of each mistake with the configured extractor (an LLM on ``device``,
    a ``model.device`` value)."""
    n = kcfg.queries_per_mistake
    if kcfg.extractor == "rule":
        return [rule_keypoints(m.question, m.gold_text, n) for m in mistakes]
    replies = llm_replies(mistakes, kcfg, device)
    return [
        llm_keypoints(reply, m.question, m.gold_text, n)
        for m, reply in zip(mistakes, replies, strict=True)
    ]


def llm_replies(mistakes: list[Mistake], kcfg: DictConfig, device: str) -> list[str]:
    """Ask the extractor model for each mistake's keywords (greedy, batched)."""
    from cem.knowledge.keypoints import LLM_PROMPT

    generate = extractor_generate(kcfg, kcfg.extractor_max_new_tokens, device=device)
    return generate([LLM_PROMPT.format(question=m.question, answer=m.gold_text) for m in mistakes])


def extractor_generate(
    kcfg: DictConfig, max_new_tokens: int, *, device: str
) -> Callable[[list[str]], list[str]]:
    """A ``generate(prompts) -> replies`` over the LLM extractor (``knowledge.extractor_model``).

    Each prompt is one user turn, wrapped in the model's chat template; the replies are
    greedy, in batches of ``knowledge.extractor_batch_size`` (left-padded). The model (a
    local folder or hub id, loaded in ``knowledge.extractor_dtype`` where ``device``, a
    ``model.device`` value, resolves) is loaded on the first call with prompts and kept for
    later calls, so a builder that ends up with nothing to ask loads nothing. Used by the
    knowledge-point extractor (``knowledge.extractor=llm``) and the extractive questions
    (``instructions.extractive.question_source=llm``).
    """
    loaded: list = []

    def generate(prompts: list[str]) -> list[str]:
        if not prompts:
            return []
        from cem.evaluation.evaluate import chat_wrap
        from cem.evaluation.generate import generate_texts

        if not loaded:
            from cem.config import ModelConfig
            from cem.models import load_model

            mcfg = ModelConfig(name="extractor", path=kcfg.extractor_model,
                               dtype=kcfg.extractor_dtype, device=device, chat=True)  # fmt: skip
            loaded.extend(load_model(mcfg, dtype_key="knowledge.extractor_dtype"))
        model, tok = loaded
        wrapped = [chat_wrap(tok, p) for p in prompts]
        return generate_texts(model, tok, wrapped, max_new_tokens=max_new_tokens,
                              batch_size=kcfg.extractor_batch_size)  # fmt: skip

    return generate


def retrieve_passages(
    source, mistakes: list[Mistake], kps: list[KeyPoints], k: int
) -> list[Passage]:
    """Every query of every mistake, searched once; each passage tagged with its mistake."""
    queries, owners = [], []
    for m, kp in zip(mistakes, kps, strict=True):
        for q in kp.queries:
            queries.append(q)
            owners.append(m.id)
    found = source.search(queries, k) if queries else []
    passages = []
    for owner, hits in zip(owners, found, strict=True):
        for p in hits:
            p.mistake_ids = [owner]
            passages.append(p)
    return passages


def record_guard_pairs(records: Iterable[EvalRecord], sets: dict) -> list[tuple[str, str]]:
    """The evaluation items of the benchmark (``leak.guard_pairs``) plus the scored records."""
    from cem.knowledge.leak import guard_pairs

    return [(r.question, r.choices[r.gold]) for r in records] + guard_pairs(sets)


def hit_rate(mistakes: list[Mistake], passages: list[Passage]) -> float:
    """Share of mistakes whose gold answer one of their passages states (``holds_answer``)."""
    texts: dict[str, list[str]] = {}
    for p in passages:
        for mid in p.mistake_ids:
            texts.setdefault(mid, []).append(p.text)
    hits = sum(any(holds_answer(t, m.gold_text) for t in texts.get(m.id, [])) for m in mistakes)
    return hits / len(mistakes) if mistakes else 0.0


def write_mistakes(path: Path, mistakes: list[Mistake], kps: list[KeyPoints]) -> None:
    """The mistakes with their knowledge points (``Mistake.keywords``, ``queries``)."""
    for m, kp in zip(mistakes, kps, strict=True):
        m.keywords, m.queries, m.extractor = kp.keywords, kp.queries, kp.method
    write_records(path, mistakes)


def run_retrieve(cfg: DictConfig, *, run_dir: Path | None = None) -> dict:
    """Validate, select mistakes, extract queries, retrieve, clean and write; return the stats.

    Args:
        cfg: a composed ``RetrieveJob`` (``conf/retrieve.yaml``).
        run_dir: the folder to read and write; None: ``run_dir`` (or the sweep job's folder).
    """
    validate(cfg, RETRIEVE_CHECKS)
    from cem.benchmarks.registry import load_benchmark
    from cem.knowledge.leak import LeakGuard
    from cem.knowledge.mistakes import select_mistakes
    from cem.knowledge.postprocess import clean_passages
    from cem.knowledge.sources import build_knowledge_source
    from cem.models import load_tokenizer
    from cem.ui import console

    run_dir = run_dir or resolve_run_dir(cfg)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    records = read_eval(run_dir)
    mistakes = select_mistakes(records, cfg.mistakes)
    kps = extract_keypoints(mistakes, cfg.knowledge, cfg.model.device)
    folder = RoundDir(run_dir)
    write_mistakes(folder.mistakes, mistakes, kps)
    seconds["mistakes"] = time.perf_counter() - t

    t = time.perf_counter()
    tok = load_tokenizer(cfg.model)
    count = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    source = build_knowledge_source(cfg.knowledge, count_tokens=count, device=cfg.model.device)
    k = max(s.top_k for s in cfg.knowledge.sources)
    passages = retrieve_passages(source, mistakes, kps, k)
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    guard = LeakGuard.from_items(record_guard_pairs(records, load_benchmark(cfg.benchmark)),
                                 cfg.knowledge.leak_ngram)  # fmt: skip
    kept, clean = clean_passages(passages, guard, cfg.knowledge, count)
    tokens = sum(count(p.text) for p in kept)
    seconds["clean"] = time.perf_counter() - t
    baseline = None
    if cfg.knowledge.passages != "mistakes":
        from cem.knowledge.baselines import baseline_passages

        t = time.perf_counter()
        kept, baseline = baseline_passages(
            cfg.knowledge.passages, source, tokens, guard, cfg.knowledge.passage_tokens,
            count, seed=f"{cfg.seed}:{run_dir.name}", fraction=cfg.knowledge.corpus_fraction,
        )  # fmt: skip
        baseline = {"mode": cfg.knowledge.passages, "cem_tokens": tokens, **baseline}
        tokens = baseline["tokens"]  # counted as they were drawn
        seconds["baseline"] = time.perf_counter() - t
    stats = {
        "source": cfg.knowledge.name,
        "mistakes": len(mistakes),
        "mistakes_by_reason": dict(Counter(m.reason for m in mistakes)),
        "extractor_fallbacks": sum(kp.method == "rule_fallback" for kp in kps),
        "queries": sum(len(kp.queries) for kp in kps),
        "passages": len(kept),
        "passages_by_source": dict(Counter(p.source for p in kept)),
        **clean,
        "hit_rate": hit_rate(mistakes, kept),
        "hit_rate_before_cleaning": hit_rate(mistakes, passages),
        "tokens": tokens,
        "source_stats": source.stats.to_dict(),
        "seconds": seconds,
    }
    if baseline is not None:  # the CPT text is not the mistakes' passages but a baseline's
        stats["baseline"] = baseline
    write_jsonl(folder.knowledge, [p.to_dict() for p in kept])
    write_json(folder.knowledge_stats, stats)
    write_stage_config(folder, "retrieve", cfg)
    console.print(
        f"[bold]cem retrieve[/] {len(mistakes)} mistakes -> {len(kept)} passages from "
        f"{cfg.knowledge.name} (leak drops {clean['leak_dropped']}, duplicate drops "
        f"{clean['dup_dropped']}); hit rate {stats['hit_rate']:.3f}; wrote {folder.knowledge.parent}"
    )
    return stats
