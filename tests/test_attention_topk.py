"""Top-k attention against a naive float64 masked softmax, chunking, the prefilter, and the contract.

``reference_topk`` reads HazyResearch/scatterbrain ``src/models/attention/topk_attention.py``
(ExactTopKAttention.forward,
lines 26-53: scores, torch.topk indices, every other score set to -inf by a scattered mask, softmax, weighted values),
the oracle top-k of Gupta et al. (2021) that fast-transformers' exact_topk_attention.py implements.
"""

from __future__ import annotations

import pytest
import torch
from attention_inputs import errors_over_seeds, gaussian_qkv, peak_bytes, rel_err

from bench.regimes import regime_qkv
from gan.attention import build_attention
from gan.attention.published.topk import top_k_scores


def qkv(b=2, nq=100, nk=25, d=8, dv=12, seed=0):
    return gaussian_qkv(b, nq, nk, d, dv, seed)


def naive_topk(q, k, v, top, scale=1.0):
    """float64 softmax over each query's ``top`` largest scores (-inf elsewhere)."""
    scores = scale * q.double() @ k.double().transpose(1, 2)
    threshold = scores.topk(top, dim=-1).values[..., -1:]
    return torch.softmax(scores.masked_fill(scores < threshold, float("-inf")), dim=-1) @ v.double()


@pytest.mark.parametrize("params", [{"k": 25}, {"budget": 1.0}])
def test_full_k_equals_exact(params):
    # k = Nk keeps every key: must match exact attention to 1e-4 (Nq = 4 Nk, 100 queries in chunks of 64).
    q, k, v = qkv()
    out = build_attention("topk", chunk_size=64, **params)(q, k, v, scale=0.5)
    torch.testing.assert_close(out, build_attention("exact")(q, k, v, scale=0.5), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("top, nk, scale", [(3, 25, 1.0), (8, 256, 0.3), (12, 400, 2.0), (50, 257, 1.0), (2, 256, 1.0)])
def test_matches_naive_topk(top, nk, scale):
    # (8, 256) and (12, 400) take the group-max prefilter path (Nk/64 < k <= Nk/32); the others
    # the plain topk path. 1e-5: fp32 scores and softmax against float64 on O(1) outputs; a wrong
    # candidate set or batch offset in the value gather gives O(0.1) errors.
    q, k, v = qkv(nq=4 * nk + 3, nk=nk)
    out = build_attention("topk", k=top, chunk_size=128)(q, k, v, scale=scale)
    assert out.shape == (2, 4 * nk + 3, 12)
    torch.testing.assert_close(out.double(), naive_topk(q, k, v, top, scale), atol=1e-5, rtol=1e-5)


def test_prefilter_selects_the_true_top_k():
    # The group-max prefilter (taken here: Nk/64 < k=16 <= Nk/32) must return exactly the k largest
    # scores (as a set) and their indices.
    scores = torch.randn(3, 50, 512, generator=torch.Generator().manual_seed(2))
    values, indices = top_k_scores(scores, 16)
    torch.testing.assert_close(values.sort(-1, descending=True).values, scores.topk(16, dim=-1).values, atol=0, rtol=0)
    assert torch.equal(scores.gather(-1, indices), values)


def test_k1_picks_the_argmax_key():
    # Softmax over one key is 1: each output row is exactly the value of the highest-scoring key.
    q, k, v = qkv()
    out = build_attention("topk", k=1)(q, k, v, scale=1.0)
    best = (q @ k.transpose(1, 2)).argmax(-1)  # (B, Nq)
    torch.testing.assert_close(
        out, torch.gather(v, 1, best.unsqueeze(-1).expand(-1, -1, v.shape[-1])), atol=1e-6, rtol=0
    )


def test_result_does_not_depend_on_chunk_size():
    # The chunk only bounds memory (chunk_size * Nk scores at a time); per-query results are
    # computed independently, so every chunking gives the same output up to fp32 rounding (1e-5:
    # the BLAS blocking of the score matmul changes with the chunk shape).
    q, k, v = qkv(nq=203, nk=64)
    outs = [build_attention("topk", k=7, chunk_size=c)(q, k, v, scale=1.0) for c in (1, 13, 64, 203, 1000)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=0)


def test_logits_up_to_100_and_low_precision():
    # Logits up to 100 in fp32, bf16 and fp16 stay finite; low precision differs from the fp32
    # result only by input/output rounding at these logits (3e-2 on O(1) outputs, against float64
    # top-k on the same rounded inputs).
    q, k, v = qkv()
    q = q * 100 / (q @ k.transpose(1, 2)).abs().max()
    attn = build_attention("topk", k=5)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        qd, kd, vd = q.to(dtype), k.to(dtype), v.to(dtype)
        out = attn(qd, kd, vd, scale=1.0)
        assert out.dtype == dtype and torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), naive_topk(qd, kd, vd, 5), atol=3e-2, rtol=3e-2)


def test_deterministic_and_seed_independent():
    # Top-k draws nothing at random: repeated calls and different seeds give identical outputs.
    q, k, v = qkv()
    out = build_attention("topk", k=4, seed=0)(q, k, v)
    assert torch.equal(out, build_attention("topk", k=4, seed=0)(q, k, v))
    assert torch.equal(out, build_attention("topk", k=4, seed=9)(q, k, v))


def test_budget_resolution_and_score_entries():
    nq, nk, d = 4096, 1024, 32
    attn = build_attention("topk", budget=1 / 8)
    assert attn.resolve(nq, nk, d) == {"k": 128, "chunk_size": 256}
    assert attn.score_entries(nq, nk, d) == nq * 128 <= nq * nk / 8
    assert build_attention("topk", budget=1e-6).resolve(nq, nk, d)["k"] == 1
    assert build_attention("topk", budget=1.0).resolve(nq, nk, d)["k"] == nk
    assert build_attention("topk", k=7, budget=1 / 8).resolve(nq, nk, d)["k"] == 7  # explicit k wins
    assert build_attention("topk").resolve(nq, nk, d)["k"] == 128  # DEFAULT_BUDGET = 1/8 of Nk
    # k is floored so Nq * k never exceeds the budget (round would give 3 > 2.7 keys here), and
    # float error in budget * Nk (0.29 * 100 = 28.999...) does not cost a key.
    assert build_attention("topk", budget=0.1).resolve(nq, 27, d)["k"] == 2
    assert build_attention("topk", budget=0.29).resolve(nq, 100, d)["k"] == 29


def test_peak_memory_is_bounded_by_the_query_chunk():
    # Gupta et al.'s point: only B * chunk_size * Nk scores live at a time, never B * Nq * Nk. The
    # allocator peak of one call (bench's measurement) must stay within the output, the fp32 key
    # and value copies and two chunks of scores (scores + top-k temporaries, k << Nk); forming
    # all Nq * Nk scores (8 MiB here, 32x one chunk) fails it.
    b, nq, nk, d, dv, chunk = 2, 2048, 512, 16, 16, 64
    q, k, v = qkv(b=b, nq=nq, nk=nk, d=d, dv=dv)
    attn = build_attention("topk", k=8, chunk_size=chunk)
    peak, _ = peak_bytes(lambda: attn(q, k, v))  # public profiler API, output included
    bound = 4 * (b * nq * dv + b * nk * (d + dv) + 2 * b * chunk * nk)
    assert peak is not None and peak <= bound < b * nq * nk * 4 / 8, (peak, bound)


def test_k_larger_than_keys_is_rejected_at_call():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"k=26 exceeds the number of keys Nk=25; accepted 1\.\.Nk"):
        build_attention("topk", k=26)(q, k, v)


def reference_topk(q, k, v, top, scale=1.0):
    """float64 ExactTopKAttention: query * softmax_temp, topk indices, scattered mask, softmax over the rest."""
    qk = (q.double() * scale) @ k.double().transpose(1, 2)
    _, topk_idx = torch.topk(qk, top, dim=-1, sorted=False)
    non_topk = torch.ones_like(qk, dtype=torch.bool).scatter_(-1, topk_idx, False)
    return torch.softmax(qk.masked_fill(non_topk, float("-inf")), dim=-1) @ v.double()


@pytest.mark.parametrize("b,nq,nk,d,dv,top", [(1, 4096, 1024, 32, 128, 128), (2, 300, 77, 16, 8, 9)])
def test_equals_the_reference_reading(b, nq, nk, d, dv, top):
    # BigGAN's shape at budget 1/8 (k = 128, the prefilter path on CPU) and an odd shape; 1e-5 (fp32 vs float64).
    q, k, v = gaussian_qkv(b, nq, nk, d, dv, seed=4)
    q = q / d**0.25  # logit std ~ d^0.25 ~ 2.4 at d = 32
    assert build_attention("topk").resolve(nq, nk, d)["k"] == (128 if nk == 1024 else 9)
    assert rel_err(build_attention("topk")(q, k, v, scale=0.9), reference_topk(q, k, v, top, 0.9)) < 1e-5


# Relative error of HazyResearch ExactTopKAttention(128, softmax_temp=1) (deterministic: the same for seeds 0-4) on
# bench.regimes isotropic-diffuse at B=1, 4096 x 1024, d=32, dv=128, regime seed 0; see BENCHMARKS.md
# "Published backends vs the authors' code".
REFERENCE_MEAN_ERROR = 1.2402


def test_mean_error_matches_the_authors_code():
    errors = errors_over_seeds("topk", {}, *regime_qkv("isotropic-diffuse", batch=1), seeds=[0])  # seed-free
    assert abs(sum(errors) / len(errors) / REFERENCE_MEAN_ERROR - 1) < 0.10, errors
