"""Name -> backend class registry. Each method module registers itself on import."""
from __future__ import annotations

import importlib
import inspect

from .base import AttentionBackend

# Modules imported on first use, in the order available_attentions() lists them.
_METHOD_MODULES = ["exact", "smyrf", "reformer", "performer", "scatterbrain", "topk"]
_REGISTRY: dict[str, type[AttentionBackend]] = {}
_loaded = False


def register_attention(cls: type[AttentionBackend]) -> type[AttentionBackend]:
    """Class decorator: make ``cls`` buildable by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a non-empty `name` to be registered")
    _REGISTRY[cls.name] = cls
    return cls


def _import_method(module: str) -> None:
    """Import one method module and register the backend classes it defines."""
    try:
        mod = importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.{module}":
            raise
        return  # method not shipped
    for obj in vars(mod).values():
        if inspect.isclass(obj) and issubclass(obj, AttentionBackend) and obj.name and obj.__module__ == mod.__name__:
            _REGISTRY.setdefault(obj.name, obj)


def _load_methods() -> None:
    global _loaded
    if not _loaded:
        for module in _METHOD_MODULES:
            _import_method(module)
        _loaded = True


def available_attentions() -> list[str]:
    """Names accepted by ``build_attention``, exact first."""
    _load_methods()
    order = {name: i for i, name in enumerate(_METHOD_MODULES)}
    return sorted(_REGISTRY, key=lambda n: (order.get(n, len(order)), n))


def build_attention(name: str, **params) -> AttentionBackend:
    """Build the backend ``name`` with its keyword parameters (every backend takes ``budget`` and ``seed``)."""
    if name not in _REGISTRY and name in _METHOD_MODULES:
        _import_method(name)  # only this method's module: a problem in another cannot break it
    if name not in _REGISTRY:
        _load_methods()
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention {name!r}; available: {', '.join(available_attentions())}")
    cls = _REGISTRY[name]
    accepted = _accepted_params(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"{name} attention does not take {', '.join(unknown)}; it accepts: {', '.join(sorted(accepted))}"
        )
    return cls(**params)


def _accepted_params(cls: type[AttentionBackend]) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        names |= {p.name for p in sig.parameters.values() if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return names
