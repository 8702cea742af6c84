"""Which latent and class image i gets: the same for every method, batch, shard and rank.

Latents (``gan.sampling.latents_for``): ``per-image`` (image i's latent depends on (seed, i) only) or
``reference`` (row i of pytorch-pretrained-biggan's ``truncated_noise_sample(batch_size=N, seed)``,
as the published BigGAN attention scripts draw with seed 123). Classes:

- ``balanced``: ``classes[i % C]`` (``gan.sampling.balanced_class_ids``); contiguous IS splits are class-balanced;
- ``random``: ``classes[floor(u_i * C)]`` with u_i a counter-based hash of (seed, i), uniform and
  independent of batching;
- ``repeat``: ``classes[i // per_class]`` (``gan.sampling.repeated_class_ids``), the published scripts' order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gan.sampling import LATENT_MODES, balanced_class_ids, repeated_class_ids

CLASS_ORDERS = ("balanced", "random", "repeat")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised SplitMix64 finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def random_class_ids(indices, classes: tuple[int, ...], seed: int) -> torch.Tensor:
    """(N,) int64: image i gets ``classes[floor(u * C)]``, u uniform in [0, 1) from a hash of (seed, i)."""
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu().numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(0x5EED))
        bits = _splitmix64(index ^ key) >> np.uint64(11)  # 53 random bits
    pick = np.minimum((bits.astype(np.float64) / 2.0**53 * len(classes)).astype(np.int64), len(classes) - 1)
    return torch.as_tensor(np.asarray(classes, dtype=np.int64)[pick])


@dataclass(frozen=True)
class ImagePlan:
    """Latent mode, seed, truncation and class assignment of a run of ``total`` images."""

    truncation: float
    seed: int
    classes: tuple[int, ...]
    latent_mode: str = "per-image"
    class_order: str = "balanced"
    per_class: int | None = None  # repeat order only
    total: int | None = None  # reference latents only (they depend on the run's size)

    def __post_init__(self):
        if self.latent_mode not in LATENT_MODES:
            raise ValueError(f"unknown latent mode {self.latent_mode!r}; accepted: {', '.join(LATENT_MODES)}")
        if self.class_order not in CLASS_ORDERS:
            raise ValueError(f"unknown class order {self.class_order!r}; accepted: {', '.join(CLASS_ORDERS)}")
        if self.class_order == "repeat" and not self.per_class:
            raise ValueError("the repeat class order needs --per-class N (images per class)")
        if self.latent_mode == "reference" and not self.total:
            raise ValueError("reference latents need the run's total number of images")

    def class_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """(B,) int64 class of each global image index, on the CPU."""
        if self.class_order == "balanced":
            return balanced_class_ids(indices, self.classes)
        if self.class_order == "random":
            return random_class_ids(indices, self.classes, self.seed)
        return repeated_class_ids(indices, self.classes, self.per_class)

    def sample(self, G, indices: torch.Tensor) -> torch.Tensor:
        """Images (B,3,H,W) in [-1, 1] for global ``indices``; the truncation is given once (``G.sample``)."""
        return G.sample(indices, self.class_ids(indices), truncation=self.truncation, seed=self.seed,
                        latent_mode=self.latent_mode, total=self.total)
