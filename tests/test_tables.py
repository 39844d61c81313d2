"""The paper's tables as sweeps (conf/table), the baselines (conf/baseline), the launcher
presets, and ``cem report``: every job of every table composes and validates; each table
runs end to end on the tiny random Llama (one seed) and ``cem report`` turns the sweep
into a table; the baselines' CPT text is what they promise."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from _fake_api import FakeAPI
from _records import entry, eval_record, run_summary
from conftest import compose_config
from omegaconf import OmegaConf

from cem.cli import main
from cem.config import conf_dir
from cem.errors import CemError
from cem.io import write_json
from cem.loop.report import make_report, run_metrics
from cem.loop.run import check_run
from cem.loop.variants import find_runs, group
from cem.records import EvalRecord, RunSummary, write_records

TABLES = sorted(p.stem for p in (conf_dir() / "table").glob("*.yaml") if p.stem != "_base")
PAPER_TABLES = ["data_efficiency", "instruction_ablation", "knowledge_source", "main",
                "paradigm", "ratio", "replay_forgetting", "rounds"]  # fmt: skip


def sweep_axes(table: str) -> dict[str, list[str]]:
    params = compose_config("run", f"table={table}", hydra=True).hydra.sweeper.params
    return {k: str(v).split(",") for k, v in params.items()}


# --- configs ---------------------------------------------------------------------------------


def test_every_paper_table_has_a_config():
    assert TABLES == PAPER_TABLES


@pytest.mark.parametrize("table", TABLES)
def test_every_value_of_every_table_axis_composes_and_validates(table, compose):
    """Each value of each axis once (the other axes at their first value): the sweep's
    jobs are those combinations, and an axis value is what can be misspelt."""
    cfg = compose("run", f"table={table}", hydra=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweep.dir == f"multirun/{table}"
    axes = sweep_axes(table)
    assert axes["seed"] == ["0", "1", "2", "3", "4"]  # every table runs over five seeds
    assert list(axes)[0] == "seed"  # seed-major job order: a partial table holds whole seeds
    assert len(axes) >= 1 + (table != "rounds")  # and over the table's own axis
    first = [f"{k}={vs[0]}" for k, vs in axes.items()]
    jobs = {tuple(first)} | {
        tuple(f"{k}={v}" if k == key else f for k, f in zip(axes, first, strict=True))
        for key, values in axes.items() if key != "seed" for v in values
    }  # fmt: skip
    for combo in sorted(jobs):
        job = compose("run", f"table={table}", "run_dir=/tmp/x", *combo)
        assert check_run(job) == [], (table, combo)


def test_table_settings_reach_the_jobs(compose):
    job = compose("run", "table=replay_forgetting", "replay=none", "instructions=no_review")
    assert (job.loop.rounds, job.loop.patience) == (3, None)
    assert job.replay.fraction == 0.0 and not job.instructions.review.enabled
    job = compose("run", "table=main", "model=llama3_8b_instruct", "benchmark=xiezhi")
    assert job.benchmark.split and job.benchmark.path.endswith("/xiezhi")
    assert job.trainer.accelerator == "gpu"
    assert (job.logger.group, list(job.logger.tags)) == ("main", ["main"])  # one W&B group
    job = compose("run", "table=data_efficiency", "baseline=full_corpus_cpt")
    assert (job.paradigm.name, job.knowledge.passages, job.loop.rounds) == ("cpt_only", "full", 1)
    assert job.train.max_steps == -1


@pytest.mark.parametrize(
    "baseline, paradigm, passages",
    [("none", "parallel", "mistakes"), ("random_cpt", "cpt_only", "random"),
     ("cit_only", "cit_only", "mistakes"), ("full_corpus_cpt", "cpt_only", "full")],
)  # fmt: skip
def test_baselines_set_paradigm_and_cpt_text(baseline, paradigm, passages, compose):
    cfg = compose("run", f"baseline={baseline}", "run_dir=/tmp/x")
    assert (cfg.loop.baseline, cfg.paradigm.name, cfg.knowledge.passages) == (
        baseline, paradigm, passages)  # fmt: skip
    assert check_run(cfg) == []


def test_bad_table_and_bad_sweep_values_fail_before_compute(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"(?s)table/nope.*paradigm"):
        compose("run", "table=nope")
    with pytest.raises(ConfigCompositionException, match="knowledge.passages=some"):
        compose("run", "table=ratio", "knowledge.passages=some")
    problems = check_run(compose("run", "table=ratio", "mix.cit_ratio=1.5", "loop.rounds=0",
                                     "run_dir=/tmp/x"))  # fmt: skip
    assert "mix.cit_ratio must be in [0, 1]; got 1.5 (try mix.cit_ratio=0.5)" in problems
    assert "loop.rounds must be >= 1; got 0 (try loop.rounds=2)" in problems


@pytest.mark.parametrize("launcher, target", [
    ("local_parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])  # fmt: skip
def test_launcher_presets_compose(launcher, target, compose):
    cfg = compose("run", "table=paradigm", f"hydra/launcher={launcher}", hydra=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.hydra.launcher.submitit_folder.endswith("/.submitit/%j")
    else:
        assert cfg.hydra.launcher.n_jobs == 2


# --- the file-benchmark split -------------------------------------------------------------------


def test_file_benchmark_split_is_seeded_per_subject_and_disjoint(shared_dir, compose):
    from cem.benchmarks.registry import load_benchmark

    def load(seed: int):
        b = compose("run", "benchmark=mmlu", f"benchmark.path={shared_dir / 'mmlu'}",
                        "benchmark.split=true", f"seed={seed}").benchmark  # fmt: skip
        return load_benchmark(b)

    a, again, other = load(0), load(0), load(1)
    assert list(a) == ["pool", "exam", "test"]
    ids = {name: [it.id for it in items] for name, items in a.items()}
    assert ids == {name: [it.id for it in items] for name, items in again.items()}
    assert ids != {name: [it.id for it in items] for name, items in other.items()}
    every = [i for name in ids for i in ids[name]]
    assert len(every) == len(set(every))  # disjoint, nothing lost or repeated
    total = len(every)
    assert abs(len(ids["exam"]) / total - 0.4) < 0.05 and abs(len(ids["pool"]) / total - 0.2) < 0.05
    subjects = {it.subject for it in a["exam"]}
    assert subjects == {it.subject for it in a["test"]}  # every subject on both sides


# --- the baselines' CPT text ----------------------------------------------------------------------


def test_random_and_full_corpus_passages():
    from cem.knowledge.baselines import baseline_passages
    from cem.knowledge.corpus import Document
    from cem.knowledge.leak import LeakGuard
    from cem.knowledge.sources import CorpusSource

    docs = [Document(doc_id=f"d{i}", title=f"T{i}", text=f"Doc {i} says {' '.join(['word'] * 20)}.")
            for i in range(50)]  # fmt: skip
    docs.append(Document(doc_id="leak", title="Leak",
                         text="The capital of Bhutan is Thimphu, a city in the mountains."))  # fmt: skip
    source = CorpusSource("wiki_offline", docs, index=None)
    guard = LeakGuard.from_items([("The capital of Bhutan is", "Thimphu")], 5)
    count = lambda text: len(text.split())  # noqa: E731
    full, stats = baseline_passages("full", source, 0, guard, 256, count, seed="0")
    assert [p.doc_id for p in full] == [f"d{i}" for i in range(50)]
    assert stats["leak_dropped"] == 1 and stats["tokens"] == sum(count(p.text) for p in full)
    one, _ = baseline_passages("random", source, 100, guard, 256, count, seed="0:round_1")
    same, _ = baseline_passages("random", source, 100, guard, 256, count, seed="0:round_1")
    other, _ = baseline_passages("random", source, 100, guard, 256, count, seed="0:round_2")
    assert [p.doc_id for p in one] == [p.doc_id for p in same] != [p.doc_id for p in other]
    tokens = sum(count(p.text) for p in one)
    assert 100 <= tokens < 100 + 23  # reaches the budget, overshooting by under one passage
    assert "leak" not in {p.doc_id for p in one}


def test_baselines_need_an_offline_corpus():
    from cem.errors import ConfigError
    from cem.knowledge.baselines import corpus_documents

    class Api:
        name = "wikipedia_api"

    with pytest.raises(ConfigError, match=r"knowledge\.passages.*offline corpus"):
        corpus_documents(Api(), "random")


# --- cem report on synthetic summaries ------------------------------------------------------------


def summary(exam: list[float], test: list[float], *, protocol="heldout", cpt=100) -> dict:
    """A summary.json with round 0 and a warm-up at the first two values, then rounds."""

    def one(k: int, e: float, t: float, cpt_tokens: int, warmup: bool = False) -> dict:
        metrics = {"exam": {"acc": e, "acc_norm": e, "n": 10},
                   "test": {"acc": t, "acc_norm": t, "n": 10}}  # fmt: skip
        trained = (
            {"trained_tokens": {"cpt": cpt_tokens // 2, "normative": 5}} if k or warmup else {}
        )
        return entry(k, metrics, warmup=warmup, cpt=cpt_tokens, cit=50, protocol=protocol,
                     forgetting={"exam": 0.1, "test": 0.0}, **trained)  # fmt: skip

    rounds = [one(0, exam[0], test[0], 0)] + [
        one(k, e, t, cpt) for k, (e, t) in enumerate(zip(exam[2:], test[2:], strict=True), 1)
    ]
    final_gain = {"exam": exam[-1] - exam[1], "test": test[-1] - test[1],
                  "schema": test[-1] - test[1], "knowledge": (exam[-1] - exam[1]) - (test[-1] - test[1])}  # fmt: skip
    return run_summary(rounds, one(0, exam[1], test[1], 0, warmup=True), protocol=protocol,
                       gains={"vs_warmup": final_gain}, seconds={"total": 60.0, "cpu_total": 0.0},
                       stopped={"reason": "rounds", "round": len(rounds) - 1})  # fmt: skip


def fake_sweep(root: Path, runs: dict[str, dict]) -> None:
    for name, s in runs.items():
        folder = root / name
        write_json(folder / "summary.json", s)
        overrides = [part for part in name.split(",")]
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))


def test_report_means_and_stds_over_seeds(tmp_path):
    fake_sweep(tmp_path, {
        "experiment=fast,paradigm=parallel,seed=0": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7]),
        "experiment=fast,paradigm=parallel,seed=1": summary([0.5, 0.6, 0.9], [0.5, 0.6, 0.6]),
        "experiment=fast,paradigm=cpt_only,seed=0": summary([0.5, 0.5, 0.4], [0.5, 0.5, 0.5]),
    })  # fmt: skip
    variants, shared = group(find_runs(tmp_path))
    assert shared == {"experiment": "fast"}
    assert [v.label for v in variants] == ["paradigm=cpt_only", "paradigm=parallel"]
    paths = make_report(tmp_path)
    rows = {(r["variant"], r["metric"]): r for r in csv.DictReader(paths["csv"].open())}
    par = rows["paradigm=parallel", "gain/knowledge"]
    # knowledge gains 0.1 and 0.3: mean 0.2, sample sd 0.1414, t(0.975, df=1) = 12.706
    assert float(par["mean"]) == pytest.approx(0.2) and float(par["sd"]) == pytest.approx(
        0.14142, rel=1e-3
    )
    half = 12.706 * 0.14142 / 2**0.5
    assert par["n"] == "2" and par["df"] == "1"
    assert float(par["ci_low"]) == pytest.approx(0.2 - half, rel=1e-3)
    assert float(par["ci_high"]) == pytest.approx(0.2 + half, rel=1e-3)
    assert rows["paradigm=cpt_only", "acc/exam"]["sd"] == ""  # one run: no spread
    assert float(rows["paradigm=parallel", "cpt_tokens"]["mean"]) == 100
    md = paths["md"].read_text()
    assert "| paradigm=parallel | 2 | 85.0 ± 7.1 | 65.0 ± 7.1 |" in md
    assert "20.0 [-107.1, 147.1]" in md and "df 1" in md  # the knowledge gain's t-interval
    assert "One run only" in md and "`paradigm=cpt_only`" in md
    assert "Common overrides: `experiment=fast`" in md
    assert paths["png"].stat().st_size > 1000


def item_run(root: Path, name: str, seed: int, ref: list[bool], final: list[bool]) -> None:
    """A sweep job with eval records: ``ref`` and ``final`` right/wrong per item, the first
    half exam items and the second half test items (ids by position: the seed's split)."""
    half = len(ref) // 2

    def records(right: list[bool]) -> list[EvalRecord]:
        return [eval_record(f"q{i}", "exam" if i < half else "test", c)
                for i, c in enumerate(right)]  # fmt: skip

    folder = root / name
    write_records(folder / "round_1" / "eval" / "records.jsonl", records(ref))
    write_records(folder / "round_2" / "eval" / "records.jsonl", records(final))
    acc = lambda r, lo, hi: sum(r[lo:hi]) / (hi - lo)  # noqa: E731
    s = summary(
        [acc(ref, 0, half), acc(ref, 0, half), acc(final, 0, half)],
        [acc(ref, half, len(ref)), acc(ref, half, len(ref)), acc(final, half, len(ref))],
    )
    s["seed"], s["warmup"]["eval_dir"] = seed, "round_1/eval"
    s["rounds"][-1]["eval_dir"] = "round_2/eval"
    fake_sweep(root, {name: s})


def test_report_against_a_row_pairs_items_on_the_same_seeds(tmp_path):
    rng = random.Random(0)
    for seed in (0, 1, 2):
        ref = [rng.random() < 0.7 for _ in range(400)]
        # CEM fixes about half of the wrong exam items; the baseline about a tenth.
        cem = [r or (i < 200 and rng.random() < 0.5) for i, r in enumerate(ref)]
        base = [r or (i < 200 and rng.random() < 0.1) for i, r in enumerate(ref)]
        item_run(tmp_path, f"baseline=none,seed={seed}", seed, ref, cem)
        item_run(tmp_path, f"baseline=random_cpt,seed={seed}", seed, ref, base)
    md = make_report(tmp_path, draw=False, against="baseline=random_cpt")["md"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("| baseline=none | 0,1,2 |"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[-3] == "confirmed"  # CEM's knowledge gain exceeds the baseline's
    assert float(cells[-2]) == pytest.approx(float(cells[5].rpartition("p=")[2]))  # one row
    assert cells[3].startswith("+1") and "p=" in cells[3]  # Δ Δexam about +12 points
    assert "Paired against `baseline=random_cpt`" in md
    main_row, pooled = [x for x in md.splitlines() if x.startswith("| baseline=none | 3 |")]
    assert "p=" in pooled and pooled.rstrip(" |").endswith("confirmed")


def test_report_against_refuses_what_it_cannot_pair(tmp_path):
    item_run(tmp_path, "paradigm=parallel,seed=0", 0, [False] * 8, [True] * 8)
    item_run(tmp_path, "paradigm=cpt_only,seed=1", 1, [False] * 8, [True] * 8)
    with pytest.raises(CemError, match=r"names no row of this report; the rows are:\n  paradigm"):
        make_report(tmp_path, draw=False, against="paradigm=sequential")
    with pytest.raises(CemError, match=r"needs the same seeds"):
        make_report(tmp_path, draw=False, against="paradigm=parallel")
    # Same seed, different items: another split, so no pairing.
    item_run(tmp_path / "x", "paradigm=parallel,seed=0", 0, [False] * 8, [True] * 8)
    item_run(tmp_path / "x", "paradigm=cpt_only,seed=0", 0, [False] * 6, [True] * 6)
    with pytest.raises(CemError, match=r"seed 0 but different exam items"):
        make_report(tmp_path / "x", draw=False, against="paradigm=parallel")


def test_report_names_the_code_and_warns_when_runs_differ_in_it(tmp_path):
    def code(fp, commit="f115e34aa", dirty=False, threads=2, cpu=None):
        return {"cem": "0.1.0", "code": fp, "commit": commit, "dirty": dirty,
                "torch": "2.13.0", "transformers": "5.17.0", "threads": threads,
                **({"cpu": cpu} if cpu else {})}  # fmt: skip

    same = {f"paradigm={p},seed=0": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7])
            | {"code": [code("aaaa")]} for p in ("parallel", "cpt_only")}  # fmt: skip
    fake_sweep(tmp_path / "same", same)
    md = make_report(tmp_path / "same", draw=False)["md"].read_text()
    assert ("`aaaa` (commit f115e34aa; cem 0.1.0, torch 2.13.0, transformers 5.17.0, "
            "2 threads): 2 runs") in md  # fmt: skip
    assert "Warning" not in md
    mixed = {"paradigm=parallel,seed=0": same["paradigm=parallel,seed=0"],
             "paradigm=cpt_only,seed=0": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7])
             | {"code": [code("bbbb", dirty=True, threads=1, cpu="avx512 amx_tile; Xeon")]},
             "paradigm=cpt_only,seed=1": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7])}  # fmt: skip
    fake_sweep(tmp_path / "mixed", mixed)
    md = make_report(tmp_path / "mixed", draw=False)["md"].read_text()
    assert "**Warning: the runs ran on 2 code versions**" in md
    assert "`bbbb` (commit f115e34aa with changes;" in md
    assert "1 threads, CPU avx512 amx_tile; Xeon): 1 runs" in md  # the machine, where recorded
    assert "not recorded by 1 runs" in md
    fake_sweep(tmp_path / "old", {"seed=0": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7])})
    assert (
        "Code: not recorded (the 1 runs"
        in make_report(tmp_path / "old", draw=False)["md"].read_text()
    )


def test_report_leaves_out_runs_still_going(tmp_path):
    going = summary([0.5, 0.6, 0.1], [0.5, 0.6, 0.1]) | {"stopped": None}
    fake_sweep(tmp_path, {"paradigm=parallel,seed=0": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7]),
                          "paradigm=parallel,seed=1": going})  # fmt: skip
    paths = make_report(tmp_path, draw=False)
    md = paths["md"].read_text()
    assert "| paradigm=parallel | 1 | 80.0 | 70.0 |" not in md  # one variant: no label column value
    assert "| all runs | 1 | 80.0 | 70.0 |" in md
    assert "Left out, not finished yet: `paradigm=parallel,seed=1`" in md
    with pytest.raises(CemError, match="no finished run"):
        make_report(tmp_path / "paradigm=parallel,seed=1", draw=False)


def test_report_keeps_retest_apart_and_errors_clearly(tmp_path):
    fake_sweep(tmp_path / "s", {
        "seed=0": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7]),
        "seed=1": summary([0.5, 0.6, 0.9], [0.5, 0.6, 0.6], protocol="retest"),
    })  # fmt: skip
    variants, _ = group(find_runs(tmp_path / "s"))
    assert sorted(v.label for v in variants) == ["protocol=heldout", "protocol=retest"]
    assert "RE-TEST" in make_report(tmp_path / "s", draw=False)["md"].read_text()
    with pytest.raises(CemError, match="no summary.json under"):
        find_runs(tmp_path / "s" / "seed=0" / ".hydra")
    with pytest.raises(CemError, match="is not a folder"):
        find_runs(tmp_path / "missing")
    (tmp_path / "s" / "seed=0" / "summary.json").write_text("{broken")
    with pytest.raises(CemError, match=r"seed=0/summary.json: not valid JSON"):
        find_runs(tmp_path / "s")


def test_report_refuses_a_summary_with_a_field_missing_and_names_it(tmp_path):
    """A summary written before ``trained_tokens`` was recorded (the report recomputed it from
    the run's files once): refused, with the file and the field named."""
    old = summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7])
    del old["rounds"][1]["trained_tokens"]
    fake_sweep(tmp_path, {"seed=0": old})
    with pytest.raises(CemError, match=r"seed=0/summary.json: missing field "
                                       r"'rounds\[1\].trained_tokens'.*re-run its job"):  # fmt: skip
        find_runs(tmp_path)
    bad = summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7])
    bad["warmup"]["metrics"]["exam"]["acc"] = "0.6"
    fake_sweep(tmp_path / "b", {"seed=0": bad})
    with pytest.raises(CemError, match=r"field 'warmup.metrics' must be dict\[str, dict\[str, "
                                       r"float\]\]; got .*'0.6'"):  # fmt: skip
        find_runs(tmp_path / "b")


def test_run_metrics_of_a_synthetic_summary():
    m = run_metrics(RunSummary.from_json(summary([0.5, 0.6, 0.7, 0.9], [0.5, 0.6, 0.6, 0.7])))
    assert m["acc/exam"] == 0.9 and m["gain/schema"] == pytest.approx(0.1)
    assert m["gain/knowledge"] == pytest.approx(0.2) and m["cpt_tokens"] == 200
    assert m["cpt_tokens_trained"] == 100 and m["cit_response_tokens_trained"] == 10
    # the gain per 1k CPT tokens *trained* (100), not per 1k in the sets (200)
    assert m["knowledge_gain_per_1k_cpt"] == pytest.approx(2.0) and m["rounds"] == 2


# --- every table end to end on the tiny model ---------------------------------------------------

# One seed and one short round without the warm-up on 4 items per set: the sweep machinery,
# every job's stages and the report, not the numbers.
TINY = ("experiment=fast", "seed=0", "loop.rounds=1", "loop.warmup.enabled=false",
        "benchmark.limit=4")  # fmt: skip
SEARCH_KEY_ENV, SEARCH_KEY = "CEM_TEST_SEARCH_KEY", "sk-table-SECRET-4242"


def table_overrides(table: str, tmp_path: Path, api: FakeAPI, shared: Path | None) -> list[str]:
    """Per table: what keeps it offline and tiny (the models, the web, the GPU trainer)."""
    if table == "main":
        return ["hydra.sweeper.params.model=tiny_random_llama", "trainer=cpu",
                f"benchmark.path={shared}/${{.name}}"]  # fmt: skip
    if table == "knowledge_source":
        # mix's dense index needs the MiniLM asset; it is composed above, not run here.
        return ["hydra.sweeper.params.knowledge='wiki_offline,web_search'", "knowledge/search=brave",
                f"knowledge.search.endpoint={api.url('/brave/res/v1/web/search')}",
                f"knowledge.search.api_key_env={SEARCH_KEY_ENV}",
                "knowledge.allowed_private_hosts=[127.0.0.1]",
                f"knowledge.sources.0.cache_dir={tmp_path / 'http'}"]  # fmt: skip
    return []


# Three tables run in the default tier (the basic sweep, file benchmarks, the web source);
# the other five in the slow tier (about 4 minutes together on 2 cores).
DEFAULT_TIER = ("paradigm", "main", "knowledge_source")


@pytest.mark.e2e
@pytest.mark.parametrize(
    "table", [t if t in DEFAULT_TIER else pytest.param(t, marks=pytest.mark.slow) for t in TABLES]
)
def test_every_table_runs_on_the_tiny_model_and_reports(table, tmp_path, monkeypatch):
    from conftest import shared_benchmarks_dir

    shared = shared_benchmarks_dir()
    if table == "main" and shared is None:
        pytest.skip("table=main reads ../shared/benchmarks (not found; set CEM_SHARED_DIR)")
    monkeypatch.setenv(SEARCH_KEY_ENV, SEARCH_KEY)
    sweep = tmp_path / table
    with FakeAPI(key=SEARCH_KEY) as api:
        rc = main(["run", f"table={table}", *TINY, f"hydra.sweep.dir={sweep}",
                   *table_overrides(table, tmp_path, api, shared)])  # fmt: skip
    assert rc == 0
    axes = sweep_axes(table)
    n_jobs = 1
    for key, values in axes.items():
        if key != "seed":
            n_jobs *= {"model": 1, "knowledge": 2}.get(key, len(values))
    runs = find_runs(sweep)
    assert len(runs) == n_jobs
    for r in runs:
        assert r.summary.stopped["reason"] in ("rounds", "no_mistakes", "no_knowledge")
        assert (r.path / "round_0" / "eval" / "records.jsonl").is_file()
    if table == "knowledge_source":  # the key is in no file: configs, logs, stats, results
        assert not [
            f for f in sweep.rglob("*") if f.is_file() and SEARCH_KEY.encode() in f.read_bytes()
        ]
    paths = make_report(sweep, draw=False)
    rows = list(csv.DictReader(paths["csv"].open()))
    variants = {r["variant"] for r in rows}
    assert len(variants) == max(n_jobs, 1)
    if table == "paradigm":  # the archive of real runs: the same report, and inspect works
        from cem.loop.archive import archive

        kept = tmp_path / "archive" / table
        assert archive(sweep, kept)["skipped"] == []
        assert not list(kept.rglob("*.safetensors"))
        again = make_report(kept, tmp_path / "again", draw=False)
        assert again["md"].read_text() == paths["md"].read_text()
        assert again["csv"].read_text() == paths["csv"].read_text()
        assert archive(sweep, tmp_path / "full", full=True)["full"]
        assert main(["inspect", str(tmp_path / "full" / runs[0].path.relative_to(sweep))]) == 0
    if table == "data_efficiency":
        full = next(r for r in runs if "full_corpus_cpt_steps" in str(r.path))
        stats = json.loads((full.path / "round_1" / "knowledge" / "stats.json").read_text())
        assert stats["baseline"]["mode"] == "full" and stats["baseline"]["corpus_docs"] > 9_900
        rand = next(r for r in runs if "random_cpt" in str(r.path))
        stats = json.loads((rand.path / "round_1" / "knowledge" / "stats.json").read_text())
        assert stats["baseline"]["tokens"] >= stats["baseline"]["cem_tokens"]


@pytest.mark.e2e
def test_a_round_without_cpt_text_stops_the_loop_cleanly(tmp_path, monkeypatch, compose):
    from cem.curriculum.mixing import NoCptText
    from cem.loop import stages
    from cem.loop.run import run_loop

    def no_text(*_a, **_k):
        raise NoCptText("paradigm", "parallel", "needs CPT passages but has none left")

    monkeypatch.setattr(stages, "build_task", no_text)
    summary = run_loop(compose("run", f"run_dir={tmp_path}", *TINY, "eval.progress=false"))
    assert summary.stopped == {"reason": "no_knowledge", "round": 0}
    assert (tmp_path / "round_1" / "done" / "retrieve.json").is_file()
    assert not (tmp_path / "round_1" / "done" / "build.json").exists()
    assert (tmp_path / "summary.json").is_file()


@pytest.mark.e2e
def test_table_jobs_share_round_0_and_the_warm_up(tmp_path, monkeypatch, capsys):
    from collections import Counter

    from cem.layout import read_marker
    from cem.loop import stages

    monkeypatch.setenv("CEM_SHARE_CACHE", str(tmp_path / "share"))
    calls: Counter = Counter()
    for name in ("eval_task", "warmup_build_task", "train_task"):
        real = getattr(stages, name)

        def counted(cfg, folder, *args, _real=real, _name=name, **kw):
            calls[(_name, folder.name)] += 1
            return _real(cfg, folder, *args, **kw)

        monkeypatch.setattr(stages, name, counted)
    tiny = ("experiment=fast", "seed=0", "loop.rounds=1", "benchmark.limit=4",
            "loop.warmup.max_steps=1", "train.max_steps=1")  # fmt: skip
    assert main(["run", "table=ratio", *tiny, f"hydra.sweep.dir={tmp_path / 'ratio'}"]) == 0
    jobs = find_runs(tmp_path / "ratio")
    assert len(jobs) == 5  # the five ratios at one seed
    # Round 0, the warm-up and the warmed-up model's scores once; each job's own round once.
    assert calls == Counter({("eval_task", "round_0"): 1, ("warmup_build_task", "warmup"): 1,
                             ("train_task", "warmup"): 1, ("eval_task", "round_1"): 1,
                             ("train_task", "round_1"): 5, ("eval_task", "round_2"): 5})  # fmt: skip
    shared = [j for j in jobs if "shared_from" in read_marker(j.path / "round_0", "eval")]
    assert len(shared) == 4
    records = {(j.path / "round_1/eval/records.jsonl").read_text() for j in jobs}
    assert len(records) == 1  # every job starts round 1 from the same scores
    # A corrupt entry is found by its hash and computed again, with a warning.
    entry = next((tmp_path / "share").glob("*/eval/records.jsonl"))
    entry.write_text("{}\n")
    calls.clear()
    capsys.readouterr()
    assert main(["run", *tiny, "loop.rounds=1", f"run_dir={tmp_path / 'again'}"]) == 0
    assert calls[("eval_task", "round_0")] + calls[("eval_task", "round_1")] == 1
    seen = capsys.readouterr()
    warned = "".join((seen.out + seen.err).split())  # rich folds long lines
    assert f"{entry}doesnotmatchitssha256inmanifest.json" in warned
    assert calls[("train_task", "warmup")] == 0


def test_tables_leave_out_exactly_the_result_neutral_keys():
    from cem.config import RESULT_NEUTRAL
    from cem.loop.run import MAY_CHANGE
    from cem.loop.variants import IGNORED

    base = OmegaConf.load(conf_dir() / "table" / "_base.yaml")
    excluded = list(base.hydra.job.config.override_dirname.exclude_keys)
    assert excluded == ["table", *RESULT_NEUTRAL]
    assert set(RESULT_NEUTRAL) <= set(IGNORED) and set(RESULT_NEUTRAL) <= set(MAY_CHANGE)


# A value for each result-neutral key other than the composed one (logger: the W&B group).
NEUTRAL_CHANGES = {"run_dir": "run_dir=/tmp/other", "logger": "logger=wandb",
                   "eval.progress": "eval.progress=true", "eval.devices": "eval.devices=2",
                   "trainer.enable_progress_bar": "trainer.enable_progress_bar=true",
                   "loop.keep_models": "loop.keep_models=all",
                   "loop.share_round0": "loop.share_round0=false",
                   "loop.reuse_runs": "loop.reuse_runs=true",
                   "loop.baseline": "loop.baseline=random_cpt"}  # fmt: skip


def test_the_result_neutral_keys_change_no_run_or_stage_key(compose):
    from pathlib import Path

    from cem.config import RESULT_NEUTRAL
    from cem.loop import stages
    from cem.loop.share import run_key, stage_key

    def keys(*overrides: str) -> list[str]:
        cfg = compose("run", "run_dir=/tmp/x", "experiment=fast", *overrides)
        folder, steps = Path("/tmp/x/round_0"), {"max_steps": 2, "epochs": 1}
        return [run_key(cfg), stage_key("eval", stages.eval_job(cfg, folder, None, ["exam"]), []),
                stage_key("build", stages.warmup_build_job(cfg, folder), []),
                stage_key("train", stages.train_job(cfg, folder, steps, warmup=True), [])]  # fmt: skip

    assert set(NEUTRAL_CHANGES) == set(RESULT_NEUTRAL)
    assert keys(*NEUTRAL_CHANGES.values()) == keys()
    assert all(a != b for a, b in zip(keys("seed=1"), keys(), strict=True))  # a key that counts


def test_report_against_pairs_forgetting_per_item(tmp_path):
    rng = random.Random(1)
    for seed in (0, 1):
        ref = [rng.random() < 0.8 for _ in range(400)]
        # Without replay the final model loses about a quarter of the items round 0 had
        # right; with it, about one in twenty-five.
        none = [r and rng.random() > 0.25 for r in ref]
        replay = [r and rng.random() > 0.04 for r in ref]
        item_run(tmp_path, f"replay=none,seed={seed}", seed, ref, none)
        item_run(tmp_path, f"replay=default,seed={seed}", seed, ref, replay)
    md = make_report(tmp_path, draw=False, against="replay=default")["md"].read_text()
    assert "Forgetting paired against `replay=default`" in md
    header = next(x for x in md.splitlines() if x.startswith("| variant | seeds | Δ forget."))
    assert [c.strip() for c in header.split("|")][3:5] == ["Δ forget. exam", "Δ forget. test"]
    row = md.splitlines()[md.splitlines().index(header) + 2]
    cells = [c.strip() for c in row.split("|")]
    assert cells[1:3] == ["replay=none", "0,1"]
    for cell in cells[3:5]:  # about +21 points, interval above 0
        delta, lo = float(cell.split()[0]), float(cell.split("[")[1].split(",")[0])
        assert 14 < delta < 28 and lo > 0 and float(cell.rpartition("p=")[2]) < 0.01


def test_report_warns_when_a_pair_starts_from_other_round_0_scores(tmp_path):
    """The rows of a seed start from one model, so their round-0 scores match digit for digit
    on one kind of machine; a pair whose scores differ (another machine, the archived
    paradigm table's seed 2) gets a warning that names the rows, the seed and the gap."""
    rng = random.Random(2)
    for seed in (0, 1):
        ref = [rng.random() < 0.7 for _ in range(40)]
        for row in ("a", "b"):
            item_run(tmp_path, f"row={row},seed={seed}", seed, ref, ref)
            moved = {0: 1.5, 1: 0.25, 2: 0.25} if (row, seed) == ("b", 1) else {}
            # item_run's round 0 is scored in round_1/eval (its summary's first eval_dir)
            write_records(tmp_path / f"row={row},seed={seed}" / "round_1" / "eval" / "records.jsonl",
                          [eval_record(f"q{i}", "exam" if i < 20 else "test", c,
                                       scores=[-1.0 - moved.get(i, 0.0), -2.0])
                           for i, c in enumerate(ref)])  # fmt: skip
    md = make_report(tmp_path, draw=False, against="row=a")["md"].read_text()
    warnings = [x for x in md.splitlines() if x.startswith("**Warning: `row=b`")]
    assert len(warnings) == 1  # seed 0 matches: no warning for it
    assert warnings[0].startswith("**Warning: `row=b` and `row=a` start apart at seed 1**")
    assert "score 3 of 40 items differently (up to 1.50 nat per option; 1 of them" in warnings[0]
