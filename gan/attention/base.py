"""The contract every attention backend honours.

A backend is a parameter-free ``nn.Module`` called as ``attn(q, k, v, scale=1.0)`` with
q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) -> (B, Nq, dv). Queries and keys are different vectors
and Nq may differ from Nk (BigGAN: Nq = 4 Nk). Every random draw comes from ``seed``.

``budget`` is a fraction of the dense Nq x Nk score matrix; a backend built with a budget resolves
its own parameters from the shapes it sees at call time (``resolve``), and explicit parameters
override what the budget would choose. With neither, every approximate backend resolves its
parameters from ``DEFAULT_BUDGET``, so methods built with defaults compare at equal memory.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

DEFAULT_BUDGET = 1 / 8  # the papers' usual operating point (SMYRF: 8 hashes, clusters 64 q / 16 k at 4096 x 1024)


class AttentionBackend(nn.Module, ABC):
    """Base class: subclasses set ``name`` (and what they are: ``published``, ``paper``, ``variant_of``)
    and implement ``attend`` and ``score_entries``."""

    name: str = ""
    published: bool = True  # computes a paper's algorithm as its authors' code does
    paper: str = ""  # citation of the paper the method comes from
    variant_of: str | None = None  # for the project's own methods: the published backend they vary

    @classmethod
    def info(cls) -> dict[str, Any]:
        """What this backend is: name, published or not, paper, the published method it varies, one-line summary."""
        doc = (cls.__doc__ or "").strip().splitlines()
        return {
            "name": cls.name,
            "published": cls.published,
            "paper": cls.paper,
            "variant_of": cls.variant_of,
            "summary": doc[0] if doc else "",
        }

    def __init__(self, *, budget: float | None = None, seed: int = 0):
        super().__init__()
        if budget is not None and (not _is_number(budget, Real) or not 0.0 < float(budget) <= 1.0):
            raise ValueError(f"budget must be a fraction of the dense score matrix in (0, 1], got {budget!r}")
        if not _is_number(seed, Integral) or not -(2**63) <= seed < 2**64:  # torch.Generator's seed range
            raise ValueError(f"seed must be an int in [-2**63, 2**64), got {seed!r}")
        self.budget = None if budget is None else float(budget)
        self.seed = int(seed)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        check_qkv(q, k, v)
        if not _is_number(scale, Real) or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        if q.shape[0] == 0 or q.shape[1] == 0:  # empty batch or no queries: nothing to attend
            return v.new_zeros(q.shape[0], q.shape[1], v.shape[2])
        return self.attend(q, k, v, float(scale))

    @abstractmethod
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) already checked -> (B, Nq, dv) in q's dtype."""

    @abstractmethod
    def score_entries(self, nq: int, nk: int, d: int) -> int:
        """Score / feature entries this backend holds per batch element (and head) for these shapes."""

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        """The concrete parameters used for these shapes (budget resolved); for reports."""
        return {}

    def extra_repr(self) -> str:
        return f"budget={self.budget}, seed={self.seed}"


def positive_int(name: str, value: Any) -> int | None:
    """``value`` if it is None or an int >= 1, else ValueError naming ``name``."""
    if value is not None and (not _is_number(value, Integral) or value < 1):
        raise ValueError(f"{name} must be a positive int (>= 1) or None, got {value!r}")
    return None if value is None else int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else ValueError naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class SeededDraws:
    """Random draws made once per key from a generator seeded with ``seed`` (on the CPU, then moved).

    ``draws(key, device, draw)`` returns ``draw(generator)`` (a tensor or tuple of tensors) for
    ``key``, cached per (key, device), so every call with the same shapes sees the same draw.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._cache: dict[tuple, Any] = {}

    def __call__(self, key: tuple, device: torch.device | str | None, draw):
        cache_key = (*key, str(device))
        if cache_key not in self._cache:
            value = draw(torch.Generator().manual_seed(self.seed))
            moved = tuple(t.to(device) for t in value) if isinstance(value, tuple) else value.to(device)
            self._cache[cache_key] = moved
        return self._cache[cache_key]


def _is_number(value: Any, kind: type) -> bool:
    """True for int/float-like ``kind`` values (numpy scalars included), never for bools."""
    return isinstance(value, kind) and not isinstance(value, bool)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError unless q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) agree in shape, dtype and device."""
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
    if k.shape[1] == 0:
        raise ValueError("attention needs at least one key (Nk >= 1), got Nk=0")
    dtypes = {q.dtype, k.dtype, v.dtype}
    if len(dtypes) != 1 or not q.dtype.is_floating_point:
        raise ValueError(
            f"q, k, v must share one floating dtype (float32, float16, bfloat16); got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
