"""The contract every attention backend honours.

A backend is a parameter-free ``nn.Module`` called as ``attn(q, k, v, scale=1.0)`` with
q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) -> (B, Nq, dv). Queries and keys are different vectors
and Nq may differ from Nk (BigGAN: Nq = 4 Nk). Every random draw comes from ``seed``.

``budget`` is a fraction of the dense Nq x Nk score matrix; a backend built with a budget resolves
its own parameters from the shapes it sees at call time (``resolve``), and explicit parameters
override what the budget would choose.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AttentionBackend(nn.Module):
    """Base class: subclasses set ``name`` and implement ``attend`` and ``score_entries``."""

    name: str = ""

    def __init__(self, *, budget: float | None = None, seed: int = 0):
        super().__init__()
        if budget is not None and not (0.0 < float(budget) <= 1.0):
            raise ValueError(f"budget must be a fraction of the dense score matrix in (0, 1], got {budget!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.budget = None if budget is None else float(budget)
        self.seed = seed

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        check_qkv(q, k, v)
        return self.attend(q, k, v, float(scale))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        raise NotImplementedError  # abstract: every registered backend overrides it

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        """Score / feature entries this backend holds per batch element (and head) for these shapes."""
        raise NotImplementedError  # abstract: every registered backend overrides it

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        """The concrete parameters used for these shapes (budget resolved); for reports."""
        return {}

    def extra_repr(self) -> str:
        return f"budget={self.budget}, seed={self.seed}"


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError unless q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) agree."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"attention expects q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or k.shape[0] != v.shape[0]:
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must share the feature size d: q has {q.shape[2]}, k has {k.shape[2]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of keys: k has {k.shape[1]}, v has {v.shape[1]}")
