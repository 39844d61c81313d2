"""The one device rule for inference: ``model.device`` (auto | cpu | cuda | cuda:N).

Every model loaded to answer questions asks ``resolve_device``: the scored model (eval,
generate mode, the general probe), the LLM extractor and question writer, and the dense
embedder. Training is placed by Lightning (``trainer.accelerator``), not by this rule.

``auto`` is the accelerator when there is one. ``cuda`` without an index is this process's
GPU: ``cuda:$LOCAL_RANK`` under ``torchrun`` (data-parallel evaluation), else ``cuda:0``.
Torch is imported only when a CUDA device is named or ``auto`` is resolved, so the config
checks stay light.

The one dtype rule goes with it: ``auto`` (``model.dtype``, ``knowledge.extractor_dtype``,
the dense embedder's ``embedding_dtype``, ``trainer.precision``) is bfloat16 where the
device runs it in hardware (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else
float32. A CPU without them (AVX2 only) emulates bf16 matmuls: scoring measured 4.7x
slower than in float32 (benchmarks/RESULTS.md), so an explicit bf16 there gets a warning with
the fix.
The two settings give different numbers, and so do two CPUs that both run bf16 natively
(AMX and AVX512-BF16 kernels sum in other orders): the code fingerprint
(``cem.provenance``) records ``cpu_kernels``, what picks this machine's kernels.
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


def bf16_native(device: str) -> bool:
    """Whether ``device`` (a resolved torch device string) runs bfloat16 matmuls in hardware."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_kind() -> str:
    """What the CPU gives bf16, for the messages: ``amx``,
    ``avx512_bf16`` or the vector width torch dispatches to (e.g. ``avx2``)."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return _vector_width()


def _vector_width() -> str:
    """The vector instruction set torch dispatches its own kernels to, e.g. ``avx512``."""
    import torch

    return torch.backends.cpu.get_cpu_capability().lower().replace(" ", "_")


# Environment variables that cap the kernels torch, oneDNN and MKL dispatch to.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
              "MKL_ENABLE_INSTRUCTIONS")  # fmt: skip


def cpu_kernels() -> str:
    """What picks this CPU's kernels, and so its numbers, e.g. ``avx512 avx512_bf16
    amx_tile amx_fp16 vnni; GenuineIntel 6/143 Intel(R) Xeon(R) Processor``: the vector
    width torch dispatches to, the bf16 and int8 units, the CPU model, and any of
    ``KERNEL_ENV`` that is set. The same world items scored in bf16 differ by about 0.1 nat
    per option between an AMX machine, the same machine capped at AVX512-BF16
    (``ONEDNN_MAX_CPU_ISA``), and the machine of the archived tables (experiments/LOG.md,
    2026-12-03)."""
    import torch

    units = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_tile", "_is_amx_tile_supported"),
             ("amx_fp16", "_is_amx_fp16_supported"), ("vnni", "_is_vnni_supported"))  # fmt: skip
    has = [name for name, probe in units if getattr(torch.cpu, probe, lambda: False)()]
    env = [f"{k}={os.environ[k]}" for k in KERNEL_ENV if os.environ.get(k)]
    return f"{' '.join([_vector_width(), *has, *env])}; {_cpu_model()}"


def _cpu_model() -> str:
    """The vendor, family/model and name of the CPU (``/proc/cpuinfo``), else what
    ``platform`` knows."""
    import platform

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block says it for all
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "vendor_id" not in fields:
        return platform.processor() or platform.machine() or "unknown"
    return (f"{fields['vendor_id']} {fields.get('cpu family', '?')}/{fields.get('model', '?')} "
            f"{fields.get('model name', '')}").strip()  # fmt: skip


def resolve_dtype(key: str, spec: str, device: str) -> str:
    """The weight dtype ``spec`` (the value of ``key``) means on ``device``: ``auto`` is
    bfloat16 where it is native, else float32; an explicit bfloat16 on a CPU that emulates
    it is kept, with a warning that names the key and the fix."""
    if spec == "auto":
        return "bfloat16" if bf16_native(device) else "float32"
    if spec == "bfloat16" and _emulates_bf16(device):
        _slow_bf16(f"{key}=bfloat16", f"{key}=auto")
    return str(spec)


def resolve_precision(spec: str, accelerator: str) -> str:
    """Lightning's precision for ``trainer.precision=spec`` with ``trainer.accelerator``:
    ``auto`` is bf16-mixed where bf16 is native on the training device, else 32-true."""
    import torch

    spec = str(spec)
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    if spec == "auto":
        return "bf16-mixed" if bf16_native(device) else "32-true"
    if spec.startswith("bf16") and _emulates_bf16(device):
        _slow_bf16(f"trainer.precision={spec}", "trainer.precision=auto")
    return spec


def _emulates_bf16(device: str) -> bool:
    """A CPU without native bf16 (a GPU without it is not warned about here)."""
    return not device.startswith("cuda") and not bf16_native(device)


_WARNED: set[str] = set()


def _slow_bf16(setting: str, fix: str) -> None:
    """Warn once per setting and process that this CPU emulates bf16."""
    if setting in _WARNED:
        return
    _WARNED.add(setting)
    from cem.ui import console

    console.print(f"[yellow]{setting}: this CPU ({cpu_kind()}) has no native bf16 "
                  "(AVX512-BF16 or AMX), so bf16 matmuls are emulated, several times slower "
                  f"than float32 (benchmarks/RESULTS.md). Set {fix} for float32 here; results "
                  "differ from bf16 runs.[/]")  # fmt: skip


def _index(spec: str, count: int) -> int:
    """The GPU that ``cuda:N`` names; for ``cuda`` and ``auto``, this process's local rank.

    A launcher that gives each rank only its own GPU (``CUDA_VISIBLE_DEVICES`` per task)
    leaves one visible, so the local rank wraps around the visible ones.
    """
    if ":" in spec:
        return int(spec.split(":", 1)[1])
    return int(os.environ.get("LOCAL_RANK", "0")) % max(count, 1)
