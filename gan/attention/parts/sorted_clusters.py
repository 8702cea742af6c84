"""SMYRF's clustering as its authors' code does it, shared by ``smyrf`` and ``scatterbrain`` (SBSmyrf).

Per round (giannisdaras/smyrf ``smyrf/torch/utils.py``, HazyResearch/scatterbrain ``hash_utils.py``):

- **XBOX+**, both sets padded to one common norm: with MQ, MK the largest query and key norms of
  the batch element, q -> [q, 0, sqrt(MQ^2 + MK^2 - |q|^2)] and k -> [k, sqrt(MQ^2 + MK^2 - |k|^2), 0];
- **E2LSH**, one Gaussian projection per round: hash(x) = x . alpha_r + beta_r, beta_r ~ U(0, r)
  (the reference never floors it: the hash is the scalar projection itself);
- queries and keys **sorted** by their hash and cut by rank into C equal clusters; query cluster c
  meets key cluster c only; dense softmax inside each pair of clusters.

Sizes that do not divide follow SBSmyrf (``pad_to_multiple``): queries are padded with zero
vectors (hashed like any query, their outputs dropped) and keys with zero vectors hashed to +inf
(so they sort last) and masked. Plans keep every cluster at least partly real (``cuts_evenly``).

``sorted_cluster_attention`` combines the rounds as the references do, accumulated one round and a
bounded step of clusters at a time under a running per-query log-shift (the same sums, no per-round
outputs held): SMYRF mixes the rounds by their log-sum-exp weights, so a pair met in r rounds counts
r times; SBSmyrf divides each meeting by the number of rounds the pair meets in (``union=True``), so
each pair counts once, and adds Scatterbrain's low-rank terms and its normaliser floor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from einops import rearrange

from .hashing import e2lsh_hash, xbox_plus_common_norm
from .low_rank import LowRankTerms
from .planning import cuts_evenly, explicit_cluster_count, fewest_clusters_from, search_plan
from .round_layout import gather_rows

DEFAULT_N_HASHES = 8
MIN_SORTED_CLUSTER_KEYS = 8  # budget plans with fewer keys per sorted cluster take fewer rounds instead
# (query, key) pairs scored per batch element per step (times the rounds with ``union``, whose meeting counts
# compare every round): 2^22 hold 16 MiB of fp32 scores per element. A bound per element, so the number of steps
# (and ops) depends on the shape, never on the batch; one step covers a round at BigGAN's 4096 x 1024.
PAIRS_PER_ELEMENT_STEP = 1 << 22


@dataclass(frozen=True)
class SortedClusterPlan:
    """``n_hashes`` rounds of ``n_clusters`` query clusters of ``q_cluster_size`` and key clusters of
    ``k_cluster_size`` (padding included)."""

    n_hashes: int
    n_clusters: int
    q_cluster_size: int
    k_cluster_size: int

    @classmethod
    def of(cls, n_hashes: int, n_clusters: int, nq: int, nk: int) -> SortedClusterPlan:
        return cls(n_hashes, n_clusters, -(-nq // n_clusters), -(-nk // n_clusters))

    def support_entries(self) -> int:
        """Scores held: every round's clusters, padding included."""
        return self.n_hashes * self.n_clusters * self.q_cluster_size * self.k_cluster_size

    def hash_entries(self) -> int:
        """The hashes (one per padded query and key per round); none with one cluster (nothing to sort)."""
        return (
            0 if self.n_clusters == 1 else self.n_hashes * self.n_clusters * (self.q_cluster_size + self.k_cluster_size)
        )

    def score_entries(self) -> int:
        return self.support_entries() + self.hash_entries()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_sorted_clusters(
    nq: int, nk: int, n_hashes: int | None, q_cluster_size: int | None, k_cluster_size: int | None, budget: float
) -> SortedClusterPlan:
    """Explicit cluster sizes win (they must make the same number of clusters, as the reference asserts);
    otherwise ``search_plan``: the most of 8, 4, 2, 1 rounds (at least MIN_SORTED_CLUSTER_KEYS keys per cluster)
    and the fewest clusters whose support plus hashes fit budget * Nq * Nk. Budget 1: one cluster (exact)."""
    if q_cluster_size is not None or k_cluster_size is not None:
        n_clusters = explicit_cluster_count(nq, nk, q_cluster_size, k_cluster_size)
        if n_clusters > nk or not cuts_evenly(nk, n_clusters) or not cuts_evenly(nq, n_clusters):
            raise ValueError(
                f"q_cluster_size={q_cluster_size}, k_cluster_size={k_cluster_size} make {n_clusters} clusters, which "
                f"Nq={nq} queries and Nk={nk} keys cannot fill with every cluster partly real; accepted: sizes "
                f"giving at most Nk clusters that cut both sets evenly"
            )
        plan = SortedClusterPlan.of(n_hashes or DEFAULT_N_HASHES, n_clusters, nq, nk)
        return SortedClusterPlan(
            plan.n_hashes, n_clusters, q_cluster_size or plan.q_cluster_size, k_cluster_size or plan.k_cluster_size
        )
    if budget >= 1.0:
        return SortedClusterPlan.of(n_hashes or 1, 1, nq, nk)
    allowed = budget * nq * nk

    def cluster_counts(hashes: int):
        return (c for c in fewest_clusters_from(hashes, budget, nk) if cuts_evenly(nq, c) and cuts_evenly(nk, c))

    found = search_plan(
        [n_hashes] if n_hashes else [DEFAULT_N_HASHES, 4, 2, 1],
        cluster_counts,
        fits=lambda h, c: SortedClusterPlan.of(h, c, nq, nk).score_entries() <= allowed,
        enough=lambda h, c: -(-nk // c) >= MIN_SORTED_CLUSTER_KEYS,
    )
    if found is not None:
        return SortedClusterPlan.of(*found, nq, nk)
    # Nothing fits (budgets below ~1/Nq): the cheapest single round.
    plans = (SortedClusterPlan.of(1, c, nq, nk) for c in range(1, nk + 1) if cuts_evenly(nq, c) and cuts_evenly(nk, c))
    return min(plans, key=SortedClusterPlan.score_entries)


def sorted_positions(
    q: torch.Tensor, k: torch.Tensor, n_keys: int, alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded fp32 q (B,T,d), k (B,S,d) (keys >= n_keys are padding) -> each round's sorted order
    q_pos (B,R,T), k_pos (B,R,S): XBOX+, E2LSH, padding keys hashed to +inf, argsort."""
    qx, kx = xbox_plus_common_norm(q, k)
    q_hash, k_hash = e2lsh_hash(qx, alpha, beta), e2lsh_hash(kx, alpha, beta)
    k_hash[..., n_keys:] = math.inf
    return q_hash.argsort(dim=-1), k_hash.argsort(dim=-1)


def pad_tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """x (B,N,f) -> (B,n,f), zero rows appended (x itself when N == n)."""
    return x if x.shape[1] == n else torch.cat([x, x.new_zeros(x.shape[0], n - x.shape[1], x.shape[2])], dim=1)


def _inverse_cluster(pos: torch.Tensor, size: int) -> torch.Tensor:
    """(B,R,N) sorted order -> (B*N, R) the cluster of every token in every round."""
    rank = torch.empty_like(pos).scatter_(-1, pos, torch.arange(pos.shape[-1], device=pos.device).expand_as(pos))
    return rearrange(rank // size, "b r n -> (b n) r")


def sorted_cluster_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    plan: SortedClusterPlan,
    n_keys: int,
    *,
    union: bool = False,
    low_rank: LowRankTerms | None = None,
    floor: float | None = None,
) -> torch.Tensor:
    """Attention inside each round's paired clusters -> (B,T,dv) fp32 (padded queries included).

    q (B,T,d) already multiplied by the scale, k (B,S,d), v (B,S,dv) fp32 and padded (T = C * q_cluster_size,
    S = C * k_cluster_size; keys >= n_keys masked). q_pos (B,R,T), k_pos (B,R,S): each round's sorted order.
    ``union``: each meeting divided by the number of rounds the pair meets in (every pair once); otherwise a pair
    met in r rounds counts r times. ``low_rank`` (over the padded sets, padded keys' features zero): Scatterbrain's
    estimator, consumed in place. ``floor``: the denominator, in units of exp(N) with N = logsumexp over rounds of
    max(round's top score, low-rank log-offset), is clamped to at least ``floor`` (SBSmyrf's clamp_min(1e-6)).
    """
    b, n_rounds, t = q_pos.shape
    s, qs, ks = k_pos.shape[-1], plan.q_cluster_size, plan.k_cluster_size
    n_clusters, dv = t // qs, v.shape[-1]
    q_rows = rearrange(q_pos + torch.arange(b, device=q.device).view(b, 1, 1) * t, "b r (c i) -> b r c i", i=qs)
    k_rows = rearrange(k_pos + torch.arange(b, device=q.device).view(b, 1, 1) * s, "b r (c j) -> b r c j", j=ks)
    k_pad = rearrange(k_pos >= n_keys, "b r (c j) -> b r c 1 j", j=ks)
    if union:
        q_cluster, k_cluster = _inverse_cluster(q_pos, qs), _inverse_cluster(k_pos, ks)  # (B*T, R), (B*S, R)
    if low_rank is None:
        shift = torch.full((b * t,), -1e30, device=q.device)  # finite: exp(-inf - shift) stays 0
        num, den = torch.zeros(b * t, dv, device=q.device), torch.zeros(b * t, device=q.device)
        log_offset = None
    else:
        log_offset = low_rank.log_offset.reshape(-1)
        shift, num, den = log_offset.clone(), low_rank.num.view(-1, dv), low_rank.den.view(-1)
    log_norm = torch.full((b * t,), -math.inf, device=q.device)
    step = max(1, PAIRS_PER_ELEMENT_STEP // (qs * ks * (n_rounds if union else 1)))  # clusters per step
    for r in range(n_rounds):
        round_max = torch.full((b * t,), -math.inf, device=q.device)
        for first in range(0, n_clusters, step):
            clusters = slice(first, first + step)
            rq, rk, pad = q_rows[:, r, clusters], k_rows[:, r, clusters], k_pad[:, r, clusters]  # (B,c,qs), (B,c,ks)
            scores = gather_rows(q, rq) @ gather_rows(k, rk).transpose(-1, -2)  # (B, c, qs, ks)
            if union:  # rounds in which each pair meets (>= 1: this one)
                counts = (gather_rows(q_cluster, rq).unsqueeze(-2) == gather_rows(k_cluster, rk).unsqueeze(-3)).sum(-1)
                scores -= counts.float().log()
            scores.masked_fill_(pad, -math.inf)
            rows = rq.reshape(-1)  # (B*c*qs,) every query once per round
            top = scores.amax(-1).reshape(-1)
            round_max[rows] = top
            new_shift = shift.scatter_reduce(0, rows, top, "amax")
            rescale = (shift - new_shift).exp_()
            num *= rescale.unsqueeze(-1)
            den *= rescale
            shift = new_shift
            row_shift = shift[rows].view(*rq.shape, 1)  # (B, c, qs, 1)
            weights = scores.sub_(row_shift).exp_()  # masked pairs: 0
            if low_rank is not None:
                estimate = gather_rows(low_rank.a, rq) @ gather_rows(low_rank.b, rk).transpose(-1, -2)  # (B,c,qs,ks)
                estimate *= (log_offset[rows].view_as(row_shift) - row_shift).exp_()
                if union:
                    estimate /= counts
                weights -= estimate.masked_fill_(pad, 0.0)
            num.index_add_(0, rows, (weights @ gather_rows(v, rk)).view(-1, dv))
            den.index_add_(0, rows, weights.sum(-1).reshape(-1))
        log_norm = torch.logaddexp(log_norm, round_max if log_offset is None else torch.maximum(round_max, log_offset))
    if floor is not None:
        den = torch.maximum(den, floor * (log_norm - shift).exp_())
    return (num / den.unsqueeze(-1)).view(b, t, dv)
