"""What a checkpoint format declares, and the options a load may carry.

A format is one module in ``weights/formats/`` ending with ``FORMAT = CheckpointFormat(...)`` and one
entry in the ``FORMATS`` table of ``weights/formats/__init__.py``. It depends on nothing else here.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from gan.generator import Generator, GeneratorConfig

Config = TypeVar("Config", bound=GeneratorConfig)
StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LoadOptions:
    """What the caller knows that a checkpoint file may not say.

    ``eps``: the batch-norm and spectral-norm epsilon of a BigGAN-PyTorch checkpoint (both set to it),
    for files without a ``<file>.json`` sidecar; ajbrock's TF-Hub converter output needs 1e-4.
    """

    eps: float | None = None

    def __post_init__(self):
        if self.eps is not None and not (isinstance(self.eps, (int, float)) and 0 < self.eps < 1):
            raise ValueError(f"eps must be a number in (0, 1), e.g. 1e-4; got {self.eps!r}")


@dataclass(frozen=True)
class CheckpointFormat:
    """One published checkpoint layout.

    ``recognises(state)``: whether a loaded state dict (or full training checkpoint) is in this layout.
    ``load(state, path, options)``: the fp32 generator, keys checked strictly; ``path`` is the file it came
    from (for config files beside it and error messages). ``write_random(path, seed, **config)``: random
    weights in exactly this layout; returns what ``load_generator`` takes.
    """

    name: str  # the ``fmt=`` of ``write_random_checkpoint``
    summary: str  # how to recognise it, for "not a known checkpoint" messages
    file_names: tuple[str, ...]  # looked for, in order, when a directory is given
    recognises: Callable[[Mapping[str, object]], bool]
    load: Callable[[Mapping[str, Any], Path, LoadOptions], Generator]
    write_random: Callable[..., Path]


def read_config_data(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError naming the file if it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 JSON config file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object of config fields, not a {type(data).__name__}")
    return data


def read_config(path: Path, config_class: type[Config]) -> Config:
    """The ``config_class`` held as JSON in ``path``; ValueError naming the file if it is unreadable or invalid."""
    try:
        return config_class.from_dict(read_config_data(path))
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None
