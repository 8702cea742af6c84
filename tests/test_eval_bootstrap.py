"""Bootstrap intervals of FID and IS tested for what they are (docs/eval.md, "fid_ci_low ... is_ci_high"): 95%
percentile intervals over resamples of the N images WITH replacement, the same resampled sets for every method.

Synthetic inputs with a known sampling spread, so the interval's width has a right answer:

- FID: features x_i = a e_1 + z_i, z_i ~ N(0, I_D), against the reference N(0, I_D). FID = |mu|^2 + tr(S + I -
  2 S^1/2) is dominated by the mean term; its sampling sd is 2a / sqrt(N) to first order (the trace term moves by
  O(sqrt(D) / N)). A percentile interval [2.5%, 97.5%] is then FID_hat -+ 1.96 sd.
- IS with one split: images whose p(y|x) is (nearly) one-hot on a class drawn from p over C classes. IS =
  exp(H(class histogram)) and, by the delta method, sd(IS) = IS sqrt((sum_c p_c log^2 p_c - H^2) / N).

Tolerances: with N = 2000 and 1000 resamples the bootstrap sd is within ~2% of the truth (1 / sqrt(2N)) and each
percentile end within ~0.1 sd (Monte-Carlo error of a 2.5% quantile from 1000 draws): the width must be within 15% of
2 x 1.96 sd (seeds 0-3 gave 0.93-1.06). That fails an interval computed without resampling or resampled without
replacement (width 0) and a 99% one (+31%); which percentiles are taken is checked exactly, against the resamples'
own values (recorded by spies around the metric functions), so a 90% interval fails there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import eval.metrics as metrics
from eval.features import MethodFeatures
from eval.metrics import RowInputs, ScoreProtocol, method_row

N, D, SHIFT, CLASSES = 2000, 4, 3.0, 10
RESAMPLES = 1000


def synthetic_run(seed: int, features=None, logits=None) -> MethodFeatures:
    g = torch.Generator().manual_seed(seed)
    if features is None:
        features = torch.randn(N, D, generator=g)
        features[:, 0] += SHIFT
    if logits is None:
        p = class_probabilities()
        labels = torch.multinomial(p, N, replacement=True, generator=g)
        logits = torch.full((N, CLASSES), -30.0).scatter_(1, labels.view(-1, 1), 30.0)  # p(y|x) one-hot to 1e-26
    return MethodFeatures(features=features, logits=logits, attn_error=torch.zeros(N, dtype=torch.float64),
                          gen_seconds=1.0, attn_seconds=0.1, attn_calls=1, attn_peak_bytes=0, attn_shape=(),
                          generated=N)


def class_probabilities() -> torch.Tensor:
    weights = torch.arange(1, CLASSES + 1, dtype=torch.float64)  # p_c proportional to c: far from uniform
    return weights / weights.sum()


def row(run: MethodFeatures, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    protocol = ScoreProtocol(is_splits=1, bootstrap=resamples, bootstrap_seed=seed)
    inputs = RowInputs(run, None, torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64),
                       torch.device("cpu"), False, True, protocol)
    return method_row(inputs)


@pytest.fixture(scope="module")
def bootstrapped(request):
    """One bootstrap of the synthetic run (both metrics share its resamples): (row, every resample's FID, every
    resample's IS mean), the per-resample values recorded by spies around the metric functions (the real ones run)."""
    fids, scores = [], []
    real_frechet, real_is = metrics.frechet, metrics.inception_score

    def frechet_spy(*args, **kwargs):
        result = real_frechet(*args, **kwargs)
        fids.append(result.value)
        return result

    def is_spy(*args, **kwargs):
        result = real_is(*args, **kwargs)
        scores.append(result[0])
        return result

    patch = pytest.MonkeyPatch()
    patch.setattr(metrics, "frechet", frechet_spy)
    patch.setattr(metrics, "inception_score", is_spy)
    try:
        result = row(synthetic_run(0))
    finally:
        patch.undo()
    # the point estimates are the calls whose value the row reports; every other call is one resample
    fids.remove(result["fid"])
    scores.remove(result["is_mean"])
    return result, np.array(fids), np.array(scores)


def test_fid_interval_width_is_the_sampling_spread(bootstrapped):
    result, _, _ = bootstrapped
    sd = 2 * SHIFT / math.sqrt(N)  # first-order sampling sd of FID
    assert abs(result["fid"] - SHIFT**2) < 4 * sd  # the point estimate itself is right
    width = result["fid_ci_high"] - result["fid_ci_low"]
    assert abs(width / (2 * 1.96 * sd) - 1) < 0.15, width / sd
    assert result["fid_ci_low"] < result["fid"] < result["fid_ci_high"]


def test_is_interval_width_is_the_sampling_spread(bootstrapped):
    result, _, _ = bootstrapped
    p = class_probabilities()
    entropy = -(p * p.log()).sum()
    sd = math.exp(entropy) * math.sqrt(((p * p.log().square()).sum() - entropy**2) / N)
    assert abs(result["is_mean"] - math.exp(entropy)) < 4 * sd
    width = result["is_ci_high"] - result["is_ci_low"]
    assert abs(width / (2 * 1.96 * sd) - 1) < 0.15, width / sd
    assert result["is_ci_low"] < result["is_mean"] < result["is_ci_high"]


def test_intervals_are_the_2_5_and_97_5_percentiles_of_the_resamples(bootstrapped):
    # One value per resample, the resamples different from each other (drawn, with replacement: a permutation would
    # give one value B times), and the reported ends their 2.5th and 97.5th percentiles (linear interpolation).
    result, fids, scores = bootstrapped
    assert len(fids) == RESAMPLES and len(scores) == RESAMPLES
    assert len(np.unique(fids)) > 0.9 * RESAMPLES and len(np.unique(scores)) > 0.5 * RESAMPLES
    for values, low, high in ((fids, "fid_ci_low", "fid_ci_high"), (scores, "is_ci_low", "is_ci_high")):
        expected = np.percentile(values, [2.5, 97.5])
        assert abs(result[low] - expected[0]) < 1e-9 * abs(expected[0]) + 1e-12
        assert abs(result[high] - expected[1]) < 1e-9 * abs(expected[1]) + 1e-12


def test_intervals_are_paired_across_methods():
    # Method B's features are method A's reflected through the reference mean (-x: the same FID for ANY subset of
    # images) and its logits A's plus a per-image constant (the same softmax, so the same IS for any subset). With the
    # same resampled image sets for every method, B's intervals are A's to round-off; independent resamples per
    # method would move them by about a tenth of their width (checked below with another bootstrap seed).
    a = synthetic_run(2)
    offsets = torch.linspace(-5, 5, N).view(-1, 1)
    b = synthetic_run(2, features=-a.features, logits=a.logits + offsets)
    ra, rb = row(a, resamples=40), row(b, resamples=40)
    assert abs(ra["fid"] - rb["fid"]) < 1e-9 and abs(ra["is_mean"] - rb["is_mean"]) < 1e-9
    for key in ("fid_ci_low", "fid_ci_high", "is_ci_low", "is_ci_high"):
        assert abs(ra[key] - rb[key]) < 1e-9, key
    other_draws = row(b, seed=1, resamples=40)
    width = ra["fid_ci_high"] - ra["fid_ci_low"]
    assert abs(other_draws["fid_ci_low"] - ra["fid_ci_low"]) > 1e-3 * width  # the control: pairing is not free
