"""Inception Score from 1008-way logits: exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

Split i holds images [i*N//splits, (i+1)*N//splits), as in the original TF code; the std is the
population std (``np.std``). With fewer images than splits, each image is its own split.
"""
from __future__ import annotations

import torch

DEFAULT_SPLITS = 10


def inception_score(logits: torch.Tensor, splits: int = DEFAULT_SPLITS) -> tuple[float, float]:
    """logits (N, C) -> (mean, std) of the per-split Inception Score, computed in float64."""
    if logits.dim() != 2 or logits.shape[0] < 1:
        raise ValueError(f"need logits (N, C) with N >= 1, got {tuple(logits.shape)}")
    n = logits.shape[0]
    splits = max(1, min(splits, n))
    log_p = torch.log_softmax(logits.double(), dim=1)  # (N, C) log p(y|x)
    bounds = torch.arange(1, splits, device=logits.device) * n // splits  # (S-1,) first image of splits 1..S-1
    split_of = torch.bucketize(torch.arange(n, device=logits.device), bounds, right=True)  # (N,) split of each image
    counts = torch.bincount(split_of, minlength=splits).double()  # (S,)
    p_y = torch.zeros(splits, logits.shape[1], dtype=torch.float64, device=logits.device)
    p = log_p.exp()  # (N, C) p(y|x)
    p_y.index_add_(0, split_of, p)
    log_p_y = (p_y / counts[:, None]).log()  # (S, C) log marginal per split
    kl = torch.where(p > 0, p * (log_p - log_p_y[split_of]), 0.0).sum(1)  # (N,) KL(p(y|x) || p(y))
    per_split = torch.zeros(splits, dtype=torch.float64, device=logits.device).index_add_(0, split_of, kl) / counts
    scores = per_split.exp()
    return float(scores.mean()), float(scores.std(unbiased=False))
