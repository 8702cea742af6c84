"""FAVOR+ positive orthogonal random features for the softmax kernel (Choromanski et al., 2021).

For w ~ N(0, I_d):  E[exp(w.x - |x|^2/2) * exp(w.y - |y|^2/2)] = exp(x.y).  With x = sqrt(scale) q
and y = sqrt(scale) k this estimates exp(scale * q.k). The features are returned as logarithms so
consumers can stabilise (subtract their own maxima) before exponentiating.
"""

from __future__ import annotations

import math

import torch

from ..base import SeededDraws


def draw_orthogonal_projection(num_features: int, d: int, seed: int, device=None) -> torch.Tensor:
    """(num_features, d) fp32 block-orthogonal Gaussian rows, deterministic from ``seed``.

    Drawn on the CPU from a generator seeded with ``seed``, then moved to ``device``.
    """
    generator = torch.Generator().manual_seed(seed)
    return orthogonal_projection(num_features, d, generator).to(device)


class ProjectionCache:
    """``cache(num_features, d, device)``: the (num_features, d) projection from ``seed``, drawn once per key
    (with ``redraw``: the next draw of one stream seeded with ``seed`` on every call)."""

    def __init__(self, seed: int, redraw: bool = False):
        self.seed = seed
        self._drawn = SeededDraws(seed, redraw)

    def __call__(self, num_features: int, d: int, device) -> torch.Tensor:
        return self._drawn(
            (num_features, d), device, lambda generator: orthogonal_projection(num_features, d, generator)
        )


def orthogonal_projection(num_features: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """(num_features, d) fp32 on the generator's device, advancing ``generator``.

    Rows come in blocks of d mutually orthogonal directions (QR of a d x d Gaussian block); each
    row's norm is resampled from the chi distribution with d degrees of freedom, so every row is
    marginally N(0, I_d) and the kernel estimate stays unbiased.
    """
    if num_features < 1:
        raise ValueError(f"num_features must be a positive int, got {num_features}")
    if d < 1:
        raise ValueError(f"feature size d must be a positive int, got {d}")
    n_blocks = -(-num_features // d)
    device = generator.device
    gaussian = torch.randn(n_blocks, d, d, generator=generator, device=device)
    directions, triangle = torch.linalg.qr(gaussian)  # (blocks, d, d), orthonormal columns
    # Sign-fix the columns by diag(R) so Q is Haar-distributed (raw LAPACK QR biases the directions).
    directions = directions * torch.diagonal(triangle, dim1=-2, dim2=-1).sign().unsqueeze(-2)
    directions = directions.transpose(1, 2).reshape(n_blocks * d, d)[:num_features]  # (m, d) unit rows
    norms = torch.randn(num_features, d, generator=generator, device=device).norm(dim=1, keepdim=True)  # (m, 1) ~ chi_d
    return directions * norms


def favor_log_features(x: torch.Tensor, proj: torch.Tensor, scale: float) -> torch.Tensor:
    """x (B, N, d), proj (m, d) -> (B, N, m) fp32 log-features ``w.x' - |x'|^2/2 - log(m)/2``, x' = sqrt(scale) x.

    ``sum_m exp(lq_m + lk_m)`` is an unbiased estimate of ``exp(scale * q.k)``.
    """
    if scale <= 0:
        raise ValueError(f"FAVOR+ features need a positive scale, got {scale}")
    x = x.float() * math.sqrt(scale)
    projected = x @ proj.to(device=x.device, dtype=torch.float32).t()  # (B, N, m)
    half_sq_norm = 0.5 * x.square().sum(dim=-1, keepdim=True)  # (B, N, 1)
    return projected - half_sq_norm - 0.5 * math.log(proj.shape[0])
