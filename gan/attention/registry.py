"""Name -> backend class registry: every method module imported explicitly; a missing one is an error.

Adding a backend: write its module (one class, a subclass of ``AttentionBackend`` with ``name``,
``published``, ``paper``, ``variant_of``), import it here and add its class to ``BACKENDS``, in the
order ``available_attentions()`` lists them (published methods first, then the project's variants).
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import AttentionBackend
from .exact import ExactAttention
from .kdeformer import KDEformerAttention
from .performer import PerformerAttention
from .performer_shrunk import PerformerCentredShrunkAttention
from .reformer import ReformerAttention
from .sblocal import SBLocalAttention
from .scatterbrain import ScatterbrainAttention
from .scatterbrain_centred import ScatterbrainCentredAttention
from .smyrf import SmyrfAttention
from .smyrf_topkeys import SmyrfTopKeysAttention
from .thinformer import ThinformerAttention
from .topk import TopKAttention

BACKENDS: tuple[type[AttentionBackend], ...] = (
    # published algorithms, as their authors' code computes them
    ExactAttention,
    SmyrfAttention,
    ReformerAttention,
    PerformerAttention,
    ScatterbrainAttention,
    SBLocalAttention,
    TopKAttention,
    KDEformerAttention,
    ThinformerAttention,
    # the project's variants (each says which published method it varies)
    SmyrfTopKeysAttention,
    ScatterbrainCentredAttention,
    PerformerCentredShrunkAttention,
)
_REGISTRY: dict[str, type[AttentionBackend]] = {cls.name: cls for cls in BACKENDS}
assert len(_REGISTRY) == len(BACKENDS), "two backends share a name"


def available_attentions(published: bool | None = None) -> list[str]:
    """Names accepted by ``build_attention``, exact first (``published=True/False`` keeps one group)."""
    return [cls.name for cls in BACKENDS if published is None or cls.published == published]


def backend_class(name: str) -> type[AttentionBackend]:
    """The class registered as ``name``; ValueError listing the accepted names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; available: {', '.join(available_attentions())}")
    return _REGISTRY[name]


def attention_info(name: str) -> dict[str, Any]:
    """What backend ``name`` is: {"name", "published", "paper", "variant_of", "summary", "parameters"}."""
    cls = backend_class(name)
    return {**cls.info(), "parameters": backend_parameters(name)}


def backend_parameters(name: str) -> dict[str, Any]:
    """Keyword parameters ``build_attention(name, ...)`` accepts, with their defaults (budget and seed included)."""
    params: dict[str, Any] = {}
    for klass in backend_class(name).__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        for p in sig.parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(p.name, None if p.default is inspect.Parameter.empty else p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params


def build_attention(name: str, **params) -> AttentionBackend:
    """Build the backend ``name`` with its keyword parameters (every backend takes ``budget`` and ``seed``)."""
    accepted = backend_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name} attention does not take {', '.join(unknown)}; it accepts: {', '.join(sorted(accepted))}"
        )
    return backend_class(name)(**params)
