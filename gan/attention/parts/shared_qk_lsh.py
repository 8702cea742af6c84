"""Shared-QK LSH attention on one sequence, as lucidrains' Reformer (adapted in majid-daliri/kdeformer ``Reformer.py``).

``shared_qk_attention(qk, v, rotations, bucket_size)``: qk (B,L,d), v (B,L,dv), L a multiple of
2 * bucket_size. Hash per round r: argmax([x R_r, -x R_r]) (every round at once, a bounded piece of
tokens at a time); sort by (round, bucket, position); cut the flat order (all rounds) into chunks of
bucket_size; each chunk attends to itself and the previous chunk of the flat order, to keys that are
the L2-normalised qk, a token's own position set to -5e4; per-chunk softmax, rounds mixed by
their log-sum-exp weights. Everything is computed for all rounds at once: the support is
n_hashes * L * 2 bucket_size scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

SELF_ATTENTION_LOGIT = -5e4  # the reference's TOKEN_SELF_ATTN_VALUE


def padded_length(n: int, bucket_size: int) -> int:
    """n rounded up to a multiple of 2 * bucket_size (the reference's pad_to_multiple)."""
    return -(-n // (2 * bucket_size)) * 2 * bucket_size


def draw_rotations(generator: torch.Generator, d: int, n_hashes: int, n_buckets: int) -> torch.Tensor:
    """(d, R, n_buckets / 2) N(0, 1) rotations: the reference's randn((1, d, R, n_buckets // 2)) draw."""
    return torch.randn(d, n_hashes, n_buckets // 2, generator=generator, device=generator.device)


def hash_buckets(x: torch.Tensor, rotations: torch.Tensor, piece: int) -> torch.Tensor:
    """x (B,L,d), rotations (d,R,h) or one per sequence (B,d,R,h) -> (B,R,L) argmax([x R_r, -x R_r]), every
    round at once, ``piece`` tokens at a time. The argmax is read from the max and min of x R_r without forming
    the concatenation: the first maximum of [a, -a] is a's first maximum if it is >= -min(a), else -a's."""
    n_hashes, h = rotations.shape[-2:]
    every_round = rotations.flatten(-2)  # (..., d, R*h)
    parts = []
    for part in x.split(piece, dim=1):
        rotated = (part @ every_round).unflatten(-1, (n_hashes, h))  # (B, piece, R, h)
        top, top_id = rotated.max(-1)
        low, low_id = rotated.min(-1)
        parts.append(torch.where(top >= -low, top_id, h + low_id))  # (B, piece, R)
    return rearrange(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1), "b n r -> b r n")


def _look_one_back(x: torch.Tensor) -> torch.Tensor:
    """(B, chunks, size, ...) -> (B, chunks, 2 size, ...): each chunk followed by the previous one (cyclic)."""
    return torch.cat([x, x.roll(1, dims=1)], dim=2)


def shared_qk_attention(qk: torch.Tensor, v: torch.Tensor, rotations: torch.Tensor, bucket_size: int,
                        scale: float = 1.0) -> torch.Tensor:
    """qk (B,L,d), v (B,L,dv) fp32, L a multiple of 2 * bucket_size, rotations (d,R,n_buckets/2) shared or one per
    sequence (B,d,R,n_buckets/2) -> (B,L,dv) fp32."""
    length = qk.shape[1]
    n_hashes, n_buckets = rotations.shape[-2], length // bucket_size
    # tokens hashed at once: every round's x R (R n_buckets / 2 each) within the scores plus one values gather
    piece = max(1, length * (2 * bucket_size + v.shape[-1]) * 2 // n_buckets)
    buckets = hash_buckets(qk, rotations, piece) + (torch.arange(n_hashes, device=qk.device) * n_buckets).view(1, -1, 1)
    ticker = torch.arange(n_hashes * length, device=qk.device)
    order = (length * buckets.flatten(1) + ticker % length).argsort(dim=-1)  # (B, R*L): unique keys
    undo = order.argsort(dim=-1)
    tokens = order % length  # (B, R*L) position of each sorted slot
    sqk = qk.gather(1, tokens.unsqueeze(-1).expand(-1, -1, qk.shape[-1]))  # (B, R*L, d)
    bq = rearrange(sqk, "b (c i) d -> b c i d", i=bucket_size)
    bk = _look_one_back(rearrange(F.normalize(sqk, p=2, dim=-1), "b (c i) d -> b c i d", i=bucket_size))
    bt = rearrange(tokens, "b (c i) -> b c i", i=bucket_size)
    dots = (bq if scale == 1.0 else bq * scale) @ bk.transpose(-1, -2)  # (B, R*nb, bs, 2bs)
    del sqk, bq, bk
    dots.masked_fill_(bt.unsqueeze(-1) == _look_one_back(bt).unsqueeze(-2), SELF_ATTENTION_LOGIT)
    lse = dots.logsumexp(dim=-1, keepdim=True)
    # The values are gathered per round and again for the look-back (R L dv floats each, the largest tensors here):
    # each is dropped as soon as the next is formed, so at most three are alive at once.
    bv = _look_one_back(rearrange(v.gather(1, tokens.unsqueeze(-1).expand(-1, -1, v.shape[-1])),
                                  "b (c i) e -> b c i e", i=bucket_size))  # (B, R*nb, 2bs, dv)
    so = rearrange(dots.sub_(lse).exp_() @ bv, "b c i e -> b (c i) e")  # (B, R*L, dv)
    del bv, dots
    o = rearrange(so.gather(1, undo.unsqueeze(-1).expand_as(so)), "b (r n) e -> b r n e", r=n_hashes)
    del so
    logits = rearrange(lse.flatten(1).gather(1, undo), "b (r n) -> b r n 1", r=n_hashes)
    return o.mul_(torch.softmax(logits, dim=1)).sum(1)
