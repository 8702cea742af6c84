"""Top-key rounds mixed with uniformly sampled keys (smyrf-topkeys' ``mix``), chosen per batch element on probes.

Top keys per cluster are the right sparse support where attention is peaked, but where it spreads over many
keys whose values differ (clusters of keys that carry their cluster's value, at low temperature) the normalised
top-key output leans towards the queries' own keys. The mixed candidate keeps the hash's query clusters and the
top keys of the first half of the rounds, and gives the other half's clusters uniformly drawn keys instead:
each round is a fresh random permutation of the keys cut into the clusters' W slots (no key twice in a
cluster, every key in at most one cluster per round). Those pairs, weighted by (Nk - m_i) / n_i
(``clustered_attention(sampled_from=h)``), estimate the part of each query's row the top keys left out.
The same number of scores as the top-key support, so the same memory.

Probe queries (their exact rows) decide per batch element: the mix replaces the top keys only when it lowers
the probes' error by more than EVIDENCE standard errors (``probe_calibration.clearly_better``).
"""

from __future__ import annotations

import torch

from ..base import SeededDraws
from .probe_calibration import grid, stacked_errors, with_ones
from .probes import probe_supports, probe_truth
from .round_layout import RoundLayout


class KeyPermutations:
    """``perms(n_rounds, nk, device)``: (n_rounds, Nk) random permutations of the key ids, drawn once per shape
    from ``seed`` (apart from the hash's draws of the same seed)."""

    def __init__(self, seed: int):
        self._draws = SeededDraws(seed + 1)

    def __call__(self, n_rounds: int, nk: int, device) -> torch.Tensor:
        return self._draws(
            ("permutations", n_rounds, nk), device, lambda g: torch.rand(n_rounds, nk, generator=g).argsort(-1)
        )


def sampled_half(n_rounds: int) -> int:
    """h, the number of top-key rounds the mixed candidate keeps (rounds h.. are sampled); 0 when R < 2."""
    return n_rounds // 2 if n_rounds >= 2 else 0


def mixed_layout(layout: RoundLayout, keep: int, permutations: torch.Tensor) -> RoundLayout:
    """``layout`` (B,R,C,W) with rounds ``keep``.. given sampled keys: permutations (R - keep, Nk) of the key ids,
    round r's cluster c taking entries c*W .. c*W + W - 1 of its permutation (-1 beyond Nk)."""
    b, n_rounds, n_clusters, width = layout.k_rows.shape
    nk = permutations.shape[1]
    slots = torch.arange(n_clusters * width, device=permutations.device)  # (C*W,)
    keys = torch.where(slots < nk, permutations[:, slots.clamp_max(nk - 1)], -1)  # (R-keep, C*W)
    keys = keys.view(1, n_rounds - keep, n_clusters, width)
    offsets = (torch.arange(b, device=keys.device) * nk).view(-1, 1, 1, 1)  # flat row ids of each batch element
    sampled = torch.where(keys >= 0, keys + offsets, -1)  # (B, R-keep, C, W)
    k_rows = torch.cat([layout.k_rows[:, :keep], sampled], dim=1)
    return RoundLayout(layout.q_rows, layout.q_cluster, k_rows)


def rounds(layout: RoundLayout, chosen: slice) -> RoundLayout:
    """The layout of rounds ``chosen`` alone."""
    return RoundLayout(layout.q_rows[:, chosen], layout.q_cluster[:, chosen], layout.k_rows[:, chosen])


def mix_probe_errors(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    top: RoundLayout,
    mixed: RoundLayout,
    keep: int,
    chunks: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """((B, p) probe errors of the top-key layout alone, (B, p) of the mixed one, (B, p, dv) the probes' exact rows).

    q (B,Nq,d) scaled, k, v fp32; chunks: probe query indices, a (B, c, Nk) table set at a time. Both candidates'
    sums per chunk, their errors in one ``stacked_errors`` (the top keys at lam = 0, the mix's drawn keys at 1)."""
    nk = k.shape[1]
    v1 = with_ones(v)  # (B, Nk, dv + 1)
    inside, outside, truths = [], [], []
    for chunk in chunks:
        _, weights, truth = probe_truth(q[:, chunk], k, v, 1.0)  # (B,c,Nk) exp(s - shift), (B,c,dv)
        base, kept = probe_supports(top, chunk, nk, ((0, None, None), (0, keep, None))).unbind(2)  # (B, c, Nk)
        drawn = probe_supports(mixed, chunk, nk, ((keep, None, None),))[:, :, 0] & ~kept
        scale = (nk - kept.sum(-1, keepdim=True)) / drawn.sum(-1, keepdim=True).clamp_min(1)  # (B, c, 1): rest per key
        inside.append(torch.stack([torch.bmm(weights * base, v1), torch.bmm(weights * kept, v1)], 1))  # (B,2,c,dv+1)
        outside.append(torch.bmm(weights * drawn, v1).mul_(scale))  # (B, c, dv + 1): the mix's drawn keys
        truths.append(truth)
        del weights, base, kept, drawn
    truth = torch.cat(truths, 1)
    drawn = torch.cat(outside, 1)
    # (B, 2, p, dv + 1): the top keys have no residual (lam = 0 below), so any sums stand in for theirs
    errors = stacked_errors(torch.cat(inside, 2), torch.stack([drawn, drawn], 1), truth,
                            grid(((0.0,), (1.0,)), torch.float64, v.device))[:, :, 0]  # (B, 2, p)
    return errors[:, 0], errors[:, 1], truth
