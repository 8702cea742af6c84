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


def residual_errors(weights, support, residual, v, truth, lams) -> torch.Tensor:
    """(B, L, p) squared error of each probe with the support + lam * residual estimate, for each lam in ``lams``.

    weights (B,p,Nk) exact exp(s - shift); support (B,p,Nk) bool; residual (B,p,Nk) the estimate of
    exp(s - shift) (used outside the support only); v (B,Nk,dv); truth (B,p,dv); fp32. With c = 1 / (den_s +
    lam den_r), |c (num_s + lam num_r) - t|^2 expands into six (B, p) dot products (float64), so no
    (L, B, p, dv) table of outputs is formed."""
    inside = weights * support
    outside = residual.masked_fill(support, 0.0)
    num_s, den_s = (inside @ v).double(), inside.sum(-1).double()  # (B, p, dv), (B, p)
    num_r, den_r = (outside @ v).double(), outside.sum(-1).double()
    del inside, outside
    t = truth.double()
    ss, rr, sr = (num_s * num_s).sum(-1), (num_r * num_r).sum(-1), (num_s * num_r).sum(-1)  # (B, p)
    st, rt, tt = (num_s * t).sum(-1), (num_r * t).sum(-1), (t * t).sum(-1)
    lam = grid(tuple(lams), torch.float64, v.device).view(-1, 1, 1)  # (L, 1, 1)
    c = 1.0 / (den_s + lam * den_r).clamp_min(1e-30)  # (L, B, p)
    errors = c.square() * (ss + 2 * lam * sr + lam.square() * rr) - 2 * c * (st + lam * rt) + tt
    return errors.clamp_min_(0.0).transpose(0, 1)  # (B, L, p)


def best_weight(errors: torch.Tensor, lams) -> tuple[torch.Tensor, torch.Tensor]:
    """errors (B, L, p) -> (lam (B,) with the lowest total over all probes, cross-fitted per-probe errors (B, p)).

    The cross-fitted error of a probe is its error at the lam chosen on the other half of the probes
    (even / odd positions), so comparing candidates does not reward a lam for fitting its own probes.
    Ties go to the first lam (grids start at 0: the support alone)."""
    lam_grid = grid(tuple(lams), errors.dtype, errors.device)
    best = errors.sum(-1).argmin(-1)  # (B,)
    halves = torch.arange(errors.shape[-1], device=errors.device) % 2  # (p,) which half each probe is in
    held_out = torch.empty_like(errors[:, 0])  # (B, p)
    for half in (0, 1):
        fit = errors[..., 1 - half :: 2].sum(-1).argmin(-1)  # (B,) chosen on the other half (a strided view)
        at_fit = errors.gather(1, fit.view(-1, 1, 1).expand(-1, 1, errors.shape[-1])).squeeze(1)  # (B, p)
        held_out = torch.where(halves == half, at_fit, held_out)
    return lam_grid[best], held_out


def clearly_better(baseline: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """(B,) mean per-probe improvement of ``candidate`` over ``baseline`` (both (B, p) errors), or -inf where
    it is not larger than EVIDENCE standard errors: a candidate replaces the support alone only when the
    probes show it helps well beyond their sampling noise."""
    gain = baseline - candidate  # (B, p)
    mean = gain.mean(-1)
    standard_error = gain.std(-1) / gain.shape[-1] ** 0.5
    return torch.where(mean > EVIDENCE * standard_error, mean, float("-inf"))


def gaussian_log_mean_kernel(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(B,Nq) log of mean_j exp(scale q_i.k_j) if the keys were Gaussian: scale q.mu + scale^2 q^T Sigma q / 2.

    q (B,Nq,d), k (B,Nk,d) fp32; mu, Sigma the keys' mean and covariance per batch element (d x d)."""
    mu = k.mean(1, keepdim=True)  # (B, 1, d)
    centred = k - mu
    sigma = centred.transpose(1, 2) @ centred / k.shape[1]  # (B, d, d)
    qs = q * scale
    return (qs @ mu.transpose(1, 2)).squeeze(-1) + 0.5 * ((qs @ sigma) * qs).sum(-1)
