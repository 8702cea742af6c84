"""Paired evaluation: every method generates the same images (same latents, same classes), in shards.

Image i always gets ``per_image_latents([i], seed)`` and class ``balanced_class_ids([i], classes)``,
whatever the batch, shard or rank. Images [0, N) are cut into shards of ``shard_size``; each shard's
Inception features, logits, per-image attention error and timings are saved atomically under

    <cache>/<label>-<key>/shard_<start>_<end>.pt

where ``key`` hashes everything that fixes the images (model, truncation, seed, classes, dtype,
backend and its parameters, Inception weights; not the batch size, which changes per-image results
only by float round-off). A re-run, a larger N or an added backend reuses the
shards that exist; a run killed midway loses at most the shard in progress.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gan.sampling import balanced_class_ids, per_image_latents
from common.files import read_checkpoint, save_checkpoint

from .attention_probe import AttentionProbe, probed
from common.distributed import DistContext
from common.images import quantize


@dataclass(frozen=True)
class MethodSpec:
    """One evaluated configuration: ``label`` in reports, backend ``attention`` built with ``kwargs``."""

    label: str
    attention: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_exact(self) -> bool:
        return self.attention == "exact"


@dataclass(frozen=True)
class ImageSpec:
    """Everything besides the backend that fixes the generated images and their features."""

    model_id: str
    truncation: float
    seed: int
    classes: tuple[int, ...]
    dtype: str
    inception_id: str


@dataclass
class MethodFeatures:
    """All N images of one method, in image order."""

    features: torch.Tensor  # (N, D) float32
    logits: torch.Tensor  # (N, 1008) float32
    attn_error: torch.Tensor  # (N,) float64
    gen_seconds: float
    attn_seconds: float
    attn_calls: int
    attn_peak_bytes: int
    attn_shape: tuple[int, ...]  # (Nq, Nk, d) seen by the attention layer; empty when it was never called
    generated: int  # images generated in this run (the rest came from the cache)


def cache_key(image: ImageSpec, method: MethodSpec) -> str:
    blob = json.dumps({"image": image.__dict__, "attention": method.attention, "kwargs": method.kwargs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def method_dir(cache: Path, image: ImageSpec, method: MethodSpec) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", method.label)
    return cache / f"{safe}-{cache_key(image, method)}"


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


def _load_shard(path: Path, size: int) -> dict | None:
    """A finished shard, or None when missing or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        shard = read_checkpoint(path)
    except ValueError:
        return None
    return shard if shard.get("features") is not None and shard["features"].shape[0] == size else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_finite(tensor: torch.Tensor, what: str, label: str, start: int) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{label}: NaN or inf in the {what} (images {start}..{start + tensor.shape[0] - 1}); this backend or dtype is numerically unstable here")


@torch.no_grad()
def compute_shard(G, inception, image: ImageSpec, method: MethodSpec, start: int, end: int,
                  batch_size: int, device: torch.device, dtype: torch.dtype, bar: tqdm | None = None) -> dict:
    """Generate images [start, end) with ``G``'s current backend and extract their Inception outputs."""
    feats, logits, errors, gen_seconds = [], [], [], 0.0
    with probed(G, AttentionProbe(measure_error=not method.is_exact)) as probe:
        for lo in range(start, end, batch_size):
            idx = torch.arange(lo, min(lo + batch_size, end))
            z = per_image_latents(idx, G.z_dim, image.truncation, image.seed).to(device=device, dtype=dtype)
            cls = balanced_class_ids(idx, image.classes)  # (B,) on the CPU: generate range-checks without a sync
            _sync(device)
            t0 = time.perf_counter()
            images = G.generate(z, cls, truncation=image.truncation)  # (B,3,H,W) in [-1,1]
            _sync(device)
            gen_seconds += time.perf_counter() - t0
            probe.flush()
            _check_finite(images, "generated images", method.label, lo)
            f, lg = inception(quantize(images))
            _check_finite(f, "Inception features", method.label, lo)
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
            errors.append(probe.take_errors(len(idx)))
            if bar is not None:
                bar.update(len(idx))
    return {
        "features": torch.cat(feats), "logits": torch.cat(logits), "attn_error": torch.cat(errors),
        "gen_seconds": max(gen_seconds - probe.reference_seconds, 1e-9), "attn_seconds": probe.seconds,
        "attn_calls": probe.calls, "attn_peak_bytes": probe.peak_bytes, "attn_shape": list(probe.shape or ()),
    }


def evaluate_method(G, inception, image: ImageSpec, method: MethodSpec, *, num_samples: int, batch_size: int,
                    shard_size: int, cache: Path, ctx: DistContext, dtype: torch.dtype) -> MethodFeatures | None:
    """This rank's shards (cached or computed), gathered on rank 0; rank 0 gets the method's features, others None."""
    G.set_attention(method.attention, **method.kwargs)
    folder = method_dir(cache, image, method)
    mine = [(j, s, e) for j, (s, e) in enumerate(shard_ranges(num_samples, shard_size)) if ctx.owns(j)]
    todo = sum(e - s for _, s, e in mine)
    shards, generated, error = {}, 0, None
    with tqdm(total=todo, desc=f"{method.label}: generate + features", unit="img", disable=not ctx.is_main, leave=False) as bar:
        try:
            for _, s, e in mine:
                path = folder / f"shard_{s:08d}_{e:08d}.pt"
                shard = _load_shard(path, e - s)
                if shard is None:
                    shard = compute_shard(G, inception, image, method, s, e, batch_size, ctx.device, dtype, bar)
                    save_checkpoint(shard, path)
                    generated += e - s
                else:
                    bar.update(e - s)
                shards[s] = shard
        except ValueError as err:
            error = str(err)
    errors = ctx.all_errors(error)
    if errors:
        raise ValueError(errors[0])
    received = ctx.gather((shards, generated))
    if received is None:
        return None
    merged = {s: shard for part, _ in received for s, shard in part.items()}
    ordered = [merged[s] for s in sorted(merged)]
    return MethodFeatures(
        features=torch.cat([sh["features"] for sh in ordered]),
        logits=torch.cat([sh["logits"] for sh in ordered]),
        attn_error=torch.cat([sh["attn_error"] for sh in ordered]),
        gen_seconds=sum(float(sh["gen_seconds"]) for sh in ordered),
        attn_seconds=sum(float(sh["attn_seconds"]) for sh in ordered),
        attn_calls=sum(int(sh["attn_calls"]) for sh in ordered),
        attn_peak_bytes=max(int(sh["attn_peak_bytes"]) for sh in ordered),
        attn_shape=tuple(int(x) for x in ordered[0]["attn_shape"]),
        generated=sum(g for _, g in received),
    )
