"""Multi-GPU training: FSDP wrapped per decoder layer, DeepSpeed ZeRO-2/3, and the whole
model gathered back for the round's merged save.

``conf/trainer/{fsdp,deepspeed_zero2,deepspeed_zero3}.yaml`` name a Lightning strategy.
``for_model`` turns ``fsdp`` into an ``FSDPStrategy`` that wraps each of the model's
decoder layers (the classes its ``_no_split_modules`` names: LlamaDecoderLayer,
Qwen2DecoderLayer...), with ``use_orig_params`` so that a layer's frozen weights and its
trainable LoRA adapters can share one flat parameter, and ``state_dict_type=full``.

A sharded strategy leaves no rank holding the whole model when ``fit`` returns, so
``GatherFullState`` collects it at the end of training, before Lightning's teardown: FSDP's
full state dict, offloaded to rank 0's CPU; ZeRO-3's parameters gathered layer by layer
into rank 0's CPU (in the training's 16-bit dtype). ``from_state`` puts that state in a
weightless copy of the model, which ``finetune.save`` then merges and writes sharded.
FSDP and DeepSpeed need CUDA (Lightning refuses them on the CPU):
``cem.training.checks.check_devices`` says so before any compute.
"""

from __future__ import annotations

import torch
from torch import nn

from cem.errors import ConfigError

FSDP = "fsdp"
# The recipe for sharded LoRA and full fine-tuning; the wrap policy comes from the model.
FSDP_RECIPE = {
    "sharding_strategy": "FULL_SHARD",
    "state_dict_type": "full",
    "use_orig_params": True,
}


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The decoder-layer classes of ``model``: what FSDP wraps one unit at a time."""
    names = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ConfigError(
            "trainer.strategy", FSDP,
            f"needs the model's decoder-layer class to wrap, and {type(model).__name__} "
            "names none in _no_split_modules", "trainer=ddp",
        )  # fmt: skip
    return found


def for_model(strategy: object, model: nn.Module) -> object:
    """``trainer.strategy`` for this model: ``fsdp`` becomes the wrapped recipe."""
    if strategy != FSDP:
        return strategy
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy=layer_classes(model), **FSDP_RECIPE)


def gather_callback():
    """A ``GatherFullState`` (Lightning's Callback, imported only when training)."""
    from lightning.pytorch.callbacks import Callback

    class GatherFullState(Callback):
        """The whole model's state at the end of training, on rank 0's CPU, for a sharded
        strategy (None otherwise: the module then holds the whole model itself)."""

        def __init__(self):
            self.state: dict[str, torch.Tensor] | None = None

        def on_train_end(self, trainer, pl_module) -> None:
            state = full_state(trainer.strategy)  # a collective: every rank takes part
            if state is not None and trainer.is_global_zero:
                self.state = state

    return GatherFullState()


def full_state(strategy) -> dict[str, torch.Tensor] | None:
    """FSDP's full state dict (rank 0, CPU) or ZeRO-3's gathered one; None if not sharded."""
    kind = type(strategy).__name__
    if kind == "FSDPStrategy":
        return strategy.lightning_module_state_dict()  # state_dict_type=full: rank 0, CPU
    if kind == "DeepSpeedStrategy" and strategy.zero_stage_3:
        # DeepSpeed's own gather (what HF Trainer and accelerate call for ZeRO-3 saves):
        # one layer's parameters at a time on every rank, copied to rank 0's CPU.
        return strategy.model._zero3_consolidated_16bit_state_dict()
    return None


def from_state(state: dict[str, torch.Tensor], config, prepare, trust_remote_code=False):
    """A model built from ``config`` and wrapped by ``prepare`` (LoRA or not), holding
    ``state``: a gathered state dict whose keys may carry the wrappers' prefixes.

    The copy is built without weights (meta device), so host memory holds ``state`` once.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = prepare(
            AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        )
    wanted = set(model.state_dict())
    missing, unexpected = model.load_state_dict(
        strip_prefix(state, wanted), strict=False, assign=True
    )
    model.tie_weights()
    left = [n for n, p in (*model.named_parameters(), *model.named_buffers()) if p.is_meta]
    if unexpected or left:
        raise ValueError(f"gathered state does not fit the model: missing {left[:3]}, "
                         f"unexpected {unexpected[:3]} (of {len(state)} keys)")  # fmt: skip
    return model


def strip_prefix(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the wrappers' key prefix removed (``model.`` of the LightningModule,
    ``_forward_module.model.`` under DeepSpeed), found from the keys the model wants."""
    first = next(iter(state))
    suffixes = [w for w in wanted if first == w or first.endswith("." + w)]
    if not suffixes:
        raise ValueError(f"gathered key {first!r} names no weight of the model")
    prefix = first[: len(first) - len(max(suffixes, key=len))]
    return {k.removeprefix(prefix): v for k, v in state.items()}
