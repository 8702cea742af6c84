"""Key centroids: a coarse residual for sparse + low-rank attention (one of scatterbrain-centred's candidates).

The keys of each batch element are grouped by a few Lloyd (k-means) steps into G groups. Outside a query's
support, key j of group g is estimated by its centroid's weight, exp(scale q_i . c_g): a rank-G kernel with
a_ig = exp(scale q_i . c_g - offset_i) and b_jg = [j in g], whose sums over all keys need the groups' value
sums and counts only. It takes G entries per query and per key, as G random features would, and it has no
sampling noise: it is deterministic and biased (exp is convex, so a group's keys weigh more than their
centroid on average), which the probes' residual weight lam absorbs. Where keys lie near a few directions
(low-rank projections, segmented feature maps) the groups are tight and the estimate close; where they
are isotropic it is no better than the mean-field residual, and the probes do not choose it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..base import SeededDraws
from .low_rank import LowRankTerms

LLOYD_STEPS = 8


class KeyGroups(NamedTuple):
    """centres (B,G,d) fp32 and groups (B,Nk) int64 in [0, G): each key's group."""

    centres: torch.Tensor
    groups: torch.Tensor


class GroupStarts:
    """The keys the Lloyd steps start from: min(count, Nk) distinct key indices drawn once per shape and device."""

    def __init__(self, seed: int):
        self._draws = SeededDraws(seed + 2)  # + 2: apart from the hash (seed) and the sampled keys (seed + 1)

    def __call__(self, nk: int, count: int, device) -> torch.Tensor:
        count = min(count, nk)
        return self._draws(("group-starts", nk, count), device, lambda g: torch.randperm(nk, generator=g)[:count])


def key_groups(k: torch.Tensor, start: torch.Tensor) -> KeyGroups:
    """k (B,Nk,d) fp32 -> len(start) groups by LLOYD_STEPS k-means steps from the keys ``start`` (G,) (distinct)."""
    b, nk, d = k.shape
    k1 = torch.cat([k, k.new_ones(b, nk, 1)], -1)  # (B, Nk, d + 1): one scatter sums a group's keys and counts them
    double_k = 2 * k  # the nearest-centre scores times 2, exactly (see ``_nearest``)
    no_sums = k.new_zeros(()).expand(b, len(start), d + 1)  # scatter_add's zeros (a view)
    centres = k[:, start]  # (B, G, d)
    for _ in range(LLOYD_STEPS):
        groups = _nearest(double_k, centres).expand(-1, -1, d + 1)  # (B, Nk, d + 1): each key's group
        key_sums, sizes = no_sums.scatter_add(1, groups, k1).split((d, 1), -1)  # (B, G, d), (B, G, 1)
        centres = torch.where(sizes > 0, key_sums / sizes, centres)  # an empty group keeps its centre
    return KeyGroups(centres, _nearest(double_k, centres).squeeze(-1))


def _nearest(double_k: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B,Nk,1) index of each key's nearest centre: argmax_g k . c_g - |c_g|^2 / 2, as 2 k . c_g - |c_g|^2 (exactly
    twice it in floating point) in one op beside the product; double_k (B,Nk,d) is 2 k."""
    centres_t = centres.transpose(1, 2)  # (B, d, G)
    return torch.baddbmm(centres_t.square().sum(1, keepdim=True), double_k, centres_t, beta=-1).argmax(-1, keepdim=True)


def centroid_probe_estimate(groups: KeyGroups, q_probe: torch.Tensor, scale: float, shift: torch.Tensor,
                            log_cap: float) -> torch.Tensor:
    """(B,p,Nk) estimate of exp(scale q.k_j - shift) by key j's centroid, for q_probe (B,p,d), shift (B,p,1);
    logs above ``log_cap`` are capped (fp32 range)."""
    per_group = (scale * torch.bmm(q_probe, groups.centres.transpose(1, 2)) - shift).clamp_max_(log_cap).exp_()
    return per_group.gather(2, groups.groups.unsqueeze(1).expand(-1, q_probe.shape[1], -1))


def centroid_terms(groups: KeyGroups, q: torch.Tensor, v: torch.Tensor, scale: float,
                   lam: torch.Tensor) -> LowRankTerms:
    """The residual lam * exp(scale q_i . c_g(j)) as LowRankTerms for q (B,Nq,d), v (B,Nk,dv) fp32, lam (B,)."""
    count = groups.centres.shape[1]
    logits = scale * torch.bmm(q, groups.centres.transpose(1, 2))  # (B, Nq, G)
    log_offset = logits.amax(-1)  # (B, Nq)
    a = (logits - log_offset.unsqueeze(-1)).exp_().mul_(lam.view(-1, 1, 1))  # (B, Nq, G)
    # (B, Nk, G) one-hot by scatter: one_hot would read the largest group id back to the host
    member = v.new_zeros(*groups.groups.shape, count).scatter_(-1, groups.groups.unsqueeze(-1), 1.0)
    num = torch.bmm(a, torch.bmm(member.transpose(1, 2), v))  # (B, Nq, dv): the groups' value sums
    den = torch.bmm(a, member.sum(1).unsqueeze(-1)).squeeze(-1)  # (B, Nq): the groups' sizes
    return LowRankTerms(log_offset, a, member, num, den)
