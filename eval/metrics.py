"""One method's row of the results table, from its gathered features and the exact run's."""
from __future__ import annotations

import numpy as np
import torch

from .frechet import feature_statistics, frechet_distance
from .inception_score import inception_score
from .runner import MethodFeatures

METRIC_FIELDS = ("fid", "is_mean", "is_std", "attn_rel_error", "top1_changed", "images_per_s", "attn_ms", "attn_peak_mb", "n")


def method_row(run: MethodFeatures, exact: MethodFeatures | None, ref_mu: np.ndarray, ref_sigma: np.ndarray,
               device: torch.device, is_exact: bool) -> dict[str, float | int | None]:
    """The fields of ``METRIC_FIELDS``; ``top1_changed`` is None without an exact run to compare with."""
    mu, sigma = feature_statistics(run.features.to(device))
    is_mean, is_std = inception_score(run.logits.to(device))
    if is_exact:
        top1 = 0.0
    elif exact is None:
        top1 = None
    else:
        top1 = float((run.logits.argmax(1) != exact.logits.argmax(1)).double().mean())
    n = run.features.shape[0]
    return {
        "fid": frechet_distance(mu, sigma, ref_mu, ref_sigma, device=device),
        "is_mean": is_mean,
        "is_std": is_std,
        "attn_rel_error": 0.0 if is_exact else float(run.attn_error.mean()),
        "top1_changed": top1,
        "images_per_s": n / run.gen_seconds,
        "attn_ms": 1000.0 * run.attn_seconds / max(run.attn_calls, 1),
        "attn_peak_mb": run.attn_peak_bytes / 2**20,
        "n": n,
    }
