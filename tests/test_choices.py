"""Choices are ``StrEnum`` fields (``cem.choices``): a bad value fails at composition naming
the key and the allowed values, ``cem`` says so in one line and exits 2, and a config saved
when the choices were plain strings still matches."""

from __future__ import annotations

import enum
import json
import re

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, ValidationError

from cem import choices
from cem.cli import main
from cem.config import RENAMED, RunJob
from cem.layout import RunDir
from cem.validate import choice_field, field_type, override_problems

BASE = ["experiment=fast", "run_dir=/tmp/x"]

# (a bad override, its key, the values the message must list)
BAD_CHOICES = [
    ("eval.formulation=xyz", "eval.formulation", "null, mcf, cf"),
    ("eval.mcf_target=word", "eval.mcf_target", "letter, text"),
    ("eval.mode=chat", "eval.mode", "loglik, generate"),
    ("model.dtype=int8", "model.dtype", "auto, float32, bfloat16, float16"),
    ("benchmark.name=csv", "benchmark.name", "world, xiezhi, mmlu, ceval, jsonl, parquet"),
    ("benchmark.formulation=qa", "benchmark.formulation", "mcf, cf"),
    ("benchmark.formulation=null", "benchmark.formulation", "mcf, cf"),  # not Optional
    ("knowledge.sources.0.kind=wiki_ofline", "knowledge.sources.0.kind",
     "wiki_offline, wiki_dense, local_corpus, wikipedia_api, web_search"),
    ("knowledge.sources.0.retriever=tfidf", "knowledge.sources.0.retriever", "bm25, dense"),
    ("knowledge.sources.0.embedding_dtype=int8", "knowledge.sources.0.embedding_dtype",
     "auto, float32, bfloat16, float16"),
    ("knowledge.search.provider=google", "knowledge.search.provider",
     "searxng, brave, tavily, serpapi_bing, bing"),
    ("knowledge.passages=some", "knowledge.passages", "mistakes, random, full"),
    ("knowledge.extractor=regex", "knowledge.extractor", "rule, llm"),
    ("instructions.normative.formulations=[cf,qa]", "instructions.normative.formulations",
     "mcf, cf"),
    ("instructions.extractive.question_source=gpt", "instructions.extractive.question_source",
     "cloze, llm"),
    ("instructions.general.format=csv", "instructions.general.format", "alpaca, sharegpt"),
    ("mix.count=words", "mix.count", "loss_tokens, all_tokens"),
    ("paradigm.name=mixed", "paradigm.name", "parallel, sequential, cpt_only, cit_only"),
    ("protocol.name=open", "protocol.name", "heldout, retest"),
    ("train.finetune=qlora", "train.finetune", "lora, full"),
    ("train.schedule=step", "train.schedule", "cosine, linear, constant"),
    ("loop.baseline=bm25", "loop.baseline", "none, random_cpt, full_corpus_cpt, "
     "full_corpus_cpt_steps, full_corpus_cpt_fifth, cit_only"),
    ("loop.keep_models=some", "loop.keep_models", "all, last, none"),
    ("logger.backend=tensorboard", "logger.backend", "wandb, csv"),
    ("logger.mode=loud", "logger.mode", "offline, online, disabled"),
]  # fmt: skip
IDS = [bad for bad, _, _ in BAD_CHOICES]


@pytest.mark.parametrize(("bad", "key", "allowed"), BAD_CHOICES, ids=IDS)
def test_a_bad_choice_fails_at_composition_naming_the_key_and_the_values(
    bad, key, allowed, compose
):
    with pytest.raises(ConfigCompositionException) as err:
        compose("run", *BASE, bad)
    cause = err.value.__cause__
    assert isinstance(cause, ValidationError), cause
    # OmegaConf writes a list's index in brackets, and names a list's bad item: key[1].
    assert re.sub(r"\[(\d+)\]", r".\1", cause.full_key).startswith(key), cause.full_key
    names = allowed.removeprefix("null, ")
    assert f"expected one of [{names}]" in str(cause) or "not Optional" in str(cause), cause


@pytest.mark.parametrize(("bad", "key", "allowed"), BAD_CHOICES, ids=IDS)
def test_cem_reports_it_first_in_one_line_with_a_fix_that_composes(bad, key, allowed, compose):
    (problem,) = override_problems(RunJob, [*BASE, bad])
    assert problem.startswith(f"{key} "), problem
    assert f"must be one of {allowed}; got " in problem or f"must be among {allowed};" in problem
    fix = problem.rsplit("(try ", 1)[1].removesuffix(")")
    assert fix.startswith(f"{key}=")
    compose("run", *BASE, fix)
    assert override_problems(RunJob, [fix]) == []


def test_cem_run_with_a_bad_choice_exits_2_before_anything_runs(tmp_path, capsys):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["run", f"run_dir={root}", "eval.formulation=xyz", "train.schedule=step"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "cem run: error: invalid config:",
        "  - eval.formulation must be one of null, mcf, cf; got 'xyz' (try eval.formulation=mcf)",
        "  - train.schedule must be one of cosine, linear, constant; got 'step' "
        "(try train.schedule=cosine)",
    ]
    assert not root.exists()


def test_a_sweep_with_one_bad_value_stops_before_its_first_job(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        main(["eval", "-m", f"hydra.sweep.dir={sweep}", "eval.mode=loglik,sample"])
    assert stop.value.code == 2
    assert "eval.mode must be one of loglik, generate; got 'sample'" in capsys.readouterr().err
    assert not sweep.exists()


# (an override of a renamed key, the fix cem suggests)
RENAMED_OVERRIDES = [
    ("logger.wandb=false", "logger.backend=csv"),
    ("logger.wandb=true", "logger.backend=wandb"),
    ("logger.name=csv", "logger.backend=csv"),
    ("logger.name=tensorboard", "logger.backend=wandb"),
    ("+logger.wandb=false", "logger.backend=csv"),
]


@pytest.mark.parametrize(("old", "fix"), RENAMED_OVERRIDES)
def test_a_renamed_key_is_refused_naming_its_new_key_and_a_fix_that_composes(old, fix, compose):
    key, _, value = old.lstrip("+").partition("=")
    (problem,) = override_problems(RunJob, [*BASE, old])
    assert problem == (f"{key} is now logger.backend (one of wandb, csv); got {key}={value} "
                       f"(try {fix})")  # fmt: skip
    assert compose("run", *BASE, fix).logger.backend == fix.partition("=")[2]


def test_every_renamed_key_is_gone_and_its_new_key_takes_the_mapped_values():
    assert RENAMED
    for old, (new, new_values) in RENAMED.items():
        assert field_type(RunJob, old) is None, old
        kind, _, _ = choice_field(RunJob, new)
        assert set(new_values.values()) <= set(choices.values(kind)), old


def test_cem_run_with_a_renamed_key_exits_2_in_one_line(tmp_path, capsys):
    root = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["run", f"run_dir={root}", "logger.wandb=false"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "cem run: error: invalid config:",
        "  - logger.wandb is now logger.backend (one of wandb, csv); got logger.wandb=false "
        "(try logger.backend=csv)",
    ]
    assert not root.exists()


def test_what_is_not_a_bad_choice_is_left_to_hydra():
    fine = ["eval.formulation=null", "eval.formulation=mcf", "paradigm=cit_only", "~eval.mode",
            "eval.mode=${oc.env:MODE}", "train.schedule=cosine,linear", "seed=range(3)",
            "+train.loss_weights.cpt=2", "hydra.job.name=x", "model.device=cuda:1"]  # fmt: skip
    assert override_problems(RunJob, fine) == []
    assert override_problems(RunJob, ["eval.mode=("]) == []  # malformed: Hydra reports it


def all_choices() -> list[type[enum.StrEnum]]:
    return [c for c in vars(choices).values()
            if isinstance(c, type) and issubclass(c, enum.StrEnum) and c is not enum.StrEnum]  # fmt: skip


@pytest.mark.parametrize("kind", all_choices(), ids=lambda c: c.__name__)
def test_every_choice_is_named_by_its_value(kind):
    # OmegaConf reads a member by its name and writes names into config YAMLs.
    for member in kind:
        assert member.name == member.value == str(member) == f"{member}"
        assert json.dumps(member) == f'"{member.value}"'


def test_each_choice_has_an_implementation():
    from cem.benchmarks.loaders import FORMATS
    from cem.curriculum.mixing import SIZES
    from cem.knowledge.providers import PROVIDERS
    from cem.knowledge.sources import ONLINE_SOURCES, SOURCES
    from cem.models import DTYPES

    values = choices.values
    assert [*SOURCES, *ONLINE_SOURCES] == values(choices.SourceKind)
    assert sorted(["world", *FORMATS]) == sorted(values(choices.Benchmark))
    assert ["auto", *DTYPES] == values(choices.Dtype)  # auto: cem.device.resolve_dtype
    assert sorted(SIZES) == sorted(values(choices.TokenCount))
    retired = {choices.SearchProvider.bing}
    assert set(PROVIDERS) == set(choices.SearchProvider) - retired


def test_a_config_saved_with_plain_strings_still_matches(tmp_path, compose):
    from cem.loop.run import guard_config
    from cem.loop.share import run_key, stage_key

    cfg = compose("run", *BASE, f"run_dir={tmp_path}", "eval.formulation=mcf")
    assert isinstance(cfg.eval.formulation, choices.Formulation)
    # What the code wrote and hashed when the choices were strings: JSON holds no enums.
    plain = OmegaConf.create(json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True))))
    assert OmegaConf.to_yaml(cfg, resolve=True) == OmegaConf.to_yaml(plain)
    assert run_key(cfg) == run_key(plain)
    assert stage_key("eval", cfg, []) == stage_key("eval", plain, [])
    RunDir(tmp_path).config.write_text(OmegaConf.to_yaml(plain), encoding="utf-8")
    guard_config(tmp_path, cfg)  # a continuation of the old run: nothing changed
    other = compose("run", *BASE, f"run_dir={tmp_path}", "eval.formulation=cf")
    with pytest.raises(Exception, match=r"eval.formulation: 'mcf' -> "):
        guard_config(tmp_path, other)


# --- a bad choice in a config file -----------------------------------------------------------


def user_conf(tmp_path, files: dict[str, str]):
    """A ``--config-dir`` beside conf/ holding ``files`` (path -> text)."""
    folder = tmp_path / "my_conf"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def cem_error(argv: list[str], capsys) -> list[str]:
    """What ``cem`` says on stderr for ``argv``, which must stop with exit code 2."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.splitlines()


BAD_EXPERIMENT = "# @package _global_\nseed: 1\neval:\n  formulation: clozee\n"
BAD_KNOWLEDGE = "name: mine\nsources:\n  - kind: wiki_offline\n  - kind: wiki_ofline\n"


def test_a_bad_choice_in_a_config_file_is_said_in_one_line_with_the_file_and_line(tmp_path, capsys):
    conf = user_conf(tmp_path, {"experiment/mine.yaml": BAD_EXPERIMENT})
    root = tmp_path / "run"
    err = cem_error(["run", "--config-dir", str(conf), f"run_dir={root}", "experiment=mine"],
                    capsys)  # fmt: skip
    assert err == [
        "cem run: error: invalid config:",
        f"  - {conf}/experiment/mine.yaml:4: eval.formulation must be one of null, mcf, cf; "
        "got 'clozee' (try formulation: mcf)",
    ]
    assert not root.exists()


def test_a_list_items_bad_choice_in_a_group_option_names_its_full_key(tmp_path, capsys):
    # OmegaConf names the item's field alone ("kind"); the file says which item it is.
    conf = user_conf(tmp_path, {"knowledge/mine.yaml": BAD_KNOWLEDGE})
    err = cem_error(["retrieve", "--config-dir", str(conf), "run_dir=/tmp/x", "knowledge=mine"],
                    capsys)  # fmt: skip
    assert err[1] == (
        f"  - {conf}/knowledge/mine.yaml:4: knowledge.sources.1.kind must be one of wiki_offline, "
        "wiki_dense, local_corpus, wikipedia_api, web_search; got 'wiki_ofline' "
        "(try kind: wiki_offline)"
    )


def test_a_renamed_key_in_a_config_file_names_the_new_key(tmp_path, capsys):
    conf = user_conf(tmp_path, {"experiment/old.yaml": "# @package _global_\nlogger:\n"
                                                       "  wandb: false\n"})  # fmt: skip
    err = cem_error(["run", "--config-dir", str(conf), "run_dir=/tmp/x", "experiment=old"], capsys)
    assert err[1] == (f"  - {conf}/experiment/old.yaml:3: logger.wandb is now logger.backend "
                      "(one of wandb, csv); got logger.wandb=false (try backend: csv)")  # fmt: skip


def test_a_sweep_stops_before_its_first_job_on_a_later_jobs_bad_file(tmp_path, capsys):
    conf = user_conf(tmp_path, {"experiment/mine.yaml": BAD_EXPERIMENT,
                                "knowledge/mine.yaml": BAD_KNOWLEDGE,
                                "table/mine.yaml": "# @package _global_\nhydra:\n  mode: MULTIRUN\n"
                                "  sweeper:\n    params:\n      knowledge: wiki_offline,mine\n"})  # fmt: skip
    sweep = tmp_path / "sweep"
    err = cem_error(["run", "--config-dir", str(conf), "-m", f"hydra.sweep.dir={sweep}",
                     "experiment=fast,mine"], capsys)  # fmt: skip
    assert err[1].startswith(f"  - {conf}/experiment/mine.yaml:4: eval.formulation must be")
    # A table's own axis (the sweeper's params in its file) is composed value by value too.
    err = cem_error(["run", "--config-dir", str(conf), f"hydra.sweep.dir={sweep}",
                     f"run_dir={tmp_path / 'run'}", "experiment=fast", "table=mine"], capsys)  # fmt: skip
    assert err[1].startswith(f"  - {conf}/knowledge/mine.yaml:4: knowledge.sources.1.kind must")
    assert not sweep.exists()


def test_any_other_error_in_a_config_file_is_left_to_hydra(tmp_path, capsys):
    conf = user_conf(tmp_path, {"experiment/typo.yaml": "# @package _global_\ntrain:\n"
                                                        "  lr: fast\n"})  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(["run", "--config-dir", str(conf), "run_dir=/tmp/x", "experiment=typo"])
    assert stop.value.code == 1  # Hydra's own exit
    err = capsys.readouterr().err
    assert "In 'experiment/typo': ValidationError" in err and "full_key: train.lr" in err
