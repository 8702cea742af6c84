"""The first-order pieces the mean-field variants share: drawn pilot and probe queries, the values' slope along the
keys, and the two weights fitted on the probes' exact rows.

An estimate is written mean(v) + a (part0 - mean(v)) + b part1, with part1 the first-order term (q - centre) A^T,
A = the value-key covariance over all keys (dv x d per image). (a, b) in [0, 1] are the per-image least squares on a
few drawn probe queries whose exact rows are known: a shrinks the zero-order part towards mean(v) where it misleads,
b keeps the slope where it helps. Pilots (the queries groups form around) and probes are drawn disjoint, on the host,
once per shape: a pilot's group is built around it, so as a probe it would flatter the estimate.
"""

from __future__ import annotations

import random

import torch

MAX_FIT_PROBES = 32  # probe queries per image fitting the two weights
FIT_PROBE_SHARE = 8  # the probes' exact rows hold at most 1/8 of the budget


class PilotProbeRows:
    """``rows(n, pilots, probes, device)``: disjoint sorted pilot and probe query rows, drawn from ``seed`` on the host
    (no tensor op, nothing for a compiled graph to break on) and copied to the device once per shape."""

    def __init__(self, seed: int):
        self.seed = seed
        self._rows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, n: int, pilots: int, probes: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n, pilots, probes, str(device))
        if key not in self._rows:  # once per shape: a copy from a Python list would stall the stream every call
            drawn = random.Random(f"{self.seed}:{n}").sample(range(n), min(n, pilots + probes))
            pilot_rows, probe_rows = sorted(drawn[:pilots]), sorted(drawn[pilots:] or drawn[:probes])
            self._rows[key] = (torch.tensor(pilot_rows, device=device), torch.tensor(probe_rows, device=device))
        return self._rows[key]


def fit_probe_count(budget: float, nq: int, explicit: int | None = None) -> int:
    """Probe queries fitting the two weights: ``explicit``, or as many as 1/FIT_PROBE_SHARE of the budget's entries
    allows (each holds Nk scores), between 1 and MAX_FIT_PROBES; at most Nq."""
    return min(nq, explicit or max(1, min(MAX_FIT_PROBES, int(budget * nq / FIT_PROBE_SHARE))))


def value_slope(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """k (B,Nk,d), v (B,Nk,dv) -> A (B,dv,d) = mean over keys of v (k - mean k)^T: the value-key covariance."""
    return v.mT @ (k - k.mean(1, keepdim=True)) / k.shape[1]


def fit_two(x0: torch.Tensor, x1: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image the least-squares (a, b) of y ~ a x0 + b x1 over (p, dv), each clamped to [0, 1] (a small ridge
    keeps a missing part, e.g. no slope, at weight 0)."""
    g00, g01, g11 = (x0 * x0).sum((1, 2)), (x0 * x1).sum((1, 2)), (x1 * x1).sum((1, 2))
    h0, h1 = (x0 * y).sum((1, 2)), (x1 * y).sum((1, 2))
    ridge = 1e-6 * (g00 + g11) + 1e-30
    g00, g11 = g00 + ridge, g11 + ridge
    det = g00 * g11 - g01 * g01
    return ((g11 * h0 - g01 * h1) / det).clamp(0, 1), ((g00 * h1 - g01 * h0) / det).clamp(0, 1)
