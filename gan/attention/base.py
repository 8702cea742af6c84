"""The contract every attention backend honours.

A backend is a parameter-free ``nn.Module`` called as ``attn(q, k, v, scale=1.0)`` with
q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) -> (B, Nq, dv). Queries and keys are different vectors
and Nq may differ from Nk (BigGAN: Nq = 4 Nk). Every random draw comes from ``seed``.

``budget`` is a fraction of the dense Nq x Nk score matrix; a backend built with a budget resolves
its own parameters from the shapes it sees at call time (``resolve``), and explicit parameters
override what the budget would choose. With neither, every approximate backend resolves its
parameters from ``DEFAULT_BUDGET`` (``effective_budget``), so methods built with defaults compare at
equal memory. A backend declares its keyword parameters as class attributes, in order
(``bucket_size = Parameter(positive_int)``; ``budget`` and ``seed``, declared here, come last);
``AttentionBackend.__init__`` checks each with its validator below and stores it under its name, so
``declared_parameters``, ``extra_repr`` and ``inspect.signature`` read the declarations. It also builds
``seeded_draws`` (``SeededDraws`` from ``seed`` and, where declared, ``redraw``). A subclass ``__init__`` adds
only what spans parameters (a check of one against another) or is built from them (its own caches of draws).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

DEFAULT_BUDGET = 1 / 8  # the papers' usual operating point (SMYRF: 8 hashes, clusters 64 q / 16 k at 4096 x 1024)


class Parameter:
    """A constructor keyword a backend declares as a class attribute (its name is the attribute's; not a tensor
    ``nn.Parameter``): ``check(name, value, **options)`` validates the value given or ``default`` and returns
    what is stored."""

    def __init__(self, check: Callable[..., Any], default: Any = None, **options: Any):
        self.check, self.default, self.options = check, default, options

    def validated(self, name: str, value: Any) -> Any:
        return self.check(name, value, **self.options)


class _DeclaredSignature:
    """``inspect.signature(Backend)``: the declared keyword parameters with their defaults. Instances have none
    of their own (AttributeError), so inspect reads their call as for any module."""

    def __get__(self, instance: Any, owner: type) -> inspect.Signature:
        if instance is not None:
            raise AttributeError("__signature__")
        keyword = inspect.Parameter.KEYWORD_ONLY
        return inspect.Signature(
            [inspect.Parameter(name, keyword, default=default) for name, default in owner.declared_parameters().items()]
        )


def positive_int(name: str, value: Any, *, optional: bool = True, most: int | None = None) -> int | None:
    """``value`` as an int if it is an int >= 1 (and <= ``most``), or None when ``optional``; else ValueError
    naming ``name`` and what it accepts."""
    if value is None and optional:
        return None
    if not _is_number(value, Integral) or value < 1 or (most is not None and value > most):
        accepted = "a positive int (>= 1)" if most is None else f"an int in 1..{most}"
        raise ValueError(f"{name} must be {accepted}{' or None' if optional else ''}, got {value!r}")
    return int(value)


def nonnegative_int(name: str, value: Any, meaning: str = "") -> int | None:
    """``value`` if it is None or an int >= 0, else ValueError naming ``name`` (``meaning``: what 0 or the value
    is, said in the message)."""
    if value is not None and (not _is_number(value, Integral) or value < 0):
        raise ValueError(f"{name} must be an int >= 0{f' ({meaning})' if meaning else ''} or None, got {value!r}")
    return None if value is None else int(value)


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0, else ValueError naming ``name``."""
    if not _is_number(value, Real) or not 0 < float(value) < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonnegative_number(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number >= 0, else ValueError naming ``name``."""
    if not _is_number(value, Real) or not 0 <= float(value) < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def unit_fraction(name: str, value: Any, what: str = "a number", *, optional: bool = False) -> float | None:
    """``value`` as a float if it is a number in (0, 1] (or None when ``optional``), else ValueError naming ``name``
    (``what`` it is)."""
    if value is None and optional:
        return None
    if not _is_number(value, Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be {what} in (0, 1], got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else ValueError naming ``name``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ValueError naming ``name`` and listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def generator_seed(name: str, value: Any) -> int:
    """``value`` as an int if torch.Generator takes it as a seed (an int in [-2**63, 2**64)), else ValueError."""
    if not _is_number(value, Integral) or not -(2**63) <= value < 2**64:
        raise ValueError(f"{name} must be an int in [-2**63, 2**64), got {value!r}")
    return int(value)


def _is_number(value: Any, kind: type) -> bool:
    """True for int/float-like ``kind`` values (numpy scalars included), never for bools."""
    return isinstance(value, kind) and not isinstance(value, bool)


REDRAW = Parameter(check_bool, default=False)  # True: fresh random draws on every call (``SeededDraws``)


class AttentionBackend(nn.Module, ABC):
    """Base class: subclasses set ``name`` (and what they are: ``published``, ``paper``, ``variant_of``), declare
    their parameters and implement ``attend`` and ``score_entries``; checking and storing the parameters, the
    budget, the seed and the repr are handled here."""

    name: str = ""
    published: bool = True  # computes a paper's algorithm as its authors' code does
    paper: str = ""  # citation of the paper the method comes from
    variant_of: str | None = None  # for the project's own methods: the published backend they vary
    budget = Parameter(unit_fraction, what="a fraction of the dense score matrix", optional=True)
    seed = Parameter(generator_seed, default=0)

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

    __signature__ = _DeclaredSignature()

    @classmethod
    def declarations(cls) -> dict[str, Parameter]:
        """Every ``Parameter`` the class and its bases declare, the class's own first, each in declaration order
        (a name a subclass defines again, as a Parameter or not, is the subclass's)."""
        found: dict[str, Parameter] = {}
        seen: set[str] = set()
        for klass in cls.__mro__:
            for name, value in vars(klass).items():
                if name not in seen and isinstance(value, Parameter):
                    found[name] = value
                seen.add(name)
        return found

    @classmethod
    def declared_parameters(cls) -> dict[str, Any]:
        """Keyword parameters the constructor accepts, with their defaults (budget and seed included)."""
        return {name: parameter.default for name, parameter in cls.declarations().items()}

    def __init__(self, **params: Any):
        """Checks and stores every declared parameter (``params`` or its default); ValueError for a name the
        backend does not declare, listing those it does."""
        super().__init__()
        declared = self.declarations()
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ValueError(
                f"{self.name} attention does not take {', '.join(unknown)}; it accepts: {', '.join(sorted(declared))}"
            )
        for name, parameter in declared.items():
            setattr(self, name, parameter.validated(name, params.get(name, parameter.default)))
        # random draws from seed: per call with redraw, for a backend that declares it; else once per key
        self.seeded_draws = SeededDraws(self.seed, getattr(self, "redraw", False))

    @property
    def effective_budget(self) -> float:
        """The budget parameters resolve from: ``budget``, or DEFAULT_BUDGET when none was given."""
        return DEFAULT_BUDGET if self.budget is None else self.budget

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
        """Every declared parameter as this backend holds it (None: resolved from the budget at call time)."""
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.declared_parameters())


class SeededDraws:
    """Random draws from ``seed`` (on the CPU, then moved): once per key, or the next ones on every call.

    ``draws(key, device, draw)`` returns ``draw(generator)`` (a tensor or tuple of tensors) for
    ``key``, cached per (key, device), so every call with the same shapes sees the same draw: a
    generator seeded with ``seed`` per key. With ``redraw`` every call draws afresh from one generator
    seeded once with ``seed`` (the references' draws per call; the first equals the cached draw).
    """

    def __init__(self, seed: int, redraw: bool = False):
        self.seed, self.redraw = seed, redraw
        self._generator = torch.Generator().manual_seed(seed)  # the redraw stream
        self._cache: dict[tuple, Any] = {}

    def __call__(self, key: tuple, device: torch.device | str | None, draw):
        if self.redraw:
            return _moved(draw(self._generator), device)
        cache_key = (*key, str(device))
        if cache_key not in self._cache:
            self._cache[cache_key] = _moved(draw(torch.Generator().manual_seed(self.seed)), device)
        return self._cache[cache_key]


def _moved(value, device):
    """A tensor or a tuple of tensors on ``device``."""
    return tuple(t.to(device) for t in value) if isinstance(value, tuple) else value.to(device)


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
