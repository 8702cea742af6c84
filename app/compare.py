"""Side-by-side comparison of attention backends on the same latents and classes (no UI code).

Every backend runs the same generator on the same (z, class) batch. The evaluation's probe
(``eval.attention_probe``) on the attention blocks times each backend call, counts its memory and
compares its output with exact attention on the very same q, k, v; the images are compared with
the exact images pixel by pixel.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from eval.attention_probe import AttentionProbe, probed
from gan.generator import Generator

from .imaging import to_uint8

REFERENCE = "exact"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class BackendRun:
    """One backend's images and measurements on the shared batch."""

    name: str
    params: dict[str, Any]  # as resolved for the attention shapes (budget turned into sizes)
    images: np.ndarray  # (N, H, W, 3) uint8
    diff: np.ndarray  # (N, H, W) float32, mean |x - x_exact| over channels, pixels in [0, 1]
    gen_seconds: float  # whole forward pass, without the probe's exact reference
    attn_seconds: float  # the backend calls only
    attn_bytes: int  # peak: CUDA allocation during the call, or score entries * batch * bytes on CPU
    attn_rel_error: float  # mean over images of ||out - exact||_F / ||exact||_F on the same q, k, v
    pixel_diff: float  # mean |x - x_exact| over the batch, pixels in [0, 1]

    def caption(self) -> str:
        return (
            f"{self.name} | gen {self.gen_seconds:.3f} s | attn {self.attn_seconds * 1e3:.2f} ms | "
            f"mem {self.attn_bytes / 2**20:.2f} MiB | attn err {self.attn_rel_error:.3g} | pixel diff {self.pixel_diff:.4f}"
        )


def compare_backends(
    G: Generator, z: torch.Tensor, class_ids: torch.Tensor, truncation: float, backends: Sequence[tuple[str, dict[str, Any]]]
) -> list[BackendRun]:
    """Run exact and then each (name, kwargs) backend on the same z (B, z_dim) and class ids (B,).

    Exact always comes first (added if missing); G is left with exact attention and no probe.
    """
    order = [(REFERENCE, {})] + [(name, kw) for name, kw in backends if name != REFERENCE]
    runs: list[BackendRun] = []
    reference: torch.Tensor | None = None
    try:
        for name, kwargs in order:
            backend = G.set_attention(name, **kwargs)
            with probed(G, AttentionProbe(measure_error=name != REFERENCE)) as probe:
                _sync(z.device)
                start = time.perf_counter()
                x = G.generate(z, class_ids, truncation)  # (B, 3, H, W) in [-1, 1]
                _sync(z.device)
                seconds = time.perf_counter() - start
                probe.flush()
            x01 = (x.float().clamp(-1, 1) + 1) / 2
            reference = x01 if reference is None else reference
            diff = (x01 - reference).abs().mean(dim=1)  # (B, H, W)
            runs.append(
                BackendRun(
                    name=name,
                    params=backend.resolve(*probe.shape) if probe.shape else dict(kwargs),
                    images=to_uint8(x),
                    diff=diff.cpu().numpy(),
                    gen_seconds=max(seconds - probe.reference_seconds, 0.0),
                    attn_seconds=probe.seconds,
                    attn_bytes=int(probe.peak_bytes),
                    attn_rel_error=float(probe.take_errors(z.shape[0]).mean()),
                    pixel_diff=float(diff.mean()),
                )
            )
    finally:
        G.set_attention(REFERENCE)
    return runs
