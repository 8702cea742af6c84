"""Choosing how much to trust a residual estimate from a few probe queries' exact rows.

Sparse + low-rank attention adds to the exact scores on a support S an estimate of the mass outside it:

    out_i = (sum_{j in S_i} e_ij v_j + lam R^v_i) / (sum_{j in S_i} e_ij + lam R_i),   e_ij = exp(s_ij),

with R the residual estimate's sums over the keys outside S_i. lam = 1 is the unbiased estimator
(for an unbiased residual), lam = 0 the support alone. Probe queries (drawn from the seed) get their
exact rows (p * Nk scores); on them every lam of a grid is scored against the truth and the best
one per batch element is kept. Candidates are compared on cross-fitted errors (lam fitted on one
half of the probes, scored on the other) and replace the support alone only when they beat it by more
than EVIDENCE standard errors: the residual is used as far as it clearly helps on these inputs, and one
that only adds noise is switched off.
"""
from __future__ import annotations

import torch

# Standard errors of probe gain a candidate needs: per-probe errors are heavy-tailed where a residual misses a
# peak, and several candidates are compared, so a gain within a few standard errors is not trusted
# (docs/attention.md, "Why these constants").
EVIDENCE = 3.0
FAVOR_WEIGHTS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)  # lam for an unbiased residual (1 = unbiased)
# lam for a residual whose scale is only a model (the Gaussian mean-field): a wide geometric grid.
MEAN_FIELD_WEIGHTS = (0.0, *(2.0 ** (i / 2) for i in range(-24, 5)))
_GRIDS: dict[tuple, torch.Tensor] = {}


def grid(values: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.tensor(values)`` made once per (values, dtype, device): a tensor built from Python data is a blocking
    host-to-device copy on a GPU, so a forward reuses it."""
    key = (values, dtype, str(device))
    if key not in _GRIDS:
        _GRIDS[key] = torch.tensor(values, dtype=dtype, device=device)
    return _GRIDS[key]


def with_ones(v: torch.Tensor) -> torch.Tensor:
    """(B,Nk,dv+1): v beside a column of ones, so one product of a (p, Nk) table gives its sums [num | den]."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1)


def stacked_errors(inside, outside, truth, lams) -> torch.Tensor:
    """(B, K, L, p) squared errors of K candidates at once, each probe's support + lam * residual for each lam of
    the candidate's row of ``lams`` (K, L) float64 (grids of other lengths padded after their values, by repeats).

    inside, outside (B,K,p,dv+1): [num | den] sums of the exact weights on the support and of the residual's
    estimate off it; truth (B,p,dv). With c = 1 / (den_s + lam den_r), |c (num_s + lam num_r) - t|^2 expands into
    six (B, K, p) dot products (float64), so no (L, p, dv) table of outputs is formed."""
    dv = truth.shape[-1]
    s, r, t = inside.double(), outside.double(), truth.double().unsqueeze(1)  # (B, K, p, dv + 1), (B, 1, p, dv)
    num_s, den_s, num_r, den_r = s[..., :dv], s[..., dv:], r[..., :dv], r[..., dv:]  # dens (B, K, p, 1)
    ss, rr, sr = ((x * y).sum(-1, keepdim=True) for x, y in ((num_s, num_s), (num_r, num_r), (num_s, num_r)))
    st, rt, tt = ((x * y).sum(-1, keepdim=True) for x, y in ((num_s, t), (num_r, t), (t, t)))  # (B, K|1, p, 1)
    lam = lams.unsqueeze(1)  # (K, 1, L)
    c = 1.0 / (den_s + lam * den_r).clamp_min(1e-30)  # (B, K, p, L)
    errors = c.square() * (ss + 2 * lam * sr + lam.square() * rr) - 2 * c * (st + lam * rt) + tt
    return errors.clamp_min_(0.0).transpose(-1, -2)  # (B, K, L, p)


def lam_table(grids: tuple, device) -> torch.Tensor:
    """(K, L) float64: each grid of ``grids`` padded to the longest by repeats of its first value, placed after
    its own values, so an argmin's ties still go to the grid's first (original) entry."""
    width = max(len(g) for g in grids)
    return grid(tuple((*g, *(g[0],) * (width - len(g))) for g in grids), torch.float64, device)


def best_weight(errors: torch.Tensor, lams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """errors (B, K, L, p), lams (K, L) -> (lam (B, K) with the lowest total over all probes, cross-fitted
    per-probe errors (B, K, p)), for K candidates at once.

    The cross-fitted error of a probe is its error at the lam chosen on the other half of the probes
    (even / odd positions), so comparing candidates does not reward a lam for fitting its own probes.
    Ties go to the first lam (grids start at 0: the support alone)."""
    b, p = errors.shape[0], errors.shape[-1]
    best = errors.sum(-1).argmin(-1)  # (B, K)
    # (B, K, 2): for the even probes (half 0) the lam fitted on the odd ones, and the other way round
    fits = torch.stack([errors[..., 1::2].sum(-1), errors[..., 0::2].sum(-1)], -1).argmin(-2)
    halves = grid(tuple(i % 2 for i in range(p)), torch.int64, errors.device)  # (p,) which half each probe is in
    held_out = errors.gather(2, fits.index_select(-1, halves).unsqueeze(2)).squeeze(2)  # (B, K, p)
    return lams.expand(b, -1, -1).gather(2, best.unsqueeze(-1)).squeeze(-1), held_out


def clearly_better(baseline: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """(B, ...) mean per-probe improvement of ``candidate`` over ``baseline`` (per-probe errors (..., p), broadcast
    against each other), or -inf where it is not larger than EVIDENCE standard errors: a candidate replaces the
    support alone only when the probes show it helps well beyond their sampling noise."""
    gain = baseline - candidate  # (B, ..., p)
    mean = gain.mean(-1)
    standard_error = gain.std(-1) / gain.shape[-1] ** 0.5
    return torch.where(mean > EVIDENCE * standard_error, mean, float("-inf"))


def gaussian_log_mean_kernel(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(B,Nq) log of mean_j exp(scale q_i.k_j) if the keys were Gaussian: scale q.mu + scale^2 q^T Sigma q / 2.

    q (B,Nq,d), k (B,Nk,d) fp32; mu, Sigma the keys' mean and covariance per batch element (d x d)."""
    mu = k.mean(1, keepdim=True)  # (B, 1, d)
    centred = k - mu
    sigma = torch.bmm(centred.transpose(1, 2), centred) / k.shape[1]  # (B, d, d)
    qs = q * scale
    return torch.bmm(qs, mu.transpose(1, 2)).squeeze(-1) + 0.5 * (torch.bmm(qs, sigma) * qs).sum(-1)
