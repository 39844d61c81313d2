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


# --- the dtype rule ----------------------------------------------------------------------
# The CPU's bf16 support is the machine's: the tests set what torch reports about it.


@pytest.fixture
def cpu_bf16(monkeypatch):
    """``set(native)``: make this CPU report native bf16 (AVX512-BF16) or none (AVX2)."""
    monkeypatch.setattr(devices, "_WARNED", set())

    def set_native(native: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability",
                            lambda: "AVX512" if native else "AVX2")  # fmt: skip

    return set_native


def test_auto_is_bf16_only_where_the_cpu_runs_it(cpu_bf16, no_cuda, capsys):
    cpu_bf16(True)
    assert devices.resolve_dtype("model.dtype", "auto", "cpu") == "bfloat16"
    assert devices.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert devices.resolve_precision("auto", "auto") == "bf16-mixed"  # no CUDA: the CPU's
    assert devices.cpu_kind() == "avx512_bf16"
    cpu_bf16(False)
    assert devices.resolve_dtype("model.dtype", "auto", "cpu") == "float32"
    assert devices.resolve_precision("auto", "cpu") == "32-true"
    assert devices.cpu_kind() == "avx2"
    assert devices.resolve_dtype("model.dtype", "float16", "cpu") == "float16"  # as set
    assert capsys.readouterr().err == ""  # auto and explicit non-bf16 values warn of nothing


def test_explicit_bf16_on_a_cpu_that_emulates_it_warns_once_with_the_fix(cpu_bf16, no_cuda,
                                                                        capsys):  # fmt: skip
    cpu_bf16(False)
    for _ in range(2):
        assert devices.resolve_dtype("model.dtype", "bfloat16", "cpu") == "bfloat16"  # kept
        assert devices.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("model.dtype=bfloat16: this CPU (avx2) has no native bf16") == 1
    assert err.count("Set model.dtype=auto for float32 here") == 1
    assert err.count("trainer.precision=bf16-mixed: this CPU (avx2)") == 1
    assert err.count("Set trainer.precision=auto") == 1
    cpu_bf16(True)
    devices.resolve_dtype("knowledge.extractor_dtype", "bfloat16", "cpu")
    assert capsys.readouterr().err == ""  # native: nothing to say


def test_a_gpu_with_bf16_gets_bf16(two_gpus, monkeypatch, cpu_bf16):
    cpu_bf16(False)  # the CPU does not matter for a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.resolve_dtype("model.dtype", "auto", "cuda:1") == "bfloat16"
    assert devices.resolve_precision("auto", "gpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert devices.resolve_dtype("model.dtype", "auto", "cuda:0") == "float32"
    assert devices.resolve_precision("auto", "auto") == "32-true"


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_models_load_in_the_resolved_dtype(cpu_bf16, no_cuda, native, dtype):
    from cem.config import ModelConfig
    from cem.models import load_model

    cpu_bf16(native)
    arch = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
    model, _ = load_model(ModelConfig(name="t", random_init=True, arch=arch, dtype="auto"))
    assert next(model.parameters()).dtype == dtype


def test_the_trainer_gets_the_resolved_precision(cpu_bf16, no_cuda, compose, tmp_path):
    from lightning.pytorch.callbacks import Callback  # the gather callback: does nothing

    from cem.training.checks import _trainer_choices
    from cem.training.train import build_trainer

    cfg = compose("train", f"run_dir={tmp_path}", "model=tiny_random_llama")
    assert cfg.trainer.precision == "auto"  # trainer=cpu, the default
    assert _trainer_choices(cfg.trainer) == [None, None]  # auto is a valid value
    for native, expected in ((False, "32-true"), (True, "bf16-mixed")):
        cpu_bf16(native)
        trainer = build_trainer(cfg, tmp_path, [], torch.nn.Linear(2, 2), Callback())
        assert trainer.precision == expected
    bad = OmegaConf.merge(cfg.trainer, {"precision": "bf17"})
    assert "must be one of auto, " in _trainer_choices(bad)[-1]


def test_the_code_fingerprint_tells_emulated_bf16_apart(cpu_bf16):
    from cem.provenance import code_fingerprint

    prints = {}
    for native in (True, False):
        cpu_bf16(native)
        prints[native] = code_fingerprint.__wrapped__()
    assert prints[True] != prints[False]


def test_the_code_fingerprint_tells_cpus_with_native_bf16_apart(cpu_bf16, monkeypatch, request):
    """AMX, AVX512-BF16 and a CPU capped by ONEDNN_MAX_CPU_ISA all run bf16 natively and
    give different numbers, so each gets its own fingerprint, and provenance names it."""
    from cem.provenance import code_fingerprint, provenance

    code_fingerprint.cache_clear()  # provenance() below caches a fingerprint of the fakes:
    request.addfinalizer(code_fingerprint.cache_clear)  # later tests get this machine's

    cpu_bf16(True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(devices, "_cpu_model", lambda: "GenuineIntel 6/143 Xeon")
    avx512_bf16 = code_fingerprint.__wrapped__()
    assert devices.cpu_kernels() == "avx512 avx512_bf16; GenuineIntel 6/143 Xeon"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    amx = code_fingerprint.__wrapped__()
    assert "amx_tile" in devices.cpu_kernels()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    capped = code_fingerprint.__wrapped__()
    assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in devices.cpu_kernels()
    monkeypatch.setattr(devices, "_cpu_model", lambda: "AuthenticAMD 25/17 EPYC")
    amd = code_fingerprint.__wrapped__()
    assert len({avx512_bf16, amx, capped, amd}) == 4
    assert provenance()["cpu"] == devices.cpu_kernels()


def test_the_cpu_model_is_read_from_cpuinfo():
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    vendor = next(line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("vendor_id"))  # fmt: skip
    model = devices._cpu_model()
    assert model.startswith(f"{vendor} ") and "/" in model.split()[1]  # vendor family/model


@pytest.mark.parametrize("native, dtype", [(True, "bfloat16"), (False, "float32")])
def test_eval_timing_records_the_resolved_dtype(cpu_bf16, no_cuda, tmp_path, compose, native,
                                                dtype):  # fmt: skip
    import json

    from cem.evaluation.runner import run_eval

    cpu_bf16(native)
    run_eval(compose("eval", f"run_dir={tmp_path}", *TINY_EVAL, "model.dtype=auto",
                     "eval.general_probe=false"))  # fmt: skip
    timing = json.loads((tmp_path / "eval" / "timing.json").read_text())
    assert timing["dtype"] == dtype and timing["device"] == "cpu"  # what auto became here
