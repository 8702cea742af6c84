"""Thinformer against a plain reading of the authors' code, given the same random draws.

The plain reading below is written from microsoft/thinformer thinformer/thinformer.py:
- lines 28-38 log4_largest_power_of_four; lines 219-277 khcompress (standard thinning to the largest
  power of four n, every (Nk // n)-th pair; nothing more when n < 4^(g+1); log4(n) - g rounds,
  halve_prob = delta / 4^(g+1) / rounds / n);
- lines 167-216 _khcompress (shift = max |k|^2, b = max |v| entry; buckets of 4^(g+1) doubling per
  round) and lines 41-68 exp_kernel (exp(k.k' - shift) (v.v' + b^2));
- lines 71-117 halve_K (pairs (2i, 2i+1); threshold u_i |d_i| max_{j<=i} |d_j| with u_i uniform on
  [-L, L), L = 0.5 + log(2 s / (halve_prob s^2)); swap when the threshold is <= the running signed sum's
  inner product with d_i; one fair coin per round flips every choice) and lines 120-164 halve;
- lines 335-390 forward (keys scaled by sqrt(scale) before compression and again after; full softmax);
- examples/biggan/biggan_models/model_thinformer.py line 82 (ThinformerAttention(g=config.g, scale=1))
  and configs/biggan-deep-{128,512}-config.json ("g": 1, "g": 2).
The reference numbers of the last test were measured by running that code (BENCHMARKS.md).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from attention_inputs import BIGGAN, ODD, clustered_qkv, errors_over_seeds, exact, qkv, rel_err

from bench.regimes import regime_qkv
from gan.attention import build_attention


def plain_halve(keys, values, shift, b_sqd, uniforms, coin):
    """Kernel halving of one bucket (s points) in float64 -> kept indices (s/2,)."""
    kernel = torch.exp(keys @ keys.t() - shift) * (values @ values.t() + b_sqd)
    pairs = keys.shape[0] // 2
    even, odd = torch.arange(0, 2 * pairs, 2), torch.arange(1, 2 * pairs, 2)
    inner = kernel[even][:, even] - kernel[even][:, odd] - kernel[odd][:, even] + kernel[odd][:, odd]  # <d_i, d_j>
    norms = inner.diagonal().sqrt()
    signs = torch.ones(pairs, dtype=torch.float64)  # +1: keep 2i, -1: keep 2i + 1
    swaps = [False]
    for i in range(1, pairs):
        running = (signs[:i] * inner[:i, i]).sum()  # <sum_{j<i} sign_j d_j, d_i>
        threshold = uniforms[i] * norms[i] * norms[: i + 1].max()
        swap = bool(threshold <= running)
        swaps.append(swap)
        signs[i] = -1.0 if swap else 1.0
    chosen = torch.tensor(swaps) ^ bool(coin)
    return even + chosen.long()


def plain_thinformer(q, k, v, scale, g, draws, delta=0.5):
    b, nk = k.shape[0], k.shape[1]
    log4_n = (nk.bit_length() - 1) // 2
    n = 4**log4_n
    keys = (k.double() * math.sqrt(scale))[:, : n * (nk // n) : nk // n]
    values = v.double()[:, : n * (nk // n) : nk // n]
    outs = []
    for i in range(b):
        kc, vc = keys[i], values[i]
        if n >= 4 ** (g + 1):
            rounds = log4_n - g
            halve_prob = delta / 4 ** (g + 1) / rounds / n
            shift = (kc**2).sum(-1).max()
            b_sqd = vc.abs().max() ** 2
            bucket = 4 ** (g + 1)
            for r in range(rounds):
                kept = []
                for a in range(kc.shape[0] // bucket):
                    lo = a * bucket
                    u = draws[r].uniforms[i, a].double()
                    bound = 0.5 + math.log(2 * bucket / (halve_prob * bucket * bucket))
                    assert (u.abs() <= bound).all()  # uniforms live on [-L, L)
                    kept.append(
                        lo + plain_halve(kc[lo : lo + bucket], vc[lo : lo + bucket], shift, b_sqd, u, draws[r].coin)
                    )
                kept = torch.cat(kept)
                kc, vc = kc[kept], vc[kept]
                bucket *= 2
        logits = q[i].double() @ (kc * math.sqrt(scale)).t()
        outs.append(torch.softmax(logits, -1) @ vc)
    return torch.stack(outs)


def seeded_draws(seed, b, nk, g, delta=0.5):
    """The draws after ``torch.manual_seed(seed)`` in the reference's order and layout, drawn here rather than read
    from the backend: per halving round, uniforms on [-L, L) laid out (buckets, images, pairs) (the BigGAN script
    passes images as heads), then one fair coin. -> [(uniforms (B, buckets, pairs), coin)] per round."""
    gen = torch.Generator().manual_seed(seed)
    log4_n = (nk.bit_length() - 1) // 2
    n, size = 4**log4_n, 4 ** (g + 1)
    if n < size:
        return []
    halve_prob = delta / size / (log4_n - g) / n
    rounds = []
    for r in range(log4_n - g):
        bound = 0.5 + math.log(2 * size / (halve_prob * size * size))
        uniforms = torch.empty(n // 2**r // size, b, size // 2).uniform_(-bound, bound, generator=gen)
        coin = torch.empty(1, dtype=torch.bool).bernoulli_(generator=gen)
        rounds.append(SimpleNamespace(uniforms=uniforms.transpose(0, 1), coin=coin))
        size *= 2
    return rounds


@pytest.mark.parametrize(
    "shape, params",
    [
        (BIGGAN, {"g": 2}),  # the BigGAN-deep-512 setting
        (BIGGAN, {"g": 1}),  # the BigGAN-deep-128/256 setting
        (ODD, {"g": 0}),  # Nk = 77: standard thinning to 64, then 3 halvings to 8
        (ODD, {"g": 1, "delta": 0.1}),
        ((2, 50, 300, 16, 8), {"g": 1}),  # fewer queries than keys, stride 4 to 64 keys
    ],
)
def test_parity_with_the_plain_reading(shape, params):
    q, k, v = clustered_qkv(*shape, logit_std=4.0, seed=1)
    attn = build_attention("thinformer", seed=3, redraw=False, **params)
    out = attn(q, k, v, scale=1.0)
    draws = seeded_draws(3, shape[0], shape[2], params["g"], params.get("delta", 0.5))
    assert out.shape == (shape[0], shape[1], shape[4])
    ref = plain_thinformer(q, k, v, 1.0, params["g"], draws, delta=params.get("delta", 0.5))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_other_scales():
    q, k, v = qkv(*ODD, logit_std=2.0, seed=4)
    attn = build_attention("thinformer", g=0, redraw=False)
    draws = seeded_draws(0, ODD[0], ODD[2], 0)
    torch.testing.assert_close(
        attn(q, k, v, scale=0.3).double(), plain_thinformer(q, k, v, 0.3, 0, draws), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="scale > 0"):
        attn(q, k, v, scale=-1.0)


def test_budget_resolution_memory_and_budget_one():
    nq, nk, d = 4096, 1024, 32
    expected = {1 / 32: (0, 32), 1 / 8: (2, 128), 1 / 4: (3, 256), 1.0: (5, 1024)}
    for budget, (g, coreset) in expected.items():
        attn = build_attention("thinformer", budget=budget)
        assert (attn.resolve(nq, nk, d)["g"], attn.resolve(nq, nk, d)["coreset"]) == (g, coreset)
        assert attn.score_entries(nq, nk, d) <= budget * nq * nk
    assert build_attention("thinformer").resolve(nq, nk, d)["g"] == 2  # default budget 1/8: the 512 setting
    # Budget 1 at a power-of-4 Nk keeps every key: exact attention.
    q, k, v = clustered_qkv(*BIGGAN, logit_std=4.0, seed=0)
    assert rel_err(build_attention("thinformer", budget=1.0)(q, k, v), exact(q, k, v)) < 1e-4
    # Otherwise standard thinning to the largest power of 4 drops keys even at budget 1 (as the reference).
    assert build_attention("thinformer", budget=1.0).resolve(300, 77, 16)["coreset"] == 64


# Mean relative error vs exact over seeds 0-4 of the authors' ThinformerAttention(g=2, scale=1)
# (thinformer.py, run eagerly after torch.manual_seed(seed)) on bench.regimes.regime_qkv("featuremap-smooth",
# batch=1); see BENCHMARKS.md.
REFERENCE_MEAN_ERROR = 0.4909


def test_mean_error_matches_the_authors_code():
    # BigGAN's shape: 4096 queries, 1024 keys, d 32, dv 128
    errors = errors_over_seeds("thinformer", {"g": 2}, *regime_qkv("featuremap-smooth", batch=1))
    assert abs(sum(errors) / 5 - REFERENCE_MEAN_ERROR) <= 0.1 * REFERENCE_MEAN_ERROR, errors
