"""Seeded q, k, v generators for the attention benchmark regimes (issue 3).

isotropic:  q, k ~ N(0, I_d).
clustered:  32 unit centres; every query and key is its cluster's centre plus Gaussian noise
            (cosine ~0.8 within a cluster, ~0 across), so queries attend mostly within their cluster.
Temperature: q and k are rescaled together so the logits q.k have the regime's standard
deviation (diffuse ~1, peaked ~6), measured on the first queries of the first batch element.
v ~ N(0, I_dv). Everything comes from one torch.Generator seeded with ``seed`` (drawn on CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# name -> (geometry, logit standard deviation)
REGIMES: dict[str, tuple[str, float]] = {
    "isotropic-diffuse": ("isotropic", 1.0),
    "isotropic-peaked": ("isotropic", 6.0),
    "clustered-diffuse": ("clustered", 1.0),
    "clustered-peaked": ("clustered", 6.0),
}
NUM_CLUSTERS = 32
CLUSTER_NOISE = 0.5  # noise norm relative to the unit centre
CALIBRATION_QUERIES = 512


def regime_qkv(
    regime: str, *, batch: int = 2, nq: int = 4096, nk: int = 1024, d: int = 32, dv: int = 128, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) fp32 on the CPU for ``regime`` (a key of REGIMES)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; accepted: {', '.join(REGIMES)}")
    geometry, logit_std = REGIMES[regime]
    generator = torch.Generator().manual_seed(seed)
    if geometry == "isotropic":
        q = torch.randn(batch, nq, d, generator=generator)
        k = torch.randn(batch, nk, d, generator=generator)
    else:
        centres = F.normalize(torch.randn(NUM_CLUSTERS, d, generator=generator), dim=-1)  # (C, d)
        q = _cluster_points(centres, batch, nq, generator)
        k = _cluster_points(centres, batch, nk, generator)
    v = torch.randn(batch, nk, dv, generator=generator)
    logits = q[0, :CALIBRATION_QUERIES] @ k[0].t()  # (<=512, Nk)
    gain = (logit_std / logits.std()).sqrt()
    return q * gain, k * gain, v


def _cluster_points(centres: torch.Tensor, batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(B, n, d): a random centre per point plus isotropic noise of norm ~CLUSTER_NOISE."""
    d = centres.shape[1]
    assignment = torch.randint(len(centres), (batch, n), generator=generator)
    noise = torch.randn(batch, n, d, generator=generator) * (CLUSTER_NOISE / d**0.5)
    return centres[assignment] + noise
