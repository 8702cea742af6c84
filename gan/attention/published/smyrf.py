"""SMYRF (Daras et al., NeurIPS 2020) as giannisdaras/smyrf ``smyrf/torch/attn.py`` computes it.

Per round (``sorted_clusters``): XBOX+ with both sets padded to one common norm, one E2LSH
projection, queries and keys sorted by it and cut by rank into C equal clusters; query cluster c
attends densely to key cluster c. Rounds are mixed by their log-sum-exp weights, so a (query, key)
pair met in r rounds counts r times (``count_duplicates=True``, the reference); ``False`` counts
every pair once (SBSmyrf's duplicate correction). Hashing sees the unscaled q and k; the scale
multiplies the scores only (the reference's ``norm_factor``).

Draws: the reference builds a fresh E2LSH (alpha ~ N(0, 1), beta ~ U(0, r)) on every call; that is
``redraw=True`` here (each call draws the next hashes from a generator seeded once with ``seed``).
The default ``redraw=False`` draws once per shape from ``seed`` (the reference's first call after
``torch.manual_seed(seed)``), so an image's output does not depend on how many batches came before
it: resumed, sharded and re-batched runs give the same images (docs/attention.md, "Draws").
Sizes the clusters do not divide, which the reference rejects, are padded as SBSmyrf pads them
(see ``sorted_clusters``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import REDRAW, AttentionBackend, Parameter, check_bool, positive_number
from ..parts.hashing import draw_e2lsh
from ..parts.parameter_groups import CLUSTERS
from ..parts.sorted_clusters import (
    SortedClusterPlan,
    pad_tokens,
    plan_sorted_clusters,
    sorted_cluster_attention,
    sorted_positions,
)


class SmyrfAttention(AttentionBackend):
    """SMYRF: ``n_hashes`` rounds of asymmetric-LSH clusters of ``q_cluster_size`` queries and ``k_cluster_size`` keys.

    Holds n_hashes * C * q_cluster_size * k_cluster_size scores plus n_hashes * (C q_cluster_size + C k_cluster_size)
    hashes (padding included). From ``budget`` (default 1/8): the most of 8, 4, 2, 1 rounds with at least 8 keys per
    cluster and the fewest clusters that fit (``plan_sorted_clusters``).
    """

    name = "smyrf"
    paper = "Daras et al., NeurIPS 2020"

    n_hashes, q_cluster_size, k_cluster_size = CLUSTERS
    r = Parameter(positive_number, default=1.0)
    count_duplicates = Parameter(check_bool, default=True)
    redraw = REDRAW

    def plan(self, nq: int, nk: int) -> SortedClusterPlan:
        return plan_sorted_clusters(
            nq, nk, self.n_hashes, self.q_cluster_size, self.k_cluster_size, self.effective_budget
        )

    def e2lsh(self, n_hashes: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (dim, R), beta (1, R) on ``device``."""
        return self.seeded_draws(("e2lsh", n_hashes, dim), device, lambda g: draw_e2lsh(g, n_hashes, dim, self.r))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        nq, nk = q.shape[1], k.shape[1]
        plan = self.plan(nq, nk)
        t, s = plan.n_clusters * plan.q_cluster_size, plan.n_clusters * plan.k_cluster_size
        qf, kf, vf = pad_tokens(q.float(), t), pad_tokens(k.float(), s), pad_tokens(v.float(), s)
        if plan.n_clusters == 1:  # nothing to sort: every round is the same dense attention
            q_pos = torch.arange(t, device=q.device).expand(q.shape[0], plan.n_hashes, t)
            k_pos = torch.arange(s, device=q.device).expand(q.shape[0], plan.n_hashes, s)
        else:
            alpha, beta = self.e2lsh(plan.n_hashes, q.shape[2] + 2, q.device)
            q_pos, k_pos = sorted_positions(qf, kf, nk, alpha, beta)
        out = sorted_cluster_attention(qf * scale, kf, vf, q_pos, k_pos, plan, nk, union=not self.count_duplicates)
        return out[:, :nq].to(q.dtype)  # (B, Nq, dv)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return self.plan(nq, nk).score_entries()

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return {**self.plan(nq, nk).as_dict(), "count_duplicates": self.count_duplicates, "redraw": self.redraw}
