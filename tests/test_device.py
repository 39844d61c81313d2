"""The one device rule for inference (cem.device): what it resolves to, what it refuses, and
that every inference path asks it.

The path tests swap the resolver for a spy that answers ``meta``, a real torch device that
holds no data, and stop each path at its first compute: a path that placed its model any
other way (or not at all) would reach it on the CPU, and fail.
"""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer
from omegaconf import OmegaConf

from cem import device as devices
from cem.config import KnowledgeConfig, SourceConfig
from cem.errors import CemError
from cem.validate import EVAL_CHECKS, ConfigInvalid, validate

SENTINEL = "meta"


class Reached(BaseException):  # noqa: N818 (not an error: a path's stop, past any handler)
    """Raised where a path first computes, carrying the device its model is on."""

    def __init__(self, device):
        super().__init__(str(device))
        self.device = str(device)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def spy(monkeypatch):
    return install_spy(monkeypatch)


def install_spy(monkeypatch) -> list[str]:
    """The resolver, replaced: records each ``model.device`` value and answers ``meta``."""
    asked: list[str] = []

    def resolve(spec):
        asked.append(spec)
        return SENTINEL

    monkeypatch.setattr(devices, "resolve_device", resolve)
    return asked


# The tiny model on two items of each set: compose("eval", f"run_dir={d}", *TINY_EVAL, ...).
TINY_EVAL = ("model=tiny_random_llama", "benchmark.limit=2", "eval.progress=false")


# --- the rule ---------------------------------------------------------------------------


def test_auto_is_the_cpu_without_cuda(no_cuda, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.resolve_device("auto") == "cpu"
    assert devices.resolve_device("cpu") == "cpu"


def test_auto_and_cuda_take_this_rank_s_gpu(two_gpus, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devices.resolve_device("auto") == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.resolve_device("auto") == devices.resolve_device("cuda") == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "3")  # one GPU per task: the rank wraps around
    assert devices.resolve_device("cuda") == "cuda:1"
    assert devices.resolve_device("cuda:0") == "cuda:0"


def test_bad_values_name_the_key_and_the_fix(two_gpus):
    assert devices.device_problem("model.device", "gpu") == (
        "model.device must be one of auto, cpu, cuda, cuda:N; got 'gpu' (try model.device=auto)"
    )
    assert "names GPU 2 but 2 are visible (try model.device=auto)" in devices.device_problem(
        "model.device", "cuda:2"
    )
    with pytest.raises(CemError, match="cuda:5 names GPU 5"):
        devices.resolve_device("cuda:5")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_config_error_before_compute(tmp_path, no_cuda, spec, compose):
    cfg = compose("eval", f"run_dir={tmp_path}", *TINY_EVAL, f"model.device={spec}")
    with pytest.raises(ConfigInvalid) as err:
        validate(cfg, EVAL_CHECKS)
    assert f"model.device={spec} needs a CUDA GPU and none is visible (try model.device=auto)" in (
        str(err.value)
    )
    assert not (tmp_path / "eval").exists()


# --- every inference path asks it --------------------------------------------------------


def _stop_at(monkeypatch, module, name, model_arg=0):
    """Replace ``module.name`` by a function that raises Reached with its model's device."""

    def stop(*args, **kwargs):
        model = args[model_arg] if len(args) > model_arg else kwargs["model"]
        raise Reached(next(model.parameters()).device)

    monkeypatch.setattr(module, name, stop)


@pytest.mark.parametrize("mode", ["loglik", "generate"])
def test_eval_scores_where_the_resolver_says(tmp_path, spy, monkeypatch, mode, compose):
    from cem.evaluation import generate, scorer
    from cem.evaluation.runner import run_eval

    _stop_at(monkeypatch, scorer, "score_requests")
    _stop_at(monkeypatch, generate, "generate_texts")
    with pytest.raises(Reached) as hit:
        run_eval(compose("eval", f"run_dir={tmp_path}", *TINY_EVAL, f"eval.mode={mode}",
                         "model.device=cpu"))  # fmt: skip
    assert hit.value.device == SENTINEL
    assert spy == ["cpu"]  # the job's model.device, asked once


def test_the_general_probe_scores_the_same_model(tmp_path, spy, monkeypatch, compose):
    from cem.evaluation import probe, scorer
    from cem.evaluation.runner import run_eval

    monkeypatch.setattr(scorer, "score_requests", _fake_scores)
    _stop_at(monkeypatch, probe, "general_nll")
    with pytest.raises(Reached) as hit:
        run_eval(compose("eval", f"run_dir={tmp_path}", *TINY_EVAL))
    assert hit.value.device == SENTINEL


def _fake_scores(model, tokenizer, requests, **_):
    return [[0.0] * len(r.continuations) for r in requests]


def test_the_extractor_and_question_writer_generate_where_the_resolver_says(tmp_path, monkeypatch):
    from cem.evaluation import generate
    from cem.knowledge.retrieve import extractor_generate
    from cem.models import save_model

    folder = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "extractor")
    spy = install_spy(monkeypatch)
    _stop_at(monkeypatch, generate, "generate_texts")
    kcfg = OmegaConf.structured(KnowledgeConfig(name="x", extractor_model=str(folder)))
    ask = extractor_generate(kcfg, 4, device="cuda:3")
    assert spy == []  # nothing loads before there is a prompt
    with pytest.raises(Reached) as hit:
        ask(["Name the capital of Bhutan."])
    assert hit.value.device == SENTINEL and spy == ["cuda:3"]


def test_the_dense_embedder_runs_where_the_resolver_says(tmp_path, spy, monkeypatch):
    import sentence_transformers

    from cem.knowledge.sources import build_knowledge_source

    placed = []

    class Embedder:
        def __init__(self, where, device=None, model_kwargs=None):
            placed.append((where, device, model_kwargs["dtype"]))
            raise Reached(device)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Embedder)
    summaries = tmp_path / "s.json"
    summaries.write_text('{"Paris": {"title": "Paris", "extract": "Paris is a city."}}')
    source = SourceConfig(kind="wiki_dense", path=str(summaries), embedding_model="m",
                          embedding_dtype="float32", index_dir=str(tmp_path / "idx"))  # fmt: skip
    with pytest.raises(Reached) as hit:
        build_knowledge_source(KnowledgeConfig(name="wiki_dense", sources=[source]),
                               device="cuda:1")  # fmt: skip
    assert hit.value.device == SENTINEL and spy == ["cuda:1"]
    assert placed == [("m", SENTINEL, torch.float32)]
