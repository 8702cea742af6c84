"""The checkpoint formats ``load_generator`` reads, as a table.

Adding a format: a module here ending with ``FORMAT = CheckpointFormat(...)`` (see ``base.py``) and one
entry in ``FORMATS``. Recognition tries the entries in order.
"""
from __future__ import annotations

from collections.abc import Mapping

from . import ajbrock, biggan_deep, openmmlab
from .base import CheckpointFormat, LoadOptions, read_config

FORMATS: tuple[CheckpointFormat, ...] = (biggan_deep.FORMAT, ajbrock.FORMAT, openmmlab.FORMAT)
FORMAT_NAMES = tuple(fmt.name for fmt in FORMATS)

__all__ = ["FORMATS", "FORMAT_NAMES", "CheckpointFormat", "LoadOptions", "detect_format", "format_named", "read_config"]


def format_named(name: str) -> CheckpointFormat:
    """The format called ``name``; ValueError listing the names otherwise."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise ValueError(f"unknown checkpoint format {name!r}; accepted: {', '.join(FORMAT_NAMES)}")


def detect_format(state: Mapping[str, object], source: str) -> CheckpointFormat:
    """The format whose keys ``state`` has; ValueError naming every known format and the first keys otherwise."""
    for fmt in FORMATS:
        if fmt.recognises(state):
            return fmt
    keys = ", ".join(sorted(map(str, state))[:5])
    known = "; ".join(fmt.summary for fmt in FORMATS)
    raise ValueError(f"{source} is not a checkpoint of a known format ({known}); its first keys: {keys}")
