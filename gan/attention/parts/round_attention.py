"""Attention over the UNION of a ``RoundLayout``'s rounds: each (query, key) pair counted once.

A pair met in an earlier round is masked in later ones (found by sorting each query's keys once); every round's
clusters are scored together under a running per-query log-shift, in steps of whole clusters that bound the
working set per batch element (a round at most). Optionally with a
low-rank residual (sparse + low-rank attention) or sampled rounds (a Horvitz-Thompson rest of the row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .low_rank import LowRankTerms
from .round_layout import RoundLayout, gather_rows

# (query, key) pairs per step of the published clustered methods (``sorted_clusters``), over the whole batch: 2^23
# pairs hold 32 MiB of fp32 scores.
PAIRS_PER_STEP = 1 << 23
# (query, key) pairs per batch element scored per step of clustered_attention (a bound per element, so the ops per
# call do not grow with the batch): 2^22 pairs hold 16 MiB of fp32 scores per element; one step covers a round at
# BigGAN's 4096 x 1024 up to budget 1.
PAIRS_PER_ELEMENT_STEP = 1 << 22


def clustered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: RoundLayout,
    low_rank: LowRankTerms | None = None,
    sampled_from: int | None = None,
    sampled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over the union of the rounds' supports -> (B,Nq,dv) fp32.

    q (B,Nq,d) already multiplied by the scale, k (B,Nk,d), v (B,Nk,dv), all fp32. A pair met in an
    earlier round is masked (``RoundMembership``). The (round, cluster) groups are scored in steps of whole
    clusters of one round holding at most ``PAIRS_PER_ELEMENT_STEP`` (query, key) pairs per batch element,
    and accumulated into per-query numerator and denominator sums under a running log-shift (rescaled when a step
    raises a query's maximum). With ``low_rank`` the result is Scatterbrain's estimator: the low-rank sums
    everywhere plus, on the support, exp(score) minus the estimate (``low_rank.num`` and ``low_rank.den`` are
    consumed: accumulated into in place).

    With ``sampled_from`` = h, rounds h.. hold uniformly drawn keys: their n_i new pairs of query i stand for
    the Nk - m_i keys the first h rounds did not give it (m_i pairs), so their sums are weighted by
    (Nk - m_i) / n_i (a Horvitz-Thompson estimate of the rest of the row). ``sampled`` (B,) bool limits that
    weighting to some batch elements (the others' rounds h.. count as ordinary rounds, weight 1), so one call
    serves a batch whose elements chose differently; a residual and the sampled weighting are meant for different
    elements.
    """
    b, n_rounds, nq = layout.q_cluster.shape
    nk = k.shape[1]
    if low_rank is None:
        top = _RowSums.zeros(b * nq, v.shape[-1], q.device)
    else:  # the low-rank sums are accumulated into in place: no copy of the (B*Nq, dv) numerator
        top = _RowSums(low_rank.log_offset.reshape(-1), low_rank.num.view(-1, v.shape[-1]), low_rank.den.view(-1))
    n_top = n_rounds if sampled_from is None else sampled_from
    rest = None if n_top == n_rounds else _RowSums.zeros(b * nq, v.shape[-1], q.device)
    seen = RoundMembership(layout, nk)
    n_clusters, qs, width = layout.q_rows.shape[2], layout.q_rows.shape[3], layout.k_rows.shape[3]
    # clusters per step: at most a round's, whose (B, C, qs, dv) products are one copy of the output, and at most
    # PAIRS_PER_ELEMENT_STEP pairs per batch element
    step = max(1, min(n_clusters, PAIRS_PER_ELEMENT_STEP // (qs * width)))
    for r in range(n_rounds):
        sums = top if r < n_top else rest
        for first in range(0, n_clusters, step):
            clusters = slice(first, first + step)
            qr, kr = layout.q_rows[:, r, clusters], layout.k_rows[:, r, clusters]  # (B, c, qs), (B, c, W)
            scores = gather_rows(q, qr) @ gather_rows(k, kr).transpose(-1, -2)  # (B, g, qs, W)
            # Duplicates of earlier rounds, padding keys, and padding query slots (they gathered row 0 and add nothing
            # to it).
            met = seen.met_before(r, qr, kr)
            masked = met | (kr < 0).unsqueeze(-2) | (qr < 0).unsqueeze(-1)
            scores.masked_fill_(masked, -math.inf)
            rows = qr.clamp_min(0).reshape(-1)  # (B*g*qs,) flat query rows (padding slots -> row 0, masked)
            weights = sums.rescale_to(rows, scores)  # (B, g, qs, W): exp(score - the query's shift), masked 0
            if low_rank is not None:
                estimate = gather_rows(low_rank.a, qr) @ gather_rows(low_rank.b, kr).transpose(-1, -2)  # (B,g,qs,W)
                row_shift = sums.shift.index_select(0, rows).view(*qr.shape, 1)
                offset = low_rank.log_offset.reshape(-1).index_select(0, rows).view_as(row_shift)
                weights -= estimate.mul_((offset - row_shift).exp_()).masked_fill_(masked, 0.0)
            sums.num.index_add_(0, rows, (weights @ gather_rows(v, kr)).view(-1, v.shape[-1]))
            sums.den.index_add_(0, rows, weights.sum(-1).reshape(-1))
            if rest is not None:
                sums.pairs.index_add_(0, rows, (~masked).sum(-1).reshape(-1).float())
    if rest is not None:
        weight = (nk - top.pairs) / rest.pairs.clamp_min(1.0)  # (B*Nq,)
        if sampled is not None:
            weight = torch.where(sampled.view(-1, 1).expand(b, nq).reshape(-1), weight, 1.0)
        top.add_weighted(rest, weight)
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
    buckets at 1/32, Nq = 4096). A pair of round r is looked up once per earlier round (R^2 / 2 lookups per
    pair in all).
    """

    def __init__(self, layout: RoundLayout, nk: int):
        b, n_rounds, n_clusters, _ = layout.k_rows.shape
        self.nk, self.n_rounds, self.n_clusters = nk, n_rounds, n_clusters
        key_ids = torch.where(layout.k_rows < 0, nk, layout.k_rows % nk)  # (B, R, C, W), nk = padding
        member = torch.zeros(b, n_rounds, n_clusters, nk + 1, dtype=torch.bool, device=layout.k_rows.device)
        member.scatter_(-1, key_ids, True)
        member[..., nk] = False
        self.table = member.view(-1)
        # Flat table offset of (b, r', cluster of the query in r') for every query: (B*Nq, R').
        rounds = torch.arange(b * n_rounds, device=member.device).view(b, n_rounds, 1)
        self.offset = ((rounds * n_clusters + layout.q_cluster) * (nk + 1)).transpose(1, 2).reshape(-1, n_rounds)

    def met_before(self, r: int, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
        """(B,c,qs,W) bool: the pairs of round r's clusters (q_rows (B,c,qs), k_rows (B,c,W)) already met in a round
        r' < r: one lookup per earlier round (an int64 index of the pairs' size at a time)."""
        b, c, qs = q_rows.shape
        met = torch.zeros(b, c, qs, k_rows.shape[-1], dtype=torch.bool, device=self.table.device)
        if r == 0:
            return met
        key_ids = torch.where(k_rows < 0, self.nk, k_rows % self.nk).unsqueeze(-2)  # (B, c, 1, W)
        offset = self.offset[:, :r].index_select(0, q_rows.clamp_min(0).reshape(-1)).view(b, c, qs, r)
        for earlier in range(r):
            met |= self.table.take(offset[..., earlier, None] + key_ids)
        return met
