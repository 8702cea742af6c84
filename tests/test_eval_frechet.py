"""Frechet distance: parity with pytorch-fid's scipy path (full-rank and singular), statistics, its fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy import linalg

import eval.frechet as fr
from eval.frechet import feature_statistics, frechet, frechet_distance

DIM = 512  # scipy's sqrtm at 2048-d takes 10-40 s on the shared CPU; the identities do not depend on D


def _features(samples: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(samples, dim)) @ (rng.normal(size=(dim, dim)) / np.sqrt(dim)) + rng.normal(size=dim)


def _stats(samples: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    feats = _features(samples, dim, seed)
    return feats.mean(0), np.cov(feats, rowvar=False)


def test_matches_pytorch_fid_on_full_rank_stats():
    # full-rank statistics (1.25 D samples, as 2560 in 2048-d); fails if the Cholesky/eigvalsh identity
    # tr sqrt(S1 S2) = sum sqrt(eig(L^T S2 L)) were wrong or lost float64 precision
    mu1, s1 = _stats(640, DIM, 0)
    mu2, s2 = _stats(640, DIM, 1)
    result = frechet(mu1, s1, mu2, s2)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert result.factor == "cholesky(sigma2)" and result.eps is None
    assert abs(result.value - ref) <= 1e-6 * abs(ref)


@pytest.mark.parametrize("samples", [16, 125, 500])  # 64, 500, 2000 of 2048 dims, scaled to 512 dims
def test_singular_covariances_match_pytorch_fid_without_offset(samples):
    # fewer samples than dimensions: both covariances singular. pytorch-fid's sqrtm is finite here, so it
    # adds no eps; neither may we (the old eps on both traces moved FID by about -3 at 64 samples)
    mu1, s1 = _stats(samples, DIM, 2)
    mu2, s2 = _stats(samples, DIM, 3)
    result = frechet(mu1, s1, mu2, s2)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert result.factor == "eigh(sigma1)" and result.eps is None
    assert abs(result.value - ref) <= 1e-6 * abs(ref)


def test_one_singular_covariance_uses_the_other_factor():
    # generated features singular (fewer samples than D), reference full rank: the reference is factored
    mu1, s1 = _stats(20, 64, 4)
    mu2, s2 = _stats(400, 64, 5)
    result = frechet(mu1, s1, mu2, s2)
    assert result.factor == "cholesky(sigma2)"
    assert abs(result.value - calculate_frechet_distance(mu1, s1, mu2, s2)) <= 1e-6 * abs(result.value)
    swapped = frechet(mu2, s2, mu1, s1)
    assert swapped.factor == "cholesky(sigma1)" and swapped.value == pytest.approx(result.value, rel=1e-10)


def test_fallback_is_pytorch_fids_offset_inside_the_square_root_only(monkeypatch):
    # when the decomposition fails, pytorch-fid's fallback: eps added to both covariances inside sqrtm, not in
    # the traces. Reference: its formula written out with scipy (pytorch_fid/fid_score.py, the sqrtm branch).
    mu1, s1 = _stats(20, 32, 6)
    mu2, s2 = _stats(20, 32, 7)
    eigvalsh = torch.linalg.eigvalsh
    calls = []

    def fails_once(a):
        calls.append(a)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("simulated failure")
        return eigvalsh(a)

    monkeypatch.setattr(fr.torch.linalg, "eigvalsh", fails_once)
    with pytest.warns(RuntimeWarning, match="eps=1e-06"):
        result = frechet(mu1, s1, mu2, s2)
    offset = 1e-6 * np.eye(32)
    covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset)).real
    diff = mu1 - mu2
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert result.eps == 1e-6 and abs(result.value - expected) <= 1e-6 * abs(expected)


def test_identical_statistics_give_zero():
    # d(P, P) = 0 up to float64 round-off of a 256-d eigenproblem (|err| << 1e-6 of tr S = ~256)
    mu, s = _stats(1024, 256, 2)
    threads = torch.get_num_threads()
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-6
    assert torch.get_num_threads() == threads  # the single-threaded eigvalsh restores the thread count


def test_feature_statistics_equal_numpy():
    # mean and N-1 covariance as np.cov computes them; only float64 summation order differs (1e-12)
    feats = np.random.default_rng(3).normal(size=(50, 16))
    mu, sigma = feature_statistics(torch.from_numpy(feats))
    np.testing.assert_allclose(mu.numpy(), feats.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(feats, rowvar=False), rtol=0, atol=1e-12)


def test_mismatched_dimensions_raise():
    mu, s = _stats(32, 8, 5)
    with pytest.raises(ValueError, match="statistics disagree"):
        frechet_distance(mu, s, mu[:4], s[:4, :4])
