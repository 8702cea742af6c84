"""Files that survive interruption: safe checkpoint reading, atomic writes."""
from __future__ import annotations

import os
import re
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
        raise ValueError(_unreadable(path, err)) from None
    if not isinstance(state, Mapping) or not state:
        kind = type(state).__name__
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: it holds a {kind}, not a state dict")
    return dict(state)


def _unreadable(path: Path, err: Exception) -> str:
    """One whole sentence on why ``torch.load`` refused ``path`` (torch's own text is long and cut mid-way)."""
    text = str(err)
    forbidden = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if forbidden:
        return (f"{path} is not a readable PyTorch checkpoint: it holds a pickled Python object "
                f"({forbidden.group(1)}) besides tensors, and only weights are ever loaded.")
    size = path.stat().st_size
    what = "corrupt or truncated" if "zip archive" in text or isinstance(err, EOFError) or not size else (
        "corrupt or truncated, or not a PyTorch file at all")
    return (f"{path} is not a readable PyTorch checkpoint: the file ({size:,} bytes) is {what}; "
            "download or copy it again.")


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
