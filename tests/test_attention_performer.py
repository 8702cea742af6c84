"""Performer (FAVOR+) and the random-feature helper: unbiasedness, convergence, stability, contract, and parity
with the public implementations' stabilised form.

The stabilised reading below follows HazyResearch/scatterbrain ``src/models/attention/performer_utils.py``
(softmax_kernel lines 29-58: data_normalizer, ratio, per-query / all-keys max shift, + eps; linear_attention
lines 84-90: D_inv = 1 / (q . k_sum + eps)) as ``performer_attention.py`` PerformerAttention.forward (lines 63-115,
softmax_eps 1e-4, normalization_eps 1e-6) calls it; the projection is gaussian_orthogonal_random_matrix
(``projection_utils.py``), shared here as ``draw_orthogonal_projection``.
"""

from __future__ import annotations

import math

import pytest
import torch
from attention_inputs import BIGGAN, ODD, errors_over_seeds, peak_bytes, rel_err

from bench.regimes import regime_qkv
from gan.attention import build_attention
from gan.attention.parts.random_features import draw_orthogonal_projection, favor_log_features
from gan.attention.published import performer


def qkv(b=2, nq=100, nk=25, d=12, dv=8, logit_std=0.5, seed=0):
    """Nq = 4 Nk, sizes not multiples of d; q, k scaled so the logits have about ``logit_std``."""
    gen = torch.Generator().manual_seed(seed)
    gain = (logit_std / math.sqrt(d)) ** 0.5
    return (
        torch.randn(b, nq, d, generator=gen) * gain,
        torch.randn(b, nk, d, generator=gen) * gain,
        torch.randn(b, nk, dv, generator=gen),
    )


def exact(q, k, v, scale=1.0):
    return torch.softmax(scale * q.double() @ k.double().transpose(1, 2), dim=-1) @ v.double()


def rel_error(out, ref):
    return float((out.double() - ref).norm() / ref.norm())


def test_projection_is_seeded_block_orthogonal_with_gaussian_rows():
    proj = draw_orthogonal_projection(40, 16, seed=7)
    assert proj.shape == (40, 16) and proj.dtype == torch.float32
    assert torch.equal(proj, draw_orthogonal_projection(40, 16, seed=7))
    assert not torch.equal(proj, draw_orthogonal_projection(40, 16, seed=8))
    unit = torch.nn.functional.normalize(proj[:16], dim=1)
    torch.testing.assert_close(unit @ unit.t(), torch.eye(16), atol=1e-5, rtol=0)  # one block: orthonormal directions
    # Rows are marginally N(0, I_d): E|w|^2 = d. 4000 rows of chi^2_16 (sd sqrt(32)): sd of the mean 0.09, allow 0.5.
    assert abs(draw_orthogonal_projection(4000, 16, seed=0).square().sum(1).mean().item() - 16) < 0.5


def test_kernel_estimate_is_unbiased():
    # n = 4000 independent estimators (one orthogonal block of d = 8 features each, fixed seed):
    # their mean must lie within 4 standard errors of exp(q.k) for every pair (an unsigned QR or
    # a wrong -|x|^2/2 term biases it by 5-10 SE). The SE itself must be < 5% so the test has power.
    d, n = 8, 4000
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 3, d, generator=gen) * 0.3, torch.randn(1, 2, d, generator=gen) * 0.3
    proj = draw_orthogonal_projection(n * d, d, seed=5)
    per_block = 0.5 * math.log(n * d) - 0.5 * math.log(d)  # undo the 1/sqrt(m) of the whole draw, keep 1/sqrt(d)
    lx = (favor_log_features(x, proj, 1.0) + per_block).view(3, 1, n, d)
    ly = (favor_log_features(y, proj, 1.0) + per_block).view(1, 2, n, d)
    estimates = torch.exp(lx + ly).sum(-1).double()  # (3, 2, n)
    truth = torch.exp(x[0].double() @ y[0].double().t())
    standard_error = estimates.std(-1) / math.sqrt(n)
    assert (standard_error / truth).max() < 0.05
    assert ((estimates.mean(-1) - truth).abs() / standard_error).max() < 4


def test_log_stable_form_equals_the_plain_favor_estimator():
    # The stabilised evaluation must be the same estimator as phi(q)(phi(k)^T v)/(phi(q)phi(k)^T 1)
    # computed naively in float64 with the same features (1e-5: fp32 vs fp64 on O(1) outputs).
    q, k, v = qkv(logit_std=2.0)
    scale, m = 0.7, 48
    attn = build_attention("performer", num_features=m, seed=4, eps=0, normalization_eps=0)
    proj = draw_orthogonal_projection(m, q.shape[-1], seed=4)

    def phi(x):  # float64 FAVOR+ features exp(w.x' - |x'|^2/2) / sqrt(m), x' = sqrt(scale) x
        x = x.double() * math.sqrt(scale)
        return torch.exp(x @ proj.double().t() - 0.5 * x.square().sum(-1, keepdim=True)) / math.sqrt(m)

    phi_q, phi_k = phi(q), phi(k)
    plain = (phi_q @ (phi_k.transpose(1, 2) @ v.double())) / (phi_q @ phi_k.sum(1, keepdim=True).transpose(1, 2))
    torch.testing.assert_close(attn(q, k, v, scale=scale).double(), plain, atol=1e-5, rtol=1e-5)


def test_query_chunks_give_the_unchunked_result(monkeypatch):
    # Queries go through in chunks of QUERY_CHUNK (4096: never reached by the small tests); with
    # chunks of 7 (100 queries: 14 full chunks and a tail of 2) every query must get the same
    # output up to fp32 rounding (1e-6: only the BLAS blocking of the (C, m) logits changes).
    q, k, v = qkv()
    attn = build_attention("performer", num_features=48, seed=2)
    whole = attn(q, k, v, scale=0.8)
    monkeypatch.setattr(performer, "QUERY_CHUNK", 7)
    torch.testing.assert_close(attn(q, k, v, scale=0.8), whole, atol=1e-6, rtol=0)


def test_peak_memory_is_linear_in_the_features():
    # FAVOR+ never forms Nq x Nk: the allocator peak of one call (bench's measurement) stays within
    # twice the budgeted feature entries in fp32 (key features, then the query-side logits and
    # their softmax) plus the output. Forming the 8 MiB score matrix, or keeping extra copies of
    # the (B, Nq, m) query features, exceeds it.
    b, nq, nk, d, dv, m = 2, 2048, 512, 16, 16, 64
    q, k, v = qkv(b=b, nq=nq, nk=nk, d=d, dv=dv)
    attn = build_attention("performer", num_features=m)
    peak, _ = peak_bytes(lambda: attn(q, k, v))  # public profiler API, output included
    bound = 4 * (2 * b * (nq + nk) * m + b * nq * dv)
    assert peak is not None and peak <= bound < b * nq * nk * 4 / 2, (peak, bound)


def test_error_falls_as_features_grow():
    # Mean relative error over 8 seeds at 16, 64, 256, 1024 features. Variance ~ 1/m predicts a
    # factor ~2 per 4x features; require each step to shrink the error by at least 1.15x
    # (measured: 0.82, 0.58, 0.40, 0.25), so a seed-independent bias or ignored num_features fails.
    q, k, v = qkv()
    ref = exact(q, k, v)
    means = [
        sum(
            rel_error(build_attention("performer", num_features=m, seed=s, eps=0, normalization_eps=0)(q, k, v), ref)
            for s in range(8)
        )
        / 8
        for m in (16, 64, 256, 1024)
    ]
    assert all(a > 1.15 * b for a, b in zip(means, means[1:], strict=False)), means
    assert means[-1] < 0.35, means


def test_logits_up_to_100_stay_finite_and_convex():
    # Peaked attention with logits up to 100: exp of raw features would overflow fp32. The output
    # must be finite and, being a convex combination of values, inside [min v, max v] per channel
    # (1e-5 slack for rounding); it is not asserted close to exact (FAVOR+ is poor when peaked).
    q, k, v = qkv(d=32, logit_std=1.0)
    q = q * 100 / (q @ k.transpose(1, 2)).abs().max()
    out = build_attention("performer", num_features=64)(q, k, v, scale=1.0)
    assert torch.isfinite(out).all()
    lo, hi = v.amin(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    # Computed in fp32 and returned in the input dtype; differs from the fp32 run only by input and
    # output rounding (2^-8 relative for bf16), so 3e-2 absolute on O(1) outputs.
    q, k, v = qkv()
    attn = build_attention("performer", num_features=32)
    out = attn(q.to(dtype), k.to(dtype), v.to(dtype), scale=1.0)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), attn(q, k, v, scale=1.0), atol=3e-2, rtol=3e-2)


def test_determinism_by_seed_and_redraw():
    q, k, v = qkv()
    a = build_attention("performer", num_features=32, seed=1)
    assert torch.equal(a(q, k, v), build_attention("performer", num_features=32, seed=1)(q, k, v))
    assert torch.equal(a(q, k, v), a(q, k, v))  # features cached, not redrawn
    assert (a(q, k, v) - build_attention("performer", num_features=32, seed=2)(q, k, v)).abs().max() > 1e-3
    r1, r2 = (build_attention("performer", num_features=32, seed=1, redraw=True) for _ in range(2))
    first, second = r1(q, k, v), r1(q, k, v)
    assert (first - second).abs().max() > 1e-3  # fresh features on every call
    assert torch.equal(first, r2(q, k, v)) and torch.equal(second, r2(q, k, v))  # same seed -> same sequence


def test_budget_resolution_and_score_entries():
    nq, nk, d = 4096, 1024, 32
    attn = build_attention("performer", budget=1 / 8)
    assert attn.resolve(nq, nk, d) == {
        "num_features": 102,
        "redraw": False,
        "eps": 1e-4,
        "normalization_eps": 1e-6,
    }  # floor(4096*1024/8 / 5120); the reference's eps
    assert attn.score_entries(nq, nk, d) <= nq * nk / 8
    assert build_attention("performer", budget=1e-6).resolve(nq, nk, d)["num_features"] == 1
    assert build_attention("performer", num_features=64, budget=1 / 8).resolve(nq, nk, d)["num_features"] == 64
    assert build_attention("performer").resolve(nq, nk, d)["num_features"] == 102  # DEFAULT_BUDGET = 1/8
    # budget 1.0 is just the largest feature count: (Nq + Nk) * m <= Nq * Nk -> m = 819
    assert build_attention("performer", budget=1.0).resolve(nq, nk, d)["num_features"] == 819


def reference_performer(q, k, v, proj, scale=1.0, eps=1e-4, normalization_eps=1e-6):
    """float64 softmax_kernel (is_query True / False) + linear_attention of the public implementations."""
    normalizer, ratio = math.sqrt(scale), proj.shape[0] ** -0.5

    def kernel(data, is_query):
        data = data.double()
        data_dash = (normalizer * data) @ proj.double().t()
        diag = (data**2).sum(-1, keepdim=True) / 2.0 * normalizer**2
        top = data_dash.amax(-1, keepdim=True) if is_query else data_dash.amax(dim=(-1, -2), keepdim=True)
        return ratio * (torch.exp(data_dash - diag - top) + eps)

    qf, kf = kernel(q, True), kernel(k, False)
    d_inv = 1.0 / (qf @ kf.sum(-2).unsqueeze(-1) + normalization_eps)
    return (qf @ (kf.transpose(1, 2) @ v.double())) * d_inv


@pytest.mark.parametrize(
    "b,nq,nk,d,dv,logit_std,scale", [(*BIGGAN, 6.0, 1.0), (*ODD, 2.0, 0.7)]
)
def test_defaults_equal_the_public_stabilised_form(b, nq, nk, d, dv, logit_std, scale):
    # BigGAN's shape at peaked logits (eps dominates there) and an odd shape, the same projection; 1e-5 (fp32).
    gen = torch.Generator().manual_seed(3)
    gain = (logit_std / math.sqrt(d)) ** 0.5
    q, k = torch.randn(b, nq, d, generator=gen) * gain, torch.randn(b, nk, d, generator=gen) * gain
    v = torch.randn(b, nk, dv, generator=gen)
    attn = build_attention("performer", seed=6)
    m = attn.resolve(nq, nk, d)["num_features"]
    ref = reference_performer(q, k, v, draw_orthogonal_projection(m, d, seed=6), scale)
    assert rel_error(attn(q, k, v, scale=scale), ref) < 1e-5


def test_eps_collapses_to_the_value_mean_at_biggan_norms():
    # |q|^2/2 ~ 14 here: every shifted feature is far below eps = 1e-4, so the default output is within 15% of
    # the plain mean of the values; the unbiased estimator (eps = 0) is not (its error against the mean is > 1).
    q, k, v = regime_qkv("clustered-peaked", batch=1)
    mean = v.mean(1, keepdim=True).expand(-1, q.shape[1], -1).double()
    assert rel_err(build_attention("performer")(q, k, v), mean) < 0.15
    assert rel_err(build_attention("performer", eps=0, normalization_eps=0)(q, k, v), mean) > 1


# Mean relative error over seeds 0-4 of HazyResearch PerformerAttention(dim_heads=32, nb_features=110,
# softmax_temp=1) built after torch.manual_seed(s), on bench.regimes featuremap-smooth at B=1, 4096 x 1024, d=32,
# dv=128, regime seed 0; measured as BENCHMARKS.md "Published backends vs the authors' code" says.
REFERENCE_MEAN_ERROR = 0.8430


def test_mean_error_matches_the_authors_code():
    errors = errors_over_seeds("performer", {"num_features": 110}, *regime_qkv("featuremap-smooth", batch=1))
    assert abs(sum(errors) / 5 / REFERENCE_MEAN_ERROR - 1) < 0.10, errors
