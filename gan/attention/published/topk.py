"""Query-chunked top-k attention (Gupta et al., 2021, "Memory-efficient Transformers via Top-k Attention").

For each chunk of queries: scores against every key, keep the k largest per query, softmax over
those only, and sum the k gathered values with those weights (one fused ``embedding_bag``). Peak
working memory is one chunk of scores, B * chunk_size * Nk, never B * Nq * Nk.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from ..base import AttentionBackend, Parameter, positive_int

DEFAULT_CHUNK_SIZE = 256  # cache-sized score chunks (docs/attention.md, "Why these constants")
# Keys per group in the group-max prefilter (see top_k_scores).
GROUP = 4
PREFILTER_RATIO = 8


class TopKAttention(AttentionBackend):
    """Exact softmax restricted to each query's k highest-scoring keys.

    ``k`` defaults to floor(budget * Nk) (at least 1) (``DEFAULT_BUDGET`` when no budget is given).
    It holds Nq * k score entries (peak working set chunk_size * Nk per batch element).
    ``seed`` is accepted for the common interface; the method draws nothing at random.
    """

    name = "topk"
    paper = "Gupta et al., 2021 (arXiv:2106.06899)"

    k = Parameter(positive_int)  # keys kept per query, 1..Nk
    chunk_size = Parameter(positive_int, default=DEFAULT_CHUNK_SIZE, optional=False)  # queries per chunk

    def k_for(self, nk: int) -> int:
        """Keys kept per query when there are ``nk`` keys."""
        if self.k is not None:
            if self.k > nk:
                raise ValueError(f"k={self.k} exceeds the number of keys Nk={nk}; accepted 1..Nk")
            return self.k
        budget = self.effective_budget
        # floor, so Nq * k never exceeds the budget (1e-9 absorbs float error in e.g. 0.29 * 100)
        return min(nk, max(1, math.floor(budget * nk + 1e-9)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        batch, nq, nk = q.shape[0], q.shape[1], k.shape[1]
        top = self.k_for(nk)
        keys = rearrange(k.float() * scale, "b n d -> b d n")  # (B, d, Nk)
        values = rearrange(v.float(), "b n e -> (b n) e")  # (B*Nk, dv)
        key_offset = torch.arange(batch, device=k.device).view(batch, 1, 1) * nk  # (B, 1, 1)
        out = values.new_empty(batch, nq, values.shape[1])  # (B, Nq, dv) fp32, filled chunk by chunk
        for start in range(0, nq, self.chunk_size):  # query chunks: at most B * chunk_size * Nk scores live
            queries = q[:, start : start + self.chunk_size].float()  # (B, C, d)
            out[:, start : start + queries.shape[1]] = _attend_chunk(queries, keys, values, key_offset, top)
        return out.to(q.dtype)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return nq * self.k_for(nk)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return {"k": self.k_for(nk), "chunk_size": min(self.chunk_size, nq)}


def _attend_chunk(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_offset: torch.Tensor, top: int
) -> torch.Tensor:
    """queries (B, C, d), keys (B, d, Nk) pre-scaled, values (B*Nk, dv) -> (B, C, dv), all fp32."""
    scores = torch.bmm(queries, keys)  # (B, C, Nk)
    top_scores, top_keys = top_k_scores(scores, top)  # (B, C, k)
    del scores
    weights = torch.softmax(top_scores, dim=-1)  # (B, C, k)
    rows = F.embedding_bag(
        (top_keys + key_offset).flatten(0, 1), values, per_sample_weights=weights.flatten(0, 1), mode="sum"
    )  # (B*C, dv): per query the weighted sum of its k gathered values
    return rearrange(rows, "(b c) e -> b c e", b=queries.shape[0])


def top_k_scores(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (..., Nk) -> (values, indices) (..., k) of the k largest, in no particular order.

    A group-max prefilter cuts the selection work where it pays: the k largest scores all lie in
    the k groups (of GROUP adjacent keys) with the largest maxima, since any score outside those
    groups is beaten by each of their k maxima. On the CPU, torch.topk uses a heap when
    64 k <= Nk and a full nth_element otherwise; for Nk/64 < k <= Nk/(GROUP * PREFILTER_RATIO)
    the prefilter is the faster path on the CPU (docs/attention.md, "Why these constants");
    elsewhere torch.topk alone is.
    """
    nk = scores.shape[-1]
    if scores.device.type != "cpu" or nk % GROUP or 64 * k <= nk or k * GROUP * PREFILTER_RATIO > nk:
        return scores.topk(k, dim=-1, sorted=False)
    group_max = rearrange(scores, "... (g s) -> ... g s", s=GROUP).amax(dim=-1)  # (..., Nk/GROUP)
    _, groups = group_max.topk(k, dim=-1, sorted=False)  # (..., k)
    members = torch.arange(GROUP, device=scores.device)
    candidates = (groups.unsqueeze(-1) * GROUP + members).flatten(-2)  # (..., k*GROUP) key indices
    values, picked = scores.gather(-1, candidates).topk(k, dim=-1, sorted=False)
    return values, candidates.gather(-1, picked)
