"""Exact softmax attention through ``torch.nn.functional.scaled_dot_product_attention``."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import AttentionBackend


class ExactAttention(AttentionBackend):
    """softmax(scale * q k^T) v, computed densely (the reference every approximation is measured against)."""

    name = "exact"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, Nq, dv)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return nq * nk
