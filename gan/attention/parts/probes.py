"""Probe queries: a few queries drawn from the seed whose exact rows calibrate or choose an estimator.

A probe's exact row costs Nk scores; ``probe_plan`` sizes the probe set and its chunks so that the
probes' tables stay within half the budget, and the probes' outputs are their exact rows.
"""
from __future__ import annotations

import torch

from ..base import SeededDraws

# Probes a calibration takes even where half the budget's scores would give fewer (small Nq, small budgets): the
# EVIDENCE test of ``probe_calibration.clearly_better`` needs that many to see a real gain. Their rows are scored
# in chunks, so the memory stays within the budget (docs/attention.md, "Why these constants").
MIN_PROBES = 64
# Most probes a calibration takes: more catch a rare loss on a few queries more often, at Nk exact scores each.
MAX_PROBES = 128


def probe_queries(nq: int, n_probe: int, seed: int) -> torch.Tensor:
    """(n_probe,) distinct query indices drawn from ``seed`` (CPU generator), sorted."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(nq, generator=generator)[:n_probe].sort().values


class ProbeQueries:
    """``probes(nq, n_probe, device)``: ``probe_queries(nq, n_probe, seed)`` drawn once per shape and device, so a
    forward creates no generator (nothing opaque for torch.compile) and copies nothing to the device."""

    def __init__(self, seed: int):
        self._draws = SeededDraws(seed)

    def __call__(self, nq: int, n_probe: int, device) -> torch.Tensor:
        return self._draws(
            ("probes", nq, n_probe), device, lambda g: torch.randperm(nq, generator=g)[:n_probe].sort().values
        )


def probe_plan(fraction: float, nq: int, copies: int, max_probes: int = MAX_PROBES) -> tuple[int, int]:
    """(probe queries, probes per chunk) at budget ``fraction``: a chunk's ``copies`` (c, Nk) tables hold at most
    half the budget's entries at once. The count: the queries whose exact scores fit in half the budget's entries,
    but at least MIN_PROBES (the EVIDENCE test needs that many), at most ``max_probes`` and an eighth of the queries;
    0 (no calibration) at budget 1 or when fewer than 8 probes or no chunk would fit."""
    chunk = min(max_probes, int(fraction * nq / (2 * copies)))
    count = min(max_probes, nq // 8, max(MIN_PROBES, int(fraction * nq / 2)))
    return (count if fraction < 1.0 and count >= 8 and chunk >= 1 else 0), chunk


def probe_truth(q_probe: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """q_probe (B,p,d), k (B,Nk,d), v (B,Nk,dv) fp32 -> (shift (B,p,1), exact weights exp(s - shift) (B,p,Nk),
    exact output (B,p,dv)): the probes' rows, held once (p * Nk scores)."""
    scores = torch.bmm(q_probe, k.transpose(1, 2)).mul_(scale)
    shift = scores.amax(-1, keepdim=True)
    weights = scores.sub_(shift).exp_()
    return shift, weights, torch.bmm(weights, v) / weights.sum(-1, keepdim=True)


def exact_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B,p,d), k (B,Nk,d), v (B,Nk,dv) fp32 -> (B,p,dv) softmax(scale q k^T) v: p * Nk scores held."""
    return torch.softmax((q @ k.transpose(1, 2)).mul_(scale), dim=-1) @ v


def probe_supports(layout, probes: torch.Tensor, nk: int, parts: tuple) -> torch.Tensor:
    """(B,p,S,Nk) bool: for each (first round, end round, keys) of ``parts`` (None: to the end), the keys that
    rounds first..end-1 of the layout give each probe query (probes (p,) query indices), every cluster's first
    ``keys`` keys only; every part in one scatter."""
    b, p, width = layout.k_rows.shape[0], len(probes), layout.k_rows.shape[-1]
    cluster = layout.q_cluster[:, :, probes]  # (B, R, p)
    keys = layout.k_rows.gather(2, cluster.unsqueeze(-1).expand(-1, -1, -1, width)).transpose(1, 2)  # (B, p, R, W)
    keys = torch.where(keys < 0, nk, keys % nk)  # flat rows -> key ids; padding -> nk (a column dropped below)
    flat = [keys[:, :, first:end, :w].reshape(b, p, -1) for first, end, w in parts]  # (B, p, entries)
    flat = [x + i * (nk + 1) if i else x for i, x in enumerate(flat)]  # part i's keys in its own nk + 1 columns
    mask = torch.zeros(b, p, len(parts) * (nk + 1), dtype=torch.bool, device=keys.device)
    mask.scatter_(-1, torch.cat(flat, -1) if len(flat) > 1 else flat[0], True)
    return mask.view(b, p, len(parts), nk + 1)[..., :nk]
