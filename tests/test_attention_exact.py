"""Exact attention against a naive float64 softmax(scale q k^T) v."""

from __future__ import annotations

import pytest
import torch

from gan.attention import build_attention
from gan.attention.published import exact


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    scores = scale * q.double() @ k.double().transpose(1, 2)  # (B, Nq, Nk)
    return torch.softmax(scores, dim=-1) @ v.double()


@pytest.mark.parametrize("scale", [1.0, 0.25, 3.0])
@pytest.mark.parametrize("shape", [(2, 64, 64, 16, 16), (3, 100, 25, 8, 24), (1, 37, 11, 5, 3)])
def test_exact_equals_naive_softmax(shape, scale):
    # Tolerance 1e-5: fp32 SDPA vs float64 reference on O(1) outputs; fails if the scale is
    # ignored or replaced by 1/sqrt(d), or keys/values are misaligned when Nq != Nk or dv != d.
    b, nq, nk, d, dv = shape
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(b, nq, d, generator=gen),
        torch.randn(b, nk, d, generator=gen),
        torch.randn(b, nk, dv, generator=gen),
    )
    out = build_attention("exact")(q, k, v, scale=scale)
    assert out.shape == (b, nq, dv) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_exact_low_precision_and_large_logits_finite(dtype):
    # Logits up to 100 in reduced precision: SDPA must not overflow (it subtracts the row max).
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(2, 64, 16, generator=gen),
        torch.randn(2, 16, 16, generator=gen),
        torch.randn(2, 16, 8, generator=gen),
    )
    q = q * 100 / (q @ k.transpose(1, 2)).abs().max()
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out = build_attention("exact")(q, k, v, scale=1.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # 3e-2 against float64 on the same rounded inputs: output rounding (bf16: 2^-8 relative) plus
    # low-precision score accumulation; a missing max subtraction would give inf/nan instead.
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 1.0), atol=3e-2, rtol=3e-2)


def test_query_chunks_for_large_inputs_give_the_same_result(monkeypatch):
    # Beyond CHUNK_SCORES scores per call the queries go through SDPA in chunks (memory bound at
    # Nq=65536); with a cap of 2*16*25 scores, 100 queries run as 6 full chunks and a tail of 4.
    # Same 1e-5 against float64 as above: a wrong slice or a lost tail row gives O(1) errors.
    gen = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(2, 100, 8, generator=gen),
        torch.randn(2, 25, 8, generator=gen),
        torch.randn(2, 25, 12, generator=gen),
    )
    monkeypatch.setattr(exact, "CHUNK_SCORES", 2 * 16 * 25)
    out = build_attention("exact")(q, k, v, scale=0.7)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 0.7), atol=1e-5, rtol=1e-5)
