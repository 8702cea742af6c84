"""smyrf-topkeys: the project's SMYRF variant (varies ``smyrf``, Daras et al., 2020): asymmetric LSH query
clusters, each meeting the keys its queries score highest (that earlier rounds did not already give
them), rounds combined over the union of supports.

Hash, per round: queries (rescaled to the keys' max norm: a query's key ranking does not depend
on its norm) and keys go through the XBOX+ transform onto one sphere where large inner products
are short distances; every query takes the id of its nearest of C centroids (transformed keys
drawn from ``seed``) plus a fraction from a random projection, and the sorted queries are cut into
C equal clusters, so big centroid groups split along an angular coordinate.

Keys, per cluster: instead of cutting the key order into C equal pieces by rank (the reference
design, which misaligns query and key cuts wherever a bucket holds more or fewer keys than its
share, so queries often miss their heaviest keys), each query cluster takes Nk/C keys by what its
queries attend to: same number of scores. With ``covering=True`` (the default, ``coverage``) round r's
cluster ranks key j by its queries' mean score plus log of the fraction of them that have not met j
in earlier rounds, so later rounds spend their slots on keys still missing (plain top keys per
cluster picked largely the same keys every round: few distinct pairs where attention is diffuse);
``covering=False`` is the plain top keys against the cluster's summed queries. Hashing (every round's
point-centroid scores, the cluster-key selection scores) works in pieces of at most the support's score
entries, so the support is the peak.

Mix (``mix=True``, the default; ``sampled_rounds``): where attention spreads over keys whose values differ,
top keys per cluster lean towards each query's own kind of key. A second candidate keeps the first half of the
rounds' top keys and gives the other half's clusters uniformly drawn keys, weighted to stand for the rest of
each query's row; probe queries (their exact rows, ``probe_calibration.probe_plan``: 64 to 128 where an eighth of
the queries allows, scored in chunks within half the budget) choose it per batch element only where it lowers
their error by 3 standard errors. Same support size, so the same memory; ``mix=False`` (or explicit cluster
sizes) is the top-key support alone.

Rounds are combined by their log-sum-exp weights over the UNION of the supports: a (query, key)
pair met in an earlier round is masked in later ones, so no pair is counted twice.

Batch independence: every statistic of the hash (norms, the XBOX+ maximum, centroids, cluster
query sums) is taken per batch element, so an element's clusters do not depend on the others in
its batch. The same latent can still come out slightly different at another batch size: the
generator's batched convolutions round q and k differently, and a discrete decision (nearest
centroid, sort order, top-W keys) near a tie can flip, moving a few queries to other clusters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .base import DEFAULT_BUDGET, AttentionBackend, SeededDraws, check_bool, positive_int
from .centred_favor import probe_queries
from .coverage import COVERING_TABLES, covering_top_keys
from .lsh import (
    RoundLayout,
    batch_subset,
    centroid_sort_key,
    cluster_size,
    clustered_attention,
    query_clusters,
    top_keys_per_cluster,
    xbox_plus,
)
from .planning import fewest_clusters_from, search_plan
from .probe_calibration import clearly_better, probe_plan
from .sampled_rounds import KeyPermutations, mix_probe_errors, mixed_layout, sampled_half

DEFAULT_N_HASHES = 8
# Fewer keys per cluster than this buys more rounds at a loss. With covering rounds, 8 rounds of 4 keys
# beat 4 rounds of 8 at budget 1/32 in every regime of bench/regimes.py (BENCHMARKS.md); below 4 a
# round's int64 sort bookkeeping per query (about 32 bytes) outgrows its W fp32 scores.
MIN_KEYS_PER_CLUSTER = 4
PROBE_QUERIES = 128  # queries whose exact rows choose between top keys and the sampled mix (mix=True)
PROBE_COPIES = 4  # (c, Nk) fp32 tables of a probe chunk alive at once (``sampled_rounds.mix_probe_errors``)


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

    def work_rows(self, width: int, tables: int = 1) -> int:
        """Rows of ``width`` entries (points against every round's centroids, clusters against Nk keys) such that
        ``tables`` such tables fit in the support's score entries: the hashing's working set."""
        return max(1, self.score_entries() // (width * tables))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_clusters(
    nq: int, nk: int, n_hashes: int | None, q_cluster_size: int | None, k_cluster_size: int | None, budget: float | None
) -> ClusterPlan:
    """Explicit cluster sizes win; otherwise the fewest clusters whose score entries fit the budget.

    Budget b (default 1/8): n_hashes rounds (default: the most of 8, 4, 2, 1 that fit with at least
    MIN_KEYS_PER_CLUSTER keys per cluster) and the smallest C >= n_hashes / b with score_entries
    <= b * Nq * Nk. b = 1 means one cluster (exact attention). C never exceeds Nk.
    """
    if q_cluster_size is not None or k_cluster_size is not None:
        q_clusters, k_clusters = -(-nq // (q_cluster_size or nq)), -(-nk // (k_cluster_size or nk))
        if q_cluster_size is not None and k_cluster_size is not None and q_clusters != k_clusters:
            raise ValueError(
                f"q_cluster_size={q_cluster_size} makes {q_clusters} query clusters of Nq={nq} but k_cluster_size="
                f"{k_cluster_size} makes {k_clusters} key clusters of Nk={nk}; they must be equal "
                f"(accepted k_cluster_size = {-(-nk // q_clusters)} here, or give only one of the two)"
            )
        n_clusters = max(q_clusters, k_clusters)
        if n_clusters > nk:
            raise ValueError(
                f"q_cluster_size={q_cluster_size} makes {n_clusters} clusters but there are only Nk={nk} keys; "
                f"accepted q_cluster_size >= {-(-nq // nk)}"
            )
        return ClusterPlan.of(n_hashes or DEFAULT_N_HASHES, n_clusters, nq, nk)
    fraction = DEFAULT_BUDGET if budget is None else budget
    if fraction >= 1.0:
        return ClusterPlan.of(n_hashes or 1, 1, nq, nk)
    allowed = fraction * nq * nk
    found = search_plan(
        [n_hashes] if n_hashes else [DEFAULT_N_HASHES, 4, 2, 1],
        lambda hashes: fewest_clusters_from(hashes, fraction, nk),
        fits=lambda h, c: ClusterPlan.of(h, c, nq, nk).score_entries() <= allowed,
        enough=lambda h, c: ClusterPlan.of(h, c, nq, nk).k_cluster_size >= MIN_KEYS_PER_CLUSTER,
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
        select = covering_top_keys if covering else top_keys_per_cluster
        # covering holds about COVERING_TABLES (clusters, Nk) tables per piece, the plain selection one
        tables = COVERING_TABLES if covering else 1
        return select(q, k, q_rows, q_cluster, plan.k_cluster_size, chunk=plan.work_rows(k.shape[1], tables))


class SmyrfTopKeysAttention(AttentionBackend):
    """SMYRF with ``n_hashes`` rounds and query/key clusters of ``q_cluster_size`` / ``k_cluster_size``.

    Holds n_hashes * Nq * k_cluster_size support scores (hashing works within as many). From ``budget``
    (default 1/8) it picks C clusters of Nq/C queries and Nk/C keys to fit (``plan_clusters``).
    """

    name = "smyrf-topkeys"
    published = False
    paper = "Daras et al., NeurIPS 2020 (SMYRF), varied by this project"
    variant_of = "smyrf"

    def __init__(
        self,
        *,
        n_hashes: int | None = None,
        q_cluster_size: int | None = None,
        k_cluster_size: int | None = None,
        covering: bool = True,
        mix: bool = True,
        budget: float | None = None,
        seed: int = 0,
    ):
        super().__init__(budget=budget, seed=seed)
        self.covering = check_bool("covering", covering)
        self.mix = check_bool("mix", mix)
        self.permutations = KeyPermutations(seed)  # the mixed candidate's key draws
        self.n_hashes = positive_int("n_hashes", n_hashes)
        self.q_cluster_size = positive_int("q_cluster_size", q_cluster_size)
        self.k_cluster_size = positive_int("k_cluster_size", k_cluster_size)
        self.hash = SmyrfHash(seed)

    def plan(self, nq: int, nk: int) -> ClusterPlan:
        return plan_clusters(nq, nk, self.n_hashes, self.q_cluster_size, self.k_cluster_size, self.budget)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        qf, kf, vf = q.float() * scale, k.float(), v.float()
        nq, nk = q.shape[1], k.shape[1]
        layout = self.layout(qf, kf)
        keep, n_probe = sampled_half(layout.k_rows.shape[1]), self.probe_count(nq, nk)
        if not n_probe:
            return clustered_attention(qf, kf, vf, layout).to(q.dtype)  # (B, Nq, dv)
        mixed = mixed_layout(layout, keep, self.permutations(layout.k_rows.shape[1] - keep, nk, q.device))
        probes = probe_queries(nq, n_probe, self.seed).to(q.device)  # (p,)
        chunks = probes.split(self.probe_chunk(nq))
        base_errors, mix_errors, truth = mix_probe_errors(qf, kf, vf, layout, mixed, keep, chunks)
        use_mix = clearly_better(base_errors, mix_errors).isfinite()  # (B,)
        out = vf.new_empty(q.shape[0], nq, v.shape[2])  # (B, Nq, dv)
        for members, candidate, sampled_from in ((~use_mix, layout, None), (use_mix, mixed, keep)):
            members = members.nonzero().squeeze(-1)  # (b,)
            if len(members) == q.shape[0]:
                out = clustered_attention(qf, kf, vf, candidate, None, sampled_from)
            elif len(members):
                part = batch_subset(candidate, members, nq, nk)
                out[members] = clustered_attention(qf[members], kf[members], vf[members], part, None, sampled_from)
        out[:, probes] = truth  # their exact rows are known
        return out.to(q.dtype)

    def probe_count(self, nq: int, nk: int) -> int:
        """Probe queries choosing the mix (``probe_calibration.probe_plan``); 0 (no mix) with mix=False, explicit
        cluster sizes, or a single round."""
        if not self.mix or self.q_cluster_size or self.k_cluster_size or not sampled_half(self.plan(nq, nk).n_hashes):
            return 0
        return probe_plan(self.fraction(), nq, PROBE_QUERIES, PROBE_COPIES)[0]

    def probe_chunk(self, nq: int) -> int:
        return probe_plan(self.fraction(), nq, PROBE_QUERIES, PROBE_COPIES)[1]

    def fraction(self) -> float:
        return DEFAULT_BUDGET if self.budget is None else self.budget

    def layout(self, q: torch.Tensor, k: torch.Tensor) -> RoundLayout:
        """Query clusters and their keys for fp32 q (B,Nq,d) (already scaled) and k (B,Nk,d)."""
        return self.hash.layout(q, k, self.plan(q.shape[1], k.shape[1]), self.covering)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        """The support (either candidate's: the same size), or one probe chunk's tables before it."""
        calibration = PROBE_COPIES * min(self.probe_count(nq, nk), self.probe_chunk(nq)) * nk
        return max(self.plan(nq, nk).score_entries(), calibration)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return {**self.plan(nq, nk).as_dict(), "mix": bool(self.probe_count(nq, nk))}

    def extra_repr(self) -> str:
        return (
            f"n_hashes={self.n_hashes}, q_cluster_size={self.q_cluster_size}, "
            f"k_cluster_size={self.k_cluster_size}, mix={self.mix}, {super().extra_repr()}"
        )
