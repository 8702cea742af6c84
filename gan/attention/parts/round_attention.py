"""Attention over the UNION of a ``RoundLayout``'s rounds: each (query, key) pair counted once.

A pair met in an earlier round is masked in later ones (one bit per query and key, ``MetKeys``); a first pass
over the rounds finds each query's largest score, so one log-shift per query serves every round, and the second
forms the products with the values a round at a time. Optionally with a low-rank residual (sparse + low-rank
attention) or sampled rounds (a Horvitz-Thompson rest of the row).
"""

from __future__ import annotations

import math

import torch

from .low_rank import LowRankTerms
from .round_layout import RoundLayout

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
    earlier round is masked (``MetKeys``). Two passes over the (round, cluster) groups: the first takes each
    query's largest score over every round (in steps of clusters holding at most the support's entries, or one
    round's), so one log-shift per query (that, or the residual's offset if larger) serves every round, with no
    rescaling; the second scores the groups again and forms their products with the values a round at a time (one
    copy of the output), in steps of at most ``PAIRS_PER_ELEMENT_STEP`` (query, key) pairs per batch element.
    With ``low_rank`` the result is Scatterbrain's estimator: the low-rank sums everywhere plus, on the support,
    exp(score) minus the estimate.

    With ``sampled_from`` = h, rounds h.. hold uniformly drawn keys: their n_i new pairs of query i stand for
    the Nk - m_i keys the first h rounds did not give it (m_i pairs), so their sums are weighted by
    (Nk - m_i) / n_i (a Horvitz-Thompson estimate of the rest of the row). ``sampled`` (B,) bool limits that
    weighting to some batch elements (the others' rounds h.. count as ordinary rounds, weight 1), so one call
    serves a batch whose elements chose differently; a residual and the sampled weighting are meant for different
    elements.
    """
    b, n_rounds, nq = layout.q_cluster.shape
    nk, dv = k.shape[1], v.shape[-1]
    n_clusters, qs, width = layout.q_rows.shape[2], layout.q_rows.shape[3], layout.k_rows.shape[3]
    groups = n_rounds * n_clusters  # (round, cluster) groups, round-major and outermost: a step's slice is contiguous
    q_slots = layout.q_rows.reshape(b, groups, qs).transpose(0, 1).reshape(groups * b, qs)  # (G*B, qs), -1 padding
    k_slots = layout.k_rows.reshape(b, groups, width).transpose(0, 1).reshape(groups * b, width)  # (G*B, W)
    # query and key rows, padding -> row 0 (their pairs are not counted and add nothing)
    q_at, k_at = q_slots.clamp_min(0), k_slots.clamp_min(0)  # (G*B, qs), (G*B, W)
    met = MetKeys(b * nq, nk, q.device)
    q_flat, k_flat = q.reshape(-1, q.shape[-1]), k.reshape(-1, k.shape[-1])

    def scores_of(qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        """(n, qs, W) scores of n groups' query rows qi (n, qs) and key rows ki (n, W) (pairs not counted
        included)."""
        return torch.bmm(rows_at(q_flat, qi), rows_at(k_flat, ki).transpose(1, 2))

    # Pass 1: each query's largest score over every round (and the residual's offset), one log-shift for all rounds;
    # steps of clusters whose gathered queries and scores hold about the support's entries (or one round's), at most
    # PAIRS_PER_ELEMENT_STEP pairs per batch element. A pair met again scores what it scored first, so only padding
    # is kept out of the maxima.
    key_padding = torch.where(k_slots < 0, -math.inf, 0.0).unsqueeze(1)  # (G*B, 1, W)
    steps = -(-(q.shape[-1] + width) // width)  # about as many scores and gathered queries as the support
    step = b * min(max(n_clusters, -(-groups // steps)), max(1, PAIRS_PER_ELEMENT_STEP // (qs * width)))
    slot_max = torch.cat([scores_of(qi, ki).add_(padding).amax(-1) for qi, ki, padding in  # (G*B, qs)
                          zip(q_at.split(step), k_at.split(step), key_padding.split(step), strict=True)])
    slot_max.masked_fill_(q_slots < 0, -math.inf)
    rows = q_at.view(-1)  # (G*B*qs,) flat query rows
    start = torch.full((b * nq,), -1e30, device=q.device) if low_rank is None else low_rank.log_offset.reshape(-1)
    shift = start.scatter_reduce(0, rows, slot_max.view(-1), "amax")  # (B*Nq,) finite
    slot_shift = shift.index_select(0, rows).view(groups * b, qs, 1)
    # numerator and denominator side by side: (B*Nq, dv + 1), in units of exp(shift)
    v1 = torch.cat([v.reshape(-1, dv), v.new_ones(b * nk, 1)], -1)  # (B*Nk, dv + 1): the weights' row sums beside
    if low_rank is None:
        sums = q.new_zeros(b * nq, dv + 1)
    else:  # the low-rank sums, moved to the shift
        to_shift = (low_rank.log_offset.reshape(-1) - shift).exp_().unsqueeze(-1)  # (B*Nq, 1)
        sums = torch.cat([low_rank.num.reshape(-1, dv), low_rank.den.reshape(-1, 1)], -1).mul_(to_shift)
        a_flat = low_rank.a.reshape(b * nq, -1) * to_shift  # (B*Nq, m): the estimate in units of exp(shift)
        b_flat = low_rank.b.reshape(b * nk, -1)  # (B*Nk, m)
    n_top = n_rounds if sampled_from is None else sampled_from
    rest = None if n_top == n_rounds else q.new_zeros(b * nq, dv + 1)
    pairs = []  # new pairs of each slot (sampled rounds only)
    # Pass 2, round after round (a pair counts in the first round that meets it): the scores again, their weights
    # under the shift [less the residual's estimate], the products with [values | ones], in steps of whole clusters
    # within one round (a round's products are one copy of the output), at most PAIRS_PER_ELEMENT_STEP pairs per
    # batch element. Every per-step piece is cut by one split per tensor.
    step = max(1, min(n_clusters, PAIRS_PER_ELEMENT_STEP // (qs * width)))
    firsts = range(0, n_clusters, step)
    lengths = [b * (min(first + step, n_clusters) - first) for _ in range(n_rounds) for first in firsts]  # slots
    round_of = [r for r in range(n_rounds) for _ in firsts]
    cut = [x.split(lengths) for x in (q_at, k_at, slot_shift, *met.slots(q_slots, k_slots))]
    for r, row, qi, ki, shift_i, *slots in zip(round_of, rows.split([n * qs for n in lengths]), *cut, strict=True):
        old = met.meet(*slots)  # (n, qs, W) bool: pairs an earlier round met, and padding
        # (n, qs, W) exp(score - shift) [less the estimate], the pairs not counted set to 0 (a pair not counted may
        # score above its query's shift: its inf is overwritten too)
        w = scores_of(qi, ki).sub_(shift_i).exp_()
        if low_rank is not None:
            w = torch.baddbmm(w, rows_at(a_flat, qi), rows_at(b_flat, ki).transpose(1, 2), alpha=-1.0)
        w.masked_fill_(old, 0.0)
        (sums if r < n_top else rest).index_add_(0, row, torch.bmm(w, rows_at(v1, ki)).view(-1, dv + 1))
        if rest is not None:
            pairs.append(old.logical_not().sum(-1, dtype=q.dtype))  # (n, qs)
    if rest is not None:
        pairs = torch.cat(pairs).view(-1)
        split = n_top * n_clusters * b * qs  # the top rounds' slots come first
        top_pairs = q.new_zeros(b * nq).index_add_(0, rows[:split], pairs[:split])
        rest_pairs = q.new_zeros(b * nq).index_add_(0, rows[split:], pairs[split:])
        weight = (nk - top_pairs) / rest_pairs.clamp_min(1.0)  # (B*Nq,)
        if sampled is not None:
            weight = torch.where(sampled.view(-1, 1).expand(b, nq).reshape(-1), weight, 1.0)
        sums.add_(rest.mul_(weight.unsqueeze(-1)))
    return (sums[:, :dv] / sums[:, dv:]).view(b, nq, dv)


def rows_at(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table (n, c) -> (*index.shape, c): its rows at ``index`` (int64, any shape), in one gather."""
    return torch.nn.functional.embedding(index, table)


class MetKeys:
    """The keys each query has met so far, one bit per (query, key): (B*Nq + 1) rows of Nk // 32 + 1 int32 words,
    Nq * Nk / 8 bytes per batch element (at most the support's fp32 bytes from budget 1/32 up). Key Nk's bit (padding
    keys) is set in every row, and the last row (padding query slots) has every bit set, so padding is always met."""

    def __init__(self, n_rows: int, nk: int, device):
        self.nk, self.n_rows, self.words = nk, n_rows, nk // 32 + 1
        bits = torch.zeros(n_rows + 1, self.words, dtype=torch.int32, device=device)
        bits[:, nk // 32] = (1 << nk % 32) - (1 << 32 if nk % 32 == 31 else 0)  # bit nk % 32 as an int32
        bits[n_rows] = -1
        self.bits = bits.view(-1)

    def slots(self, q_slots: torch.Tensor, k_slots: torch.Tensor):
        """q_slots (n, qs), k_slots (n, W) flat rows (-1 padding) of n query clusters and their keys -> their rows'
        first words (n, qs, 1), the keys' words (n, 1, W) and bits (n, 1, W), int32, for ``meet``."""
        row_words = torch.where(q_slots < 0, self.n_rows, q_slots).int().mul_(self.words).unsqueeze(-1)
        key_ids = torch.where(k_slots < 0, self.nk, k_slots % self.nk).int().unsqueeze(-2)
        return row_words, key_ids >> 5, torch.ones_like(key_ids).bitwise_left_shift_(key_ids & 31)

    def meet(self, row_words: torch.Tensor, key_words: torch.Tensor, key_bits: torch.Tensor) -> torch.Tensor:
        """(n, qs, W) bool: the pairs of these clusters (``slots``) an earlier call met (padding always); marks the
        others met. Clusters of one call must hold different queries (a round's clusters do)."""
        word = (row_words + key_words).view(-1)  # (n*qs*W,) int32
        old = self.bits.index_select(0, word).view(-1, row_words.shape[1], key_words.shape[2]).bitwise_and_(key_bits)
        old = old != 0
        self.bits.index_add_(0, word, key_bits.masked_fill(old, 0).view(-1))  # distinct powers of two: an OR
        return old


def first_meetings(layout: RoundLayout, nk: int) -> torch.Tensor:
    """(B, R, C, qs, W) bool: the (query, key) pairs of each round's clusters that no earlier round gave that query,
    padding keys and padding query slots excluded (``MetKeys``, round after round)."""
    b, n_rounds, nq = layout.q_cluster.shape
    met = MetKeys(b * nq, nk, layout.k_rows.device)
    rows, words, bits = met.slots(layout.q_rows.flatten(0, 2), layout.k_rows.flatten(0, 2))  # (B*R*C, ...)
    rows, words, bits = (x.view(b, n_rounds, -1, *x.shape[-2:]) for x in (rows, words, bits))  # (B, R, C, ...)
    per_round = [met.meet(rows[:, r].flatten(0, 1), words[:, r].flatten(0, 1), bits[:, r].flatten(0, 1))
                 for r in range(n_rounds)]  # (B*C, qs, W) each
    return torch.stack(per_round).logical_not_().view(n_rounds, b, *layout.q_rows.shape[2:], -1).transpose(0, 1)
