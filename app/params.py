"""Backend parameters for the app and the sampler: the registry's own list, checked against a generator's shape.

Introspection lives in ``gan.attention.backend_parameters``; the ``--attn-kwargs`` grammar in
``common.cli.parse_attention_kwargs``. This module only adds what the programs need on top.
"""
from __future__ import annotations

from typing import Any

from gan.attention import AttentionBackend, backend_parameters, build_attention
from gan.generator import AttentionShape

RESERVED = ("budget", "seed")  # set by the app's budget control / the run seed, not per backend


def tunable_parameters(name: str) -> dict[str, Any]:
    """Keyword parameters of backend ``name`` other than budget/seed, with their defaults (None = from budget)."""
    return {key: value for key, value in backend_parameters(name).items() if key not in RESERVED}


def checked_backend(
    name: str, kwargs: dict[str, Any], shape: AttentionShape
) -> tuple[AttentionBackend, dict[str, Any]]:
    """Build ``name`` with ``kwargs`` and check it fits ``shape`` (from the generator's config, no forward pass).

    Returns (backend, its resolved parameters); ValueError naming the backend and the shape otherwise
    (e.g. topk's k > Nk).
    """
    backend = build_attention(name, **kwargs)
    try:
        resolved = backend.resolve(shape.nq, shape.nk, shape.d)
        backend.score_entries(shape.nq, shape.nk, shape.d)
    except ValueError as err:
        where = f"this generator's attention: Nq={shape.nq}, Nk={shape.nk}, d={shape.d}"
        raise ValueError(f"{name}: {err} ({where})") from None
    return backend, resolved


def describe(params: dict[str, Any]) -> str:
    """{'k': 128, 'chunk_size': 1024} -> 'k=128, chunk_size=1024' ('-' when empty)."""
    return ", ".join(f"{key}={value}" for key, value in params.items()) or "-"
