"""Seeded q, k, v generators for the attention benchmark regimes, each with the reason it is there.

Synthetic geometries:
  isotropic:  q, k ~ N(0, I_d).
  clustered:  32 unit centres; every query and key is its cluster's centre plus Gaussian noise
              (cosine ~0.8 within a cluster, ~0 across), so queries attend mostly within their cluster.
Feature-map geometries (what a convolutional generator's attention layer actually sees): a (C, H, W)
map x with H = W = sqrt(Nq); as in BigGAN, q = theta(x) is a 1x1 convolution at every pixel, k = phi(x)
and v = g(x) are 1x1 convolutions followed by a 2x2 max-pool (Nk = Nq / 4), flattened row-major.
  smooth:     x is Gaussian-blurred noise (sigma 3 px): neighbouring pixels are alike, as in the
              upsampled maps of a generator, so attention is spatially structured.
  segments:   x is a piecewise-constant map of 12 Voronoi "objects" (one feature vector each) plus
              smooth texture: a query attends to the keys of its own object.
  relu:       the smooth map after a ReLU: non-negative activations give q and k a large shared
              mean direction (the case centred random features are for).
Temperature: q and k are rescaled together so the logits q.k have the regime's standard
deviation, measured on the first queries of the first batch element. v ~ N(0, I_dv) for the
synthetic geometries, g(x) for the feature maps. Every draw comes from one torch.Generator seeded
with ``seed`` (on the CPU).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Regime(NamedTuple):
    geometry: str
    logit_std: float
    reason: str


REGIMES: dict[str, Regime] = {
    "isotropic-diffuse": Regime("isotropic", 1.0, "no structure, near-uniform attention: coverage is what counts"),
    "isotropic-peaked": Regime("isotropic", 6.0, "no structure, a few dominant keys per query"),
    "clustered-diffuse": Regime("clustered", 1.0, "cluster structure the hash can find, but weak preferences"),
    "clustered-peaked": Regime("clustered", 6.0, "queries attend within their cluster: the LSH methods' best case"),
    # Between diffuse and peaked: the mass is split between a head of strong keys and a long tail,
    # the case sparse + low-rank (Scatterbrain) is designed for.
    "isotropic-mixed": Regime("isotropic", 3.0, "head of strong keys plus a long tail (sparse + low-rank's case)"),
    "clustered-mixed": Regime("clustered", 3.0, "within-cluster head plus cross-cluster tail"),
    # A generator's own maps (BigGAN's theta/phi/g 1x1 convolutions, keys and values 2x2 max-pooled).
    "featuremap-smooth": Regime("smooth", 2.0, "smooth upsampled maps: diffuse, spatially structured attention"),
    "featuremap-segments": Regime("segments", 4.0, "objects in the image: queries attend to their own object's keys"),
    "featuremap-relu": Regime("relu", 2.0, "non-negative activations: q and k share a large mean direction"),
}
PEAKED_STD, DIFFUSE_STD = 6.0, 1.0  # logit std of the peaked / diffuse regimes; "mixed" lies strictly between
NUM_CLUSTERS = 32
CLUSTER_NOISE = 0.5  # noise norm relative to the unit centre
CALIBRATION_QUERIES = 512
MAP_CHANNELS = 64  # channels of the synthetic feature map x
SMOOTH_SIGMA_PX = 3.0
NUM_SEGMENTS = 12
TEXTURE = 0.5  # smooth texture's std relative to the segments' features


def regime_qkv(
    regime: str, *, batch: int = 2, nq: int = 4096, nk: int = 1024, d: int = 32, dv: int = 128, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) fp32 on the CPU for ``regime`` (a key of REGIMES)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; accepted: {', '.join(REGIMES)}")
    geometry, logit_std, _ = REGIMES[regime]
    generator = torch.Generator().manual_seed(seed)
    if geometry == "isotropic":
        q = torch.randn(batch, nq, d, generator=generator)
        k = torch.randn(batch, nk, d, generator=generator)
        v = torch.randn(batch, nk, dv, generator=generator)
    elif geometry == "clustered":
        centres = F.normalize(torch.randn(NUM_CLUSTERS, d, generator=generator), dim=-1)  # (C, d)
        q = _cluster_points(centres, batch, nq, generator)
        k = _cluster_points(centres, batch, nk, generator)
        v = torch.randn(batch, nk, dv, generator=generator)
    else:
        q, k, v = _feature_map_qkv(geometry, batch, nq, nk, d, dv, generator)
    logits = q[0, :CALIBRATION_QUERIES] @ k[0].t()  # (<=512, Nk)
    gain = (logit_std / logits.std()).sqrt()
    return q * gain, k * gain, v


def _cluster_points(centres: torch.Tensor, batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """(B, n, d): a random centre per point plus isotropic noise of norm ~CLUSTER_NOISE."""
    d = centres.shape[1]
    assignment = torch.randint(len(centres), (batch, n), generator=generator)
    noise = torch.randn(batch, n, d, generator=generator) * (CLUSTER_NOISE / d**0.5)
    return centres[assignment] + noise


def _feature_map_qkv(geometry: str, batch: int, nq: int, nk: int, d: int, dv: int, generator: torch.Generator):
    """BigGAN's attention inputs from a synthetic (B, C, H, W) map: theta(x), maxpool(phi(x)), maxpool(g(x))."""
    side = map_side(nq, nk, "feature-map regimes")
    x = smooth_noise(batch, side, generator)  # (B, C, H, W), unit std per channel
    if geometry == "segments":
        x = _segments(batch, side, generator) + TEXTURE * x
    elif geometry == "relu":
        x = x.relu()
    return tuple(t.contiguous() for t in attention_inputs(x, d, dv, generator))


def map_side(nq: int, nk: int, what: str) -> int:
    """H = W of a square map with Nq = H*W pixels and Nk = Nq/4 pooled keys; ValueError naming ``what`` otherwise."""
    side = math.isqrt(nq)
    if side * side != nq or side % 2 or nk != nq // 4:
        raise ValueError(f"{what}: Nq must be H*W with even H = W and Nk = Nq/4, got Nq={nq}, Nk={nk}")
    return side


def attention_inputs(x: torch.Tensor, d: int, dv: int, generator: torch.Generator):
    """q (B, H*W, d), k and v (B, H*W/4, d / dv) as BigGAN's attention makes them from a map x (B, C, H, W): random
    1x1 convolutions theta, phi, g (drawn from ``generator`` in that order), phi and g 2x2 max-pooled, row-major."""
    batch, channels = x.shape[:2]
    w_theta, w_phi, w_g = (torch.randn(out, channels, generator=generator) / channels**0.5 for out in (d, d, dv))
    q = torch.einsum("bchw,oc->bhwo", x, w_theta).reshape(batch, -1, d)
    k = F.max_pool2d(torch.einsum("bchw,oc->bohw", x, w_phi), 2).flatten(2).transpose(1, 2)  # (B, Nk, d)
    v = F.max_pool2d(torch.einsum("bchw,oc->bohw", x, w_g), 2).flatten(2).transpose(1, 2)  # (B, Nk, dv)
    return q, k, v


def smooth_noise(batch: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, side, side) Gaussian noise blurred by a separable Gaussian of SMOOTH_SIGMA_PX, unit std per channel."""
    noise = torch.randn(batch * MAP_CHANNELS, 1, side, side, generator=generator)
    radius = int(3 * SMOOTH_SIGMA_PX)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / SMOOTH_SIGMA_PX) ** 2)
    taps = taps / taps.sum()
    blurred = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="circular"), taps.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="circular"), taps.view(1, 1, -1, 1))
    blurred = blurred.view(batch, MAP_CHANNELS, side, side)
    return blurred / blurred.std(dim=(2, 3), keepdim=True)


def _segments(batch: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, side, side): each pixel takes the feature vector of its nearest of NUM_SEGMENTS random sites."""
    sites = torch.rand(batch, NUM_SEGMENTS, 2, generator=generator) * side  # (B, S, 2)
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).float().view(1, -1, 2)
    label = torch.cdist(grid.expand(batch, -1, -1), sites).argmin(-1)  # (B, H*W)
    features = torch.randn(batch, NUM_SEGMENTS, MAP_CHANNELS, generator=generator)  # (B, S, C)
    per_pixel = features.gather(1, label.unsqueeze(-1).expand(-1, -1, MAP_CHANNELS))  # (B, H*W, C)
    return per_pixel.transpose(1, 2).reshape(batch, MAP_CHANNELS, side, side)
