"""Attention over the UNION of a ``RoundLayout``'s rounds: each (query, key) pair counted once.

A pair met in an earlier round is masked in later ones; rounds are accumulated one at a time under a
running per-query log-shift, in steps of whole clusters that bound the working set. Optionally with a
low-rank residual (sparse + low-rank attention) or sampled rounds (a Horvitz-Thompson rest of the row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from .low_rank import LowRankTerms
from .round_layout import RoundLayout, gather_rows

# (query, key) pairs scored per step of clustered_attention: 2^23 pairs hold 32 MiB of fp32 scores and
# 64 MiB of duplicate-lookup indices, whatever Nq; one step covers a whole round at BigGAN's 4096 x 1024.
PAIRS_PER_STEP = 1 << 23


def clustered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: RoundLayout,
    low_rank: LowRankTerms | None = None,
    sampled_from: int | None = None,
) -> torch.Tensor:
    """Attention over the union of the rounds' supports -> (B,Nq,dv) fp32.

    q (B,Nq,d) already multiplied by the scale, k (B,Nk,d), v (B,Nk,dv), all fp32. A pair met in an
    earlier round is masked. Rounds are accumulated one at a time into per-query numerator and
    denominator sums under a running log-shift (rescaled when a round raises a query's maximum), in
    steps of whole clusters holding at most ``PAIRS_PER_STEP`` (query, key) pairs, so the working set
    (scores, masks, duplicate lookups) stays a bounded slice of one round. With ``low_rank`` the result
    is Scatterbrain's estimator: the low-rank sums everywhere plus, on the support, exp(score) minus the estimate
    (``low_rank.num`` and ``low_rank.den`` are consumed: accumulated into in place).

    With ``sampled_from`` = h, rounds h.. hold uniformly drawn keys: their n_i new pairs of query i stand for
    the Nk - m_i keys the first h rounds did not give it (m_i pairs), so their sums are weighted by
    (Nk - m_i) / n_i (a Horvitz-Thompson estimate of the rest of the row).
    """
    b, n_rounds, nq = layout.q_cluster.shape
    if low_rank is not None and sampled_from is not None:
        raise ValueError("clustered_attention: a low-rank residual and sampled rounds are two residuals; give one")
    if low_rank is None:
        top = _RowSums.zeros(b * nq, v.shape[-1], q.device)
    else:  # the low-rank sums are accumulated into in place: no copy of the (B*Nq, dv) numerator
        top = _RowSums(low_rank.log_offset.reshape(-1), low_rank.num.view(-1, v.shape[-1]), low_rank.den.view(-1))
    n_top = n_rounds if sampled_from is None else sampled_from
    sampled = None if n_top == n_rounds else _RowSums.zeros(b * nq, v.shape[-1], q.device)
    seen = RoundMembership(layout, k.shape[1])
    n_clusters, qs, width = layout.q_rows.shape[2], layout.q_rows.shape[3], layout.k_rows.shape[3]
    step = max(1, PAIRS_PER_STEP // (b * qs * width))  # clusters per step: bounds the working set
    for r in range(n_rounds):
        sums = top if r < n_top else sampled
        for first in range(0, n_clusters, step):
            clusters = slice(first, first + step)
            q_rows, k_rows = layout.q_rows[:, r, clusters], layout.k_rows[:, r, clusters]  # (B, c, qs), (B, c, W)
            scores = gather_rows(q, q_rows) @ gather_rows(k, k_rows).transpose(-1, -2)  # (B, c, qs, W)
            # Duplicates of earlier rounds, padding keys, and padding query slots (they gathered row 0 and add nothing
            # to it).
            masked = seen.met_before(r, clusters) | (k_rows < 0).unsqueeze(-2) | (q_rows < 0).unsqueeze(-1)
            scores.masked_fill_(masked, -math.inf)
            rows = q_rows.clamp_min(0).reshape(-1)  # (B*c*qs,)
            weights = sums.rescale_to(rows, scores)  # (B, c, qs, W): exp(score - the query's shift), masked 0
            if low_rank is not None:
                estimate = gather_rows(low_rank.a, q_rows) @ gather_rows(low_rank.b, k_rows).transpose(
                    -1, -2
                )  # (B,c,qs,W)
                row_shift = sums.shift.index_select(0, rows).view(*q_rows.shape, 1)
                offset = low_rank.log_offset.reshape(-1).index_select(0, rows).view_as(row_shift)
                weights -= estimate.mul_((offset - row_shift).exp_()).masked_fill_(masked, 0.0)
            sums.num.index_add_(0, rows, (weights @ gather_rows(v, k_rows)).view(-1, v.shape[-1]))
            sums.den.index_add_(0, rows, weights.sum(-1).reshape(-1))
            if sampled is not None:
                sums.pairs.index_add_(0, rows, (~masked).sum(-1).reshape(-1).float())
    if sampled is not None:
        top.add_weighted(sampled, (k.shape[1] - top.pairs) / sampled.pairs.clamp_min(1.0))
    return top.num.div_(top.den.unsqueeze(-1)).view(b, nq, -1)


@dataclass
class _RowSums:
    """Per-query softmax sums under a running log-shift: exp(shift) * num (B*Nq, dv), exp(shift) * den (B*Nq,);
    pairs (B*Nq,) counts the (query, key) pairs added."""

    shift: torch.Tensor
    num: torch.Tensor
    den: torch.Tensor
    pairs: torch.Tensor | None = None

    def __post_init__(self):
        if self.pairs is None:
            self.pairs = torch.zeros_like(self.den)

    @classmethod
    def zeros(cls, rows: int, dv: int, device) -> _RowSums:
        shift = torch.full((rows,), -1e30, device=device)  # finite: exp(-inf - shift) stays 0
        return cls(shift, torch.zeros(rows, dv, device=device), torch.zeros(rows, device=device))

    def rescale_to(self, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Raise the shift of ``rows`` (flat query ids of scores (..., qs, W)) to their new maxima, rescaling the
        sums, and return exp(scores - shift) in place of ``scores``."""
        new_shift = self.shift.scatter_reduce(0, rows, scores.amax(-1).reshape(-1), "amax")
        rescale = (self.shift - new_shift).exp_()  # (B*Nq,) <= 1; 1 for queries outside these rows
        self.num *= rescale.unsqueeze(-1)
        self.den *= rescale
        self.shift = new_shift
        row_shift = new_shift.index_select(0, rows).view(*scores.shape[:-1], 1)
        return scores.sub_(row_shift).exp_()  # masked pairs: exp(-inf) = 0

    def add_weighted(self, other: _RowSums, weight: torch.Tensor) -> None:
        """self += weight (B*Nq,) * other, both under their own shifts (the result under the larger)."""
        shift = torch.maximum(self.shift, other.shift)
        mine, theirs = (self.shift - shift).exp_(), (other.shift - shift).exp_().mul_(weight)
        self.num.mul_(mine.unsqueeze(-1)).add_(other.num * theirs.unsqueeze(-1))
        self.den.mul_(mine).add_(other.den * theirs)
        self.shift = shift


class RoundMembership:
    """Which keys each cluster of each round attends to, to find pairs already met in earlier rounds.

    A (B, R, C, Nk+1) bool table of R * C * Nk bytes: C^2 / (4 Nq) times the support's fp32 bytes
    (at most 1 for SMYRF and Scatterbrain at budgets >= 1/32 and Nq >= 4096; 2 for Reformer's 256
    buckets at 1/32, Nq = 4096). Checking a round costs one int64 index per support pair.
    """

    def __init__(self, layout: RoundLayout, nk: int):
        b, n_rounds, n_clusters, _ = layout.k_rows.shape
        self.layout = layout
        self.key_ids = torch.where(layout.k_rows < 0, nk, layout.k_rows % nk)  # (B, R, C, W), nk = padding
        member = torch.zeros(b, n_rounds, n_clusters, nk + 1, dtype=torch.bool, device=layout.k_rows.device)
        member.scatter_(-1, self.key_ids, True)
        member[..., nk] = False
        self.table = member.view(-1)
        # Flat table offset of (b, r', cluster of the query in r') for every query: (B, Nq, R').
        rounds = torch.arange(b * n_rounds, device=member.device).view(b, n_rounds, 1)
        self.offset = rearrange((rounds * n_clusters + layout.q_cluster) * (nk + 1), "b r n -> b n r")

    def met_before(self, r: int, clusters: slice) -> torch.Tensor:
        """(B,c,qs,W) bool: the pairs (query, key) of round r's ``clusters`` already met in a round r' < r."""
        q_rows, key_ids = self.layout.q_rows[:, r, clusters], self.key_ids[:, r, clusters]  # (B, c, qs), (B, c, W)
        met = torch.zeros(*q_rows.shape, key_ids.shape[-1], dtype=torch.bool, device=self.table.device)
        if r == 0:
            return met
        q_offset = gather_rows(self.offset, q_rows)  # (B, c, qs, R')
        for earlier in range(r):
            met |= self.table.take(q_offset[..., earlier, None] + key_ids.unsqueeze(-2))
        return met
