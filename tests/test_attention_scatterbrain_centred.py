"""Scatterbrain: the sparse + low-rank estimator computed right, exact on full support, vs Performer."""

import json

import pytest
import torch
from attention_inputs import cluster_valued_qkv, clustered_peak_bound, exact, peak_bytes, qkv, rel_err, support_mask
from attention_inputs import clustered_qkv as _clustered_qkv

from gan.attention import build_attention
from gan.attention.parts.random_features import draw_orthogonal_projection, favor_log_features


def clustered_qkv(b=2, nq=512, nk=128, d=16, dv=8, logit_std=2.0, seed=0):
    return _clustered_qkv(b, nq, nk, d, dv, logit_std, n_centres=16, seed=seed)


@pytest.mark.parametrize(
    "params", [{"budget": 1.0}, {"n_hashes": 4, "q_cluster_size": 256, "k_cluster_size": 64, "num_features": 16}]
)
def test_complete_support_is_exact(params):
    # Every pair in the support (once, though met in 4 rounds): the low-rank terms cancel (1e-4).
    q, k, v = qkv()
    assert rel_err(build_attention("scatterbrain-centred", **params)(q, k, v, scale=0.9), exact(q, k, v, 0.9)) < 1e-4


def centred_favor_estimate(q, k, proj, scale):
    """(B,Nq,Nk) float64 FAVOR+ estimate of exp(scale q.k) from features of per-element centred q, k:
    q.k = (q - qm).(k - km) + q.km + qm.k - qm.km, the last three terms exact."""
    qm, km = q.mean(1, keepdim=True), k.mean(1, keepdim=True)
    lq = favor_log_features(q - qm, proj, scale).double() + scale * (q @ km.transpose(1, 2)).double()
    lk = favor_log_features(k - km, proj, scale).double() + scale * ((k - km) @ qm.transpose(1, 2)).double()
    return lq.exp() @ lk.exp().transpose(1, 2)


def test_centred_kernel_estimate_is_unbiased_and_lower_variance():
    # Inputs with a large common mean (|mean| 3.4, as real activations may have). Over 400 seeds of 32
    # features, the centred estimate of exp(q.k) must be unbiased: mean ratio to the truth within 0.06
    # of 1 on every pair (Monte-Carlo std of that mean ~0.014). Its RMS relative error (0.27) must be
    # under half that of plain FAVOR+ on the raw inputs, whose heavy tail leaves its draws far below
    # the truth (RMS ~1.0); fails if the centring correction is wrong or dropped.
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(1, 1, 8, generator=g)
    q, k = torch.randn(1, 6, 8, generator=g) * 0.3 + mean, torch.randn(1, 5, 8, generator=g) * 0.3 + mean
    truth = (q.double() @ k.double().transpose(1, 2)).exp()
    centred, plain = [], []
    for seed in range(400):
        proj = draw_orthogonal_projection(32, 8, seed)
        centred.append(centred_favor_estimate(q, k, proj, 1.0) / truth)
        plain.append(
            favor_log_features(q, proj, 1.0).double().exp()
            @ favor_log_features(k, proj, 1.0).double().exp().transpose(1, 2)
            / truth
        )
    centred, plain = torch.stack(centred), torch.stack(plain)
    assert (centred.mean(0) - 1).abs().max() < 0.06
    assert (centred - 1).square().mean().sqrt() < 0.5 * (plain - 1).square().mean().sqrt()


def test_each_batch_element_hashed_and_estimated_on_its_own():
    # Every statistic (norms, means, centroids, cluster sums) is per batch element: element 1 alone
    # must give the output it gets next to element 0 (1e-5: only matmul round-off may differ), with
    # padding (250 queries in clusters of 16).
    q, k, v = qkv(nq=250, nk=62, logit_std=2.0)
    attn = build_attention(
        "scatterbrain-centred", n_hashes=3, q_cluster_size=16, k_cluster_size=4, num_features=16, seed=1
    )
    together = attn(q, k, v)
    alone = attn(q[1:], k[1:], v[1:])
    assert rel_err(alone[0], together[1].double()) < 1e-5


@pytest.mark.parametrize("nq,nk", [(256, 64), (250, 62)])
def test_matches_dense_sparse_plus_low_rank_estimator(nq, nk):
    # The estimator written densely in float64: est everywhere, exp(score) on the support.
    # Must match to 1e-4 (fp32 vs fp64); fails on a wrong correction, double counting or padding.
    q, k, v = qkv(nq=nq, nk=nk, logit_std=2.0)
    scale, m = 0.8, 32
    attn = build_attention(
        "scatterbrain-centred", n_hashes=3, q_cluster_size=16, k_cluster_size=4, num_features=m, seed=2, calibrate=False
    )
    out = attn(q, k, v, scale=scale)
    proj = attn.projection(m, q.shape[2], q.device)
    est = centred_favor_estimate(q, k, proj, scale)
    weights = torch.where(
        support_mask(attn.layout(q, k, scale), nq, nk), (q.double() @ k.double().transpose(1, 2) * scale).exp(), est
    )
    reference = (weights @ v.double()) / weights.sum(-1, keepdim=True)
    assert rel_err(out, reference) < 1e-4


def test_matches_when_low_rank_part_is_near_exact():
    # Low logits and many features make FAVOR+ nearly exact; Scatterbrain must then be too. Values
    # get a common offset so the output is not a near-zero average; 1e-2 is ~5x the Monte-Carlo
    # error of 4096 features at logit std 0.3.
    q, k, v = qkv(logit_std=0.3, d=8)
    v = v + 2.0
    attn = build_attention("scatterbrain-centred", num_features=4096, q_cluster_size=64, k_cluster_size=16, n_hashes=1)
    assert rel_err(attn(q, k, v), exact(q, k, v)) < 1e-2


@pytest.mark.parametrize("regime", ["isotropic", "clustered"])
def test_never_much_worse_than_performer_with_same_features(regime):
    # Same seed -> the same projection for both. Averaged over 3 seeds, Scatterbrain's error must be
    # at most 1.05x Performer's + 0.01: the exact scores on the support only remove estimator noise.
    errors = {"scatterbrain-centred": 0.0, "performer": 0.0}
    for seed in range(3):
        q, k, v = qkv(nq=512, nk=128, logit_std=2.0, seed=seed) if regime == "isotropic" else clustered_qkv(seed=seed)
        ref = exact(q, k, v)
        errors["performer"] += rel_err(build_attention("performer", num_features=32, seed=seed)(q, k, v), ref)
        sb = build_attention(
            "scatterbrain-centred", num_features=32, n_hashes=2, q_cluster_size=32, k_cluster_size=8, seed=seed
        )
        errors["scatterbrain-centred"] += rel_err(sb(q, k, v), ref)
    assert errors["scatterbrain-centred"] <= 1.05 * errors["performer"] + 0.03


@pytest.mark.parametrize("nq,nk", [(4096, 1024), (2048, 512), (16384, 4096)])
@pytest.mark.parametrize("budget", [1 / 32, 1 / 8, 1 / 4])
def test_budget_split_within_budget(nq, nk, budget):
    attn = build_attention("scatterbrain-centred", budget=budget)
    plan = attn.resolve(nq, nk, 32)
    json.dumps(plan)
    assert plan["num_features"] >= 1
    assert attn.score_entries(nq, nk, 32) <= budget * nq * nk


@pytest.mark.parametrize("nq,nk", [(4096, 1024), (65536, 16384), (7, 3)])
def test_full_budget_holds_the_dense_matrix_and_no_more(nq, nk):
    # Budget 1: the support is complete, so random features would cancel; none are drawn and the entries
    # are Nq*Nk exactly (fails if a feature is kept: that adds Nq+Nk entries over the budget).
    attn = build_attention("scatterbrain-centred", budget=1.0)
    assert attn.resolve(nq, nk, 32)["num_features"] == 0
    assert attn.score_entries(nq, nk, 32) <= nq * nk


def test_budget_features_capped_where_the_correction_would_cost_as_much_as_exact():
    # Each support pair's correction costs num_features multiply-adds: budget-resolved features stop at
    # 256 (at Nq=65536, budget 1/4 the budget alone would give 830); small shapes and explicit values are untouched.
    big = build_attention("scatterbrain-centred", budget=1 / 4).resolve(65536, 16384, 32)
    small = build_attention("scatterbrain-centred", budget=1 / 4).resolve(4096, 1024, 32)
    assert big["num_features"] == 256
    assert 1 <= small["num_features"] < 256
    assert (
        build_attention("scatterbrain-centred", budget=1 / 4, num_features=512).resolve(65536, 16384, 32)[
            "num_features"
        ]
        == 512
    )
    for shapes in [(65536, 16384, 32), (4096, 1024, 32)]:
        attn = build_attention("scatterbrain-centred", budget=1 / 4)
        assert attn.score_entries(*shapes) <= shapes[0] * shapes[1] / 4


def test_fixed_estimator_weights_are_unbiased():
    # The fixed split (calibrate=False) weights every pair with exp(s) on the support and the centred
    # FAVOR+ estimate elsewhere (its plain reading is checked against the module above). Over 1000 seeds
    # those weights must average to exp(q.k) on every pair: within 4 Monte-Carlo standard errors.
    q, k, _ = qkv(b=1, nq=16, nk=8, d=8, logit_std=0.5)
    q, k = q + 0.4, k + 0.4
    truth = (q.double() @ k.double().transpose(1, 2)).exp()
    support = torch.rand(1, 16, 8, generator=torch.Generator().manual_seed(0)) < 0.3
    draws = torch.stack(
        [
            torch.where(support, truth, centred_favor_estimate(q, k, draw_orthogonal_projection(8, 8, s), 1.0))
            for s in range(1000)
        ]
    )
    standard_error = draws.std(0) / len(draws) ** 0.5
    assert ((draws.mean(0) - truth).abs() <= 4 * standard_error + 1e-12).all()


def _errors(name, inputs, budget=1 / 8, **params):
    return sum(
        rel_err(build_attention(name, budget=budget, seed=s, **params)(q, k, v), exact(q, k, v))
        for s, (q, k, v) in enumerate(inputs)
    )


@pytest.mark.parametrize("logit_std", [3.0, 6.0])
def test_never_worse_than_its_sparse_part(logit_std):
    # Isotropic logits at 3 and 6: the FAVOR+ residual is noise there. The calibrated estimator keeps a
    # residual only where the probes show it helps, so over 3 seeds its error must be at most its sparse
    # part's alone (smyrf-topkeys at the whole budget) plus 2% (the probes' sampling noise).
    inputs = [qkv(nq=2048, nk=512, d=32, dv=16, logit_std=logit_std, seed=s) for s in range(3)]
    assert _errors("scatterbrain-centred", inputs) <= 1.02 * _errors("smyrf-topkeys", inputs)


def test_residual_kept_where_it_helps():
    # Diffuse logits: the support holds a small part of the mass, and the residual carries the rest, so
    # the calibrated estimator must be well under its sparse part (0.7x) and under the fixed split too.
    inputs = [qkv(nq=2048, nk=512, d=32, dv=16, logit_std=1.0, seed=s) for s in range(3)]
    calibrated = _errors("scatterbrain-centred", inputs)
    assert calibrated < 0.7 * _errors("smyrf-topkeys", inputs)
    assert calibrated < _errors("scatterbrain-centred", inputs, calibrate=False)


def test_calibrated_batch_elements_are_independent():
    # The candidate and its weight are chosen per batch element: element 1 alone must get what it gets
    # next to an element of another kind (1e-5), even when the two choose differently.
    a = qkv(b=1, nq=2048, nk=512, d=32, dv=16, logit_std=1.0, seed=1)
    b = clustered_qkv(b=1, nq=2048, nk=512, d=32, dv=16, logit_std=6.0, seed=1)
    q, k, v = (torch.cat([x, y]) for x, y in zip(a, b, strict=False))
    attn = build_attention("scatterbrain-centred", budget=1 / 8, seed=3)
    together = attn(q, k, v)
    assert rel_err(attn(*b)[0], together[1].double()) < 1e-5
    assert rel_err(attn(*a)[0], together[0].double()) < 1e-5


@pytest.mark.parametrize(
    "nq,nk,budget,dv",
    [(4096, 1024, 1 / 32, 8), (4096, 1024, 1 / 8, 8), (4096, 1024, 1 / 4, 8), (1024, 256, 1 / 32, 8),
     (4096, 1024, 1 / 8, 128), (1024, 256, 1 / 32, 128)],
)
def test_peak_memory_is_the_score_entries_plus_input_copies(nq, nk, budget, dv):
    # Allocator peak of one call (public profiler API), less the output, within 4 bytes * (score_entries +
    # four copies of q, k, v + three output-sized accumulators) plus the bookkeeping score_entries does not count
    # (``clustered_peak_bound``: both candidate layouts' int64 rows and the union's bit per query and key). Fails
    # if an (R, Nq, C) or (Nq, Nk) float table appears (2M+ entries at 4096 x 1024); at 1024 x 256 the probes go
    # in chunks; dv = 128 is BigGAN's, where the accumulators weigh most.
    d = 32
    q, k, v = qkv(b=1, nq=nq, nk=nk, d=d, dv=dv, logit_std=2.0)
    attn = build_attention("scatterbrain-centred", budget=budget)
    attn(q, k, v)
    peak, _ = peak_bytes(lambda: attn(q, k, v))
    plans = [plan for plan in (attn.plan(nq, nk)[0], attn.sparse_plan(nq, nk)) if plan is not None]
    bound = clustered_peak_bound(attn.score_entries(nq, nk, d), nq, nk, d, dv,
                                 [(plan.n_hashes, plan.n_clusters) for plan in plans])
    assert peak - 4 * nq * dv <= bound
    assert attn.score_entries(nq, nk, d) <= budget * nq * nk


def test_a_residual_needs_three_standard_errors_of_probe_gain():
    # clearly_better: per batch element the mean gain, or -inf unless it exceeds 3 standard errors of the
    # per-probe gains (64 probes). Gains of mean 2 and 4 standard errors (same spread): only the second counts.
    from gan.attention.parts.probe_calibration import EVIDENCE, clearly_better

    assert EVIDENCE == 3.0
    noise = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = (noise - noise.mean()) / noise.std()  # gains' standard error is exactly 1/8
    baseline = torch.ones(2, 64, dtype=torch.float64)
    candidate = baseline - torch.stack([noise + 2 / 8, noise + 4 / 8])
    result = clearly_better(baseline, candidate)
    assert result[0] == float("-inf") and result[1] == pytest.approx(0.5)


def test_probe_errors_equal_the_plain_reading():
    # stacked_errors expands |(num_s + lam num_r) / (den_s + lam den_r) - truth|^2 into dot products, for several
    # candidates whose lam grids differ in length (lam_table pads the shorter); the plain reading forms every lam's
    # output. Equal to 1e-5 relative (fp32 sums), empty supports included; the padded entries repeat the grid's first.
    from gan.attention.parts.probe_calibration import FAVOR_WEIGHTS, MEAN_FIELD_WEIGHTS, lam_table, stacked_errors

    g = torch.Generator().manual_seed(0)
    weights = torch.rand(2, 16, 64, generator=g) ** 4
    truth = (weights @ (v := torch.randn(2, 64, 8, generator=g))) / weights.sum(-1, keepdim=True)
    grids = (MEAN_FIELD_WEIGHTS, FAVOR_WEIGHTS)
    sums, plains = {"inside": [], "outside": []}, []
    for grid in grids:
        support = torch.rand(2, 16, 64, generator=g) < 0.2
        support[0, 0] = False  # a probe whose support is empty
        inside, outside = weights * support, torch.rand(2, 16, 64, generator=g) * 0.1 * ~support
        for name, table in (("inside", inside), ("outside", outside)):
            sums[name].append(torch.cat([table @ v, table.sum(-1, keepdim=True)], -1))  # (B, p, dv + 1)
        lam = torch.tensor(grid, dtype=torch.float64).view(-1, 1, 1, 1)
        plain = ((inside @ v).double() + lam * (outside @ v).double()) / (
            inside.sum(-1, keepdim=True).double() + lam * outside.sum(-1, keepdim=True).double()
        ).clamp_min(1e-30)
        plains.append((plain - truth.double()).square().sum(-1).transpose(0, 1))  # (B, L, p)
    got = stacked_errors(torch.stack(sums["inside"], 1), torch.stack(sums["outside"], 1), truth,
                         lam_table(grids, weights.device))  # (B, K, L, p)
    assert got.shape == (2, 2, len(MEAN_FIELD_WEIGHTS), 16)
    for i, plain in enumerate(plains):
        width = plain.shape[1]
        assert torch.allclose(got[:, i, :width], plain, rtol=1e-5, atol=1e-9)
        padded = plain[:, :1].expand(-1, got.shape[2] - width, -1)
        assert torch.allclose(got[:, i, width:], padded, rtol=1e-5, atol=1e-9)


def test_small_shapes_are_calibrated_in_chunks_within_budget():
    # Nq=1024, Nk=256 at 1/32 (8 keys per query): the probes' tables are scored a chunk at a time, so the
    # calibration runs (it did not when all probes' tables had to fit at once) and stays within the budget.
    # Diffuse logits (std 1, d=16): the calibrated estimate must beat the fixed unbiased split and its own
    # sparse part by 2x, and be no worse than performer-centred-shrunk (mean of 3 seeds).
    nq, nk, budget = 1024, 256, 1 / 32
    attn = build_attention("scatterbrain-centred", budget=budget)
    assert attn.probe_count(nq, nk) >= 8 and attn.probe_chunk(nq, nk) >= 1
    assert attn.score_entries(nq, nk, 16) <= budget * nq * nk
    inputs = [qkv(nq=nq, nk=nk, d=16, dv=16, logit_std=1.0, seed=s) for s in range(3)]
    calibrated = _errors("scatterbrain-centred", inputs, budget)
    assert calibrated < 0.5 * _errors("scatterbrain-centred", inputs, budget, calibrate=False)
    assert calibrated < 0.5 * _errors("smyrf-topkeys", inputs, budget)
    assert calibrated <= _errors("performer-centred-shrunk", inputs, budget)


def test_no_worse_than_smyrf_topkeys_where_it_takes_its_sampled_mix():
    # Keys carrying their cluster's value, logit std 1: smyrf-topkeys takes its sampled mix there, and the mean-field
    # residual on the same whole support (scatterbrain-centred's candidate) must do no worse over 2 seeds.
    inputs = [cluster_valued_qkv(seed=s) for s in range(2)]
    assert _errors("scatterbrain-centred", inputs) <= _errors("smyrf-topkeys", inputs)
