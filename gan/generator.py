"""What every generator family shares: attention swapping and the ``generate`` contract."""
from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionBackend, build_attention
from .layers import SelfAttention


class Generator(nn.Module):
    """Base of the BigGAN families. Subclasses set ``family``, ``resolution``, ``z_dim``,
    ``num_classes`` and implement ``forward(z, class_ids, truncation)``."""

    family: str = ""
    resolution: int
    z_dim: int
    num_classes: int

    def attention_blocks(self) -> list[SelfAttention]:
        return [m for m in self.modules() if isinstance(m, SelfAttention)]

    def set_attention(self, attention: str | AttentionBackend, **kwargs) -> AttentionBackend:
        """Swap the attention backend of every attention block in place (no reload); returns it."""
        if isinstance(attention, AttentionBackend):
            if kwargs:
                raise ValueError("pass parameters either to build_attention or to set_attention, not both")
            backend = attention
        else:
            backend = build_attention(attention, **kwargs)
        for block in self.attention_blocks():
            block.attention = backend
        return backend

    @property
    def attention(self) -> AttentionBackend:
        return self.attention_blocks()[0].attention

    @torch.no_grad()
    def generate(self, z: torch.Tensor, class_ids: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z (B, z_dim) as the network consumes it (already truncated), class_ids (B,) int -> (B,3,H,W) in [-1,1].

        z is moved to the generator's device and dtype.
        """
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        weight = next(self.parameters())
        z = z.to(device=weight.device, dtype=weight.dtype)
        class_ids = torch.as_tensor(class_ids, device=z.device).long().reshape(-1)
        if class_ids.shape[0] != z.shape[0]:
            raise ValueError(f"got {class_ids.shape[0]} class ids for {z.shape[0]} latents")
        if class_ids.numel() and (class_ids.min() < 0 or class_ids.max() >= self.num_classes):
            raise ValueError(f"class ids must be in [0, {self.num_classes - 1}], got {class_ids.tolist()}")
        if not (0.0 < float(truncation) <= 1.0):
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        return self(z, class_ids, float(truncation))
