"""Latents and class ids: truncated noise, per-image seeds, ImageNet class names.

Per-image latents come from a counter-based hash of (seed, image index, coordinate), so image i
gets the same latent whatever the batch size, order or number of processes, without a Python loop
over images.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

TRUNCATION_BOUND = 2.0  # the reference samples a standard normal truncated to [-2, 2]
_MASK32 = 0xFFFFFFFF


def truncated_noise_sample(batch_size: int, dim_z: int, truncation: float = 1.0, seed: int | None = None) -> np.ndarray:
    """(B, dim_z) float32: the reference's ``truncated_noise_sample`` (scipy truncnorm on [-2,2], times truncation)."""
    from scipy.stats import truncnorm

    state = None if seed is None else np.random.RandomState(seed)
    values = truncnorm.rvs(-TRUNCATION_BOUND, TRUNCATION_BOUND, size=(batch_size, dim_z), random_state=state)
    return truncation * values.astype(np.float32)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding uint32 values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _uniform_open(seed: int, index: torch.Tensor, dim: int) -> torch.Tensor:
    """index (N,) int64 -> (N, dim) float64 uniform in (0, 1), a pure function of (seed, index, column)."""
    column = torch.arange(dim, dtype=torch.int64)
    counter = index[:, None] * dim + column[None, :]  # (N, dim) unique per (image, coordinate)
    key = _hash32(torch.tensor(seed & _MASK32, dtype=torch.int64) ^ 0x9E3779B9)
    hi = _hash32(_hash32(counter ^ key) + (counter >> 32))
    lo = _hash32(hi ^ _hash32(counter + 0x632BE5AB))
    bits = (hi << 21) | (lo >> 11)  # 53 random bits
    return (bits.double() + 0.5) / 2.0**53


def per_image_latents(
    indices: Sequence[int] | torch.Tensor, dim_z: int, truncation: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """(N, dim_z) float32 truncated-normal latents for global image ``indices``, times ``truncation``.

    Each row depends only on (seed, image index): the same image gets the same latent in any batch.
    """
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
    if index.numel() and index.min() < 0:
        raise ValueError("image indices must be >= 0")
    u = _uniform_open(seed, index, dim_z)
    # inverse CDF of the standard normal restricted to [-b, b]
    cdf_b = 0.5 * (1.0 + math.erf(TRUNCATION_BOUND / math.sqrt(2.0)))
    p = (1.0 - cdf_b) + u * (2.0 * cdf_b - 1.0)
    z = math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)
    return (truncation * z.clamp_(-TRUNCATION_BOUND, TRUNCATION_BOUND)).float()


LATENT_MODES = ("per-image", "reference")
REFERENCE_SEED = 123  # the BigGAN attention papers' scripts (KDEformer, Thinformer): truncated_noise_sample(seed=123)


@functools.lru_cache(maxsize=4)
def _reference_block(total: int, dim_z: int, truncation: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(truncated_noise_sample(total, dim_z, truncation, seed))


def latents_for(
    indices: Sequence[int] | torch.Tensor,
    dim_z: int,
    truncation: float = 1.0,
    seed: int = 0,
    mode: str = "per-image",
    total: int | None = None,
) -> torch.Tensor:
    """(N, dim_z) float32 latents for global image ``indices``, already times ``truncation``.

    ``per-image``: ``per_image_latents`` (image i's latent depends on (seed, i) only). ``reference``:
    row i of pytorch-pretrained-biggan's ``truncated_noise_sample(batch_size=total, seed=seed)``, the
    latents the published BigGAN attention experiments drew in one call (seed 123, truncation 0.4).
    """
    if mode == "per-image":
        return per_image_latents(indices, dim_z, truncation, seed)
    if mode != "reference":
        raise ValueError(f"latent mode must be one of {', '.join(LATENT_MODES)}, got {mode!r}")
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
    if total is None or total < 1:
        raise ValueError("the reference latent mode needs the run's total number of images (total >= 1)")
    if index.numel() and (index.min() < 0 or index.max() >= total):
        raise ValueError(f"image indices must be in [0, {total - 1}] for a reference run of {total} images")
    return _reference_block(total, dim_z, float(truncation), seed)[index].clone()


def repeated_class_ids(indices: Sequence[int] | torch.Tensor, classes: Sequence[int], per_class: int) -> torch.Tensor:
    """Image i gets ``classes[i // per_class]``: numpy's ``repeat(classes, per_class)`` (the published scripts)."""
    if per_class < 1 or not classes:
        raise ValueError("repeated class ids need at least one class and per_class >= 1")
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if index.numel() and (index.min() < 0 or index.max() >= len(classes) * per_class):
        raise ValueError(f"image indices must be in [0, {len(classes) * per_class - 1}]")
    return torch.as_tensor(list(classes), dtype=torch.int64)[index // per_class]


def balanced_class_ids(indices: Sequence[int] | torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Image i gets ``classes[i % len(classes)]``: balanced over ``classes`` and independent of batching."""
    if len(classes) == 0:
        raise ValueError("need at least one class")
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    return torch.as_tensor(list(classes), dtype=torch.int64)[index % len(classes)]


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names in class-id order (shipped with torchvision, offline)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _name_index() -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, name in enumerate(imagenet_class_names()):
        index.setdefault(name.lower(), []).append(i)
    return index


def class_ids_from(spec: str | int | Iterable[str | int], num_classes: int = 1000) -> list[int]:
    """Class ids from ints, digit strings, ImageNet names or 'all'; a string may list several, comma-separated.

    >>> class_ids_from("goldfish,207")
    [1, 207]
    """
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return list(range(num_classes))
        items: list[str | int] = [s.strip() for s in spec.split(",") if s.strip()]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)
    if not items:
        raise ValueError("no classes given; pass ids in [0, 999], ImageNet names, or 'all'")
    names = _name_index() if any(isinstance(s, str) and not s.lstrip("-").isdigit() for s in items) else {}
    ids: list[int] = []
    for item in items:
        if isinstance(item, int) or item.lstrip("-").isdigit():
            cid = int(item)
            if not 0 <= cid < num_classes:
                raise ValueError(
                    f"class id {cid} out of range; accepted: 0..{num_classes - 1} or an ImageNet class name"
                )
            ids.append(cid)
            continue
        matches = names.get(item.lower())
        if not matches:
            raise ValueError(
                f"unknown ImageNet class name {item!r}; use an id in 0..{num_classes - 1} or a name such as 'goldfish'"
            )
        if len(matches) > 1:
            raise ValueError(f"class name {item!r} is ambiguous (ids {matches}); pass the id instead")
        ids.append(matches[0])
    return ids


def one_hot(class_ids: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) int -> (B, num_classes) one-hot, as BigGAN-deep's class input."""
    return torch.nn.functional.one_hot(class_ids.long(), num_classes).to(dtype)
