"""Scatterbrain (Chen et al., NeurIPS 2021) as HazyResearch/scatterbrain ``sbsmyrf_attention.py`` (SBSmyrf) computes it.

Sparse + low rank. The sparse support is SMYRF's (``sorted_clusters``: XBOX+ common norm, one E2LSH
projection per round, rank-cut equal clusters), hashed on the raw q and k. The low-rank part is the
repo's own feature map (``sb_features``: cosh features from ``num_features // 2`` orthogonal rows,
queries normalised by their own largest feature, keys by the largest over the sequence), on q and
k as they are (no centring). With est_ij = exp(lq_i + lk) phi_q(q_i) . phi_k(k_j):

    out_i = [sum_j est_ij v_j + sum_{j in S_i} (exp(s_ij) - est_ij) v_j] / max([the same with v_j = 1], 1e-6 exp(N_i))

where a pair met in several rounds has each meeting divided by its count (every pair once) and
N_i = logsumexp over rounds of max(round's top score, lq_i + lk), as the reference's
``normalization.clamp_min(1e-6)``. Evaluated under a running per-query shift (the same sums).

Budget b (default 1/8), the reference split: half for the support (SMYRF planner at b/2, hashes
counted), the rest for features: num_features = floor((b Nq Nk - support) / (Nq + Nk)), even (cosh),
at least 2. At b = 1 the support is complete and no features are drawn (their terms cancel).
Draws: the reference draws fresh hashes on every call and its features once, right after the first
call's hashes (``redraw = pi`` in SBPerformerFeatures). ``redraw=True`` does the same
from one generator seeded once with ``seed``: on the CPU the draws are those the reference makes
after ``torch.manual_seed(seed)``. ``redraw=False`` (default: outputs independent of call history,
see docs/attention.md, "Draws") draws the hashes and features once per shape, as the first call.
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import REDRAW, AttentionBackend, Parameter, positive_number
from ..parts.hashing import draw_e2lsh
from ..parts.low_rank import LowRankTerms
from ..parts.parameter_groups import CLUSTERS, SB_FEATURE_OPTIONS, SB_NUM_FEATURES
from ..parts.sb_features import sb_key_features, sb_projection, sb_query_features
from ..parts.sorted_clusters import (
    SortedClusterPlan,
    pad_tokens,
    plan_sorted_clusters,
    sorted_cluster_attention,
    sorted_positions,
)

SPARSE_SHARE = 0.5  # the reference's split: half the budget for the SMYRF support, half for the features
NORMALISER_FLOOR = 1e-6  # the reference's clamp_min on the normaliser, in units of exp(N)


def sb_low_rank_terms(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, scale: float, n_keys: int, eps: float = 0.0
) -> LowRankTerms:
    """SBPerformerFeatures on padded fp32 q (B,T,d), k (B,S,d), v (B,S,dv); keys >= n_keys are padding (features 0)."""
    a, q_scale = sb_query_features(q, proj, scale, eps=eps)  # (B, T, m), (B, T, 1)
    b, k_scale = sb_key_features(
        k, proj, scale, eps=eps
    )  # (B, S, m), (B, 1, 1): padded keys count in the max, as there
    b[:, n_keys:] = 0.0
    num = a @ (b.transpose(1, 2) @ v)  # (B, T, dv)
    den = a @ b.sum(1).unsqueeze(-1)  # (B, T, 1)
    return LowRankTerms((q_scale + k_scale).squeeze(-1), a, b, num, den.squeeze(-1))


class ScatterbrainAttention(AttentionBackend):
    """SBSmyrf: SMYRF support (``n_hashes``, cluster sizes) + Scatterbrain features (``num_features``), unbiased.

    Explicit ``num_features`` and cluster parameters override the budget split (see module doc).
    ``ortho_scaling`` and ``softmax_eps`` are the feature map's knobs (reference defaults 0 and 0.0).
    """

    name = "scatterbrain"
    paper = "Chen et al., NeurIPS 2021"

    num_features = SB_NUM_FEATURES
    n_hashes, q_cluster_size, k_cluster_size = CLUSTERS
    r = Parameter(positive_number, default=1.0)
    ortho_scaling, softmax_eps = SB_FEATURE_OPTIONS
    redraw = REDRAW

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._generator = torch.Generator().manual_seed(self.seed)  # the redraw stream: hashes per call, features once
        self._features: dict[tuple, torch.Tensor] = {}
        self._fixed: dict[tuple, tuple] = {}  # redraw=False: hashes and features once per shape, from seed

    def plan(self, nq: int, nk: int) -> tuple[SortedClusterPlan, int]:
        """(sparse support plan, number of features: even, 0 when the support is complete at budget 1)."""
        fraction = self.effective_budget
        sparse = 1.0 if fraction >= 1.0 else fraction * SPARSE_SHARE
        clusters = plan_sorted_clusters(nq, nk, self.n_hashes, self.q_cluster_size, self.k_cluster_size, sparse)
        if self.num_features is not None:
            return clusters, 2 * (self.num_features // 2)  # the reference draws num_features // 2 rows
        if fraction >= 1.0:
            return clusters, 0
        t, s = clusters.n_clusters * clusters.q_cluster_size, clusters.n_clusters * clusters.k_cluster_size
        left = fraction * nq * nk - clusters.score_entries()
        return clusters, max(2, 2 * int(left / (t + s) / 2))

    def draws(self, n_hashes: int | None, num_features: int, d: int, device: torch.device) -> tuple:
        """(alpha, beta, proj) for one call, in the reference's order: E2LSH (None without ``n_hashes``: nothing
        to sort), then the (num_features // 2, d) projection (None without features; drawn once per shape)."""

        def e2lsh(g):
            return draw_e2lsh(g, n_hashes, d + 2, self.r) if n_hashes else (None, None)

        def projection(g):
            return sb_projection(num_features, d, g, scaling=self.ortho_scaling) if num_features else None

        if not self.redraw:
            key = (n_hashes, num_features, d, str(device))
            if key not in self._fixed:
                g = torch.Generator().manual_seed(self.seed)
                self._fixed[key] = tuple(None if t is None else t.to(device) for t in (*e2lsh(g), projection(g)))
            return self._fixed[key]
        alpha, beta = e2lsh(self._generator)
        if (num_features, d) not in self._features:
            self._features[num_features, d] = projection(self._generator)
        proj = self._features[num_features, d]
        return tuple(None if t is None else t.to(device) for t in (alpha, beta, proj))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 0:
            raise ValueError(f"scatterbrain attention needs scale > 0 (softmax kernel features), got {scale}")
        nq, nk = q.shape[1], k.shape[1]
        plan, num_features = self.plan(nq, nk)
        t, s = plan.n_clusters * plan.q_cluster_size, plan.n_clusters * plan.k_cluster_size
        qf, kf, vf = pad_tokens(q.float(), t), pad_tokens(k.float(), s), pad_tokens(v.float(), s)
        alpha, beta, proj = self.draws(
            plan.n_hashes if plan.n_clusters > 1 else None, num_features, q.shape[2], q.device
        )
        if plan.n_clusters == 1:  # nothing to sort
            q_pos = torch.arange(t, device=q.device).expand(q.shape[0], plan.n_hashes, t)
            k_pos = torch.arange(s, device=q.device).expand(q.shape[0], plan.n_hashes, s)
        else:
            q_pos, k_pos = sorted_positions(qf, kf, nk, alpha, beta)
        low_rank = None if proj is None else sb_low_rank_terms(qf, kf, vf, proj, scale, nk, self.softmax_eps)
        out = sorted_cluster_attention(
            qf * scale, kf, vf, q_pos, k_pos, plan, nk, union=True, low_rank=low_rank, floor=NORMALISER_FLOOR
        )
        return out[:, :nq].to(q.dtype)  # (B, Nq, dv)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        plan, num_features = self.plan(nq, nk)
        t, s = plan.n_clusters * plan.q_cluster_size, plan.n_clusters * plan.k_cluster_size
        return plan.score_entries() + (t + s) * num_features

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        plan, num_features = self.plan(nq, nk)
        return {**plan.as_dict(), "num_features": num_features, "redraw": self.redraw}
