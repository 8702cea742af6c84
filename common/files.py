"""Files that survive interruption: safe checkpoint reading, atomic writes."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import torch


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
        kind = type(state).__name__
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: it holds a {kind}, not a state dict")
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
