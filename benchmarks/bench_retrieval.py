"""Index build and retrieval times on the offline Wikipedia summaries (10,033 documents).

Times, cold (a fresh index folder) and warm (from the cache): BM25 (bm25s) and dense
(all-MiniLM-L6-v2 + faiss IndexFlatIP) index builds, and the retrieval of top-k passages
for 1,000 queries, plus the leak guard and dedupe over the retrieved passages, and the
build of the embedded ``world`` benchmark from its assets. The figures are printed,
nothing is asserted. Targets: BM25 build <= 30 s, 1,000 queries <= 5 s.

    .venv/bin/python benchmarks/bench_retrieval.py [--queries 1000] [--skip-dense]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cem.config import SourceConfig  # noqa: E402
from cem.knowledge.leak import LeakGuard  # noqa: E402
from cem.knowledge.postprocess import dedupe  # noqa: E402
from cem.knowledge.sources import build_source  # noqa: E402

RELATIONS = ("capital of", "population of", "history of", "language spoken in", "who founded")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queries", type=int, default=1000, help="queries to retrieve for")
    p.add_argument("--k", type=int, default=5, help="passages per query")
    p.add_argument("--index-dir", type=Path, default=None, help="default: a fresh temp folder")
    p.add_argument("--skip-dense", action="store_true", help="BM25 only")
    return p.parse_args(argv)


def timed(label: str, fn, results: list[tuple[str, float]]):
    t = time.perf_counter()
    out = fn()
    results.append((label, time.perf_counter() - t))
    print(f"{label:<48} {results[-1][1]:8.2f} s", flush=True)
    return out


def make_queries(titles: list[str], n: int) -> list[str]:
    """Mistake-like queries: a relation word and a title ("capital of Peru")."""
    rng = random.Random(0)
    return [f"{rng.choice(RELATIONS)} {t}" for t in rng.sample(titles, min(n, len(titles)))]


def bench_kind(kind: str, index_dir: Path, n: int, k: int, res: list) -> tuple[list, list]:
    """Returns the source's documents and every retrieved passage."""
    cfg = SourceConfig(kind=kind, index_dir=str(index_dir))
    src = timed(f"{kind}: load corpus + build index (cold)", lambda: build_source(cfg), res)
    src = timed(f"{kind}: load corpus + cached index (warm)", lambda: build_source(cfg), res)
    queries = make_queries([d.title for d in src.docs], n)
    hits = timed(
        f"{kind}: retrieve top-{k} for {len(queries)} queries", lambda: src.search(queries, k), res
    )
    return src.docs, [p for row in hits for p in row]


def bench_cleaning(passages: list, titles: list[str], res: list) -> None:
    rng = random.Random(1)
    items = [(f"What is the capital of {t}?", rng.choice(titles)) for t in rng.sample(titles, 3000)]
    guard = timed("leak guard: index 3,000 items", lambda: LeakGuard.from_items(items, 13), res)
    timed(f"leak guard: scan {len(passages)} passages", lambda: guard.filter(passages), res)
    timed(f"dedupe (Jaccard 0.8): {len(passages)} passages", lambda: dedupe(passages, 0.8), res)


def build_world_sets() -> dict:
    from omegaconf import OmegaConf

    from cem.benchmarks.registry import load_benchmark
    from cem.config import BenchmarkConfig

    return load_benchmark(OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), {"name": "world"}))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
    res: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="cem-bench-idx.") as tmp:
        root = args.index_dir or Path(tmp)
        docs, passages = bench_kind("wiki_offline", root, args.queries, args.k, res)
        bench_cleaning(passages, [d.title for d in docs], res)
        timed("world benchmark: build its sets (seed 0)", build_world_sets, res)
        if not args.skip_dense:
            bench_kind("wiki_dense", root, args.queries, args.k, res)
    print("\nsummary (seconds)")
    for label, secs in res:
        print(f"  {label:<48} {secs:8.2f}")


if __name__ == "__main__":
    main()
