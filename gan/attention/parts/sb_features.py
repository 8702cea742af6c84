"""Scatterbrain's own softmax-kernel feature map (Chen et al., NeurIPS 2021), as a small tensor API.

This is the map of HazyResearch/scatterbrain ``SBPerformerFeatures`` (feature_maps_sb.py, with
``gaussian_orthogonal_random_matrix`` of projection_utils.py), which the published Scatterbrain
variants (SBSmyrf, SBLocal) use. It differs from plain FAVOR+ in two ways:

- *cosh* (the default): each of the ``m // 2`` projection rows w gives two features, exp(+w.x) and
  exp(-w.x), so ``m`` features come from ``m // 2`` rows;
- features are returned *normalised*, with their log-scale separate. Queries are divided by their
  own largest feature (a per-query log-scale), keys by the largest feature over all keys and
  features of one sequence (one log-scale per sequence), so every feature lies in (0, 1] and

      exp(softmax_temp * q.k)  ~=  (phi_q(q) . phi_k(k)) * exp(log_scale_q + log_scale_k).

A projection is ``(m // 2, d)``: rows in blocks of d orthonormal directions (QR of a Gaussian block,
sign-fixed by diag(R) so it is Haar), each row scaled by a chi_d norm (``scaling=0``, the
reference default) or by sqrt(d) (``scaling=1``). ``sb_projection`` draws it from a generator in the
reference's order (the Gaussian blocks, then the norms), so a CPU generator seeded with s gives the
matrix the reference draws after ``torch.manual_seed(s)`` on the CPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange

from ..base import positive_int


def check_num_features(value: Any) -> int | None:
    """``num_features`` if it is None or an int >= 2 (cosh features come in +/- pairs), else ValueError."""
    value = positive_int("num_features", value)
    if value is not None and value < 2:
        raise ValueError(f"num_features must be >= 2 (cosh features come in +/- pairs), got {value!r}")
    return value


def check_ortho_scaling(value: Any) -> int:
    """``ortho_scaling`` (the projection's row norms) if it is 0 or 1, else ValueError saying what they mean."""
    if value not in (0, 1) or isinstance(value, bool):
        raise ValueError(f"ortho_scaling must be 0 (chi row norms) or 1 (rows of norm sqrt(d)), got {value!r}")
    return int(value)


def default_num_features(d: int) -> int:
    """The reference's default feature count when none is given: int(d * log(d))."""
    return int(d * math.log(d))


def sb_projection(
    num_features: int, d: int, generator: torch.Generator, scaling: int = 0, cosh: bool = True
) -> torch.Tensor:
    """(rows, d) fp32 projection on the generator's device: rows = num_features // 2 with cosh, else num_features."""
    rows = num_features // 2 if cosh else num_features
    if rows < 1:
        raise ValueError(f"num_features must be >= {2 if cosh else 1} (cosh={cosh}), got {num_features}")
    if d < 1:
        raise ValueError(f"feature size d must be a positive int, got {d}")
    if scaling not in (0, 1):
        raise ValueError(f"scaling must be 0 (chi-distributed row norms) or 1 (rows of norm sqrt(d)), got {scaling!r}")
    n_blocks = -(-rows // d)
    gaussian = torch.randn(n_blocks, d, d, generator=generator, device=generator.device)
    ortho, triangle = torch.linalg.qr(gaussian)  # (blocks, d, d)
    ortho = ortho * rearrange(torch.diagonal(triangle, dim1=-2, dim2=-1).sign(), "b c -> b 1 c")
    directions = rearrange(ortho, "b r c -> (b c) r")[:rows]  # (rows, d): the columns of each Q, unit norm
    if scaling == 1:
        return math.sqrt(d) * directions
    norms = torch.randn(rows, d, generator=generator, device=generator.device).norm(dim=1)  # (rows,) ~ chi_d
    return rearrange(norms, "r -> r 1") * directions


def sb_query_features(
    q: torch.Tensor, proj: torch.Tensor, softmax_temp: float, *, cosh: bool = True, eps: float = 0.0, log: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, N, d), proj (rows, d) -> features (B, N, m) fp32 and their log-scale (B, N, 1).

    Each query's features are divided by its largest one (so its largest feature is 1, plus
    ``eps / sqrt(m)``); ``log=True`` returns the log-features instead (needs eps == 0).
    """
    dash, half_sq_norm, m = _projected(q, proj, softmax_temp, cosh)
    top = dash.amax(dim=-1, keepdim=True)  # (B, N, 1)
    log_scale = top - half_sq_norm - 0.5 * math.log(m)
    return _finish(dash - top, eps, m, log), log_scale


def sb_key_features(
    k: torch.Tensor, proj: torch.Tensor, softmax_temp: float, *, cosh: bool = True, eps: float = 0.0, log: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, N, d), proj (rows, d) -> features (B, N, m) fp32 and one log-scale per sequence (B, 1, 1).

    The log-scale is the largest log-feature over all keys and features of the sequence.
    """
    dash, half_sq_norm, m = _projected(k, proj, softmax_temp, cosh)
    logits = dash - half_sq_norm - 0.5 * math.log(m)  # (B, N, m)
    log_scale = logits.amax(dim=(-1, -2), keepdim=True)  # (B, 1, 1)
    return _finish(logits - log_scale, eps, m, log), log_scale


def _projected(
    x: torch.Tensor, proj: torch.Tensor, softmax_temp: float, cosh: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(B, N, m) projections sqrt(t) w.x (and their negatives with cosh), (B, N, 1) t |x|^2 / 2, and m."""
    if not softmax_temp > 0:
        raise ValueError(f"softmax features need a positive softmax temperature (scale), got {softmax_temp}")
    x = x.float()
    dash = (x * math.sqrt(softmax_temp)) @ proj.to(device=x.device, dtype=torch.float32).t()  # (B, N, rows)
    if cosh:
        dash = torch.cat([dash, -dash], dim=-1)  # (B, N, 2 rows)
    half_sq_norm = 0.5 * softmax_temp * x.square().sum(dim=-1, keepdim=True)  # (B, N, 1)
    return dash, half_sq_norm, dash.shape[-1]


def _finish(log_features: torch.Tensor, eps: float, m: int, log: bool) -> torch.Tensor:
    if log:
        if eps != 0:
            raise ValueError(f"log features cannot carry a nonzero eps, got eps={eps}")
        return log_features
    features = log_features.exp_()
    return features.add_(eps / math.sqrt(m)) if eps else features
