"""Shared fixtures: tiny random checkpoints in the published formats (offline, fast on CPU)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from weights import write_random_checkpoint


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's torch gets its share of the cores, so workers do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


# biggan-deep-128 layout (10 blocks, attention at 64x64: 4096 queries, 1024 keys, d=2, dv=8) at 1/16 width
TINY_DEEP_OVERRIDES = {"channel_width": 8}


@pytest.fixture(scope="session")
def tiny_deep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with config.json + pytorch_model.bin of a random BigGAN-deep-128 at channel_width 8 (seed 0)."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny_deep") / "biggan-deep-tiny", seed=0, **TINY_DEEP_OVERRIDES
    )


@pytest.fixture(scope="session")
def nan_deep_dir(tiny_deep_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with NaN in gen_z's bias: it loads (no spectral norm there), and every image is NaN."""
    out = tmp_path_factory.mktemp("nan") / "biggan-deep-nan"
    shutil.copytree(tiny_deep_dir, out)
    state = torch.load(out / "pytorch_model.bin", weights_only=True)
    state["generator.gen_z.bias"] = torch.full_like(state["generator.gen_z.bias"], float("nan"))
    torch.save(state, out / "pytorch_model.bin")
    return out
