"""Exact softmax attention through ``torch.nn.functional.scaled_dot_product_attention``.

With dv != d (BigGAN: d = C/8, dv = C/2) PyTorch's CPU flash kernel does not apply and SDPA
materialises the scores (about 2.3x B*Nq*Nk*4 bytes at its peak). Beyond CHUNK_SCORES scores
per call the queries therefore go through SDPA in chunks: the same results (to fp32 round-off),
bounded memory (Nq=65536, Nk=16384 would otherwise peak near 18 GiB). BigGAN-deep-128's shape
(B <= 8, 4096 x 1024) stays one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import AttentionBackend

CHUNK_SCORES = 1 << 25  # score entries (B * chunk * Nk) per SDPA call: 128 MiB in fp32


class ExactAttention(AttentionBackend):
    """softmax(scale * q k^T) v, computed densely (the reference every approximation is measured against)."""

    name = "exact"
    paper = "Vaswani et al., NeurIPS 2017 (softmax attention; BigGAN: Brock et al., ICLR 2019)"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        batch, nq, nk = q.shape[0], q.shape[1], k.shape[1]
        chunk = max(1, CHUNK_SCORES // (batch * nk))  # queries per SDPA call
        if chunk >= nq:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, Nq, dv)
        out = v.new_empty(batch, nq, v.shape[2])  # (B, Nq, dv)
        for start in range(0, nq, chunk):
            out[:, start : start + chunk] = F.scaled_dot_product_attention(
                q[:, start : start + chunk], k, v, scale=scale
            )
        return out

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return nq * nk
