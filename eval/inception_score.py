"""Inception Score from 1008-way logits: exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

Split i holds images [i*N//splits, (i+1)*N//splits) of the image order, or, with ``shuffle``, of the
order ``np.random.RandomState(shuffle_seed).permutation(N)`` (torch-fidelity's default protocol,
seed 2020). The std is the population std (``np.std``). Fewer images than splits is an error.

Which classes the images have matters as much: with ``--class-order balanced`` image i has class
i % C, so contiguous splits are exactly class-balanced and IS comes out higher than with random
classes or shuffled splits (docs/eval.md).
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_SPLITS = 10
TORCH_FIDELITY_SEED = 2020


def split_order(n: int, shuffle: bool, shuffle_seed: int = TORCH_FIDELITY_SEED) -> torch.Tensor:
    """(N,) image order the splits are cut from: identity, or torch-fidelity's seeded permutation."""
    if not shuffle:
        return torch.arange(n)
    return torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(n))


def inception_score(logits: torch.Tensor, splits: int = DEFAULT_SPLITS, shuffle: bool = False,
                    shuffle_seed: int = TORCH_FIDELITY_SEED) -> tuple[float, float]:
    """logits (N, C) -> (mean, std) of the per-split Inception Score, computed in float64."""
    if logits.dim() != 2 or logits.shape[0] < 1:
        raise ValueError(f"need logits (N, C) with N >= 1, got {tuple(logits.shape)}")
    n = logits.shape[0]
    if splits < 1 or n < splits:
        raise ValueError(f"the Inception Score needs at least as many images as splits: got {n} image(s) "
                         f"for {splits} split(s)")
    log_p = torch.log_softmax(logits.double(), dim=1)[split_order(n, shuffle, shuffle_seed).to(logits.device)]  # (N, C)
    bounds = torch.arange(1, splits, device=logits.device) * n // splits  # (S-1,) first image of splits 1..S-1
    split_of = torch.bucketize(torch.arange(n, device=logits.device), bounds, right=True)  # (N,) split of each image
    counts = torch.bincount(split_of, minlength=splits).double()  # (S,)
    p = log_p.exp()  # (N, C) p(y|x)
    p_y = torch.zeros(splits, logits.shape[1], dtype=torch.float64, device=logits.device).index_add_(0, split_of, p)
    log_p_y = (p_y / counts[:, None]).log()  # (S, C) log marginal per split
    kl = torch.where(p > 0, p * (log_p - log_p_y[split_of]), 0.0).sum(1)  # (N,) KL(p(y|x) || p(y))
    per_split = torch.zeros(splits, dtype=torch.float64, device=logits.device).index_add_(0, split_of, kl) / counts
    scores = per_split.exp()
    return float(scores.mean()), float(scores.std(unbiased=False))
