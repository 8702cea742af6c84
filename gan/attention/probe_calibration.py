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

# Standard errors of probe gain a candidate needs. Per-probe errors are heavy-tailed where a residual
# misses a peak, and up to three candidates are compared: at 1 standard error the probes chose a residual
# that lost on the full attention in 3 of 162 benchmark cases (gains of 1.05-2.2 standard errors). The
# diffuse and mixed residuals showed 4.7+; a few real clustered-mixed gains at 1-3 are given up.
EVIDENCE = 3.0
# Probes a calibration takes even where half the budget's scores would give fewer (small Nq, small budgets): with
# 16 probes at Nq=1024 and 1/32 a sampled mix that halves the error on most queries did not clear 3 standard
# errors, with 64 it did. Their rows are scored in chunks, so the memory stays within the budget; the compute is
# 64 exact rows (6% of exact attention at Nq=1024, 1.6% at 4096).
MIN_PROBES = 64
FAVOR_WEIGHTS = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)  # lam for an unbiased residual (1 = unbiased)
# lam for a residual whose scale is only a model (the Gaussian mean-field): a wide geometric grid.
MEAN_FIELD_WEIGHTS = (0.0, *(2.0 ** (i / 2) for i in range(-24, 5)))



def probe_plan(fraction: float, nq: int, max_probes: int, copies: int) -> tuple[int, int]:
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
    scores = (q_probe @ k.transpose(1, 2)).mul_(scale)
    shift = scores.amax(-1, keepdim=True)
    weights = scores.sub_(shift).exp_()
    return shift, weights, (weights @ v) / weights.sum(-1, keepdim=True)


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
    lam = torch.tensor(lams, dtype=torch.float64, device=v.device).view(-1, 1, 1)  # (L, 1, 1)
    c = 1.0 / (den_s + lam * den_r).clamp_min(1e-30)  # (L, B, p)
    errors = c.square() * (ss + 2 * lam * sr + lam.square() * rr) - 2 * c * (st + lam * rt) + tt
    return errors.clamp_min_(0.0).transpose(0, 1)  # (B, L, p)


def best_weight(errors: torch.Tensor, lams) -> tuple[torch.Tensor, torch.Tensor]:
    """errors (B, L, p) -> (lam (B,) with the lowest total over all probes, cross-fitted per-probe errors (B, p)).

    The cross-fitted error of a probe is its error at the lam chosen on the other half of the probes
    (even / odd positions), so comparing candidates does not reward a lam for fitting its own probes.
    Ties go to the first lam (grids start at 0: the support alone)."""
    lam_grid = torch.tensor(lams, dtype=errors.dtype, device=errors.device)
    best = errors.sum(-1).argmin(-1)  # (B,)
    halves = torch.arange(errors.shape[-1], device=errors.device) % 2  # (p,) which half each probe is in
    held_out = torch.empty_like(errors[:, 0])  # (B, p)
    for half in (0, 1):
        fit = errors[..., halves != half].sum(-1).argmin(-1)  # (B,) chosen on the other half
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


def probe_support(layout, probes: torch.Tensor, nk: int) -> torch.Tensor:
    """(B,p,Nk) bool: the keys a layout's rounds give each probe query (probes (p,) query indices)."""
    b, width = layout.k_rows.shape[0], layout.k_rows.shape[-1]
    cluster = layout.q_cluster[:, :, probes]  # (B, R, p)
    keys = layout.k_rows.gather(2, cluster.unsqueeze(-1).expand(-1, -1, -1, width))  # (B, R, p, W) flat rows
    keys = keys.permute(0, 2, 1, 3).reshape(b, len(probes), -1)  # (B, p, R*W)
    mask = torch.zeros(b, len(probes), nk + 1, dtype=torch.bool, device=keys.device)
    mask.scatter_(-1, torch.where(keys < 0, nk, keys % nk), True)
    return mask[..., :nk]


def gaussian_log_mean_kernel(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(B,Nq) log of mean_j exp(scale q_i.k_j) if the keys were Gaussian: scale q.mu + scale^2 q^T Sigma q / 2.

    q (B,Nq,d), k (B,Nk,d) fp32; mu, Sigma the keys' mean and covariance per batch element (d x d)."""
    mu = k.mean(1, keepdim=True)  # (B, 1, d)
    centred = k - mu
    sigma = centred.transpose(1, 2) @ centred / k.shape[1]  # (B, d, d)
    qs = q * scale
    return (qs @ mu.transpose(1, 2)).squeeze(-1) + 0.5 * ((qs @ sigma) * qs).sum(-1)
