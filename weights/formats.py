"""Checkpoint and config files: safe reading, atomic writing, telling the two published formats apart."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, TypeVar

import torch

from gan.generator import GeneratorConfig

Config = TypeVar("Config", bound=GeneratorConfig)

BIGGAN_DEEP = "biggan-deep"  # Hugging Face port: config.json + pytorch_model.bin
BIGGAN = "biggan"  # ajbrock's BigGAN-PyTorch: G_ema.pth / G.pth
FORMATS = (BIGGAN_DEEP, BIGGAN)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (loaded on CPU with ``weights_only=True``); ValueError if unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, forbidden pickle globals, ...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {reason})") from None
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: it holds a {type(state).__name__}, not a state dict")
    return dict(state)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(file)`` into the hidden sibling ``.<name>.<pid>.tmp``, then rename it.

    An interrupted write never leaves ``path`` half-written; a failed one removes its temporary.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as f:
            write(f)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """``torch.save`` through ``write_atomic``: an interrupted write never leaves ``path`` half-written."""
    return write_atomic(path, lambda f: torch.save(dict(state), f))


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
