"""Shared test set-up: offline hubs, W&B disabled, the shared benchmark folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_benchmarks_dir()
    if path is None:
        pytest.skip("../shared/benchmarks not found beside the checkout (set CEM_SHARED_DIR)")
    return path


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
