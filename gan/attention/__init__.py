"""Attention backends behind one call: ``build_attention(name, **params)(q, k, v, scale)``.

q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) -> (B, Nq, dv). Methods know nothing about GANs.
"""
from __future__ import annotations

from .base import AttentionBackend, check_qkv
from .registry import attention_info, available_attentions, backend_class, backend_parameters, build_attention

__all__ = [
    "AttentionBackend",
    "attention_info",
    "available_attentions",
    "backend_class",
    "backend_parameters",
    "build_attention",
    "check_qkv",
]
