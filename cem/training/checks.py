"""Checks of what training hands to third parties, before any compute: the ``trainer`` group
against ``lightning.Trainer``'s real signature and choices, and LoRA target names against
the model's modules (built from its config on the meta device: no weights are read)."""

from __future__ import annotations

import inspect
import typing

from omegaconf import DictConfig, OmegaConf

from cem.training import SHARDED_STRATEGIES
from cem.validate import at_least, choice, override_value

# Trainer arguments that cem sets itself (cem.training.train.build_trainer), and from what.
TRAINER_OWNED = {"max_steps": "train.max_steps", "max_epochs": "train.epochs",
                 "accumulate_grad_batches": "train.grad_accum", "callbacks": None, "logger": None,
                 "plugins": None, "enable_checkpointing": None, "default_root_dir": "run_dir",
                 "use_distributed_sampler": None}  # fmt: skip
TRAINERS = ("lightning.Trainer", "lightning.pytorch.Trainer")


def check_trainer(tr: DictConfig) -> list[str]:
    """Every problem of the ``trainer`` group, each with the override that fixes it."""
    if tr.get("_target_") not in TRAINERS:
        return [f"trainer._target_ must be lightning.Trainer; got {tr.get('_target_')!r} "
                "(try trainer=cpu)"]  # fmt: skip
    problems = _trainer_keys(tr) + _trainer_choices(tr)
    devices = tr.get("devices", "auto")
    count = isinstance(devices, int) and not isinstance(devices, bool) and devices != 0
    if not (devices == "auto" or OmegaConf.is_list(devices) or (count and devices >= -1)):
        problems.append(f"trainer.devices must be a count >= 1, -1 (all), auto or a list of "
                        f"ids; got {devices!r} (try trainer.devices=1)")  # fmt: skip
    problems.append(at_least("trainer.num_nodes", tr.get("num_nodes", 1), 1, 1))
    problems.append(at_least("trainer.log_every_n_steps", tr.get("log_every_n_steps", 50), 1, 1))
    if tr.get("gradient_clip_val") is not None:
        problems.append(at_least("trainer.gradient_clip_val", tr.gradient_clip_val, 0, 1.0))
    return [p for p in problems if p]


def _trainer_keys(tr: DictConfig) -> list[str]:
    import lightning

    known = set(inspect.signature(lightning.Trainer.__init__).parameters) - {"self"}
    problems = []
    for key in (k for k in tr if k != "_target_"):
        if key in TRAINER_OWNED:
            own = f" from {TRAINER_OWNED[key]}" if TRAINER_OWNED[key] else ""
            problems.append(f"trainer.{key} is set by cem{own}; got {tr[key]!r} "
                            f"(try ~trainer.{key})")  # fmt: skip
        elif key not in known:
            problems.append(f"trainer.{key} is not an argument of lightning.Trainer; got "
                            f"{tr[key]!r} (try ~trainer.{key})")  # fmt: skip
    return problems


def _trainer_choices(tr: DictConfig) -> list[str | None]:
    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    accelerator = tr.get("accelerator", "auto")
    found = [choice("trainer.accelerator", accelerator,
                    ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())))]  # fmt: skip
    if isinstance(tr.get("strategy", "auto"), str):
        strategies = ("auto", *StrategyRegistry.available_strategies())
        found.append(choice("trainer.strategy", tr.get("strategy", "auto"), strategies))
    precision = tr.get("precision", "32-true")
    # auto: ours (cem.device.resolve_precision); the legacy 16, "bf16"... pass too.
    if precision != "auto" and precision not in _literals(_PRECISION_INPUT):
        shown = ", ".join(p for p in _literals(_PRECISION_INPUT) if isinstance(p, str) and "-" in p)
        found.append(f"trainer.precision must be one of auto, {shown}; got {precision!r} "
                     "(try trainer.precision=auto)")  # fmt: skip
    return found


def check_devices(tr: DictConfig) -> list[str]:
    """What this machine lacks for the ``trainer`` group (run before compute, not by the
    config tests, which compose the GPU presets on CPU-only machines): CUDA for a GPU
    accelerator and for the sharded strategies (Lightning runs FSDP and DeepSpeed on CUDA
    only), and the deepspeed package (looked up, never imported)."""
    import importlib.util

    import torch

    accelerator, strategy = tr.get("accelerator", "auto"), str(tr.get("strategy", "auto"))
    cuda = torch.cuda.is_available()
    if strategy.startswith(SHARDED_STRATEGIES):
        problems = []
        if not cuda:
            problems.append(f"trainer.strategy={strategy} shards the model over CUDA GPUs and "
                            "none is visible (try trainer=cpu)")  # fmt: skip
        if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
            problems.append(f"trainer.strategy={strategy} needs the deepspeed package, which "
                            "is not installed (pip install -e '.[deepspeed]' on the CUDA "
                            "machine, or try trainer=fsdp)")  # fmt: skip
        return problems
    if accelerator in ("gpu", "cuda") and not cuda:
        return [f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible "
                "(try trainer=cpu)"]  # fmt: skip
    return []


def training_ranks(tr: DictConfig) -> tuple[int, int]:
    """The training ranks that ``trainer`` asks for: (per node, nodes)."""
    import torch

    devices, nodes = tr.get("devices", "auto"), int(tr.get("num_nodes", 1))
    if OmegaConf.is_list(devices):
        per_node = len(devices)
    elif isinstance(devices, int) and devices > 0:
        per_node = devices
    elif tr.get("accelerator", "auto") != "cpu" and torch.cuda.is_available():
        per_node = torch.cuda.device_count()  # -1 / auto: every visible GPU
    else:
        per_node = 1
    return per_node, nodes


def check_loop_ranks(tr: DictConfig) -> list[str]:
    """``cem run`` starts a stage's training ranks on this machine itself
    (``cem.training.launch``), one per device: several nodes it cannot start, and a list of
    devices it does not pick out. Refused before compute."""
    devices = tr.get("devices", "auto")
    per_node, nodes = training_ranks(tr)
    if nodes > 1:
        return [f"trainer.num_nodes={nodes}: cem run starts its training ranks on this machine "
                "only (try trainer.num_nodes=1, or train a round's stage alone on several "
                "nodes: torchrun --nnodes=M --nproc_per_node=N -m cem train "
                "run_dir=<run>/round_<r> trainer=ddp trainer.devices=N trainer.num_nodes=M)"]  # fmt: skip
    if OmegaConf.is_list(devices) and per_node > 1:
        return [f"trainer.devices={list(devices)}: cem run starts one training rank per device "
                f"and takes a count (try trainer.devices={per_node} with "
                "CUDA_VISIBLE_DEVICES naming the GPUs)"]  # fmt: skip
    return []


def _literals(t: object) -> list:
    """The values of a (nested) ``Literal`` / ``Union`` type."""
    args = typing.get_args(t)
    return [x for a in args for x in (_literals(a) if typing.get_args(a) else [a])]


def check_lora_targets(model_cfg: DictConfig, t: DictConfig) -> list[str]:
    """``train.lora.target_modules`` against the model's module names (``train.finetune=lora``).

    The model is built from its ``config.json`` on the meta device, so no weight is read and
    no memory is taken. A model whose config cannot be read here is left to the loader.
    """
    if t.finetune != "lora" or not t.lora.target_modules:
        return []
    targets = [str(m) for m in t.lora.target_modules]
    if targets == ["all-linear"]:
        return []
    from cem.models import module_names

    names = module_names(model_cfg)
    if names is None:
        return []
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    bad = [m for m in targets if m not in leaves and not any(n.endswith(f".{m}") for n in names)]
    if not bad:
        return []
    linear = sorted(n.rsplit(".", 1)[-1] for n in names if ".layers.0." in n and "proj" in n)
    kept = [m for m in targets if m not in bad] or linear[:2] or ["all-linear"]
    return [f"train.lora.target_modules names no module of {model_cfg.name}: "
            f"{override_value(bad)}; its projections are {', '.join(sorted(set(linear)))} "
            f"(try train.lora.target_modules={override_value(kept)})"]  # fmt: skip
