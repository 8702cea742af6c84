"""Performer (FAVOR+): softmax attention through positive orthogonal random features, linear in N.

out = phi(q) (phi(k)^T v) / (phi(q) phi(k)^T 1), evaluated in a log-stable form: per feature m,
the keys' weights exp(lk[:, m]) are normalised over keys into a convex combination of the values
(KV_m, shape dv) with log-mass logS_m; each query then mixes the KV_m with softmax_m(lq_m + logS_m).
This is the same estimator algebraically, but no step can overflow or divide 0 by 0, so logits
up to 100 stay finite. No Nq x Nk tensor is ever formed; queries go through in chunks of
QUERY_CHUNK so the query-side (chunk x m) weights stay within the memory the budget allows.

Stabilisers: the public implementations (google-research performer, lucidrains/performer-pytorch and
its copy in HazyResearch/scatterbrain ``performer_utils.py`` softmax_kernel / linear_attention) shift
every query's log-features by their own maximum and the keys' by their maximum over all keys and
features, then add ``eps`` (1e-4 there) to each feature before the 1/sqrt(m) ratio, and add
``normalization_eps`` (1e-6) to the denominator. Those are the defaults here; with eps > 0 or
normalization_eps > 0 the output is that exact form. At BigGAN's unscaled norms (|q|^2 / 2 in the
tens) every shifted feature exp(w.x - |x|^2/2 - max) is far below 1e-4, so eps dominates both sides
and the output collapses towards the plain mean of the values; eps = normalization_eps = 0 gives the
unbiased estimator in the log-stable form above (the project's earlier default).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange

from ..base import REDRAW, AttentionBackend, Parameter, nonnegative_number, positive_int
from ..parts.random_features import ProjectionCache, favor_log_features

# Queries per chunk: bounds the (B, chunk, m) query-side logits and weights independently of Nq.
QUERY_CHUNK = 4096
EPS = 1e-4  # the public implementations' feature stabiliser (softmax_kernel's eps)
NORMALIZATION_EPS = 1e-6  # and their denominator stabiliser (linear_attention's eps)


class PerformerAttention(AttentionBackend):
    """FAVOR+ attention with ``num_features`` random features (from ``budget``, default 1/8, when not given).

    At a budget the method holds (Nq + Nk) * num_features feature entries, so
    num_features = floor(budget * Nq * Nk / (Nq + Nk)) (at least 1). Features are drawn once from
    ``seed`` and cached per (num_features, d, device); ``redraw=True`` draws fresh ones on every
    call from a generator seeded once with ``seed``.
    """

    name = "performer"
    paper = "Choromanski et al., ICLR 2021"

    num_features = Parameter(positive_int)
    redraw = REDRAW
    eps = Parameter(nonnegative_number, default=EPS)
    normalization_eps = Parameter(nonnegative_number, default=NORMALIZATION_EPS)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._projections = ProjectionCache(self.seed, self.redraw)

    def features_for(self, nq: int, nk: int) -> int:
        """Number of random features used for these shapes."""
        if self.num_features is not None:
            return self.num_features
        return max(1, int(self.effective_budget * nq * nk / (nq + nk)))

    def projection(self, num_features: int, d: int, device: torch.device) -> torch.Tensor:
        """(m, d) fp32 projection: cached from ``seed``, or a fresh draw when ``redraw``."""
        return self._projections(num_features, d, device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 0:
            raise ValueError(f"performer attention needs scale > 0 (softmax kernel features), got {scale}")
        batch, nq = q.shape[0], q.shape[1]
        proj = self.projection(self.features_for(nq, k.shape[1]), q.shape[2], q.device)  # (m, d)
        if self.eps or self.normalization_eps:
            return _stabilised_favor(q, k, v, proj, scale, self.eps, self.normalization_eps).to(q.dtype)
        log_mass, kv = _summarise_keys(k, v, proj, scale)  # (B, 1, m), (B, m, dv)
        scaled_proj = (proj * math.sqrt(scale)).t().expand(batch, -1, -1)  # (B, d, m)
        out = kv.new_empty(batch, nq, kv.shape[2])  # (B, Nq, dv) fp32
        for start in range(0, nq, QUERY_CHUNK):  # query chunks bound the (B, chunk, m) weights
            queries = q[:, start : start + QUERY_CHUNK].float()  # (B, C, d)
            out[:, start : start + queries.shape[1]] = _mix_values(queries, scaled_proj, log_mass, kv)
        return out.to(q.dtype)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return (nq + nk) * self.features_for(nq, nk)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return {
            "num_features": self.features_for(nq, nk),
            "redraw": self.redraw,
            "eps": self.eps,
            "normalization_eps": self.normalization_eps,
        }


def _stabilised_favor(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj: torch.Tensor,
    scale: float,
    eps: float,
    normalization_eps: float,
) -> torch.Tensor:
    """The public implementations' form -> (B, Nq, dv) fp32: phi = m^-1/2 (exp(w.x' - |x'|^2/2 - shift) + eps), shift a
    query's own max of w.x' (keys: the max over all keys and features), out = phi_q (phi_k^T v) / (phi_q phi_k^T 1 +
    n_eps)."""
    ratio = proj.shape[0] ** -0.5
    projection = proj.float().t()  # (d, m)

    def dash_and_diag(x):
        x = x.float() * math.sqrt(scale)
        return x @ projection, 0.5 * x.square().sum(-1, keepdim=True)  # (B, N, m), (B, N, 1)

    key_dash, key_diag = dash_and_diag(k)
    key_top = key_dash.amax(dim=(-1, -2), keepdim=True)  # (B, 1, 1)
    key_features = key_dash.sub_(key_diag).sub_(key_top).exp_().add_(eps).mul_(ratio)  # (B, Nk, m), in place
    context = key_features.transpose(1, 2) @ v.float()  # (B, m, dv)
    key_sum = key_features.sum(1).unsqueeze(-1)  # (B, m, 1)
    out = context.new_empty(q.shape[0], q.shape[1], v.shape[2])
    for start in range(0, q.shape[1], QUERY_CHUNK):  # (B, chunk, m) query features at a time
        dash, diag = dash_and_diag(q[:, start : start + QUERY_CHUNK])
        top = dash.amax(-1, keepdim=True)  # (B, C, 1)
        features = dash.sub_(diag).sub_(top).exp_().add_(eps).mul_(ratio)  # (B, C, m), in place
        out[:, start : start + features.shape[1]] = (features @ context) / (features @ key_sum + normalization_eps)
    return out


def _summarise_keys(
    k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, Nk, d), v (B, Nk, dv) -> per feature m: log-mass log sum_j exp(lk_jm) (B, 1, m) and the
    values' convex combination KV_m with weights exp(lk_jm) (B, m, dv), both fp32 and overflow-free."""
    lk = favor_log_features(k, proj, scale)  # (B, Nk, m)
    key_max = lk.amax(dim=1, keepdim=True)  # (B, 1, m)
    key_weights = lk.sub_(key_max).exp_()  # (B, Nk, m) in place, max 1 per feature
    mass = key_weights.sum(dim=1, keepdim=True)  # (B, 1, m), >= 1
    kv = torch.einsum("bnm,bne->bme", key_weights, v.float()) / rearrange(mass, "b 1 m -> b m 1")  # (B, m, dv)
    return mass.log_() + key_max, kv


def _mix_values(
    queries: torch.Tensor, scaled_proj: torch.Tensor, log_mass: torch.Tensor, kv: torch.Tensor
) -> torch.Tensor:
    """queries (B, C, d) fp32 -> (B, C, dv): sum_m softmax_m(lq_m + log_mass_m) kv_m.

    lq's per-query terms (-|q'|^2/2 - log(m)/2) are dropped: they cancel in the softmax over m.
    """
    logits = torch.baddbmm(log_mass, queries, scaled_proj)  # (B, C, m) = lq + log_mass + per-query constant
    return torch.softmax(logits, dim=-1) @ kv
