"""Multi-GPU training presets (cem.training.strategies, conf/trainer/, the SLURM launcher):
what can be checked on a CPU. FSDP itself runs here on one gloo rank, because torch's FSDP
runs on the CPU; Lightning's FSDP and DeepSpeed strategies need CUDA and are refused."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys

import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer
from omegaconf import OmegaConf
from test_training import LORA, TINY, small_set, write_set

from cem.training import checks, strategies
from cem.training.finetune import merged, prepare, save
from cem.training.train import run_train
from cem.validate import ConfigInvalid


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def lora_model():
    model = prepare(tiny_model(), "lora", LORA)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter change the weights
            torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("trainer", ["fsdp", "deepspeed", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharded_presets_are_refused_without_cuda_before_compute(tmp_path, no_cuda, trainer,
                                                                   compose):  # fmt: skip
    write_set(tmp_path, small_set())
    with pytest.raises(ConfigInvalid) as err:
        run_train(compose("train", f"run_dir={tmp_path}", *TINY, f"trainer={trainer}"))
    strategy = {"fsdp": "fsdp", "deepspeed_zero3": "deepspeed_stage_3"}.get(
        trainer, "deepspeed_stage_2"
    )
    assert (f"trainer.strategy={strategy} shards the model over CUDA GPUs and none is "
            "visible (try trainer=cpu)") in str(err.value)  # fmt: skip
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "model").exists()


def test_deepspeed_without_the_package_names_the_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a)
    )
    tr = OmegaConf.create({"accelerator": "gpu", "strategy": "deepspeed_stage_3"})
    assert checks.check_devices(tr) == [
        "trainer.strategy=deepspeed_stage_3 needs the deepspeed package, which is not installed "
        "(pip install -e '.[deepspeed]' on the CUDA machine, or try trainer=fsdp)"
    ]
    assert checks.check_devices(OmegaConf.create({"strategy": "fsdp"})) == []


def test_the_zero3_preset_shards_the_weights_too(tmp_path, compose):
    zero2 = compose("train", f"run_dir={tmp_path}", *TINY, "trainer=deepspeed").trainer
    zero3 = compose("train", f"run_dir={tmp_path}", *TINY, "trainer=deepspeed_zero3").trainer
    assert zero2.strategy == "deepspeed_stage_2" and zero3.strategy == "deepspeed_stage_3"
    assert {**zero3, "strategy": None} == {**zero2, "strategy": None}


def test_fsdp_wraps_each_decoder_layer_with_the_original_parameters():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = lora_model()
    assert strategies.layer_classes(model) == {LlamaDecoderLayer}
    strategy = strategies.for_model("fsdp", model)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy._state_dict_type == "full"
    assert strategies.for_model("ddp", model) == "ddp"
    with pytest.raises(strategies.ConfigError, match="names none in _no_split_modules"):
        strategies.layer_classes(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.fixture
def one_rank(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0,
                            world_size=1)  # fmt: skip
    yield
    dist.destroy_process_group()


def test_lora_under_fsdp_needs_the_original_parameters_and_gathers_whole(one_rank, tmp_path):
    """The recipe's reason: a decoder layer holds frozen weights and trainable adapters,
    which one flat parameter can only hold with ``use_orig_params``. Its full state dict,
    put back into a weightless LoRA copy (``from_state``), merges to the same model."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    cpu = torch.device("cpu")  # torch's FSDP runs on the CPU when told so; Lightning's not
    policy = ModuleWrapPolicy(strategies.layer_classes(lora_model()))
    with pytest.raises(ValueError, match="both parameters with requires_grad=True and False"):
        FSDP(lora_model(), auto_wrap_policy=policy, use_orig_params=False, device_id=cpu)
    recipe = {k: v for k, v in strategies.FSDP_RECIPE.items() if k != "state_dict_type"}
    model = lora_model()
    reference = {k: v.clone() for k, v in merged(copy.deepcopy(model)).state_dict().items()}
    wrapped = FSDP(model, auto_wrap_policy=policy, device_id=cpu, **recipe)
    assert sum(isinstance(m, FSDP) for m in wrapped.modules()) == 3  # 2 layers + the root
    full = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, full):
        state = {f"model.{k}": v for k, v in wrapped.state_dict().items()}  # CemLM's prefix
    whole = strategies.from_state(state, model.config, lambda m: prepare(m, "lora", LORA))
    out = save(whole, tiny_tokenizer(), tmp_path / "model", "cpu", "200KB")
    from safetensors.torch import load_file

    saved = {}
    for shard in sorted(out.glob("model-*.safetensors")):
        saved |= load_file(shard)
    assert len(list(out.glob("model-*.safetensors"))) > 1  # max_shard_size: sharded
    assert saved.keys() == reference.keys() - {"lm_head.weight"}  # tied to the embeddings
    for key, value in saved.items():
        torch.testing.assert_close(value, reference[key])


def test_strip_prefix_finds_the_wrappers_prefix():
    wanted = {"base_model.model.lm_head.weight", "lm_head.weight"}
    state = {"_forward_module.model.base_model.model.lm_head.weight": 1}
    assert strategies.strip_prefix(state, wanted) == {"base_model.model.lm_head.weight": 1}
    with pytest.raises(ValueError, match="names no weight"):
        strategies.strip_prefix({"x.y": 1}, wanted)


def test_the_merge_runs_on_the_resolved_device(tmp_path, monkeypatch):
    from cem import device as devices

    asked, placed = [], []
    model = lora_model()
    monkeypatch.setattr(devices, "resolve_device", lambda spec: asked.append(spec) or "cpu")
    real_to = type(model).to
    monkeypatch.setattr(type(model), "to", lambda m, d: placed.append(d) or real_to(m, d))
    save(model, tiny_tokenizer(), tmp_path / "model", "cuda:1", "5GB")
    assert asked == ["cuda:1"] and placed == ["cpu"]
    assert (tmp_path / "model" / "model.safetensors").is_file()  # one shard under 5GB


def test_slurm_starts_one_task_per_gpu_on_trainer_num_nodes(compose):
    cfg = compose("run", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                      "trainer=ddp", "trainer.num_nodes=2", hydra=True)  # fmt: skip
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["tasks_per_node"] == 4 and launcher["nodes"] == 2
    assert cfg.trainer.devices == -1  # every GPU of the node: one rank per task


def test_a_bad_shard_size_names_the_key_and_the_fix(tmp_path, compose):
    from cem.training.train import check_train

    def problems(size: str) -> list[str]:
        cfg = compose("train", f"run_dir={tmp_path}", *TINY, f"train.max_shard_size={size}")
        return check_train(cfg.train)

    assert problems("5gigs") == [
        "train.max_shard_size must be a size such as 5GB, 500MB or 2GiB; got '5gigs' "
        "(try train.max_shard_size=5GB)"
    ]
    assert problems("500MB") == []


def test_cem_run_refuses_training_ranks_it_cannot_start_before_compute(tmp_path, monkeypatch,
                                                                       compose):  # fmt: skip
    """``cem run`` starts a stage's training ranks on this machine, one per device
    (cem.training.launch): several nodes, or a list of devices, it refuses before compute."""
    from cem.loop.run import run_loop

    cfg = compose("run", "model=tiny_random_llama", "trainer=ddp", "trainer.accelerator=cpu",
                  "trainer.devices=2", "trainer.num_nodes=2", f"run_dir={tmp_path / 'run'}")  # fmt: skip
    with pytest.raises(ConfigInvalid) as err:
        run_loop(cfg)
    assert ("trainer.num_nodes=2: cem run starts its training ranks on this machine only (try "
            "trainer.num_nodes=1, or train a round's stage alone on several nodes: torchrun "
            "--nnodes=M --nproc_per_node=N -m cem train run_dir=<run>/round_<r> trainer=ddp "
            "trainer.devices=N trainer.num_nodes=M)") in str(err.value)  # fmt: skip
    assert not (tmp_path / "run" / "round_0").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    fsdp = OmegaConf.create({"accelerator": "gpu", "devices": -1, "strategy": "fsdp"})
    assert checks.training_ranks(fsdp) == (8, 1)
    assert checks.check_loop_ranks(fsdp) == []  # 8 ranks, started by the loop
    assert checks.check_loop_ranks(OmegaConf.merge(fsdp, {"devices": 1})) == []
    listed = OmegaConf.merge(fsdp, {"devices": [0, 2]})
    assert checks.check_loop_ranks(listed) == [
        "trainer.devices=[0, 2]: cem run starts one training rank per device and takes a count "
        "(try trainer.devices=2 with CUDA_VISIBLE_DEVICES naming the GPUs)"]  # fmt: skip


# --- the loop's launched ranks: polled while they run, stopped with the loop -------------------


def test_launched_ranks_are_polled_while_they_run_and_once_after():
    from cem.training.launch import wait_polling

    calls = []
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    assert wait_polling(proc, calls.append, every=0.1) == 0
    assert calls[-1] is True and calls.count(True) == 1
    assert calls.count(False) >= 5  # ~14 polls in 1.5 s; under load, fewer


def test_a_stopped_loop_stops_its_launched_ranks_with_sigterm():
    """A stop of the loop (here: the poll fails) reaches torchrun as SIGTERM, which it hands
    to the ranks so that they save their checkpoint; the stop itself goes on up."""
    from cem.training.launch import wait_polling

    def fail(final: bool) -> None:
        raise KeyboardInterrupt

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(KeyboardInterrupt):
        wait_polling(proc, fail, every=0.1)
    assert proc.returncode == -signal.SIGTERM
