"""Config files and telling the two published checkpoint formats apart (safe I/O lives in ``common.files``)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, TypeVar

import torch

from gan.generator import GeneratorConfig

Config = TypeVar("Config", bound=GeneratorConfig)

BIGGAN_DEEP = "biggan-deep"  # Hugging Face port: config.json + pytorch_model.bin
BIGGAN = "biggan"  # ajbrock's BigGAN-PyTorch: G_ema.pth / G.pth
FORMATS = (BIGGAN_DEEP, BIGGAN)


def read_config(path: Path, config_class: type[Config]) -> Config:
    """The ``config_class`` held as JSON in ``path``; ValueError naming the file if it is unreadable or invalid."""
    try:
        return config_class.from_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 JSON config file") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def looks_like_biggan_deep(state: Mapping[str, object]) -> bool:
    return "embeddings.weight" in state and any(str(key).startswith("generator.gen_z.") for key in state)


def detect_format(state: Mapping[str, object], source: str) -> str:
    """``"biggan-deep"`` or ``"biggan"`` from the keys of ``state``; ValueError for anything else."""
    if looks_like_biggan_deep(state):
        return BIGGAN_DEEP
    from .ajbrock import looks_like_ajbrock  # imported lazily: the ajbrock format is optional here

    if looks_like_ajbrock(state):
        return BIGGAN
    keys = ", ".join(sorted(map(str, state))[:5])
    raise ValueError(
        f"{source} is neither a BigGAN-deep (Hugging Face, keys embeddings.weight / generator.*) nor a "
        f"BigGAN-PyTorch (G_ema.pth, keys shared.weight / blocks.*) checkpoint; its first keys: {keys}"
    )
