"""Layers shared by both BigGAN families: conditional batch norm at inference, the self-attention block.

Spectral norm is folded into plain weights when a checkpoint is loaded (``weights/``), so the
convolutions here are ordinary ``nn.Conv2d`` / ``nn.Linear``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import AttentionBackend, build_attention

# probe(backend, q, k, v) -> out: wraps the backend call (timing, error against exact, memory).
AttentionProbe = Callable[[AttentionBackend, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def conditional_batch_norm(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float, gain: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps) * gain + bias`` as one fused affine map.

    x (B,C,H,W); stored statistics mean, var (C,); per-sample gain, bias (B,C) -> (B,C,H,W).
    """
    scale = gain * torch.rsqrt(var + eps)  # (B, C)
    shift = bias - mean * scale  # (B, C)
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])


class SelfAttention(nn.Module):
    """BigGAN self-attention: ``x + gamma * o(softmax(theta^T phi) g)``, unscaled, phi and g 2x2 max-pooled.

    For C channels on an H x W map: N = H*W queries of size C/8, N/4 keys of size C/8 and values
    of size C/2. ``attention`` is any backend from ``gan.attention``; it is called with scale=1.
    """

    def __init__(self, channels: int, attention: AttentionBackend | None = None):
        super().__init__()
        if channels % 8:
            raise ValueError(f"attention channels must be a multiple of 8, got {channels}")
        self.channels = channels
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.o = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.attention = attention if attention is not None else build_attention("exact")
        self.probe: AttentionProbe | None = None

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B,C,H,W) -> q (B,HW,C/8), k (B,HW/4,C/8), v (B,HW/4,C/2)."""
        q = rearrange(self.theta(x), "b c h w -> b (h w) c")
        k = rearrange(F.max_pool2d(self.phi(x), 2), "b c h w -> b (h w) c")
        v = rearrange(F.max_pool2d(self.g(x), 2), "b c h w -> b (h w) c")
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        if self.probe is None:
            out = self.attention(q, k, v, scale=1.0)
        else:
            out = self.probe(self.attention, q, k, v)
        out = rearrange(out, "b (h w) c -> b c h w", h=x.shape[2])  # (B, C/2, H, W)
        return x + self.gamma * self.o(out)
