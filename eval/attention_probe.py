"""The probe hung on every SelfAttention block: error against exact attention, time and memory.

Per call (one generator batch) it records
- the relative error of each image's attention output against exact softmax attention on the same
  q, k, v (computed in float32, off the clock): ||o_b - e_b||_F / ||e_b||_F, one value per image;
- the backend's wall time: CUDA events on a GPU (read once per batch, no sync per call), else
  ``time.perf_counter``;
- memory: on a GPU the rise of ``torch.cuda.max_memory_allocated`` during the call; on the CPU the
  backend's own count ``score_entries(Nq, Nk, d) * B * bytes`` of the score/feature entries it holds.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from gan.attention import AttentionBackend
from gan.generator import Generator


class AttentionProbe:
    """Callable ``probe(backend, q, k, v) -> out``; ``measure_error=False`` skips the exact reference."""

    def __init__(self, measure_error: bool):
        self.measure_error = measure_error
        self.errors: list[torch.Tensor] = []  # per call: (B,) relative errors
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # GPU: backend call spans
        self._ref_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # GPU: exact reference spans
        self.seconds = 0.0  # backend time
        self.reference_seconds = 0.0  # time spent on the exact reference (subtracted from throughput)
        self.calls = 0
        self.peak_bytes = 0
        self.shape: tuple[int, int, int] | None = None  # (Nq, Nk, d) of the last call, for backend.resolve

    def __call__(self, backend: AttentionBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        on_gpu = q.is_cuda
        if on_gpu:
            base = torch.cuda.memory_allocated(q.device)
            torch.cuda.reset_peak_memory_stats(q.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = backend(q, k, v, scale=1.0)
            end.record()
            self._events.append((start, end))
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(q.device) - base)
        else:
            t0 = time.perf_counter()
            out = backend(q, k, v, scale=1.0)
            self.seconds += time.perf_counter() - t0
            entries = backend.score_entries(q.shape[1], k.shape[1], q.shape[2]) * q.shape[0]
            self.peak_bytes = max(self.peak_bytes, entries * q.element_size())
        self.calls += 1
        self.shape = (q.shape[1], k.shape[1], q.shape[2])
        if self.measure_error:
            t0 = time.perf_counter()
            if on_gpu:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=1.0)  # (B, Nq, dv)
            diff = torch.linalg.vector_norm(out.float() - exact, dim=(1, 2))
            self.errors.append(diff / torch.linalg.vector_norm(exact, dim=(1, 2)).clamp_min(1e-30))
            if on_gpu:
                end.record()
                self._ref_events.append((start, end))
            else:
                self.reference_seconds += time.perf_counter() - t0
        return out

    def take_errors(self, batch: int) -> torch.Tensor:
        """(batch,) float64 per-image error, averaged over the attention blocks hit in the last batch; zeros without."""
        if not self.errors:
            return torch.zeros(batch, dtype=torch.float64)
        per_block = torch.stack(self.errors).double().cpu()  # (blocks, B)
        self.errors.clear()
        return per_block.mean(0)

    def flush(self) -> None:
        """Fold pending CUDA event spans into ``seconds`` / ``reference_seconds`` (one sync per batch)."""
        if self._events or self._ref_events:
            torch.cuda.synchronize()
            self.seconds += sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
            self.reference_seconds += sum(s.elapsed_time(e) for s, e in self._ref_events) / 1000.0
            self._events.clear()
            self._ref_events.clear()


@contextmanager
def probed(G: Generator, probe: AttentionProbe) -> Iterator[AttentionProbe]:
    """Install ``probe`` on every attention block of ``G`` for the duration of the block."""
    blocks = G.attention_blocks()
    for block in blocks:
        block.probe = probe
    try:
        yield probe
    finally:
        for block in blocks:
            block.probe = None
