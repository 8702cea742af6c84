"""Frechet distance between Gaussians, in float64 on the device, without scipy's ``sqrtm``.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of S1 S2, which are those of the
symmetric PSD matrix L^T S2 L where S1 = L L^T (Cholesky). So one Cholesky factorisation and one
symmetric eigenvalue decomposition (``eigvalsh``) replace the Schur-based matrix square root.

A covariance estimated from fewer samples than dimensions is singular; then Cholesky fails, a
warning is issued and ``eps`` (default 1e-6, pytorch-fid's offset) is added to both diagonals.

On the CPU the eigenvalue step runs on one thread: LAPACK's reduction to tridiagonal form (the
bulk of ``eigvalsh``) is memory-bound with a synchronisation per column, and on a loaded 2-core
machine two OpenMP threads took anywhere from 0.25 s to 50 s for 2048-d, one thread a steady 0.43 s.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

SINGULAR_EPS = 1e-6


def _as_f64(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=torch.float64)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the enclosed CPU LAPACK call single-threaded (see the module docstring); no-op on a GPU."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, D) -> mean (D,), covariance (D, D) with the N-1 normalisation of ``np.cov``; float64."""
    x = _as_f64(features, features.device if isinstance(features, torch.Tensor) else "cpu")
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"need features (N, D) with N >= 2 to estimate a covariance, got {tuple(x.shape)}")
    mu = x.mean(0)
    centered = x - mu
    return mu, centered.T @ centered / (x.shape[0] - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = SINGULAR_EPS, device: str | torch.device | None = None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); arrays or tensors, (D,) and (D, D)."""
    if device is None:
        device = sigma1.device if isinstance(sigma1, torch.Tensor) else "cpu"
    mu1, mu2 = _as_f64(mu1, device).reshape(-1), _as_f64(mu2, device).reshape(-1)
    s1, s2 = _as_f64(sigma1, device), _as_f64(sigma2, device)
    d = mu1.shape[0]
    if mu2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"statistics disagree: mu1 {tuple(mu1.shape)}, sigma1 {tuple(s1.shape)}, mu2 {tuple(mu2.shape)}, "
            f"sigma2 {tuple(s2.shape)}; need (D,) means and (D, D) covariances of one D"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    chol, info = torch.linalg.cholesky_ex(s1)
    if int(info) != 0:
        warnings.warn(
            f"covariance is singular (fewer samples than {d} dimensions?); adding eps={eps} to both diagonals",
            RuntimeWarning, stacklevel=2,
        )
        offset = eps * torch.eye(d, dtype=torch.float64, device=device)
        s1, s2 = s1 + offset, s2 + offset
        chol = torch.linalg.cholesky(s1)
    product = chol.T @ s2 @ chol  # (D, D) symmetric PSD, similar to S1 S2
    with _one_cpu_thread(product.device):
        eig = torch.linalg.eigvalsh(product)  # (D,) eigenvalues of S1 S2, >= 0 up to rounding
    tr_covmean = eig.clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)
