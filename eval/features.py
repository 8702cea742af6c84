"""What one evaluated method leaves behind: every image's Inception outputs, attention error and cost."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MethodFeatures:
    """All N images of one method, in image order."""

    features: torch.Tensor  # (N, D) float32 pool3 features
    logits: torch.Tensor  # (N, 1008) float32 unbiased logits
    attn_error: torch.Tensor  # (N,) float64 relative error against exact attention
    gen_seconds: float
    attn_seconds: float
    attn_calls: int
    attn_peak_bytes: int
    attn_shape: tuple[int, ...]  # (Nq, Nk, d) seen by the attention layer; empty when it was never called
    generated: int  # images generated in this run (the rest came from the cache)
