"""Exact softmax attention: the fastest exact path for the device, within the scores it reports.

- CPU: matmul, exp in place, matmul, divide: one (B, chunk, Nk) fp32 score tensor per call and nothing else
  of that size. With dv != d (BigGAN: d = C/8, dv = C/2) PyTorch's CPU flash kernel does not apply and
  ``scaled_dot_product_attention`` takes its math path, which holds about 2.3x the scores and spends time in
  its safe-softmax masking (``isneginf``/``where``/``all``); the plain path is faster (docs/attention.md).
- CUDA (and other accelerators): ``scaled_dot_product_attention``, whose flash and memory-efficient kernels
  never form the scores.

Queries go in chunks of at most CHUNK_SCORES // Nk per call, a bound per batch element (so the number of
calls depends on the shape, never on the batch): ``score_entries`` reports that chunk's scores.
BigGAN-deep-128's 4096 x 1024 is one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import AttentionBackend

CHUNK_SCORES = 1 << 22  # score entries per batch element per call (16 MiB in fp32): 4096 x 1024 in one call


def query_chunk(nq: int, nk: int) -> int:
    """Queries per call: all of them, or as many as CHUNK_SCORES scores per batch element allow."""
    return min(nq, max(1, CHUNK_SCORES // max(nk, 1)))


class ExactAttention(AttentionBackend):
    """softmax(scale * q k^T) v, computed densely (the reference every approximation is measured against)."""

    name = "exact"
    paper = "Vaswani et al., NeurIPS 2017 (softmax attention; BigGAN: Brock et al., ICLR 2019)"

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        nq = q.shape[1]
        chunk = query_chunk(nq, k.shape[1])
        if q.device.type == "cpu":
            keys, values = k.float().transpose(1, 2), v.float()  # (B, d, Nk), (B, Nk, dv)
            parts = [_plain(q[:, start : start + chunk].float(), keys, values, scale) for start in range(0, nq, chunk)]
        else:
            parts = [
                F.scaled_dot_product_attention(q[:, start : start + chunk], k, v, scale=scale)
                for start in range(0, nq, chunk)
            ]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).to(q.dtype)  # (B, Nq, dv)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return query_chunk(nq, nk) * nk


def _plain(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """fp32 q (B, c, d), keys (B, d, Nk), values (B, Nk, dv) -> (B, c, dv); the scores are the only (c, Nk) tensor,
    exponentiated in place and normalised after the product (B c dv divisions instead of B c Nk)."""
    scores = torch.bmm(q, keys)  # (B, c, Nk)
    if scale != 1.0:
        scores.mul_(scale)
    scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    return torch.bmm(scores, values).div_(scores.sum(dim=-1, keepdim=True))
