"""Frechet distance between Gaussians, in float64 on the device, without scipy's ``sqrtm``.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of S1 S2. With any factor
S = L L^T of one covariance, they are the eigenvalues of the symmetric PSD matrix L^T S' L (S' the
other one). L is a Cholesky factor when one covariance is positive definite (the reference's is,
normally), else ``U sqrt(W)`` from the eigendecomposition of S1: the exact value needs no offset
even when both covariances are singular (fewer samples than dimensions). Eigenvalues below zero
(round-off) count as zero, as the real part of pytorch-fid's complex ``sqrtm`` does.

Only when that decomposition fails or is not finite is pytorch-fid's fallback used: ``eps`` is added to
both diagonals inside the square root (not in the traces), with a warning, and ``FrechetResult.eps``
records it. On the CPU the eigenvalue step runs on one thread (a memory-bound reduction that
contends badly for shared cores; see BENCHMARKS.md).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

SINGULAR_EPS = 1e-6  # pytorch-fid's offset


@dataclass(frozen=True)
class FrechetResult:
    value: float
    factor: str  # how tr sqrt(S1 S2) was reduced: "cholesky(sigma2)", "cholesky(sigma1)" or "eigh(sigma1)"
    eps: float | None  # pytorch-fid's fallback offset when it was needed, else None


def _as_f64(x, device) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x.to(device=device, dtype=torch.float64)


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


def _trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, str]:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2 (D, D) and the factorisation used."""
    chol, info = torch.linalg.cholesky_ex(s2)
    factor, other = "cholesky(sigma2)", s1
    if int(info) != 0:
        chol, info = torch.linalg.cholesky_ex(s1)
        factor, other = "cholesky(sigma1)", s2
    with _one_cpu_thread(s1.device):
        if int(info) != 0:  # both singular: S1 = (U sqrt W)(U sqrt W)^T
            w, u = torch.linalg.eigh(s1)
            chol, factor, other = u * w.clamp_min(0).sqrt(), "eigh(sigma1)", s2
        eig = torch.linalg.eigvalsh(chol.T @ other @ chol)  # (D,) eigenvalues of S1 S2, >= 0 up to round-off
    return eig.clamp_min(0).sqrt().sum(), factor


def frechet(mu1, sigma1, mu2, sigma2, eps: float = SINGULAR_EPS,
            device: str | torch.device | None = None) -> FrechetResult:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) with how it was computed; (D,) and (D, D)."""
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
    used_eps = None
    try:
        tr_covmean, factor = _trace_sqrt_product(s1, s2)
        if not torch.isfinite(tr_covmean):
            raise torch.linalg.LinAlgError("non-finite eigenvalues")
    except torch.linalg.LinAlgError:
        warnings.warn(f"Frechet distance: the product of the covariances has no computable square root; adding "
                      f"eps={eps} to both diagonals inside it, as pytorch-fid does", RuntimeWarning, stacklevel=2)
        offset = eps * torch.eye(d, dtype=torch.float64, device=device)
        tr_covmean, factor = _trace_sqrt_product(s1 + offset, s2 + offset)
        used_eps = eps
    diff = mu1 - mu2
    value = float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)
    return FrechetResult(value, factor, used_eps)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = SINGULAR_EPS,
                     device: str | torch.device | None = None) -> float:
    """``frechet(...).value``: the Frechet distance alone."""
    return frechet(mu1, sigma1, mu2, sigma2, eps, device).value
