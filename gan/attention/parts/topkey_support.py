"""smyrf-topkeys' support, also scatterbrain-centred's: centroid-hashed query clusters, each meeting chosen keys.

Hash, per round: queries (rescaled to the keys' max norm: a query's key ranking does not depend
on its norm) and keys go through the XBOX+ transform onto one sphere where large inner products
are short distances; every query takes the id of its nearest of C centroids (transformed keys
drawn from ``seed``) plus a fraction from a random projection, and the sorted queries are cut into
C equal clusters, so big centroid groups split along an angular coordinate. Each query cluster then
takes Nk/C keys by what its queries attend to (``coverage.covering_top_keys``, or the plain
``round_layout.top_keys_per_cluster``). Hashing works in pieces of at most the support's score entries,
so the support is the peak. ``plan_clusters`` resolves rounds and cluster counts from a budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..base import SeededDraws
from .coverage import covering_top_keys
from .hashing import centroid_sort_key, xbox_plus
from .planning import explicit_cluster_count, fewest_clusters_from, search_plan
from .round_layout import RoundLayout, cluster_size, query_clusters, top_keys_per_cluster

DEFAULT_N_HASHES = 8
# Fewer keys per cluster than this buys more rounds at a loss; below 4 a round's int64 sort bookkeeping per
# query (about 32 bytes) outgrows its W fp32 scores (docs/attention.md, "Why these constants").
MIN_TOPKEY_CLUSTER_KEYS = 4


@dataclass(frozen=True)
class ClusterPlan:
    """Resolved clustering for (Nq, Nk): ``n_hashes`` rounds of ``n_clusters`` query clusters."""

    n_hashes: int
    n_clusters: int
    q_cluster_size: int
    k_cluster_size: int

    @classmethod
    def of(cls, n_hashes: int, n_clusters: int, nq: int, nk: int) -> ClusterPlan:
        return cls(n_hashes, n_clusters, cluster_size(nq, n_clusters), cluster_size(nk, n_clusters))

    def score_entries(self) -> int:
        """Scores held: the support, padding included. Hashing, before the support exists, works in
        pieces of at most as many entries (``work_rows``), so it never holds more."""
        return self.n_hashes * self.round_entries()

    def round_entries(self) -> int:
        """One round's support: C clusters of q_cluster_size queries times k_cluster_size keys."""
        return self.n_clusters * self.q_cluster_size * self.k_cluster_size

    def work_rows(self, width: int) -> int:
        """Rows of ``width`` entries (points against every round's centroids, clusters against Nk keys) whose table
        fits in the support's score entries: the hashing's working set."""
        return max(1, self.score_entries() // width)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_clusters(
    nq: int, nk: int, n_hashes: int | None, q_cluster_size: int | None, k_cluster_size: int | None, budget: float
) -> ClusterPlan:
    """Explicit cluster sizes win; otherwise the fewest clusters whose score entries fit the budget.

    Budget b: n_hashes rounds (default: the most of 8, 4, 2, 1 that fit with at least
    MIN_TOPKEY_CLUSTER_KEYS keys per cluster) and the smallest C >= n_hashes / b with score_entries
    <= b * Nq * Nk. b = 1 means one cluster (exact attention). C never exceeds Nk.
    """
    if q_cluster_size is not None or k_cluster_size is not None:
        n_clusters = explicit_cluster_count(nq, nk, q_cluster_size, k_cluster_size)
        if n_clusters > nk:
            raise ValueError(
                f"q_cluster_size={q_cluster_size} makes {n_clusters} clusters but there are only Nk={nk} keys; "
                f"accepted q_cluster_size >= {-(-nq // nk)}"
            )
        return ClusterPlan.of(n_hashes or DEFAULT_N_HASHES, n_clusters, nq, nk)
    fraction = budget
    if fraction >= 1.0:
        return ClusterPlan.of(n_hashes or 1, 1, nq, nk)
    allowed = fraction * nq * nk
    found = search_plan(
        [n_hashes] if n_hashes else [DEFAULT_N_HASHES, 4, 2, 1],
        lambda hashes: fewest_clusters_from(hashes, fraction, nk),
        fits=lambda h, c: ClusterPlan.of(h, c, nq, nk).score_entries() <= allowed,
        enough=lambda h, c: ClusterPlan.of(h, c, nq, nk).k_cluster_size >= MIN_TOPKEY_CLUSTER_KEYS,
    )
    if found is not None:
        return ClusterPlan.of(*found, nq, nk)
    # Nothing fits (budgets below ~1/Nq): the cheapest single round.
    return min((ClusterPlan.of(1, c, nq, nk) for c in range(1, nk + 1)), key=lambda plan: plan.score_entries())


class SmyrfHash:
    """Per-round centroid seeds and projection directions, drawn once per shape/device from ``seed``."""

    def __init__(self, seed: int):
        self.seed = seed
        self._draws = SeededDraws(seed)

    def draws(
        self, n_hashes: int, n_centroids: int, nk: int, dim: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, c) distinct key indices seeding the centroids and (R, dim) unit directions."""

        def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            seeds = torch.rand(n_hashes, nk, generator=generator).argsort(-1)[:, :n_centroids]
            directions = torch.randn(n_hashes, dim, generator=generator)
            return seeds, directions / directions.norm(dim=-1, keepdim=True)

        return self._draws((n_hashes, n_centroids, nk, dim), device, draw)

    def layout(self, q: torch.Tensor, k: torch.Tensor, plan: ClusterPlan, covering: bool = True) -> RoundLayout:
        """q (B,Nq,d) (scaled), k (B,Nk,d) fp32 -> each round's query clusters and their keys (covering
        selection, ``coverage``, or the plain top keys of each cluster's summed queries)."""
        key_norm = k.norm(dim=-1).amax(-1).view(-1, 1, 1)  # (B, 1, 1)
        qx, kx = xbox_plus(q / q.norm(dim=-1, keepdim=True).clamp_min(1e-30) * key_norm, k)
        seeds, directions = self.draws(plan.n_hashes, plan.n_clusters, k.shape[1], qx.shape[-1], q.device)
        chunk = plan.work_rows(plan.n_hashes * plan.n_clusters)
        sort_key = centroid_sort_key(qx, kx[:, seeds], directions, chunk=chunk)
        q_rows, q_cluster = query_clusters(sort_key, plan.n_clusters)
        if covering:  # its pieces of clusters shrink as rounds pass, within the support's score entries
            return covering_top_keys(q, k, q_rows, q_cluster, plan.k_cluster_size, entries=plan.score_entries())
        return top_keys_per_cluster(q, k, q_rows, q_cluster, plan.k_cluster_size, chunk=plan.work_rows(k.shape[1]))
