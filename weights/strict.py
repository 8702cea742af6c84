"""Strict state-dict matching with a readable report of what did not match."""
from __future__ import annotations

from collections.abc import Mapping

import torch

_SHOWN = 8  # keys listed per category before "... and N more"


def _listing(keys: list[str]) -> str:
    head = ", ".join(keys[:_SHOWN])
    return head + (f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]], state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise ValueError naming missing keys, unexpected keys and shape mismatches of ``state``.

    ``expected`` maps every key the format requires to its shape; ``source`` names the file in the message.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{key} (checkpoint {tuple(state[key].shape)}, expected {tuple(expected[key])})"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != tuple(expected[key])
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not match the expected checkpoint layout: " + "; ".join(problems))
