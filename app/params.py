"""Attention parameters typed by users: ``k=v`` lists or JSON objects -> keyword dicts."""
from __future__ import annotations

import inspect
import json
from typing import Any

from gan.attention import build_attention

RESERVED = ("budget", "seed")  # set by the app's budget slider / the run seed, not per backend


def parse_value(text: str) -> Any:
    """'8' -> 8, '0.5' -> 0.5, 'true' -> True, 'none' -> None, anything else stays a string."""
    text = text.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        return json.loads(text.lower() if text.lower() in ("true", "false") else text)
    except json.JSONDecodeError:
        return text


def parse_attention_kwargs(text: str | None) -> dict[str, Any]:
    """'{"n_hashes": 4}' or 'n_hashes=4, q_cluster_size=64' -> {'n_hashes': 4, 'q_cluster_size': 64}."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"attention kwargs are not valid JSON ({err.msg}); use '{{\"key\": value}}' or 'key=value,...'") from None
        if not isinstance(value, dict):
            raise ValueError("attention kwargs JSON must be an object such as {\"n_hashes\": 4}")
        return value
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"cannot read attention kwarg {item!r}; write key=value pairs separated by commas")
        kwargs[key.strip()] = parse_value(value)
    return kwargs


def tunable_parameters(name: str) -> dict[str, Any]:
    """Keyword parameters of backend ``name`` other than budget/seed, with their defaults (None = from budget)."""
    params: dict[str, Any] = {}
    for klass in type(build_attention(name)).__mro__:
        if "__init__" not in vars(klass) or klass.__module__.startswith("torch"):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.name not in RESERVED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(p.name, None if p.default is p.empty else p.default)
    return params
