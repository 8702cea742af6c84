"""Inception Score against the definition, computed directly with NumPy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.inception_score import inception_score


def _reference_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """The original TF code's formula: per split exp(mean_x KL(p(y|x) || p(y))), then mean and np.std."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


@pytest.mark.parametrize("n", [100, 103])  # 103: uneven split sizes (10 or 11 images)
def test_matches_definition(n):
    # random logits with a wide spread; only float64 summation order differs (1e-10 relative)
    logits = np.random.default_rng(n).normal(scale=3.0, size=(n, 1008))
    mean, std = inception_score(torch.from_numpy(logits))
    ref_mean, ref_std = _reference_is(logits, 10)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-8, abs=1e-12)


def test_known_values():
    # identical predictions -> KL 0 -> IS exactly 1; confident one-hot predictions spread evenly over
    # k classes in each split -> IS = k (up to the softmax leakage of logit gap 50: < 1e-12)
    assert inception_score(torch.zeros(40, 1008)) == pytest.approx((1.0, 0.0), abs=1e-12)
    k = 4
    logits = torch.zeros(80, 1008, dtype=torch.float64)
    logits[torch.arange(80), torch.arange(80) % k] = 50.0
    mean, std = inception_score(logits)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n", [100, 103])
def test_matches_torch_fidelity(n, shuffle):
    # torch-fidelity's isc_features_to_metric: contiguous splits, or of its seeded permutation (seed 2020)
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.from_numpy(np.random.default_rng(n + 7).normal(scale=3.0, size=(n, 1008)))
    ref = isc_features_to_metric(logits, splits=10, shuffle=shuffle, rng_seed=2020)
    mean, std = inception_score(logits, splits=10, shuffle=shuffle)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-8, abs=1e-12)


def test_shuffled_splits_lower_the_score_of_class_ordered_images():
    # image i has class i % 10 with a confident prediction: contiguous splits of 10 hold every class once
    # (IS = 10 each); random splits hold some classes twice and others not at all, so IS drops
    logits = torch.full((100, 1008), -20.0, dtype=torch.float64)
    logits[torch.arange(100), torch.arange(100) % 10] = 20.0
    balanced, _ = inception_score(logits, splits=10)
    shuffled, _ = inception_score(logits, splits=10, shuffle=True)
    assert balanced == pytest.approx(10.0, rel=1e-9) and shuffled < 0.9 * balanced


def test_fewer_images_than_splits_is_an_error():
    with pytest.raises(ValueError, match="at least as many images as splits: got 5 image"):
        inception_score(torch.zeros(5, 1008), splits=10)
