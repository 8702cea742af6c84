"""Exact attention against a naive float64 softmax(scale q k^T) v."""

from __future__ import annotations

import pytest
import torch
from attention_inputs import gaussian_qkv

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
    q, k, v = gaussian_qkv(*shape)
    out = build_attention("exact")(q, k, v, scale=scale)
    assert out.shape == (b, nq, dv) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_exact_low_precision_and_large_logits_finite(dtype):
    # Logits up to 100 in reduced precision: SDPA must not overflow (it subtracts the row max).
    q, k, v = gaussian_qkv(2, 64, 16, 16, 8, seed=1)
    q = q * 100 / (q @ k.transpose(1, 2)).abs().max()
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out = build_attention("exact")(q, k, v, scale=1.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # 3e-2 against float64 on the same rounded inputs: output rounding (bf16: 2^-8 relative) plus
    # low-precision score accumulation; a missing max subtraction would give inf/nan instead.
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 1.0), atol=3e-2, rtol=3e-2)


def test_query_chunks_for_large_inputs_give_the_same_result(monkeypatch):
    # Beyond CHUNK_SCORES scores per batch element the queries go in chunks (memory bound at Nq=65536); with a
    # cap of 16*25 scores, 100 queries run as 6 full chunks and a tail of 4, and score_entries says so.
    # Same 1e-5 against float64 as above: a wrong slice or a lost tail row gives O(1) errors.
    q, k, v = gaussian_qkv(2, 100, 25, 8, 12, seed=3)
    monkeypatch.setattr(exact, "CHUNK_SCORES", 16 * 25)
    attn = build_attention("exact")
    assert attn.score_entries(100, 25, 8) == 16 * 25
    out = attn(q, k, v, scale=0.7)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 0.7), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 256, 64, 16, 48), (3, 100, 25, 8, 24), (1, 64, 128, 32, 32), (2, 1, 7, 4, 3)])
def test_cpu_path_equals_sdpa(shape, dtype):
    # The CPU path (matmul, exp in place, matmul, divide) against torch's scaled_dot_product_attention on the same
    # inputs, Nq != Nk and dv != d included. fp32: 2e-6 absolute on O(1) outputs (normalising after the product
    # sums in another order; a wrong scale, max or normaliser is O(0.1) off). bf16: within 2^-7 absolute and
    # relative, two bf16 roundings (ours rounds an fp32 result once; SDPA's bf16 path rounds inside too).
    b, nq, nk, d, dv = shape
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(b, n, c, generator=gen).to(dtype) for n, c in [(nq, d), (nk, d), (nk, dv)])
    for scale in (1.0, 0.3):
        out = build_attention("exact")(q, k, v, scale=scale)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        assert out.dtype == dtype and out.shape == ref.shape
        tol = 2e-6 if dtype == torch.float32 else 2**-7
        torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=0 if dtype == torch.float32 else tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_path_stays_within_the_scores_it_reports(monkeypatch, dtype):
    # Measured (the profiler's allocation records, as bench/harness.py reads them) against score_entries:
    # B * score_entries fp32 scores, plus what the scores do not count: fp32 copies of low-precision inputs, the
    # per-query max and sum, each chunk's output and the joined output (B * Nq * dv each). SDPA's math path holds
    # about 2.3x the scores, so this fails if it comes back, and fails if the queries are not chunked (the dense
    # scores are 4x the cap here).
    from torch.profiler import ProfilerActivity, profile

    from bench.harness import peak_live_bytes

    def peak_bytes(fn):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = fn()
        return peak_live_bytes(prof), result

    b, nq, nk, d, dv = 2, 512, 256, 16, 32
    monkeypatch.setattr(exact, "CHUNK_SCORES", 128 * nk)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, n, c, generator=gen).to(dtype) for n, c in [(nq, d), (nk, d), (nk, dv)])
    attn = build_attention("exact")
    entries = attn.score_entries(nq, nk, d)
    assert entries == 128 * nk < nq * nk
    peak, out = peak_bytes(lambda: attn(q, k, v))
    inputs = 0 if dtype == torch.float32 else b * (nq * d + nk * (d + dv))
    outputs = b * 128 * dv + 2 * b * nq * dv + 2 * b * 128
    assert peak <= 4 * (b * entries + inputs + outputs), (peak, 4 * b * entries)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 1.0), atol=2e-2 if dtype != torch.float32
                               else 1e-5, rtol=2e-2 if dtype != torch.float32 else 1e-5)
