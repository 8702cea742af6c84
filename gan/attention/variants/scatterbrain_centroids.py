"""scatterbrain-centroids: the project's cheapest Scatterbrain variant (varies ``scatterbrain``, Chen et al., 2021):
no sparse part; the attention matrix is estimated from its rows at query-group centroids, to first order.

Groups: every query takes its nearest of ``groups`` drawn pilot queries (cosine); a group's centroid qbar_g is the
mean of its members, and its row is the centroid's exact attention over all keys, Vb_g = softmax(qbar_g . k) v (the
low-rank part is these G exact rows, as in clustered attention, Vyas et al., 2020, instead of Scatterbrain's random
features). Output, for query i in group g:

    mean(v) + a (Vb_g - mean(v)) + b (q_i - qbar_g) A^T,   A = the value-key covariance over all keys (dv x d),

with (a, b) in [0, 1] per image the least squares on ``probes`` other drawn queries' exact rows (``linear_fit``),
and the probes' rows exact. It is scatterbrain-meanfield's residual without the chunk supports, with groups of any
size (no equal chunks cut across two groups), so it costs two passes over the (Nq, dv) output: the groups' rows
gathered to their queries, and the slope added in place.

Memory: the (Nq, G) pilot scores, the (G, Nk) centroid rows and the probes' (p, Nk) rows; from ``budget`` the
groups are G = (budget Nq Nk - p Nk - Nq) / (Nq + Nk). Every statistic is per image and every shape is fixed by (Nq,
Nk, budget): an image's output does not depend on its batch, and there are no host syncs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..base import AttentionBackend, Parameter, positive_int
from ..parts.linear_fit import PilotProbeRows, fit_probe_count, fit_two, value_slope
from ..parts.probes import exact_rows


@dataclass(frozen=True)
class CentroidPlan:
    """``groups`` pilot queries (one group each) and ``probes`` exact rows; ``exact`` at a budget covering every
    pair."""

    groups: int
    probes: int
    exact: bool = False

    def score_entries(self, nq: int, nk: int) -> int:
        """The pilot scores (Nq x G), the centroid rows (G x Nk), the probes' rows (p x Nk) and one group id per
        query."""
        if self.exact:
            return nq * nk
        return self.groups * (nq + nk) + self.probes * nk + nq


class ScatterbrainCentroidsAttention(AttentionBackend):
    """Query groups around drawn pilots, each group's centroid row exact, a first-order slope per query, both
    weighted by a least-squares fit on probe queries.

    From ``budget`` (default 1/8) it picks the probes (at most an eighth of the budget) and then the groups that fill
    the rest; explicit ``groups`` / ``probes`` override. At budget 1 it is exact attention.
    """

    name = "scatterbrain-centroids"
    published = False
    paper = "Chen et al., NeurIPS 2021 (Scatterbrain), varied by this project"
    variant_of = "scatterbrain"

    groups = Parameter(positive_int)
    probes = Parameter(positive_int)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.rows = PilotProbeRows(self.seed)  # (n, pilots, probes, device) -> disjoint pilot and probe query rows

    def plan(self, nq: int, nk: int) -> CentroidPlan:
        budget = self.effective_budget
        if budget >= 1 and self.groups is None:
            return CentroidPlan(nq, 0, exact=True)
        probes = fit_probe_count(budget, nq, self.probes)
        groups = self.groups or int((budget * nq * nk - probes * nk - nq) // (nq + nk))
        return CentroidPlan(max(1, min(groups, nq - probes)), probes)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        nq, nk = q.shape[1], k.shape[1]
        plan = self.plan(nq, nk)
        kf, vf = k.float(), v.float()
        if plan.exact:
            return exact_rows(q.float(), kf, vf, scale).to(q.dtype)
        pilot_rows, probe_rows = self.rows(nq, plan.groups, plan.probes, q.device)
        return centroid_attention(q.float() * scale, kf, vf, pilot_rows, probe_rows).to(q.dtype)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return self.plan(nq, nk).score_entries(nq, nk)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return asdict(self.plan(nq, nk))


def centroid_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pilot_rows: torch.Tensor, probe_rows: torch.Tensor
) -> torch.Tensor:
    """fp32 q (B,Nq,d) (scaled), k (B,Nk,d), v (B,Nk,dv); pilot_rows (G,), probe_rows (p,) query rows -> (B,Nq,dv)."""
    b, nq, d = q.shape
    dv, n_groups = v.shape[2], pilot_rows.shape[0]
    image = torch.arange(b, device=q.device)[:, None]  # (B, 1)
    nearest = (q @ F.normalize(q[:, pilot_rows], dim=-1).mT).argmax(-1)  # (B, Nq) each query's group
    group_rows = (nearest + image * n_groups).view(-1)  # (B*Nq,) rows of the flattened (B*G) groups
    # centroids: the members' sums beside their count, one scatter
    sums = q.new_zeros(b * n_groups, d + 1).index_add_(0, group_rows, F.pad(q, (0, 1), value=1.0).view(-1, d + 1))
    centroid = sums[:, :d] / sums[:, d:].clamp_min(1.0)  # (B*G, d); an empty group's is 0 and unused
    row_values = torch.softmax(centroid.view(b, n_groups, d) @ k.mT, -1) @ v  # (B, G, dv) Vb: the centroids' rows
    slope = value_slope(k, v)  # (B, dv, d)
    mean_v = v.mean(1, keepdim=True)  # (B, 1, dv)
    # probes: exact rows and the estimate's two parts at them -> per-image weights a (rows), w (slope)
    probe_groups = group_rows.view(b, nq)[:, probe_rows].reshape(-1)  # (B*p,)
    offsets = q[:, probe_rows] - centroid.index_select(0, probe_groups).view(b, -1, d)  # (B, p, d)
    at_probes = row_values.view(b * n_groups, dv).index_select(0, probe_groups).view(b, -1, dv)  # (B, p, dv)
    truth = exact_rows(q[:, probe_rows], k, v, 1.0)  # (B, p, dv): q is already scaled
    a, w = fit_two(at_probes - mean_v, offsets @ slope.mT, truth - mean_v)  # (B,) each
    a, w = a.view(b, 1, 1), w.view(b, 1, 1)
    # out = (1 - a) mean(v) + a Vb_g + w (q - qbar_g) A^T = [(1 - a) mean(v) + a Vb_g - w qbar_g A^T] + w q A^T:
    # a per-group constant gathered to its queries, then one product per image added in place
    scaled_slope = slope.mT * w  # (B, d, dv)
    per_group = torch.baddbmm(torch.lerp(mean_v, row_values, a), centroid.view(b, n_groups, d), scaled_slope, alpha=-1)
    out = per_group.view(b * n_groups, dv).index_select(0, group_rows).view(b, nq, dv).baddbmm_(q, scaled_slope)
    return out.index_copy_(1, probe_rows, truth)
