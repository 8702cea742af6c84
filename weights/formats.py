"""Reading checkpoint files safely and telling the two published formats apart by their keys."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

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
