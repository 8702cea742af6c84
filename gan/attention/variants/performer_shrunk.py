"""performer-centred-shrunk: the project's Performer variant (varies ``performer``, Choromanski et al., 2021).

Two changes to FAVOR+, both aimed at BigGAN's unscaled logits, where a plain FAVOR+ estimate rests
on a handful of heavy-tailed features and lands further from the truth than the plain mean of the values:

1. Centred features (``centred_favor``): the random features see q and k centred on their batch
   element's means, the rest of every logit is exact. The kernel estimate stays unbiased (up to an
   exact per-query factor that cancels) and its variance drops wherever q and k share a mean.
2. Shrinkage to the mean of the values, per query: the features are dealt into groups whose
   disagreement estimates the output's variance; the output is mean(v) + lam (P - mean(v)) with
   the positive-part James-Stein weight lam = max(0, 1 - var / |P - mean(v)|^2). Where the features
   are accurate lam -> 1 (FAVOR+ unchanged); where they are noise lam -> 0 (the mean of the values).

The numerator and denominator are unbiased kernel sums (``shrink=False`` returns their ratio, FAVOR+
on centred features); the shrunk output trades a bias towards mean(v) for variance, query by query.
Memory: (Nq + Nk) * num_features feature entries, num_features = floor(budget Nq Nk / (Nq + Nk)) as
for ``performer``; queries go in QUERY_CHUNKS pieces so the query side never holds more than its share.
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import AttentionBackend, Parameter, check_bool, positive_int
from ..parts.centred_favor import (
    NOISE_PROBES,
    KeySummary,
    estimate_with_noise,
    fit_noise_factor,
    query_weights,
    scaled_noise,
    shrink_towards,
    summarise_keys,
)
from ..parts.probes import ProbeQueries, exact_rows
from ..parts.random_features import ProjectionCache

QUERY_CHUNKS = 4  # a chunk's three (B, Nq/4, m) temporaries stay within the query features' share


class PerformerCentredShrunkAttention(AttentionBackend):
    """FAVOR+ on centred q/k, shrunk per query towards mean(v) by its estimated noise (module doc)."""

    name = "performer-centred-shrunk"
    published = False
    paper = "Choromanski et al., ICLR 2021 (Performer), varied by this project"
    variant_of = "performer"

    num_features = Parameter(positive_int)
    shrink = Parameter(check_bool, default=True)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.projection = ProjectionCache(self.seed)  # (num_features, d, device) -> (m, d), drawn once
        self.probes = ProbeQueries(self.seed)  # the noise factor's probe queries, drawn once per shape

    def features_for(self, nq: int, nk: int) -> int:
        if self.num_features is not None:
            return self.num_features
        return max(1, int(self.effective_budget * nq * nk / (nq + nk)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 0:
            raise ValueError(f"{self.name} attention needs scale > 0 (softmax kernel features), got {scale}")
        qf, kf, vf = q.float(), k.float(), v.float()
        proj = self.projection(self.features_for(q.shape[1], k.shape[1]), q.shape[2], q.device)  # (m, d)
        keys = summarise_keys(qf, kf, vf, proj, scale)
        base = vf.mean(1, keepdim=True)  # (B, 1, dv): the mean of the values
        kappa, probes, probe_out = torch.ones(q.shape[0], 1, device=q.device), None, None
        n_probe = self.probe_count(q.shape[1], k.shape[1], proj.shape[0])
        if self.shrink and n_probe:
            probes = self.probes(q.shape[1], n_probe, q.device)  # (p,)
            probe_out = exact_rows(qf[:, probes], kf, vf, scale)  # (B, p, dv)
            estimate, var = estimate_with_noise(query_weights(qf[:, probes], keys), keys)
            kappa = fit_noise_factor(estimate, var, base, probe_out)  # (B, 1)
        chunk = -(-q.shape[1] // QUERY_CHUNKS)
        out = torch.cat([self.rows(part, keys, kappa, base) for part in qf.split(chunk, dim=1)], 1)  # (B, Nq, dv)
        if probes is not None:
            out.index_copy_(1, probes, probe_out)  # their exact rows are known
        return out.to(q.dtype)

    def rows(self, queries: torch.Tensor, keys: KeySummary, kappa: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """(B,c,dv) the queries' (B,c,d) estimates, shrunk by kappa (B,1) var."""
        w = query_weights(queries, keys)  # (B, c, G*s)
        if not self.shrink:
            return torch.bmm(w, keys.kv)
        estimate, var = estimate_with_noise(w, keys)  # (B, c, dv), (B, c)
        return shrink_towards(estimate, scaled_noise(var, kappa), base, out=estimate)

    def probe_count(self, nq: int, nk: int, num_features: int) -> int:
        """Probe queries whose exact rows (p * Nk scores) fit in the query features' share (Nq * m); 0 below 8."""
        n_probe = min(NOISE_PROBES, nq, nq * num_features // (2 * nk))
        return n_probe if n_probe >= 8 else 0

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return (nq + nk) * self.features_for(nq, nk)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return {"num_features": self.features_for(nq, nk), "shrink": self.shrink}
