"""Paired evaluation: every method generates the same images (same latents, same classes), in shards.

Image i always gets the latent and class of ``ImagePlan`` (``eval/image_plan.py``), whatever the
batch, shard or rank. Images [0, N) are cut into shards of ``shard_size``; each shard's
Inception features, logits, per-image attention error and timings are saved atomically under

    <cache>/<label>-<key>/shard_<start>_<end>.pt

where ``key`` hashes everything that fixes the images and their features (model, the image plan,
dtype, backend and its parameters, Inception weights and input protocol, and ``SHARD_FORMAT``; not the
batch size, which changes per-image results only by float round-off). A re-run, a larger N or an added
backend reuses the shards that exist; a run killed midway loses at most the shard in progress. A shard
that lacks a field the merge reads, or was written in another format, is computed again, never merged.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.distributed import DistContext
from common.files import read_checkpoint, write_atomic
from common.images import quantize

from .attention_probe import AttentionProbe, probed
from .features import MethodFeatures
from .image_plan import ImagePlan

# Bump when a shard's fields or their meaning change: shards of other formats are then computed again.
SHARD_FORMAT = 2  # 1: the unversioned shards before the format entered the key
PER_IMAGE_FIELDS = ("features", "logits", "attn_error")  # tensors with one row per image
TOTAL_FIELDS = ("gen_seconds", "attn_seconds", "attn_calls", "attn_peak_bytes")  # numbers summed or maxed


@dataclass(frozen=True)
class MethodSpec:
    """One evaluated configuration: ``label`` in reports, backend ``attention`` built with ``kwargs``."""

    label: str
    attention: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    backend: Any = field(default=None, compare=False, repr=False)  # the built AttentionBackend (built once)

    @property
    def is_exact(self) -> bool:
        return self.attention == "exact"


@dataclass(frozen=True)
class ImageSpec:
    """Everything besides the backend that fixes the generated images and their features."""

    model_id: str
    plan: ImagePlan
    dtype: str
    inception_id: str
    inception_input: str


def cache_key(image: ImageSpec, method: MethodSpec) -> str:
    fields = {**dataclasses.asdict(image), "plan": dataclasses.asdict(image.plan)}
    blob = json.dumps({"format": SHARD_FORMAT, "image": fields, "attention": method.attention,
                       "kwargs": method.kwargs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def method_dir(cache: Path, image: ImageSpec, method: MethodSpec) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", method.label)
    return cache / f"{safe}-{cache_key(image, method)}"


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


def _load_shard(path: Path, size: int) -> dict | None:
    """A finished shard of ``size`` images in ``SHARD_FORMAT`` with every field the merge reads, or None when
    it is missing, unreadable, of another format or incomplete (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        shard = read_checkpoint(path)
    except ValueError:
        return None
    if not isinstance(shard, dict) or shard.get("format") != SHARD_FORMAT:
        return None
    rows = all(isinstance(shard.get(f), torch.Tensor) and shard[f].shape[:1] == (size,) for f in PER_IMAGE_FIELDS)
    totals = all(isinstance(shard.get(f), int | float) for f in TOTAL_FIELDS)
    shape = shard.get("attn_shape")
    return shard if rows and totals and isinstance(shape, list) and all(isinstance(x, int) for x in shape) else None


def save_shard(shard: dict, path: Path) -> None:
    """Serialise in memory, then write atomically: a full disk is an ``OSError`` naming the file, never a
    half-written shard (``torch.save`` straight to a file reports it as an opaque RuntimeError)."""
    buf = io.BytesIO()
    torch.save(shard, buf)
    write_atomic(path, lambda f: f.write(buf.getbuffer()))


class RunProgress:
    """One progress bar for the whole run (every method's images to generate): images/s and ETA.

    After the first measured batch it prints the estimated time of the whole run once.
    """

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm(total=total, desc="generate + features", unit="img", disable=not enabled, leave=False,
                        dynamic_ncols=True)
        self._start = time.perf_counter()
        self._estimated = False

    def update(self, n: int) -> None:
        now = time.perf_counter()
        self.bar.update(n)
        if not self._estimated and self.bar.n > 0 and not self.bar.disable and self.bar.total:
            self._estimated = True
            rate = self.bar.format_dict.get("rate") or self.bar.n / max(now - self._start, 1e-9)
            tqdm.write(f"estimated time: {_duration(self.bar.total / max(rate, 1e-9))} for {self.bar.total} images "
                       f"({rate:.2f} img/s on the first batch)")

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_finite(tensor: torch.Tensor, what: str, label: str, start: int) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{label}: NaN or inf in the {what} (images {start}..{start + tensor.shape[0] - 1}); "
                         f"this backend or dtype is numerically unstable here")


@torch.no_grad()
def compute_shard(G, inception, image: ImageSpec, method: MethodSpec, start: int, end: int,
                  batch_size: int, device: torch.device, bar: RunProgress | None = None) -> dict:
    """Generate images [start, end) with ``G``'s current backend and extract their Inception outputs."""
    feats, logits, errors, gen_seconds = [], [], [], 0.0
    with probed(G, AttentionProbe(measure_error=not method.is_exact)) as probe:
        for lo in range(start, end, batch_size):
            idx = torch.arange(lo, min(lo + batch_size, end))
            _sync(device)
            t0 = time.perf_counter()
            images = image.plan.sample(G, idx)  # (B,3,H,W) in [-1,1]
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
        "format": SHARD_FORMAT,
        "features": torch.cat(feats), "logits": torch.cat(logits), "attn_error": torch.cat(errors),
        "gen_seconds": max(gen_seconds - probe.reference_seconds, 1e-9), "attn_seconds": probe.seconds,
        "attn_calls": probe.calls, "attn_peak_bytes": probe.peak_bytes, "attn_shape": list(probe.shape or ()),
    }


def shard_path(cache: Path, image: ImageSpec, method: MethodSpec, start: int, end: int) -> Path:
    return method_dir(cache, image, method) / f"shard_{start:08d}_{end:08d}.pt"


def missing_images(cache: Path, image: ImageSpec, method: MethodSpec, num_samples: int, shard_size: int,
                   ctx: DistContext) -> int:
    """How many of this rank's images have no finished shard (what the run will generate)."""
    mine = [(s, e) for j, (s, e) in enumerate(shard_ranges(num_samples, shard_size)) if ctx.owns(j)]
    return sum(e - s for s, e in mine if not shard_path(cache, image, method, s, e).is_file())


def evaluate_method(G, inception, image: ImageSpec, method: MethodSpec, *, num_samples: int, batch_size: int,
                    shard_size: int, cache: Path, ctx: DistContext,
                    bar: RunProgress | None = None) -> MethodFeatures | None:
    """This rank's shards (cached or computed), gathered on rank 0; rank 0 gets the method's features, others None.

    ``bar`` counts only generated images. A failed write (full disk, permissions) becomes a one-line
    ``ValueError`` naming the shard; every shard finished before it stays on disk.
    """
    G.set_attention(method.backend if method.backend is not None else method.attention,
                    **({} if method.backend is not None else method.kwargs))
    mine = [(j, s, e) for j, (s, e) in enumerate(shard_ranges(num_samples, shard_size)) if ctx.owns(j)]
    shards, generated, error = {}, 0, None
    try:
        for _, s, e in mine:
            path = shard_path(cache, image, method, s, e)
            shard = _load_shard(path, e - s)
            if shard is None:
                shard = compute_shard(G, inception, image, method, s, e, batch_size, ctx.device, bar)
                save_shard(shard, path)
                generated += e - s
            shards[s] = shard
    except ValueError as err:
        error = str(err)
    except OSError as err:
        done = len(shards)
        error = (f"cannot write {path}: {err.strerror or err}; {done} finished shard(s) of {method.label} are kept "
                 f"in {path.parent} and a re-run resumes from them")
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
