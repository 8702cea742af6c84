"""scatterbrain-meanfield: the project's fast Scatterbrain variant (varies ``scatterbrain``, Chen et al., 2021):
sparse attention of query chunks on their own top keys plus a mean-field estimate of the keys they leave out,
in a few large tensor ops.

Chunks: every query takes its nearest of ``pilots`` drawn queries (cosine); queries sorted by pilot (raster
order within a pilot's group, so the chunks of a feature map stay spatially coherent) are cut into equal chunks.
Support: per chunk the ``support`` keys with the highest Gaussian log-mean-exp score qbar.k + var.k^2 / 2 (qbar,
var: the chunk's query mean and per-dimension variance), i.e. the keys its queries weigh most on average; the
chunk's queries attend exactly to them.
Residual (the other keys, per chunk): their exp(qbar.k)-weighted mean key Kb, per-dimension key variance Kvar and
mean value Vb; query i (offset delta_i from qbar) gives them the log-mass log sum exp(qbar.k) + delta.Kb +
delta^2.Kvar / 2 and the value Vb, plus a first-order value slope A delta_i (A = the keys' value-key covariance
over all keys, one dv x d matrix per image) weighted by the residual's share of the query's mass.
Fit: ``probes`` other drawn queries get their exact rows; per image the output is mean(v) + a (estimate - mean(v))
+ b (slope part) with a, b in [0, 1] the least-squares fit on the probes (closed-form 2 x 2): peaked regimes a
chunk support cannot serve shrink towards mean(v) (a < 1), diffuse ones keep the slope (b ~ 1), and the probes'
rows are exact.

Every statistic is per image, so an image's output does not depend on its batch; the op count does not depend on
the batch; shapes are fixed by (Nq, Nk, budget), so there are no host syncs. Pilot and probe rows are drawn
from ``seed`` (disjoint).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..base import AttentionBackend, Parameter, positive_int
from ..parts.linear_fit import PilotProbeRows, fit_probe_count, fit_two, value_slope

PILOTS = 64  # query groups: more than the clusters a generator map shows (objects, regions), so few are left
# without a pilot, and few enough that a group spans a chunk or more, so most chunk cuts fall inside groups
MIN_SUPPORT = 8  # below this many keys per chunk the support is not worth its selection: first-order estimate only


@dataclass(frozen=True)
class MeanFieldPlan:
    """Chunks of ``chunk_size`` queries (``n_chunks`` of them, the last padded), ``support`` keys each,
    ``pilots`` query groups and ``probes`` exact rows; ``exact`` when the budget leaves no key out; ``support``
    0: first order only (mean(v) plus the fitted value slope), where the budget leaves too few keys per chunk."""

    chunk_size: int
    n_chunks: int
    support: int
    pilots: int
    probes: int
    exact: bool = False

    def score_entries(self, nq: int, nk: int) -> int:
        """Support scores (Nq x support), the chunk-key selection table (C x Nk, reused for the residual
        weights), the probes' rows (p x Nk) and one residual logit per query; first-order: the probes' rows and
        one slope weight per query."""
        if self.exact:
            return nq * nk
        if not self.support:
            return self.probes * nk + nq
        return nq * self.support + self.n_chunks * nk + self.probes * nk + nq


def default_chunk_size(budget: float, nq: int) -> int:
    """Queries per chunk: the selection table costs Nk / chunk_size per query, a quarter of the budget or less;
    doubled for every 4x queries beyond 4096, since the gathered support rows (Nq / chunk_size x support x
    (d + dv) floats) are what large shapes spend their time on, and a bigger map has more queries alike."""
    base = 32 if budget >= 1 / 16 else 64 if budget >= 1 / 48 else 128
    return base * max(1, math.isqrt(nq // 4096))


class ScatterbrainMeanFieldAttention(AttentionBackend):
    """Query chunks on their top keys plus a mean-field residual with a value slope, fitted per image on probes.

    From ``budget`` (default 1/8) it picks the chunk size, then the support that fills what the selection
    table, the probes and the residual logits leave; explicit ``chunk_size`` / ``support`` / ``pilots`` /
    ``probes`` override. At a budget that covers every key it is exact attention.
    """

    name = "scatterbrain-meanfield"
    published = False
    paper = "Chen et al., NeurIPS 2021 (Scatterbrain), varied by this project"
    variant_of = "scatterbrain"

    chunk_size = Parameter(positive_int)
    support = Parameter(positive_int)
    pilots = Parameter(positive_int, default=PILOTS, optional=False)
    probes = Parameter(positive_int)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.rows = PilotProbeRows(self.seed)  # (n, pilots, probes, device) -> disjoint pilot and probe query rows

    def plan(self, nq: int, nk: int) -> MeanFieldPlan:
        budget = self.effective_budget
        cq = min(self.chunk_size or default_chunk_size(budget, nq), nq)
        n_chunks = -(-nq // cq)
        probes = fit_probe_count(budget, nq, self.probes)
        pilots = min(self.pilots, nq)
        kk = self.support or int((budget * nq * nk - n_chunks * nk - probes * nk - nq) // nq)
        kk = 0 if kk < min(MIN_SUPPORT, nk) and self.support is None else min(kk, nk)
        exact = kk >= nk or (self.support is None and budget >= 1)
        return MeanFieldPlan(cq, n_chunks, kk, pilots, probes, exact)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        nq, nk = q.shape[1], k.shape[1]
        plan = self.plan(nq, nk)
        qf, kf, vf = q.float() * scale, k.float(), v.float()
        if plan.exact:
            return (torch.softmax(qf @ kf.mT, -1) @ vf).to(q.dtype)
        if not plan.support:
            return first_order_attention(qf, kf, vf, self.rows(nq, 0, plan.probes, q.device)[1]).to(q.dtype)
        pilot_rows, probe_rows = self.rows(nq, plan.pilots, plan.probes, q.device)
        return meanfield_attention(qf, kf, vf, plan, pilot_rows, probe_rows).to(q.dtype)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return self.plan(nq, nk).score_entries(nq, nk)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return asdict(self.plan(nq, nk))


def meanfield_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: MeanFieldPlan,
    pilot_rows: torch.Tensor,
    probe_rows: torch.Tensor,
) -> torch.Tensor:
    """fp32 q (B,Nq,d) (scaled), k (B,Nk,d), v (B,Nk,dv) -> (B,Nq,dv) by ``plan``; pilots and probes are query rows."""
    b, nq, d = q.shape
    nk, dv = v.shape[1], v.shape[2]
    cq, n_chunks, kk, p = plan.chunk_size, plan.n_chunks, plan.support, probe_rows.shape[0]
    rows = torch.arange(nq, device=q.device)
    chunk_ids = torch.arange(n_chunks, device=q.device)[:, None]  # (C, 1)
    image = torch.arange(b, device=q.device)[:, None]  # (B, 1) row offsets of the flattened batch
    # chunks: sort by nearest pilot (ties: raster order), cut into equal pieces (the last padded with its last query)
    nearest = (q @ F.normalize(q[:, pilot_rows], dim=-1).mT).argmax(-1)  # (B, Nq)
    order = torch.argsort(nearest * nq + rows, dim=1)  # (B, Nq)
    if n_chunks * cq > nq:
        order = torch.cat([order, order[:, -1:].expand(-1, n_chunks * cq - nq)], 1)  # (B, C*cq)
    qs = q.reshape(b * nq, d).index_select(0, (order + image * nq).reshape(-1)).view(b, n_chunks, cq, d)
    qbar = qs.mean(2)  # (B, C, d)
    delta = qs - qbar[:, :, None]  # (B, C, cq, d)
    d2 = delta.square()
    kmom = torch.cat([k, k.square()], -1)  # (B, Nk, 2d)
    # support: the keys of the highest Gaussian log-mean-exp weight over the chunk's queries
    select = torch.cat([qbar, 0.5 * d2.mean(2)], -1) @ kmom.mT  # (B, C, Nk)
    top = select.topk(kk, dim=-1, sorted=False).indices  # (B, C, kk)
    del select
    # residual: the other keys' exp(qbar.k)-weighted moments; per query a Gaussian log-mass in its offset
    centre = qbar @ k.mT  # (B, C, Nk)
    cmax = centre.amax(-1, keepdim=True)
    weight = torch.exp(centre - cmax).scatter_(-1, top, 0.0)
    del centre
    mass = weight.sum(-1, keepdim=True).clamp_min(1e-30)  # (B, C, 1)
    weight = weight / mass
    kb, k2b = (weight @ kmom).split([d, d], -1)  # (B, C, d) each
    vb = weight @ v  # (B, C, dv)
    del weight
    # (B, C, cq, 1): log-mass + delta.Kb + delta^2.Kvar / 2, two products (no (B, C, cq, 2d) copy)
    res_logit = torch.baddbmm((cmax + mass.log())[..., None].reshape(b * n_chunks, 1, 1),
                              delta.reshape(b * n_chunks, cq, d), kb.reshape(b * n_chunks, d, 1))
    res_logit = torch.baddbmm(res_logit, d2.reshape(b * n_chunks, cq, d),
                              (k2b - kb.square()).reshape(b * n_chunks, d, 1), alpha=0.5).view(b, n_chunks, cq, 1)
    # support rows gathered once, with one more slot per chunk for the residual: a zero key (its score column then
    # takes the residual logit, so the logits need no concatenation) and the chunk's residual value Vb
    top_rows = top + image[..., None] * nk  # (B, C, kk) flat key rows
    key_slots = torch.cat([top_rows, torch.full_like(top_rows[..., :1], b * nk)], -1)  # (B, C, kk+1): row B*Nk is 0
    ks = torch.cat([k.reshape(b * nk, d), k.new_zeros(1, d)]).index_select(0, key_slots.reshape(-1))
    slots = torch.cat([top_rows, b * nk + image[..., None] * n_chunks + chunk_ids], -1)  # (B, C, kk+1)
    vs = torch.cat([v.reshape(b * nk, dv), vb.reshape(b * n_chunks, dv)]).index_select(0, slots.reshape(-1))
    weights = qs @ ks.view(b, n_chunks, kk + 1, d).mT  # (B, C, cq, kk+1) logits (the last 0), then normalised weights
    weights[..., kk:] = res_logit
    weights = weights.sub_(weights.amax(-1, keepdim=True)).exp_()
    den = weights.sum(-1, keepdim=True)  # (B, C, cq, 1)
    slope = value_slope(k, v)  # (B, dv, d): value-key covariance
    mean_v = v.mean(1, keepdim=True)  # (B, 1, dv)
    # probes: exact rows and the estimate's two parts at them -> per-image weights a (estimate), b (slope)
    inverse = torch.empty_like(order[:, :nq]).scatter_(1, order[:, :nq], rows.expand(b, -1))  # (B, Nq) sorted position
    at = (inverse[:, probe_rows] + image * n_chunks * cq).reshape(-1)  # (B*p,) rows of the flattened chunks

    def probe(x: torch.Tensor) -> torch.Tensor:  # (B, C, cq, n) -> (B, p, n) at the probes
        return x.reshape(b * n_chunks * cq, -1).index_select(0, at).view(b, p, -1)

    chunk_of = inverse[:, probe_rows] // cq + image * n_chunks  # (B, p) chunk of each probe, flattened
    vs = vs.view(b * n_chunks, kk + 1, dv)
    e_probe = probe(weights) / probe(den)  # (B, p, kk+1)
    estimate = (e_probe.view(b * p, 1, kk + 1) @ vs.index_select(0, chunk_of.reshape(-1))).view(b, p, dv)
    truth = torch.softmax(q[:, probe_rows] @ k.mT, -1) @ v  # (B, p, dv) the probes' exact rows
    share = e_probe[..., kk:]  # (B, p, 1) the residual's share of the probe's mass
    a, w_slope = fit_two(estimate - mean_v, share * (probe(delta) @ slope.mT), truth - mean_v)  # (B,) each
    a, w_slope = a.view(b, 1, 1, 1), w_slope.view(b, 1, 1, 1)
    # out = (1 - a) mean(v) + b share (delta A^T) [one product per image] + a (weights vs) / den [per chunk]
    per_query = torch.cat([(w_slope * weights[..., kk:] / den) * delta, (1 - a).expand(-1, n_chunks, cq, 1)], -1)
    out = per_query.view(b, n_chunks * cq, d + 1) @ torch.cat([slope.mT, mean_v], 1)  # (B, C*cq, dv)
    support, scale_q = weights.view(b * n_chunks, cq, kk + 1), (a / den).view(b * n_chunks, cq, 1)
    if kk + 1 > dv:  # the weights outnumber the output's entries: scale their product rather than them
        out.view(b * n_chunks, cq, dv).addcmul_(torch.bmm(support, vs), scale_q)
    else:
        out.view(b * n_chunks, cq, dv).baddbmm_(support.mul_(scale_q), vs)
    out = out.view(b * n_chunks * cq, dv).index_select(0, (inverse + image * n_chunks * cq).reshape(-1))
    out = out.view(b, nq, dv)
    out[:, probe_rows] = truth
    return out


def first_order_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probe_rows: torch.Tensor) -> torch.Tensor:
    """mean(v) + b (q - mean q) A^T (A the value-key covariance), b in [0, 1] fitted on the probes' exact rows."""
    b = q.shape[0]
    slope = value_slope(k, v)  # (B, dv, d)
    mean_v = v.mean(1, keepdim=True)  # (B, 1, dv)
    offsets = q - q.mean(1, keepdim=True)  # (B, Nq, d)
    truth = torch.softmax(q[:, probe_rows] @ k.mT, -1) @ v  # (B, p, dv)
    x = offsets[:, probe_rows] @ slope.mT
    w_slope = ((x * (truth - mean_v)).sum((1, 2)) / ((x * x).sum((1, 2)) + 1e-30)).clamp(0, 1).view(b, 1, 1)
    out = torch.baddbmm(mean_v, offsets, slope.mT * w_slope)  # (B, Nq, dv)
    out[:, probe_rows] = truth
    return out

