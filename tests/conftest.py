"""Shared fixtures: tiny random checkpoints in the published formats (offline, fast on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from weights import write_random_checkpoint

# biggan-deep-128 layout (10 blocks, attention at 64x64: 4096 queries, 1024 keys, d=2, dv=8) at 1/16 width
TINY_DEEP_OVERRIDES = {"channel_width": 8}


@pytest.fixture(scope="session")
def tiny_deep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with config.json + pytorch_model.bin of a random BigGAN-deep-128 at channel_width 8 (seed 0)."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("tiny_deep") / "biggan-deep-tiny", seed=0, **TINY_DEEP_OVERRIDES
    )
