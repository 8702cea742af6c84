"""Centred FAVOR+ features and a noise estimate from independent feature groups (the project's variants).

Centring: with q_ = q - mean(q) and k_ = k - mean(k) per batch element, the exact identity
q.k = q_.k_ + q.mean(k) + mean(q).k_ splits every logit into a random-feature part on the centred
vectors, a per-query term (it cancels in each query's normalisation) and a per-key term that goes
into the keys' weights exactly. FAVOR+ on q_, k_ stays an unbiased estimate of exp(scale q.k) up
to that exact per-query factor, with the variance of the smaller centred norms.

Noise: the m features are dealt into G groups (feature f to group f mod G; G = 8, more past 256 features) and
kept group by group (``group_slots``), so a group is a contiguous block of slots. Each group alone gives
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

import math
from dataclasses import dataclass

import torch

from .probe_calibration import grid
from .random_features import favor_log_features

FEATURE_GROUPS = 8  # independent-ish estimates per query for the noise estimate (at least)
MAX_GROUP_SIZE = 32  # more groups beyond 8 * 32 features: the within-group Gram costs c * m * s
NOISE_PROBES = 64  # most probe queries whose exact rows calibrate the noise factor
# Noise factors tried on the probes: 0 keeps the estimate as it is, inf gives the base.
NOISE_FACTORS = (0.0, *(2.0**i for i in range(13)), float("inf"))


@dataclass
class KeySummary:
    """Keys summarised per feature slot, in the grouped layout of ``group_slots`` (G groups of s slots, each
    group's features contiguous; empty slots have log_mass -inf, kv 0 and a zero projection column).

    log_mass (B,1,G*s) = log sum_j exp(lk_jf); kv (B,G*s,dv) = sum_j softmax_j(lk_jf) v_j; gram (B,G,s,s) =
    kv kv^T within each group; proj (d,G*s) the projection times sqrt(scale); q_mean (B,1,d) the queries' mean
    the features were centred on; blocks (B,G*s,G*s) the groups' Grams as one block-diagonal matrix, or None where
    G*s > dv (the weights' product with it would cost more than the estimate).
    """

    log_mass: torch.Tensor
    kv: torch.Tensor
    gram: torch.Tensor
    proj: torch.Tensor
    q_mean: torch.Tensor
    blocks: torch.Tensor | None = None

    @property
    def n_groups(self) -> int:
        """G, the number of feature groups."""
        return self.gram.shape[1]


def group_slots(num_features: int, device) -> torch.Tensor:
    """(G, s) feature index in each slot of each group: group g holds features g, g + G, g + 2G, ...,
    G = max(min(FEATURE_GROUPS, m), ceil(m / MAX_GROUP_SIZE)), s = ceil(m / G); empty slots hold m (a padding
    entry appended by ``_by_group``)."""
    n_groups = max(min(FEATURE_GROUPS, num_features), -(-num_features // MAX_GROUP_SIZE))
    slots = torch.arange(n_groups, device=device).view(-1, 1) + n_groups * torch.arange(
        -(-num_features // n_groups), device=device
    )
    return slots.clamp_max_(num_features).masked_fill_(slots >= num_features, num_features)


def _by_group(x: torch.Tensor, slots: torch.Tensor, dim: int, fill: float = 0.0) -> torch.Tensor:
    """x with its feature axis ``dim`` (size m) reordered to the G * s slots, flat; empty slots hold ``fill``."""
    pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, 1]
    return torch.nn.functional.pad(x, pad, value=fill).index_select(dim, slots.reshape(-1))


def summarise_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, scale: float) -> KeySummary:
    """q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) fp32, proj (m,d) -> the keys' per-feature sums (centred features)."""
    q_mean, k_mean = q.mean(1, keepdim=True), k.mean(1, keepdim=True)  # (B, 1, d)
    lk = favor_log_features(k - k_mean, proj, scale) + scale * ((k - k_mean) @ q_mean.transpose(1, 2))  # (B, Nk, m)
    key_max = lk.amax(dim=1, keepdim=True)  # (B, 1, m)
    weights = lk.sub_(key_max).exp_()  # (B, Nk, m) <= 1, in place
    mass = weights.sum(1, keepdim=True)  # (B, 1, m), >= 1
    kv = (weights.transpose(1, 2) @ v).div_(mass.transpose(1, 2))  # (B, m, dv): convex combinations of the values
    slots = group_slots(proj.shape[0], k.device)  # (G, s)
    kv = _by_group(kv, slots, dim=1)  # (B, G*s, dv)
    grouped = kv.unflatten(1, tuple(slots.shape))  # (B, G, s, dv)
    same_group = group_members(*slots.shape, v.device)  # (G*s, G)
    return KeySummary(
        log_mass=_by_group(mass.log_().add_(key_max), slots, dim=2, fill=-math.inf),  # (B, 1, G*s)
        kv=kv,
        gram=grouped @ grouped.transpose(-1, -2),  # (B, G, s, s)
        proj=_by_group(proj.t() * math.sqrt(scale), slots, dim=1),  # (d, G*s)
        q_mean=q_mean,
        blocks=torch.bmm(kv, kv.mT).mul_(same_group @ same_group.t()) if kv.shape[1] <= kv.shape[2] else None,
    )


def group_members(n_groups: int, size: int, device) -> torch.Tensor:
    """(G*s, G) fp32: 1 where slot f is in group g (f // s == g), made once per shape and device."""
    key = (n_groups, size, str(device))
    if key not in _MEMBERS:  # the (G*s) x G table is built once, not on every call
        _MEMBERS[key] = grid(tuple(tuple(float(f // size == g) for g in range(n_groups))
                                   for f in range(n_groups * size)), torch.float32, device)
    return _MEMBERS[key]


_MEMBERS: dict[tuple, torch.Tensor] = {}


def query_weights(q: torch.Tensor, keys: KeySummary) -> torch.Tensor:
    """q (B,c,d) fp32 -> (B,c,G*s) each feature slot's share of the query's denominator (sums to 1; 0 in empty
    slots). The per-query terms of the log-features cancel in the normalisation and are left out."""
    x = q - keys.q_mean  # (B, c, d)
    return torch.softmax(torch.baddbmm(keys.log_mass, x, keys.proj.expand(q.shape[0], -1, -1)), dim=-1)


def estimate_with_noise(
    w: torch.Tensor, keys: KeySummary, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """w (B,c,G*s) from ``query_weights`` -> (P (B,c,dv) the FAVOR+ output, written to ``out`` if given, var (B,c)
    the estimated variance |P - E P|^2 from the feature groups; inf where it cannot be estimated)."""
    estimate = torch.bmm(w, keys.kv, out=out)  # (B, c, dv)
    if keys.n_groups < 2:
        return estimate, torch.full_like(estimate[..., 0], float("inf"))
    # group sums as (G, G*s) x (G*s, c) products: the long axis last, where the product runs fast
    members = group_members(*keys.gram.shape[1:3], w.device).t().expand(w.shape[0], -1, -1)  # (B, G, G*s)
    share = torch.bmm(members, w.mT)  # (B, G, c): w_g, the group's share of the denominator
    if keys.blocks is not None:  # (B, G, c): |w_g P_g|^2 = w_g^T Gram_g w_g, every group in one product
        quad = torch.bmm(members, torch.bmm(w, keys.blocks).mul_(w).mT)
    else:
        grouped = w.unflatten(-1, keys.gram.shape[1:3]).transpose(1, 2).contiguous()  # (B, G, c, s)
        quad = (grouped @ keys.gram).mul_(grouped).sum(-1)
    # sum_g w_g |P_g|^2 - |P|^2 with P_g = (w_g P_g) / w_g.
    spread = quad.div_(share.clamp_min(1e-30)).sum(1).sub_(torch.linalg.vector_norm(estimate, dim=-1).square_())
    w_sq = share.square_().sum(1)  # (B, c) in [1/G, 1]
    var = torch.where(w_sq < 1 - 1e-6, spread.clamp_min_(0.0).mul_(w_sq).div_((1 - w_sq).clamp_min(1e-6)), math.inf)
    return estimate, var


def shrink_towards(
    estimate: torch.Tensor, var: torch.Tensor, base: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Positive-part James-Stein: base + lam (estimate - base), lam = max(0, 1 - var / |estimate - base|^2).

    estimate (B,c,dv), var (B,c), base broadcastable to estimate; written to ``out`` if given (``out=estimate``
    shrinks in place). lam is the MSE-optimal weight when |estimate - base|^2 - var estimates the squared
    distance of the truth from the base."""
    gap = torch.sub(estimate, base, out=out)
    lam = shrink_weight(var, torch.linalg.vector_norm(gap, dim=-1).square_())  # (B, c)
    return torch.addcmul(base, lam.unsqueeze(-1), gap, out=out)


def shrink_weight(var: torch.Tensor, gap_sq: torch.Tensor) -> torch.Tensor:
    """lam = max(0, 1 - var / |estimate - base|^2) in [0, 1], inf var -> 0; var, gap_sq broadcastable."""
    return (1 - var / gap_sq.clamp_min(1e-30)).clamp_(0.0, 1.0)


def fit_noise_factor(
    estimate: torch.Tensor, var: torch.Tensor, base: torch.Tensor, truth: torch.Tensor
) -> torch.Tensor:
    """(B,1) factor from NOISE_FACTORS whose shrinkage ``shrink_towards(estimate, kappa var, base)`` is closest
    to ``truth`` on the probes: estimate, truth (B,p,dv), var (B,p), base broadcastable.

    With gap = estimate - base, |base + lam gap - truth|^2 = |gap|^2 (lam - best)^2 + a part no factor changes,
    best = gap.(truth - base) / |gap|^2: the factors are compared on the first term, all at once."""
    factors = grid(NOISE_FACTORS, torch.float32, var.device)  # (K,)
    gap = estimate - base  # (B, p, dv)
    gap_sq = gap.square().sum(-1)  # (B, p)
    best = (gap * (truth - base)).sum(-1) / gap_sq.clamp_min(1e-30)  # (B, p)
    lam = shrink_weight(scaled_noise(var, factors.view(-1, 1, 1)), gap_sq)  # (K, B, p)
    errors = (gap_sq * (lam - best).square()).sum(-1)  # (K, B)
    return factors[errors.argmin(0)].unsqueeze(-1)


def scaled_noise(var: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """kappa * var with 0 * anything = 0 (keep the estimate) and inf * anything = inf (take the base)."""
    kappa = torch.as_tensor(kappa, device=var.device, dtype=var.dtype)
    out = torch.where(kappa == 0, torch.zeros_like(var), var * kappa)
    return torch.where(kappa.isinf(), torch.full_like(var, float("inf")), out)
