"""Centred FAVOR+ features and a noise estimate from independent feature groups (the project's variants).

Centring: with q_ = q - mean(q) and k_ = k - mean(k) per batch element, the exact identity
q.k = q_.k_ + q.mean(k) + mean(q).k_ splits every logit into a random-feature part on the centred
vectors, a per-query term (it cancels in each query's normalisation) and a per-key term that goes
into the keys' weights exactly. FAVOR+ on q_, k_ stays an unbiased estimate of exp(scale q.k) up
to that exact per-query factor, with the variance of the smaller centred norms.

Noise: the m features are dealt into G groups (feature f to group f mod G; G = 8, more past 256 features); each group
alone gives
an estimate P_g of a query's output and the full estimate is P = sum_g w_g P_g with w_g the group's
share of the denominator. Var(P) ~ sum_g w_g^2 * s^2, s^2 = sum_g w_g |P_g - P|^2 / (1 - sum_g w_g^2)
the weighted spread: when one group carries all the mass (FAVOR+'s heavy tail at large logits),
1 - sum w^2 -> 0 and the variance estimate grows without bound, as it should. Everything is
formed from per-feature sums (the key summaries' Gram within each group), never per group and query.

Calibration: the group spread sees the features' noise but not FAVOR+'s common bias at heavy tails
(every group over-sharpens towards the same keys), so it underestimates the error there. A few probe
queries, drawn from the seed, get their exact rows; the factor kappa >= 0 by which the spread is
multiplied is chosen on them from a fixed grid (``fit_noise_factor``): validation on held-out
exact rows, per batch element, not a constant tuned to one distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .random_features import favor_log_features

FEATURE_GROUPS = 8  # independent-ish estimates per query for the noise estimate (at least)
MAX_GROUP_SIZE = 32  # more groups beyond 8 * 32 features: the within-group Gram costs c * m * s
PROBE_QUERIES = 64  # queries whose exact rows calibrate the noise estimate
# Noise factors tried on the probes: 0 keeps the estimate as it is, inf gives the base.
NOISE_FACTORS = (0.0, *(2.0**i for i in range(13)), float("inf"))


@dataclass
class KeySummary:
    """Keys summarised per feature f: weights b_jf = exp(lk_jf - key_max_f) <= 1 of the centred features.

    key_max (B,1,m); mass (B,m) = sum_j b_jf; kv (B,m,dv) = sum_j b_jf v_j; gram (B,G,s,s) = kv kv^T within each
    feature group (``group_slots``: G groups of s slots); q_mean (B,1,d) the queries' mean the features were centred on.
    """

    key_max: torch.Tensor
    mass: torch.Tensor
    kv: torch.Tensor
    gram: torch.Tensor
    q_mean: torch.Tensor


def group_slots(num_features: int, device) -> torch.Tensor:
    """(G, s) feature index in each slot of each group: group g holds features g, g + G, g + 2G, ...,
    G = max(min(FEATURE_GROUPS, m), ceil(m / MAX_GROUP_SIZE)), s = ceil(m / G); empty slots hold m (a zero
    column appended by the callers)."""
    n_groups = max(min(FEATURE_GROUPS, num_features), -(-num_features // MAX_GROUP_SIZE))
    slots = torch.arange(n_groups, device=device).view(-1, 1) + n_groups * torch.arange(
        -(-num_features // n_groups), device=device
    )
    return slots.clamp_max_(num_features).masked_fill_(slots >= num_features, num_features)


def _by_group(x: torch.Tensor, slots: torch.Tensor, dim: int) -> torch.Tensor:
    """x with its feature axis ``dim`` (size m) regrouped to (G, s) slots; empty slots are 0."""
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, 1]
    return torch.nn.functional.pad(x, pad).index_select(dim, slots.reshape(-1)).unflatten(dim, tuple(slots.shape))


def summarise_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, scale: float) -> KeySummary:
    """q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) fp32, proj (m,d) -> the keys' per-feature sums (centred features)."""
    q_mean, k_mean = q.mean(1, keepdim=True), k.mean(1, keepdim=True)  # (B, 1, d)
    lk = favor_log_features(k - k_mean, proj, scale) + scale * ((k - k_mean) @ q_mean.transpose(1, 2))  # (B, Nk, m)
    key_max = lk.amax(dim=1, keepdim=True)  # (B, 1, m)
    weights = lk.sub_(key_max).exp_()  # (B, Nk, m) <= 1, in place
    kv = weights.transpose(1, 2) @ v  # (B, m, dv)
    grouped = _by_group(kv, group_slots(proj.shape[0], k.device), dim=1)  # (B, G, s, dv)
    gram = grouped @ grouped.transpose(-1, -2)  # (B, G, s, s)
    return KeySummary(key_max, weights.sum(1), kv, gram, q_mean)


def query_weights(q: torch.Tensor, keys: KeySummary, proj: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B,c,d) fp32 -> (B,c,m) non-negative weights u, max 1 per query: u_f * mass_f is feature f's share
    of the query's denominator (up to a per-query factor that cancels)."""
    lq = favor_log_features(q - keys.q_mean, proj, scale) + keys.key_max  # (B, c, m)
    return lq.sub_(lq.amax(-1, keepdim=True)).exp_()


def estimate_with_noise(u: torch.Tensor, keys: KeySummary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u (B,c,m) -> (P (B,c,dv) the FAVOR+ output, den (B,c) its denominator in u's units, var (B,c) the
    estimated variance |P - E P|^2 from the feature groups; inf where it cannot be estimated)."""
    slots = group_slots(u.shape[-1], u.device)
    n_groups = slots.shape[0]
    per_feature = u * keys.mass.unsqueeze(1)  # (B, c, m)
    den = per_feature.sum(-1)  # (B, c), > 0: the largest u is 1 and every mass is >= 1
    estimate = (u @ keys.kv) / den.unsqueeze(-1)  # (B, c, dv)
    if n_groups < 2:
        return estimate, den, torch.full_like(den, float("inf"))
    group_den = _by_group(per_feature, slots, dim=2).sum(-1)  # (B, c, G)
    u_grouped = _by_group(u, slots, dim=2)  # (B, c, G, s)
    group_quad = (torch.einsum("bcgi,bgij->bcgj", u_grouped, keys.gram) * u_grouped).sum(-1)  # (B, c, G): |num_g|^2
    # sum_g w_g |P_g|^2 - |P|^2 with w_g = den_g / den and P_g = num_g / den_g.
    spread = ((group_quad / group_den.clamp_min(1e-30)).sum(-1) / den - estimate.square().sum(-1)).clamp_min(0.0)
    w_sq = (group_den / den.unsqueeze(-1)).square().sum(-1)  # (B, c) in [1/G, 1]
    var = torch.where(w_sq < 1 - 1e-6, spread * w_sq / (1 - w_sq).clamp_min(1e-6), float("inf"))
    return estimate, den, var


def shrink_towards(estimate: torch.Tensor, var: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Positive-part James-Stein: base + lam (estimate - base), lam = max(0, 1 - var / |estimate - base|^2).

    estimate (B,c,dv), var (B,c), base broadcastable to estimate. lam is the MSE-optimal weight when
    |estimate - base|^2 - var estimates the squared distance of the truth from the base."""
    gap = estimate - base
    lam = (1 - var / gap.square().sum(-1).clamp_min(1e-30)).clamp_(0.0, 1.0)  # (B, c); inf var -> 0
    return base + lam.unsqueeze(-1) * gap


def probe_queries(nq: int, n_probe: int, seed: int) -> torch.Tensor:
    """(n_probe,) distinct query indices drawn from ``seed`` (CPU generator), sorted."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(nq, generator=generator)[:n_probe].sort().values


def exact_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B,p,d), k (B,Nk,d), v (B,Nk,dv) fp32 -> (B,p,dv) softmax(scale q k^T) v: p * Nk scores held."""
    return torch.softmax((q @ k.transpose(1, 2)).mul_(scale), dim=-1) @ v


def fit_noise_factor(
    estimate: torch.Tensor, var: torch.Tensor, base: torch.Tensor, truth: torch.Tensor
) -> torch.Tensor:
    """(B,1) factor from NOISE_FACTORS whose shrinkage ``shrink_towards(estimate, kappa var, base)`` is closest
    to ``truth`` on the probes: estimate, truth (B,p,dv), var (B,p), base broadcastable."""
    factors = torch.tensor(NOISE_FACTORS, device=var.device)
    errors = torch.stack(
        [(shrink_towards(estimate, scaled_noise(var, kappa), base) - truth).square().sum((1, 2)) for kappa in factors],
        dim=-1,
    )  # (B, K)
    return factors[errors.argmin(-1)].unsqueeze(-1)


def scaled_noise(var: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """kappa * var with 0 * anything = 0 (keep the estimate) and inf * anything = inf (take the base)."""
    kappa = torch.as_tensor(kappa, device=var.device, dtype=var.dtype)
    out = torch.where(kappa == 0, torch.zeros_like(var), var * kappa)
    return torch.where(kappa.isinf(), torch.full_like(var, float("inf")), out)
