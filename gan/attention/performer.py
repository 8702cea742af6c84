"""Performer (FAVOR+): softmax attention through positive orthogonal random features, linear in N.

out = phi(q) (phi(k)^T v) / (phi(q) phi(k)^T 1), evaluated in a log-stable form: per feature m,
the keys' weights exp(lk[:, m]) are normalised over keys into a convex combination of the values
(KV_m, shape dv) with log-mass logS_m; each query then mixes the KV_m with softmax_m(lq_m + logS_m).
This is the same estimator algebraically, but no step can overflow or divide 0 by 0, so logits
up to 100 stay finite. No Nq x Nk tensor is ever formed; queries go through in chunks of
QUERY_CHUNK so the query-side (chunk x m) weights stay within the memory the budget allows.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange

from .base import DEFAULT_BUDGET, AttentionBackend
from .random_features import ProjectionCache, favor_log_features, orthogonal_projection

# Queries per chunk: bounds the (B, chunk, m) query-side logits and weights independently of Nq.
QUERY_CHUNK = 4096


class PerformerAttention(AttentionBackend):
    """FAVOR+ attention with ``num_features`` random features (from ``budget``, default 1/8, when not given).

    At a budget the method holds (Nq + Nk) * num_features feature entries, so
    num_features = floor(budget * Nq * Nk / (Nq + Nk)) (at least 1). Features are drawn once from
    ``seed`` and cached per (num_features, d, device); ``redraw=True`` draws fresh ones on every
    call from a generator seeded once with ``seed``.
    """

    name = "performer"
    paper = "Choromanski et al., ICLR 2021"

    def __init__(self, *, num_features: int | None = None, redraw: bool = False, budget: float | None = None, seed: int = 0):
        super().__init__(budget=budget, seed=seed)
        if num_features is not None and (not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1):
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not isinstance(redraw, bool):
            raise ValueError(f"redraw must be True or False, got {redraw!r}")
        self.num_features = num_features
        self.redraw = redraw
        self._projections = ProjectionCache(seed)
        self._generator = torch.Generator().manual_seed(seed)

    def features_for(self, nq: int, nk: int) -> int:
        """Number of random features used for these shapes."""
        if self.num_features is not None:
            return self.num_features
        budget = DEFAULT_BUDGET if self.budget is None else self.budget
        return max(1, int(budget * nq * nk / (nq + nk)))

    def projection(self, num_features: int, d: int, device: torch.device) -> torch.Tensor:
        """(m, d) fp32 projection: cached from ``seed``, or a fresh draw when ``redraw``."""
        if self.redraw:
            return orthogonal_projection(num_features, d, self._generator).to(device)
        return self._projections(num_features, d, device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 0:
            raise ValueError(f"performer attention needs scale > 0 (softmax kernel features), got {scale}")
        batch, nq = q.shape[0], q.shape[1]
        proj = self.projection(self.features_for(nq, k.shape[1]), q.shape[2], q.device)  # (m, d)
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
        return {"num_features": self.features_for(nq, nk), "redraw": self.redraw}

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, redraw={self.redraw}, {super().extra_repr()}"


def _summarise_keys(k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, Nk, d), v (B, Nk, dv) -> per feature m: log-mass log sum_j exp(lk_jm) (B, 1, m) and the
    values' convex combination KV_m with weights exp(lk_jm) (B, m, dv), both fp32 and overflow-free."""
    lk = favor_log_features(k, proj, scale)  # (B, Nk, m)
    key_max = lk.amax(dim=1, keepdim=True)  # (B, 1, m)
    key_weights = lk.sub_(key_max).exp_()  # (B, Nk, m) in place, max 1 per feature
    mass = key_weights.sum(dim=1, keepdim=True)  # (B, 1, m), >= 1
    kv = torch.einsum("bnm,bne->bme", key_weights, v.float()) / rearrange(mass, "b 1 m -> b m 1")  # (B, m, dv)
    return mass.log_() + key_max, kv


def _mix_values(queries: torch.Tensor, scaled_proj: torch.Tensor, log_mass: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """queries (B, C, d) fp32 -> (B, C, dv): sum_m softmax_m(lq_m + log_mass_m) kv_m.

    lq's per-query terms (-|q'|^2/2 - log(m)/2) are dropped: they cancel in the softmax over m.
    """
    logits = torch.baddbmm(log_mass, queries, scaled_proj)  # (B, C, m) = lq + log_mass + per-query constant
    return torch.softmax(logits, dim=-1) @ kv
