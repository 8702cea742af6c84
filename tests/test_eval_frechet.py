"""Frechet distance: parity with pytorch-fid's scipy path, statistics, singular covariances."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from eval.frechet import feature_statistics, frechet_distance


def _stats(dim: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(samples, dim)) @ (rng.normal(size=(dim, dim)) / np.sqrt(dim)) + rng.normal(size=dim)
    return feats.mean(0), np.cov(feats, rowvar=False)


def test_matches_pytorch_fid_on_2048d_stats():
    # 2048-d full-rank statistics (2560 samples), the FID setting; fails if the Cholesky/eigvalsh
    # identity tr sqrt(S1 S2) = sum sqrt(eig(L^T S2 L)) were wrong or lost float64 precision.
    mu1, s1 = _stats(2048, 2560, 0)
    mu2, s2 = _stats(2048, 2560, 1)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= 1e-6 * abs(ref)


def test_identical_statistics_give_zero():
    # d(P, P) = 0 up to float64 round-off of a 256-d eigenproblem (|err| << 1e-6 of tr S = ~256)
    mu, s = _stats(256, 1024, 2)
    threads = torch.get_num_threads()
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-6
    assert torch.get_num_threads() == threads  # the single-threaded eigvalsh restores the thread count


def test_feature_statistics_equal_numpy():
    # mean and N-1 covariance as np.cov computes them; only float64 summation order differs (1e-12)
    feats = np.random.default_rng(3).normal(size=(50, 16))
    mu, sigma = feature_statistics(torch.from_numpy(feats))
    np.testing.assert_allclose(mu.numpy(), feats.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(feats, rowvar=False), rtol=0, atol=1e-12)


def test_singular_covariance_warns_and_stays_close_to_pytorch_fid():
    # 20 samples in 64 dims: rank-19 covariances; Cholesky fails, eps=1e-6 is added with a warning.
    # pytorch-fid's sqrtm handles the singular product directly; the eps shifts the value by about
    # 2 * 64 * 1e-6 plus a sqrt(eps) term on the null space, so agree to 1e-3 relative.
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    with pytest.warns(RuntimeWarning, match="eps=1e-06"):
        ours = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(ours)
    assert abs(ours - calculate_frechet_distance(mu1, s1, mu2, s2)) <= 1e-3 * abs(ours)


def test_mismatched_dimensions_raise():
    mu, s = _stats(8, 32, 5)
    with pytest.raises(ValueError, match="statistics disagree"):
        frechet_distance(mu, s, mu[:4], s[:4, :4])
