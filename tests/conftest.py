"""Shared test set-up: offline hubs, W&B disabled, the shared benchmark folder, and the one
way a test composes a command's config (``compose``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from omegaconf import DictConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Round-0 work shared across jobs (cem.loop.share) stays inside this test session.
os.environ.setdefault("CEM_SHARE_CACHE", tempfile.mkdtemp(prefix="cem-share-"))

REPO = Path(__file__).resolve().parents[1]


def shared_benchmarks_dir() -> Path | None:
    """``../shared/benchmarks`` beside the checkout, or ``$CEM_SHARED_DIR``."""
    env = os.environ.get("CEM_SHARED_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "benchmarks"
    return path if path.is_dir() else None


def compose_config(entry: str, *overrides: str, hydra: bool = False,
                   config_dir: Path | None = None) -> DictConfig:  # fmt: skip
    """``conf/<entry>.yaml`` composed with ``overrides``, as ``cem <entry>`` composes it.

    Args:
        entry: the command (``eval``, ``retrieve``, ``build``, ``train``, ``run``).
        overrides: Hydra overrides, e.g. ``"seed=3"``, ``"experiment=fast"``.
        hydra: keep the ``hydra`` node (a table's sweep, its job folder names).
        config_dir: another config folder than ``conf/`` (a test's altered copy).
    """
    from hydra import compose, initialize_config_dir

    from cem.config import conf_dir, register_configs

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir or conf_dir())):
        return compose(config_name=entry, overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture(scope="session")
def compose():
    """``compose("run", "seed=3", ...)``: ``compose_config``, for a test to take as an argument
    (module-level helpers import ``compose_config`` itself)."""
    return compose_config


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_benchmarks_dir()
    if path is None:
        pytest.skip("../shared/benchmarks not found beside the checkout (set CEM_SHARED_DIR)")
    return path


def pytest_collection_modifyitems(config, items):
    """The ``gpu`` tier is skipped without CUDA, unless ``CEM_GPU_TIER_DEVICE=cpu`` asks for
    its dry run on the CPU (tests/test_gpu.py)."""
    import torch

    if torch.cuda.is_available() or os.environ.get("CEM_GPU_TIER_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
