"""Every fix a config error suggests is an override that composes and removes that error.

Each bad setting below is checked the way ``cem run`` checks it (a choice outside its list
before Hydra composes, the rest by ``check_run``); every ``(try A or B)`` of every message is
then applied, alternative by alternative, in place of the bad overrides it names.
"""

from __future__ import annotations

import re

import pytest
from conftest import compose_config

from cem.config import RunJob
from cem.loop.run import check_run
from cem.validate import override_problems

BASE = ("experiment=fast", "run_dir=/tmp/x")
BAD = [
    ["eval.formulation=loglik"], ["eval.mcf_target=word"], ["eval.mode=chat"],
    ["eval.batch_size=0"], ["eval.sets=[test]"], ["model.dtype=int8"], ["model.max_length=4"],
    ["model.random_init=false"], ["model.path=/m"], ["model.asset=a", "model.path=/m"],
    ["benchmark.relations=[capital,capitol]"],
    ["benchmark.relations=[]"], ["benchmark.transfer=[reverse,sideways]"],
    ["benchmark.formulation=qa"], ["benchmark=mmlu"], ["benchmark.exam_fraction=0.9"],
    ["knowledge.extractor=regex"], ["knowledge.extractor=llm"], ["knowledge.passages=some"],
    ["knowledge.queries_per_mistake=0"], ["knowledge.dedup_jaccard=0"], ["knowledge.sources=[]"],
    ["mistakes.margin_threshold=-1"], ["loop.rounds=0"], ["loop.patience=0"],
    ["loop.warmup.max_steps=0"], ["logger.mode=loud"], ["mix.cit_ratio=1.5"], ["mix.cit_ratio=1"],
    ["instructions.normative.formulations=[cf,qa]"], ["instructions.normative.formulations=[]"],
    ["instructions.extractive.paraphrases=9"], ["instructions.extractive.question_source=llm"],
    ["instructions.extractive.open_book=false", "instructions.extractive.closed_book=false"],
    ["train.lr=0"], ["train.max_steps=0"], ["train.finetune=qlora"], ["train.schedule=step"],
    ["train.seq_len=8"], ["train.warmup_ratio=2"], ["train.lora.target_modules=[]"],
    ["train.lora.target_modules=[q_proj,query]"], ["+train.loss_weights.cpd=1.0"],
    ["+trainer.max_steps=3"], ["+trainer.fast_dev=1"], ["trainer.accelerator=tpuu"],
    ["trainer.strategy=ddpp"], ["trainer.precision=8"], ["trainer.devices=0"],
    ["trainer.log_every_n_steps=0"], ["knowledge=web_search", "knowledge.search.endpoint=null"],
]  # fmt: skip
TRY = re.compile(r"\(try (.+)\)$")


def problems_of(overrides: list[str]) -> list[str]:
    """What ``cem run`` reports for these overrides, as its command line does."""
    problems = override_problems(RunJob, [*BASE, *overrides])
    return problems or check_run(compose_config("run", *BASE, *overrides))


def fixes(problem: str) -> list[list[str]]:
    """The alternatives of a message's ``(try ...)``, each a list of overrides."""
    found = TRY.search(problem)
    return [alt.split() for alt in found.group(1).split(" or ")] if found else []


def apply(bad: list[str], fix: list[str]) -> list[str]:
    """The overrides after the fix: a value replaces a bad override of its key (OmegaConf
    refuses a bad choice even when a later override changes it), a deletion follows it, and a
    group option replaces the user's own overrides inside that group (``knowledge=wiki_offline``
    undoes ``knowledge.sources=[]``)."""
    keys = [f.lstrip("+").split("=")[0] for f in fix if not f.startswith("~")]
    groups = [k.replace("/", ".") for k in keys if "." not in k]
    kept = [b for b in bad if b.lstrip("+~").split("=")[0] not in keys
            and not any(b.lstrip("+~").startswith(f"{g}.") for g in groups)]  # fmt: skip
    return [*kept, *fix]


@pytest.mark.parametrize("bad", BAD, ids=lambda b: " ".join(b))
def test_each_suggested_fix_composes_and_clears_its_problem(bad, compose):
    problems = problems_of(bad)
    assert problems, f"{bad} is not reported"
    for problem in problems:
        alternatives = fixes(problem)
        assert alternatives, f"no fix suggested: {problem}"
        for fix in alternatives:
            fixed = apply(bad, fix)
            compose("run", *BASE, *fixed)  # raises if the fix is not an override
            assert problem not in problems_of(fixed), (fix, problem)


def test_the_three_fixes_the_issue_found_wrong_are_overrides_now():
    by_bad = {" ".join(b): problems_of(b) for b in
              (["eval.formulation=loglik"], ["benchmark.relations=[capitol]"],
               ["+train.loss_weights.cpd=1.0"])}  # fmt: skip
    assert "(try eval.formulation=mcf)" in by_bad["eval.formulation=loglik"][0]
    assert "must be one of null, mcf, cf" in by_bad["eval.formulation=loglik"][0]
    assert by_bad["benchmark.relations=[capitol]"][0].endswith(
        "(try benchmark.relations=[capital])"
    )
    assert by_bad["+train.loss_weights.cpd=1.0"][0].endswith("(try ~train.loss_weights.cpd)")


def test_a_run_that_would_score_nothing_stops(tmp_path):
    from cem.benchmarks.registry import select_sets
    from cem.benchmarks.schema import MCItem
    from cem.errors import ConfigError

    pool = {"pool": [MCItem("p1", "q", ["a", "b"], 0, set="pool")]}
    with pytest.raises(ConfigError) as e:
        select_sets(pool, None)
    assert "leaves nothing to score" in str(e.value) and str(e.value).endswith(
        "(try eval.sets=[pool])"
    )
    assert select_sets(pool, ["pool"]) == pool  # the fix
    with pytest.raises(ConfigError, match=r"must name at least one set .*\(try eval.sets=null\)"):
        select_sets(pool, [])
