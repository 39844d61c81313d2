"""What is trained (LoRA adapters or every weight) and how the result becomes a plain model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cem.choices import Finetune, values
from cem.config import ModelConfig
from cem.errors import CemError, ConfigError

# Training keeps float32 master weights whatever ``model.dtype`` says (that is the dtype
# for inference); the trainer's ``precision`` decides the compute dtype (auto: bf16-mixed
# where bf16 is native, ``cem.device.resolve_precision``).
TRAIN_DTYPE = "float32"
# The model to train is loaded on the CPU whatever ``model.device`` says: Lightning places
# it (``trainer.accelerator``), and a sharded strategy must not see it whole on one GPU.
TRAIN_DEVICE = "cpu"


def load_base(model_cfg: DictConfig, base: Path | None, seed: int):
    """Load the model to train: the folder ``base`` when given, else ``model_cfg``, in float32.

    Raises:
        CemError: ``base`` is given but holds no model.
    """
    from cem.models import load_model

    cfg = OmegaConf.to_object(model_cfg) if isinstance(model_cfg, DictConfig) else model_cfg
    if isinstance(cfg, dict):  # a config composed without the schema
        cfg = ModelConfig(**cfg)
    if base is not None:
        if not (Path(base) / "config.json").is_file():
            raise CemError(
                f"model folder {base} has no config.json (an interrupted copy?); delete it to "
                "train from the configured model, or point the loop at a saved model"
            )
        cfg = dataclasses.replace(
            cfg, path=str(Path(base).resolve()), asset=None, random_init=False, revision=None
        )
    cfg = dataclasses.replace(cfg, dtype=TRAIN_DTYPE, device=TRAIN_DEVICE)
    return load_model(cfg, seed=seed)


def prepare(model: nn.Module, mode: str, lora_cfg: DictConfig) -> nn.Module:
    """Wrap ``model`` for training: LoRA adapters via peft, or every weight trainable.

    Raises:
        ConfigError: unknown ``train.finetune`` or a LoRA target that matches no module.
    """
    if mode == "full":
        model.requires_grad_(True)
        return model.train()
    if mode != "lora":
        raise ConfigError("train.finetune", mode, f"must be one of {', '.join(values(Finetune))}",
                          "train.finetune=lora")  # fmt: skip
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config).train()
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n})
        raise ConfigError(
            "train.lora.target_modules", list(lora_cfg.target_modules),
            f"must name modules of the model ({e}); its module names include "
            f"{', '.join(names[:20])}", "train.lora.target_modules=[q_proj,v_proj]",
        ) from None  # fmt: skip


def merged(model: nn.Module) -> nn.Module:
    """The plain transformers model: LoRA weights merged in, the peft wrapper removed."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval()


def save(model: nn.Module, tokenizer, out_dir: Path, device: str, max_shard_size: str) -> Path:
    """Merge and save safetensors shards + tokenizer to ``out_dir`` atomically.

    LoRA adapters are merged where ``device`` (``model.device``) resolves: for a 13B model
    on one 80 GB GPU, 52 GB of float32 weights plus one layer's update (under 0.3 GB); the
    save then copies one ``max_shard_size`` shard at a time to host memory.
    """
    from cem import device as devices
    from cem.models import save_model

    if hasattr(model, "merge_and_unload"):
        model = model.to(devices.resolve_device(device))
    plain = merged(model)
    with torch.no_grad():
        return save_model(plain, tokenizer, out_dir, max_shard_size)


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
