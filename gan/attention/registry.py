"""Name -> backend class registry: every method module imported explicitly; a missing one is an error.

Adding a backend: write its module in ``published/`` or ``variants/`` (one class, a subclass of
``AttentionBackend`` with ``name``, ``published``, ``paper``, ``variant_of`` and its declared parameters, built
from ``parts/``), import it here and add its class to ``BACKENDS``, in the order ``available_attentions()``
lists them (published methods first, then the project's variants). docs/attention.md, "Adding a backend".
"""

from __future__ import annotations

from typing import Any

from .base import AttentionBackend
from .published.exact import ExactAttention
from .published.kdeformer import KDEformerAttention
from .published.performer import PerformerAttention
from .published.reformer import ReformerAttention
from .published.sblocal import SBLocalAttention
from .published.scatterbrain import ScatterbrainAttention
from .published.smyrf import SmyrfAttention
from .published.thinformer import ThinformerAttention
from .published.topk import TopKAttention
from .variants.performer_shrunk import PerformerCentredShrunkAttention
from .variants.scatterbrain_centred import ScatterbrainCentredAttention
from .variants.scatterbrain_centroids import ScatterbrainCentroidsAttention
from .variants.scatterbrain_meanfield import ScatterbrainMeanFieldAttention
from .variants.smyrf_topkeys import SmyrfTopKeysAttention

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
    ScatterbrainMeanFieldAttention,
    ScatterbrainCentroidsAttention,
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
    return backend_class(name).declared_parameters()


def build_attention(name: str, **params) -> AttentionBackend:
    """Build the backend ``name`` with its keyword parameters (every backend takes ``budget`` and ``seed``; one it
    does not declare is a ValueError listing those it does)."""
    return backend_class(name)(**params)
