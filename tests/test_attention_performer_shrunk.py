"""performer-centred-shrunk: centred FAVOR+ (unbiased kernel sums) shrunk per query towards mean(v)."""

import math

import pytest
import torch
from attention_inputs import clustered_qkv, exact, peak_bytes, qkv, rel_err

from gan.attention import attention_info, build_attention
from gan.attention.parts.centred_favor import (
    FEATURE_GROUPS,
    MAX_GROUP_SIZE,
    NOISE_FACTORS,
    estimate_with_noise,
    fit_noise_factor,
    query_weights,
    summarise_keys,
)
from gan.attention.parts.random_features import draw_orthogonal_projection

NAME = "performer-centred-shrunk"


def plain_centred_favor(q, k, v, proj, scale):
    """Plain reading of the estimator, densely in float64: w ~ proj rows, x = sqrt(scale)(q - mean q),
    y = sqrt(scale)(k - mean k); est_ij = exp(scale q.mean(k) + scale mean(q).(k - mean k)) *
    mean_f exp(w_f.x_i - |x_i|^2/2) exp(w_f.y_j - |y_j|^2/2). Returns (est (B,Nq,Nk), est @ v, est @ 1)."""
    q, k, v, proj = q.double(), k.double(), v.double(), proj.double()
    qm, km = q.mean(1, keepdim=True), k.mean(1, keepdim=True)
    x, y = math.sqrt(scale) * (q - qm), math.sqrt(scale) * (k - km)
    fx = (x @ proj.t() - x.square().sum(-1, keepdim=True) / 2).exp()  # (B, Nq, m)
    fy = (y @ proj.t() - y.square().sum(-1, keepdim=True) / 2).exp()  # (B, Nk, m)
    exact_terms = scale * (q @ km.transpose(1, 2)) + scale * ((k - km) @ qm.transpose(1, 2)).transpose(1, 2)
    est = (fx @ fy.transpose(1, 2)) / proj.shape[0] * exact_terms.exp()
    return est, est @ v, est.sum(-1, keepdim=True)


def plain_group_noise(q, k, v, proj, scale):
    """Plain reading of the noise estimate in float64: feature f in group f mod G; each group's kernel sums give
    P_g with share w_g of the denominator; var = sum_g w_g |P_g - P|^2 * sum w^2 / (1 - sum w^2). -> (P, var)."""
    m = proj.shape[0]
    n_groups = max(min(FEATURE_GROUPS, m), -(-m // MAX_GROUP_SIZE))
    groups = [torch.arange(g, m, n_groups) for g in range(n_groups)]
    parts = [plain_centred_favor(q, k, v, proj[rows], scale) for rows in groups]  # per group, m_g-feature means
    num = torch.stack([len(rows) * part[1] for rows, part in zip(groups, parts, strict=True)], 2)  # (B, Nq, G, dv)
    den = torch.stack([len(rows) * part[2] for rows, part in zip(groups, parts, strict=True)], 2)  # (B, Nq, G, 1)
    estimate = num.sum(2) / den.sum(2)
    share = (den / den.sum(2, keepdim=True)).squeeze(-1)  # (B, Nq, G)
    spread = (share * (num / den - estimate.unsqueeze(2)).square().sum(-1)).sum(-1)
    w_sq = share.square().sum(-1)
    return estimate, spread * w_sq / (1 - w_sq)


def test_is_a_project_variant_of_performer():
    info = attention_info(NAME)
    assert info["published"] is False and info["variant_of"] == "performer"


@pytest.mark.parametrize("nq,nk", [(256, 64), (250, 62)])
def test_unshrunk_output_is_the_plain_centred_estimator(nq, nk):
    # shrink=False is the ratio of the centred FAVOR+ kernel sums; the same projection (drawn from the
    # seed) through the plain reading must give the same output to 1e-4 (fp32 vs fp64), non-dividing shape included.
    q, k, v = qkv(nq=nq, nk=nk, logit_std=1.0)
    q, k = q + 0.7, k + 0.7  # a shared mean, so the centring terms matter
    attn = build_attention(NAME, num_features=48, shrink=False, seed=3)
    _, num, den = plain_centred_favor(q, k, v, attn.projection(48, q.shape[2], q.device), 0.8)
    assert rel_err(attn(q, k, v, scale=0.8), num / den) < 1e-4


@pytest.mark.parametrize("num_features,dv", [(37, 4), (64, 4), (300, 4), (37, 96), (12, 64)])
def test_noise_estimate_is_the_plain_group_spread(num_features, dv):
    # The grouped, padded layout (37: groups of 5 and 4 features; 300: 10 groups of 30) must give the plain
    # reading's estimate (1e-5) and variance (1e-3: fp32 vs fp64 on a difference of near-equal terms), per query;
    # with few slots for the values' width (40 slots for dv = 96, 16 for 64) the groups' Grams go in one
    # block-diagonal product, which must give the same.
    q, k, v = qkv(nq=64, nk=32, d=8, dv=dv, logit_std=1.0)
    q, k = q + 0.5, k + 0.5
    proj = draw_orthogonal_projection(num_features, 8, seed=1)
    keys = summarise_keys(q, k, v, proj, 0.8)
    assert (keys.blocks is not None) == (dv >= 64)  # both products are checked
    estimate, var = estimate_with_noise(query_weights(q, keys), keys)
    plain_estimate, plain_var = plain_group_noise(q, k, v, proj, 0.8)
    assert rel_err(estimate, plain_estimate) < 1e-5
    assert ((var.double() - plain_var).abs() / plain_var).max() < 1e-3


def plain_shrink(estimate, var, base, kappa):
    """Positive-part James-Stein written out: base + lam (estimate - base), lam = max(0, 1 - kappa var / |gap|^2);
    kappa = 0 keeps the estimate, kappa = inf gives the base."""
    gap = estimate - base
    if kappa == 0:
        return estimate.clone()
    if math.isinf(kappa):
        return base.expand_as(estimate).clone()
    lam = (1 - kappa * var / gap.square().sum(-1)).clamp(0.0, 1.0)
    return base + lam.unsqueeze(-1) * gap


def test_noise_factor_is_the_best_on_the_probes():
    # The factor chosen (all at once) must have the smallest probe error of the shrinkages one factor at a time.
    g = torch.Generator().manual_seed(0)
    estimate, truth = torch.randn(3, 40, 6, generator=g), torch.randn(3, 40, 6, generator=g)
    var, base = torch.rand(3, 40, generator=g) * torch.rand(3, 1, generator=g) * 40, torch.randn(3, 1, 6, generator=g)
    shrunk = [plain_shrink(estimate, var, base, kappa) for kappa in NOISE_FACTORS]
    errors = torch.stack([(one - truth).square().sum((1, 2)) for one in shrunk])  # (K, B)
    chosen = fit_noise_factor(estimate, var, base, truth)  # (B, 1)
    picked = errors[[NOISE_FACTORS.index(kappa) for kappa in chosen.flatten().tolist()], range(3)]
    assert torch.allclose(picked, errors.min(0).values, rtol=1e-5)


def test_centred_kernel_sums_are_unbiased():
    # Over 1000 seeds of 16 features the plain reading's numerator and denominator must average to the
    # exact sum_j exp(q.k) v_j and sum_j exp(q.k): every entry within 4 Monte-Carlo standard errors of
    # the mean (and the mean within 5% overall); fails if a centring term is dropped or doubled (bias >> 4 se).
    q, k, v = qkv(b=1, nq=12, nk=10, d=8, dv=3, logit_std=0.5)
    q, k = q + 0.5, k + 0.5
    s = (q.double() @ k.double().transpose(1, 2)).exp()
    true_num, true_den = s @ v.double(), s.sum(-1, keepdim=True)
    nums, dens = [], []
    for seed in range(1000):
        _, num, den = plain_centred_favor(q, k, v, draw_orthogonal_projection(16, 8, seed), 1.0)
        nums.append(num)
        dens.append(den)
    for draws, truth in [(torch.stack(nums), true_num), (torch.stack(dens), true_den)]:
        standard_error = draws.std(0) / len(draws) ** 0.5
        assert ((draws.mean(0) - truth).abs() <= 4 * standard_error).all()
        assert rel_err(draws.mean(0), truth) < 0.05


@pytest.mark.parametrize("logit_std", [1.0, 3.0, 6.0])
def test_never_worse_than_the_mean_of_the_values(logit_std):
    # Plain FAVOR+ is worse than outputting mean(v) at BigGAN-like logits; the shrunk variant must not be:
    # over 3 seeds its error is at most the mean baseline's (plus 1% for the probes' sampling noise).
    errs, base = 0.0, 0.0
    for seed in range(3):
        q, k, v = qkv(nq=1024, nk=256, d=32, dv=16, logit_std=logit_std, seed=seed)
        ref = exact(q, k, v)
        errs += rel_err(build_attention(NAME, budget=1 / 8, seed=seed)(q, k, v), ref)
        base += rel_err(v.mean(1, keepdim=True).expand(-1, q.shape[1], -1), ref)
    assert errs <= 1.01 * base


def test_shrinkage_vanishes_where_the_features_are_accurate():
    # Tiny logits and 512 features: FAVOR+ is accurate (error ~0.025 against the mean baseline's ~0.09);
    # the shrunk output must keep it: at most 1.05x the unshrunk error and under 0.4x the mean
    # baseline. Fails if the shrinkage pulls towards mean(v) regardless of the noise.
    q, k, v = qkv(nq=512, nk=128, d=8, logit_std=0.1)
    v = v + torch.linspace(-1, 1, 128).view(1, -1, 1)
    ref = exact(q, k, v)
    err = rel_err(build_attention(NAME, num_features=512)(q, k, v), ref)
    unshrunk = rel_err(build_attention(NAME, num_features=512, shrink=False)(q, k, v), ref)
    assert err <= 1.05 * unshrunk and err < 0.4 * rel_err(v.mean(1, keepdim=True).expand(-1, 512, -1), ref)


def test_shared_mean_features_beat_the_mean():
    # Clustered inputs around one shared mean (like post-ReLU maps): the centred features carry real
    # signal, so the variant must be clearly better than mean(v) (under 0.9x).
    q, k, v = clustered_qkv(nq=1024, nk=256, logit_std=2.0)
    q, k = q + 1.0, k + 1.0
    ref = exact(q, k, v)
    err = rel_err(build_attention(NAME, budget=1 / 4)(q, k, v), ref)
    assert err < 0.9 * rel_err(v.mean(1, keepdim=True).expand(-1, 1024, -1), ref)


def test_peak_memory_within_the_score_entries():
    # The features are (Nq + Nk) * m entries; the query side goes in chunks and the probes' exact rows
    # fit in its share. Measured peak (public profiler API), less the output, must stay within
    # 4 bytes * B * score_entries * 1.25 (slack for small bookkeeping), and far under the dense matrix.
    b, nq, nk, dv = 1, 4096, 1024, 8
    q, k, v = qkv(b=b, nq=nq, nk=nk, d=32, dv=dv, logit_std=2.0)
    attn = build_attention(NAME, budget=1 / 8)
    attn(q, k, v)  # draws the projection
    peak, _ = peak_bytes(lambda: attn(q, k, v))
    bound = 1.25 * 4 * b * attn.score_entries(nq, nk, 32)
    assert peak - 4 * b * nq * dv <= bound < 4 * b * nq * nk / 4, (peak, bound)


