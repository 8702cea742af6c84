"""Side-by-side comparison of attention backends on the same latents and classes (no UI code).

Every backend runs the same generator on the same (z, class) batch. The evaluation's probe
(``eval.attention_probe``) on the attention blocks times each backend call within the timed forward
pass, counts its memory and compares its output with exact attention on the very same q, k, v; the
images are compared with the exact images pixel by pixel. Attention's share of the generation time and
the speed-ups against exact (``eval.metrics.speed_metrics``) come from exact's run on the same batch.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eval.attention_probe import AttentionProbe, probed
from eval.metrics import METRICS, GeneratorTiming, speed_metrics
from gan.attention import attention_info
from gan.generator import Generator

from .imaging import to_uint8

REFERENCE = "exact"
# the speed columns of eval/fid.py's results, as they are defined, named and printed there
SPEED_METRICS = {m.name: m for m in METRICS if m.name in ("attn_share", "attn_speedup", "gen_speedup")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class BackendRun:
    """One backend's images and measurements on the shared batch."""

    name: str
    group: str  # "reference" (exact), "published" (the paper's algorithm) or "project variant of <name>"
    params: dict[str, Any]  # as resolved for the attention shapes (budget turned into sizes)
    images: np.ndarray  # (N, H, W, 3) uint8
    diff: np.ndarray  # (N, H, W) float32, mean |x - x_exact| over channels, pixels in [0, 1]
    gen_seconds: float  # whole forward pass, without the probe's exact reference
    attn_seconds: float  # the backend calls only, timed within that forward pass
    attn_calls: int
    attn_bytes: int  # peak: CUDA allocation during the call, or score entries * batch * bytes on CPU
    attn_rel_error: float  # mean over images of ||out - exact||_F / ||exact||_F on the same q, k, v
    pixel_diff: float  # mean |x - x_exact| over the batch, pixels in [0, 1]
    attn_share: float | None  # eval.metrics' definitions; None where a time was 0
    attn_speedup: float | None  # against exact's run in this comparison (> 1: faster than exact)
    gen_speedup: float | None

    def numbers(self) -> dict[str, str]:
        """The row's measurements as the page and the grid print them: key -> 'label value unit'."""
        return {
            "gen": f"gen {self.gen_seconds:.3f} s",
            "gen_speedup": f"gen x {self.speed_text('gen_speedup')}",
            "attn": f"attn {self.attn_seconds * 1e3:.2f} ms",
            "attn_speedup": f"attn x {self.speed_text('attn_speedup')}",
            "attn_share": f"attn share {self.speed_text('attn_share')}",
            "mem": f"mem {self.attn_bytes / 2**20:.2f} MiB",
            "err": f"attn err {self.attn_rel_error:.3g}",
            "pix": f"pixel diff {self.pixel_diff:.3g}",
        }

    def speed_text(self, name: str) -> str:
        """A speed metric (a key of ``SPEED_METRICS``) in eval/fid.py's format; "-" where it is None."""
        value = getattr(self, name)
        return "-" if value is None else SPEED_METRICS[name].fmt.format(value)


def backend_group(name: str) -> str:
    """'reference' for exact, 'published' for a paper's algorithm, 'project variant of X' for the project's own."""
    if name == REFERENCE:
        return "reference"
    info = attention_info(name)
    if info["published"]:
        return "published"
    return f"project variant of {info['variant_of']}" if info.get("variant_of") else "project variant"


class NonFiniteOutput(ValueError):
    """A backend's images hold NaN or inf."""


def compare_backends(
    G: Generator,
    indices: Sequence[int],
    class_ids: torch.Tensor,
    truncation: float,
    seed: int,
    backends: Sequence[tuple[str, dict[str, Any]]],
    warmup: int = 1,
) -> list[BackendRun]:
    """Run exact and then each (name, kwargs) backend on the same images: ``G.sample(indices, class_ids,
    truncation, seed)`` (B images). Exact always comes first (added if missing); G is left with exact
    attention and no probe. Each backend first generates the first ``warmup`` images off the clock, so
    one-time costs (allocations, kernel choices, compilation) are not timed. A backend whose images hold
    NaN/inf raises ``NonFiniteOutput`` naming it."""
    device = next(G.parameters()).device
    order = [(REFERENCE, {})] + [(name, kw) for name, kw in backends if name != REFERENCE]
    runs: list[BackendRun] = []
    reference: torch.Tensor | None = None
    exact_timing: GeneratorTiming | None = None
    try:
        for name, kwargs in order:
            backend = G.set_attention(name, **kwargs)
            if warmup > 0:
                G.sample(list(indices)[:warmup], class_ids[:warmup], truncation, seed)
            with probed(G, AttentionProbe(measure_error=name != REFERENCE)) as probe:
                _sync(device)
                start = time.perf_counter()
                x = G.sample(indices, class_ids, truncation, seed)  # (B, 3, H, W) in [-1, 1]
                _sync(device)
                seconds = time.perf_counter() - start
                probe.flush()
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteOutput(
                    f"{name} produced NaN/inf pixels"
                    + (" (exact attention too: the checkpoint or generator is broken)" if name == REFERENCE else "")
                )
            x01 = (x.float().clamp(-1, 1) + 1) / 2
            reference = x01 if reference is None else reference
            diff = (x01 - reference).abs().mean(dim=1)  # (B, H, W)
            timing = GeneratorTiming(len(indices), max(seconds - probe.reference_seconds, 0.0), probe.seconds,
                                     probe.calls)
            exact_timing = timing if exact_timing is None else exact_timing
            runs.append(
                BackendRun(
                    name=name,
                    group=backend_group(name),
                    params=backend.resolve(*probe.shape) if probe.shape else dict(kwargs),
                    images=to_uint8(x),
                    diff=diff.cpu().numpy(),
                    gen_seconds=timing.gen_seconds,
                    attn_seconds=probe.seconds,
                    attn_calls=probe.calls,
                    attn_bytes=int(probe.peak_bytes),
                    attn_rel_error=float(probe.take_errors(len(indices)).mean()),
                    pixel_diff=float(diff.mean()),
                    **speed_metrics(timing, exact_timing),
                )
            )
    finally:
        G.set_attention(REFERENCE)
    return runs
