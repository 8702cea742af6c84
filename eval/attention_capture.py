"""Real attention inputs, captured from a generator and replayed by the benchmarks.

``AttentionCapture(limit)`` is a probe (see ``gan.layers.SelfAttention.probe``): it hands every call to
the backend unchanged and keeps the (q, k, v) of the first ``limit`` images that pass the first attention
block. ``save_capture`` writes them as a plain tensor dict (``torch.load(..., weights_only=True)`` reads it,
nothing pickled beyond tensors, strings and numbers); ``load_capture`` checks the layout on the way back in.

File layout: {"format": "biggan-attn/attention-inputs", "version": 1, "q": (N, Nq, d), "k": (N, Nk, d),
"v": (N, Nk, dv), "model": str, "attention": str} with the tensors in the dtype the generator ran in.
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.files import write_atomic

FORMAT, VERSION = "biggan-attn/attention-inputs", 1


class AttentionCapture:
    """Probe keeping the first ``limit`` images' (q, k, v) of one attention block (the first one called)."""

    def __init__(self, limit: int, inner=None):
        if limit < 1:
            raise ValueError(f"the number of images to capture must be >= 1, got {limit}")
        self.limit = limit
        self.inner = inner  # another probe to chain (the error/time probe), or None
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._block_shape: tuple[int, ...] | None = None

    @property
    def captured(self) -> int:
        return sum(q.shape[0] for q, _, _ in self._parts)

    def __call__(self, backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self._block_shape is None:
            self._block_shape = (q.shape[1], k.shape[1], q.shape[2], v.shape[2])
        wanted = self.limit - self.captured
        if wanted > 0 and (q.shape[1], k.shape[1], q.shape[2], v.shape[2]) == self._block_shape:
            self._parts.append(tuple(t[:wanted].detach().to("cpu", copy=True) for t in (q, k, v)))
        return self.inner(backend, q, k, v) if self.inner is not None else backend(q, k, v, scale=1.0)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (N, Nq, d), k (N, Nk, d), v (N, Nk, dv) of the images captured so far."""
        if not self._parts:
            raise ValueError("no attention call was captured (the generator has no attention block, or was not run)")
        q, k, v = (torch.cat(parts) for parts in zip(*self._parts, strict=True))
        return q, k, v


def capture_images(G, sample, count: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of images 0 .. count-1: ``sample(G, indices)`` generates them (e.g. ``ImagePlan.sample``) in
    batches of ``batch_size``, with G's attention backend as it is (the inputs do not depend on it)."""
    capture = AttentionCapture(count)
    blocks = G.attention_blocks()
    if not blocks:
        raise ValueError("this generator has no attention layer, so there are no attention inputs to save")
    for block in blocks:
        block.probe = capture
    try:
        with torch.no_grad():
            for lo in range(0, count, batch_size):
                sample(G, torch.arange(lo, min(lo + batch_size, count)))
    finally:
        for block in blocks:
            block.probe = None
    return capture.tensors()


def save_capture(path: Path, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, model: str, attention: str) -> Path:
    """Write q (N,Nq,d), k (N,Nk,d), v (N,Nk,dv) to ``path`` atomically (temp name, then rename)."""
    state = {"format": FORMAT, "version": VERSION, "q": q.contiguous(), "k": k.contiguous(), "v": v.contiguous(),
             "model": str(model), "attention": str(attention)}
    return write_atomic(Path(path), lambda f: torch.save(state, f))


def load_capture(path: Path) -> dict:
    """The dict ``save_capture`` wrote, read with ``weights_only=True``; ValueError/FileNotFoundError if not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attention inputs file {path} does not exist; write one with --save-attention-inputs")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ValueError(f"{path} is not a readable attention inputs file ({type(err).__name__}); "
                         "write one with --save-attention-inputs") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an attention inputs file (expected format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise ValueError(f"{path} has attention inputs format version {state.get('version')!r}; accepted: {VERSION}")
    q, k, v = state.get("q"), state.get("k"), state.get("v")
    if not all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in (q, k, v)) or not (
        q.shape[0] == k.shape[0] == v.shape[0] and q.shape[2] == k.shape[2] and k.shape[1] == v.shape[1]
    ):
        raise ValueError(f"{path} does not hold q (N,Nq,d), k (N,Nk,d), v (N,Nk,dv) of matching shapes")
    return state
