"""The one device rule for inference: ``model.device`` (auto | cpu | cuda | cuda:N).

Every model loaded to answer questions asks ``resolve_device``: the scored model (eval,
generate mode, the general probe), the LLM extractor and question writer, and the dense
embedder. Training is placed by Lightning (``trainer.accelerator``), not by this rule.

``auto`` is the accelerator when there is one. ``cuda`` without an index is this process's
GPU: ``cuda:$LOCAL_RANK`` under ``torchrun`` (data-parallel evaluation), else ``cuda:0``.
Torch is imported only when a CUDA device is named or ``auto`` is resolved, so the config
checks stay light.
"""

from __future__ import annotations

import os
import re

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICES_SHOWN = "auto, cpu, cuda, cuda:N"


def device_problem(key: str, spec: object) -> str | None:
    """What is wrong with ``spec`` as the value of ``key`` on this machine, or None.

    Checked before any compute: a malformed value, or a CUDA device that is not there.
    """
    if not isinstance(spec, str) or not DEVICE_SPEC.match(spec):
        return f"{key} must be one of {DEVICES_SHOWN}; got {spec!r} (try {key}=auto)"
    if not spec.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"{key}={spec} needs a CUDA GPU and none is visible (try {key}=auto)"
    count = torch.cuda.device_count()
    index = _index(spec, count)
    if index >= count:
        return f"{key}={spec} names GPU {index} but {count} are visible (try {key}=auto)"
    return None


def resolve_device(spec: str) -> str:
    """The torch device string that ``spec`` means here, e.g. ``cpu`` or ``cuda:1``.

    Raises:
        CemError: ``spec`` is malformed or names a GPU that is not visible.
    """
    problem = device_problem("model.device", spec)
    if problem:
        from cem.errors import CemError

        raise CemError(problem)
    if spec == "cpu":
        return "cpu"
    import torch

    if spec == "auto" and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{_index(spec, torch.cuda.device_count())}"


def _index(spec: str, count: int) -> int:
    """The GPU that ``cuda:N`` names; for ``cuda`` and ``auto``, this process's local rank.

    A launcher that gives each rank only its own GPU (``CUDA_VISIBLE_DEVICES`` per task)
    leaves one visible, so the local rank wraps around the visible ones.
    """
    if ":" in spec:
        return int(spec.split(":", 1)[1])
    return int(os.environ.get("LOCAL_RANK", "0")) % max(count, 1)
