"""smyrf-topkeys: the project's SMYRF variant (varies ``smyrf``, Daras et al., 2020): asymmetric LSH query
clusters, each meeting the keys its queries score highest (that earlier rounds did not already give
them), rounds combined over the union of supports.

Hash, per round (``parts/topkey_support``, shared with scatterbrain-centred): queries (rescaled to
the keys' max norm: a query's key ranking does not depend on its norm) and keys go through the XBOX+
transform onto one sphere where large inner products are short distances; every query takes the id
of its nearest of C centroids (transformed keys drawn from ``seed``) plus a fraction from a random
projection, and the sorted queries are cut into C equal clusters, so big centroid groups split along
an angular coordinate.

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
each query's row; probe queries (their exact rows, ``probes.probe_plan``: 64 to 128 where an eighth of
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

from typing import Any

import torch

from ..base import AttentionBackend, Parameter, check_bool
from ..parts.parameter_groups import CLUSTERS
from ..parts.probe_calibration import clearly_better
from ..parts.probes import ProbeQueries, probe_plan
from ..parts.round_attention import clustered_attention
from ..parts.round_layout import RoundLayout
from ..parts.sampled_rounds import KeyPermutations, mix_probe_errors, mixed_layout, sampled_half
from ..parts.topkey_support import ClusterPlan, SmyrfHash, plan_clusters

PROBE_COPIES = 4  # (c, Nk) fp32 tables of a probe chunk alive at once (``sampled_rounds.mix_probe_errors``)


class SmyrfTopKeysAttention(AttentionBackend):
    """SMYRF with ``n_hashes`` rounds and query/key clusters of ``q_cluster_size`` / ``k_cluster_size``.

    Holds n_hashes * Nq * k_cluster_size support scores (hashing works within as many). From ``budget``
    (default 1/8) it picks C clusters of Nq/C queries and Nk/C keys to fit (``plan_clusters``).
    """

    name = "smyrf-topkeys"
    published = False
    paper = "Daras et al., NeurIPS 2020 (SMYRF), varied by this project"
    variant_of = "smyrf"

    n_hashes, q_cluster_size, k_cluster_size = CLUSTERS
    covering = Parameter(check_bool, default=True)
    mix = Parameter(check_bool, default=True)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.permutations = KeyPermutations(self.seed)  # the mixed candidate's key draws
        self.hash = SmyrfHash(self.seed)
        self.probes = ProbeQueries(self.seed)  # the mix's probe queries, drawn once per shape

    def plan(self, nq: int, nk: int) -> ClusterPlan:
        return plan_clusters(nq, nk, self.n_hashes, self.q_cluster_size, self.k_cluster_size, self.effective_budget)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        qf, kf, vf = q.float() * scale, k.float(), v.float()
        nq, nk = q.shape[1], k.shape[1]
        layout = self.layout(qf, kf)
        keep, n_probe = sampled_half(layout.k_rows.shape[1]), self.probe_count(nq, nk)
        if not n_probe:
            return clustered_attention(qf, kf, vf, layout).to(q.dtype)  # (B, Nq, dv)
        mixed = mixed_layout(layout, keep, self.permutations(layout.k_rows.shape[1] - keep, nk, q.device))
        probes = self.probes(nq, n_probe, q.device)  # (p,)
        chunks = probes.split(self.probe_chunk(nq))
        base_errors, mix_errors, truth = mix_probe_errors(qf, kf, vf, layout, mixed, keep, chunks)
        use_mix = clearly_better(base_errors, mix_errors).isfinite()  # (B,)
        # One layout for the whole batch: the mix's drawn rounds where an element chose it, its top keys elsewhere
        # (their rounds keep..R then count as ordinary rounds), so no element's output depends on the others.
        k_rows = torch.where(use_mix.view(-1, 1, 1, 1), mixed.k_rows, layout.k_rows)
        chosen = RoundLayout(layout.q_rows, layout.q_cluster, k_rows)
        out = clustered_attention(qf, kf, vf, chosen, None, keep, sampled=use_mix)  # (B, Nq, dv)
        return out.index_copy_(1, probes, truth).to(q.dtype)  # the probes' exact rows are known

    def probe_count(self, nq: int, nk: int) -> int:
        """Probe queries choosing the mix (``probes.probe_plan``); 0 (no mix) with mix=False, explicit
        cluster sizes, or a single round."""
        if not self.mix or self.q_cluster_size or self.k_cluster_size or not sampled_half(self.plan(nq, nk).n_hashes):
            return 0
        return probe_plan(self.effective_budget, nq, PROBE_COPIES)[0]

    def probe_chunk(self, nq: int) -> int:
        return probe_plan(self.effective_budget, nq, PROBE_COPIES)[1]

    def layout(self, q: torch.Tensor, k: torch.Tensor) -> RoundLayout:
        """Query clusters and their keys for fp32 q (B,Nq,d) (already scaled) and k (B,Nk,d)."""
        return self.hash.layout(q, k, self.plan(q.shape[1], k.shape[1]), self.covering)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        """The support (either candidate's: the same size), or one probe chunk's tables before it."""
        calibration = PROBE_COPIES * min(self.probe_count(nq, nk), self.probe_chunk(nq)) * nk
        return max(self.plan(nq, nk).score_entries(), calibration)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return {**self.plan(nq, nk).as_dict(), "mix": bool(self.probe_count(nq, nk))}
