"""Shared LSH machinery for SMYRF, Reformer and Scatterbrain: transform, hash, clusters, attention.

Every layout carries the hash rounds as a second batch axis: (B, R, ...). A round sorts the
queries by a scalar sort key and cuts the order into C equal clusters (padding slots spread
evenly, so no cluster is mostly padding). Each query cluster then meets W keys: for Reformer the
keys cut the same way (chunk i and chunk i-1), for SMYRF the W keys scoring highest against the
cluster's summed queries (``top_keys_per_cluster``).

``clustered_attention`` computes attention over the UNION of the rounds' supports: a (query, key)
pair met in an earlier round is masked in later ones, so no pair is counted twice; rounds are
accumulated one at a time under a running per-query log-shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

# (query, key) pairs scored per step of clustered_attention: 2^23 pairs hold 32 MiB of fp32 scores and
# 64 MiB of duplicate-lookup indices, whatever Nq; one step covers a whole round at BigGAN's 4096 x 1024.
PAIRS_PER_STEP = 1 << 23


@dataclass
class LowRankTerms:
    """A low-rank estimate exp(log_offset_i) * a_i . b_j of exp(score_ij) (Scatterbrain's FAVOR+ part).

    log_offset (B,Nq); a (B,Nq,m) and b (B,Nk,m) non-negative; num (B,Nq,dv) = a (b^T v) and
    den (B,Nq) = a (b^T 1): the estimate's sums over ALL keys, in units of exp(log_offset).
    """

    log_offset: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    num: torch.Tensor
    den: torch.Tensor


def xbox_plus(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric XBOX+ transform: q (B,Nq,d), k (B,Nk,d) -> (B,Nq,d+2), (B,Nk,d+2), all on the unit sphere.

    With M the max norm over BOTH sets: q -> [q, 0, sqrt(M^2-|q|^2)] / M, k -> [k, sqrt(M^2-|k|^2), 0] / M,
    so |q' - k'|^2 = 2 - 2 q.k / M^2: the largest inner products become the nearest neighbours.
    """
    q_sq = q.square().sum(-1, keepdim=True)  # (B, Nq, 1)
    k_sq = k.square().sum(-1, keepdim=True)  # (B, Nk, 1)
    m_sq = torch.maximum(q_sq.amax(1, keepdim=True), k_sq.amax(1, keepdim=True)).clamp_min(1e-30)  # (B, 1, 1)
    q_fill = (m_sq - q_sq).clamp_min(0).sqrt()
    k_fill = (m_sq - k_sq).clamp_min(0).sqrt()
    qx = torch.cat([q, torch.zeros_like(q_fill), q_fill], dim=-1) / m_sq.sqrt()
    kx = torch.cat([k, k_fill, torch.zeros_like(k_fill)], dim=-1) / m_sq.sqrt()
    return qx, kx


def centroid_sort_key(x: torch.Tensor, centroids: torch.Tensor, directions: torch.Tensor, chunk: int) -> torch.Tensor:
    """x (B,N,D), centroids (B,R,c,D), directions (R,D) -> float64 sort keys (B,R,N), one order per round.

    The key is the nearest centroid's id (by inner product) plus a (0, 1) fraction from the
    projection on the round's direction: one sort groups points by centroid and orders each group
    along an angular coordinate, so cutting the order into equal pieces splits big groups along it.
    The point-centroid scores of every round are formed ``chunk`` points at a time (chunk * R * c
    scores per batch element alive), so hashing holds no more than the caller allows.
    """
    b, n_rounds, n_centroids, dim = centroids.shape
    every_round = centroids.reshape(b, n_rounds * n_centroids, dim).transpose(1, 2)  # (B, D, R*c)
    nearest = torch.cat(
        [(part @ every_round).view(b, -1, n_rounds, n_centroids).argmax(-1) for part in x.split(chunk, dim=1)], dim=1
    ).transpose(1, 2)  # (B, R, N)
    fraction = torch.sigmoid(torch.einsum("bnd,rd->brn", x, directions))  # (B, R, N) in (0, 1)
    return nearest.double() + fraction.double()


def balanced_slots(sort_key: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(B,R,N) sort keys -> (B,R,N) slot of each element in a sorted layout of ``n_slots`` >= N slots.

    Padding slots are spread evenly: rank p goes to slot floor(p * n_slots / N).
    """
    n = sort_key.shape[-1]
    order = sort_key.argsort(dim=-1)  # (B, R, N)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=order.device).expand_as(order))
    return rank * n_slots // n


def slot_rows(slots: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(B,R,N) slots -> (B,R,n_slots) flat row id (b*N + i) of the element in each slot; -1 for padding."""
    b, r, n = slots.shape
    rows = torch.arange(b * n, device=slots.device).view(b, 1, n).expand(b, r, n)
    return torch.full((b, r, n_slots), -1, dtype=torch.long, device=slots.device).scatter_(-1, slots, rows)


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B,N,f), rows (...) flat ids into B*N (-1 = padding, filled with row 0) -> (..., f)."""
    flat = x.reshape(-1, x.shape[-1])
    return flat.index_select(0, rows.clamp_min(0).reshape(-1)).view(*rows.shape, x.shape[-1])


def cluster_size(n: int, n_clusters: int) -> int:
    """Elements per cluster when n elements (padded) fill ``n_clusters`` equal clusters."""
    return -(-n // n_clusters)


@dataclass
class RoundLayout:
    """Who meets whom in each of R hash rounds.

    q_rows (B,R,C,qs): flat query row ids (b*Nq + i) of each query cluster, -1 for padding;
    q_cluster (B,R,Nq): the cluster of every query in every round; k_rows (B,R,C,W): flat key row
    ids (b*Nk + j) each query cluster attends to, -1 for padding, no key twice in one cluster.
    """

    q_rows: torch.Tensor
    q_cluster: torch.Tensor
    k_rows: torch.Tensor


def query_clusters(q_key: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,R,Nq) sort keys -> q_rows (B,R,C,qs) and q_cluster (B,R,Nq): equal clusters by rank."""
    qs = cluster_size(q_key.shape[-1], n_clusters)
    q_slots = balanced_slots(q_key, n_clusters * qs)
    q_rows = rearrange(slot_rows(q_slots, n_clusters * qs), "b r (c i) -> b r c i", c=n_clusters)
    return q_rows, q_slots // qs


def top_keys_per_cluster(
    q: torch.Tensor, k: torch.Tensor, q_rows: torch.Tensor, q_cluster: torch.Tensor, width: int, chunk: int
) -> RoundLayout:
    """Each query cluster meets the ``width`` keys scoring highest against the sum of its queries.

    q (B,Nq,d), k (B,Nk,d); the clusters' (q_rows, q_cluster) from ``query_clusters``. Selection
    scores are formed one round and ``chunk`` clusters at a time (chunk * Nk per batch element alive).
    Each cluster's query sum is a scatter-add over its own batch element's queries only.
    """
    b, n_rounds, n_clusters, _ = q_rows.shape
    first_cluster = (torch.arange(b, device=q.device) * n_clusters).view(b, 1)  # (B, 1)
    flat_q = q.reshape(-1, q.shape[-1])  # (B*Nq, d)
    k_ids = []
    for r in range(n_rounds):
        clusters = (q_cluster[:, r] + first_cluster).reshape(-1)  # (B*Nq,) flat cluster id
        centre = q.new_zeros(b * n_clusters, q.shape[-1]).index_add_(0, clusters, flat_q).view(b, n_clusters, -1)
        k_ids.append(
            torch.cat(
                [
                    torch.einsum("bcd,bnd->bcn", part, k).topk(width, dim=-1).indices
                    for part in centre.split(chunk, dim=1)
                ],
                dim=1,
            )
        )  # (B, C, W)
    k_rows = torch.stack(k_ids, dim=1) + (torch.arange(b, device=k.device) * k.shape[1]).view(
        -1, 1, 1, 1
    )  # (B, R, C, W)
    return RoundLayout(q_rows, q_cluster, k_rows)


def chunk_neighbours(q_key: torch.Tensor, k_key: torch.Tensor, n_chunks: int) -> RoundLayout:
    """Queries and keys both cut by rank into C equal chunks; query chunk i meets key chunks i-1 and i."""
    ks = cluster_size(k_key.shape[-1], n_chunks)
    q_rows, q_cluster = query_clusters(q_key, n_chunks)
    k_rows = rearrange(
        slot_rows(balanced_slots(k_key, n_chunks * ks), n_chunks * ks), "b r (c j) -> b r c j", c=n_chunks
    )
    if n_chunks > 1:
        k_rows = torch.cat([k_rows.roll(1, dims=2), k_rows], dim=-1)  # (B, R, C, 2ks): previous and own chunk
    return RoundLayout(q_rows, q_cluster, k_rows)


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


def batch_subset(layout: RoundLayout, members: torch.Tensor, nq: int, nk: int) -> RoundLayout:
    """The layout of batch elements ``members`` alone: flat row ids re-based to the subset's positions."""
    position = torch.arange(len(members), device=members.device).view(-1, 1, 1, 1)
    q_rows, k_rows = layout.q_rows[members], layout.k_rows[members]
    q_rows = torch.where(q_rows >= 0, q_rows % nq + position * nq, -1)
    k_rows = torch.where(k_rows >= 0, k_rows % nk + position * nk, -1)
    return RoundLayout(q_rows, layout.q_cluster[members], k_rows)


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
