"""Load a local safetensors model one tensor at a time, cast and placed as it is read.

``from_pretrained`` memory-maps the checkpoint and casts from the mapping, so loading the
default model's float32 file in bfloat16 touches every page of it: the process's peak
resident memory holds the whole float32 file beside the bfloat16 weights (1.16 GB for
SmolLM2-135M instead of 0.64 GB). Here the skeleton is built without weights (meta
device), and each tensor is read with ``pread`` (no mapping), cast to ``model.dtype``,
moved to the resolved device and put in place; host memory holds one tensor of the file
at a time, which for a 13B model bound for a GPU is a few hundred MB instead of the file.
A checkpoint already in ``model.dtype`` and bound for the CPU is left to ``from_pretrained``:
its mapping is then zero-copy, and shared by every process that loads the same file.

Anything this reader does not know exactly (keys that differ from the model's, a
quantised checkpoint, a ``.bin`` file) returns None, and the caller falls back to
``from_pretrained``.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
STORED = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def safetensors_files(folder: Path) -> list[Path] | None:
    """The checkpoint's safetensors files (one, or the shards its index names), or None."""
    if (folder / INDEX).is_file():
        with open(folder / INDEX, encoding="utf-8") as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        files = [folder / s for s in shards]
        return files if all(f.is_file() for f in files) else None
    return [folder / SINGLE] if (folder / SINGLE).is_file() else None


def stream_load(
    folder: Path, dtype: torch.dtype, device: str, trust_remote_code: bool = False
) -> nn.Module | None:
    """The model in ``folder`` with weights in ``dtype`` on ``device``; None if not plain.

    Plain means: safetensors files whose keys are exactly the model's state-dict keys (tied
    weights may be left out), no quantisation config and no module kept in float32.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    files = safetensors_files(folder)
    config = AutoConfig.from_pretrained(
        folder, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if files is None or getattr(config, "quantization_config", None):
        return None
    # Buffers stay real: rotary tables are computed at construction, not read from the file.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code
        )
    if getattr(model, "_keep_in_fp32_modules", None):
        return None  # from_pretrained keeps those in float32 whatever the dtype
    expected = set(model.state_dict())
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt", backend="pread"))
                   for f in files]  # fmt: skip
        found = {key: h for h in handles for key in h.keys()}  # noqa: SIM118 (not a dict)
        if not set(found) <= expected:
            return None
        stored = {STORED.get(h.get_slice(k).get_dtype()) for k, h in found.items()}
        if device == "cpu" and stored <= {dtype, None}:
            return None  # nothing to cast: the mapping is zero-copy
        for key, handle in found.items():
            _put(model, key, handle.get_tensor(key), dtype, device)
    model.tie_weights()
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())) and device != "meta":
        return None  # a weight the file lacks and no tie fills: from_pretrained initialises it
    model.to(device)  # the buffers built on the CPU
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.config.name_or_path = str(folder)
    return model


def _put(model: nn.Module, key: str, tensor: torch.Tensor, dtype: torch.dtype, device: str):
    """Replace the parameter or buffer ``key`` with ``tensor``, cast if floating, on ``device``."""
    prefix, _, name = key.rpartition(".")
    owner = model.get_submodule(prefix)
    if tensor.is_floating_point():
        tensor = tensor.to(device=device, dtype=dtype)
    else:
        tensor = tensor.to(device=device)
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    else:
        owner._buffers[name] = tensor
