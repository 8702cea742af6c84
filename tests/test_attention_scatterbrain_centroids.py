"""scatterbrain-centroids: query groups around drawn pilots, each group's centroid row exact, a first-order slope."""

import pytest
import torch
from attention_inputs import clustered_peak_bound, clustered_qkv, exact, peak_bytes, plain_probe_fit, qkv, rel_err

from gan.attention import attention_info, build_attention

NAME = "scatterbrain-centroids"


def plain_centroids(q, k, v, scale, pilots, probes):
    """Plain dense reading of the estimator in float64, one image and one group at a time.

    Groups: each query joins the pilot of largest cosine with it (first on ties). Row of a group: the exact
    attention of its members' mean over all keys. Output mean(v) + a (row - mean(v)) + b (q - group mean) A^T, A =
    mean over keys of v (k - mean k)^T, (a, b) the least squares on the probes' exact rows, each clamped to [0, 1];
    the probes' rows exact."""
    q, k, v = q.double() * scale, k.double(), v.double()
    outs = []
    for qi, ki, vi in zip(q, k, v, strict=True):
        truth = torch.softmax(qi @ ki.T, -1) @ vi
        unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
        nearest = (unit(qi) @ unit(qi[pilots]).T).argmax(-1)
        a_mat = vi.T @ (ki - ki.mean(0)) / ki.shape[0]
        rows, slopes = torch.zeros(qi.shape[0], vi.shape[1], dtype=torch.float64), torch.zeros_like(truth)
        for g in range(len(pilots)):
            members = (nearest == g).nonzero()[:, 0]
            if len(members):
                centre = qi[members].mean(0)
                rows[members] = torch.softmax(ki @ centre, 0) @ vi
                slopes[members] = (qi[members] - centre) @ a_mat.T
        outs.append(plain_probe_fit(vi.mean(0), rows, slopes, truth, probes))
    return torch.stack(outs)


def test_is_a_project_variant_of_scatterbrain():
    info = attention_info(NAME)
    assert info["published"] is False and info["variant_of"] == "scatterbrain"


@pytest.mark.parametrize(
    "inputs, budget",
    [
        (qkv(nq=256, nk=64, logit_std=2.0), 1 / 4),
        (qkv(nq=250, nk=62, logit_std=2.0), 1 / 8),  # odd sizes
        (clustered_qkv(nq=512, nk=128, d=16, dv=8, logit_std=4.0), 1 / 8),
        (qkv(nq=256, nk=64, dv=64, logit_std=3.0), 1 / 4),  # values wider than the queries (BigGAN: dv = 4 d)
    ],
)
def test_output_is_the_plain_dense_reading(inputs, budget):
    # Same plan and the same seeded pilot/probe rows through the plain float64 reading: the group rule, the
    # centroid rows, the slope and the probe fit must agree to 1e-4 (fp32 vs fp64).
    q, k, v = inputs
    attn = build_attention(NAME, budget=budget, seed=3)
    nq, nk = q.shape[1], k.shape[1]
    plan = attn.resolve(nq, nk, q.shape[2])
    assert not plan["exact"] and 2 <= plan["groups"] < nq
    pilots, probes = attn.rows(nq, plan["groups"], plan["probes"])
    assert len(pilots) == plan["groups"] and len(probes) == plan["probes"]
    assert not set(pilots.tolist()) & set(probes.tolist())
    assert rel_err(attn(q, k, v, scale=0.7), plain_centroids(q, k, v, 0.7, pilots, probes)) < 1e-4


@pytest.mark.parametrize("logit_std, most", [(1.0, 0.6), (4.0, 0.6)])
def test_probe_rows_are_exact_and_the_estimate_beats_the_mean_of_values(logit_std, most):
    # The probes' rows are the exact ones; elsewhere the error is at most `most` of the mean-of-values baseline's on
    # clustered inputs at 1/4 (95 groups for 32 clusters): diffuse (the slope carries it) and peaked (the rows do).
    q, k, v = clustered_qkv(nq=2048, nk=512, d=32, dv=16, logit_std=logit_std)
    attn = build_attention(NAME, budget=1 / 4)
    out = attn(q, k, v)
    plan = attn.resolve(2048, 512, 32)
    probes = attn.rows(2048, plan["groups"], plan["probes"])[1]
    ref = exact(q, k, v)
    assert rel_err(out[:, probes], ref[:, probes]) < 1e-5
    assert rel_err(out, ref) < most * rel_err(v.mean(1, keepdim=True).expand_as(ref), ref)


def test_collapses_to_exact_attention_at_budget_one():
    q, k, v = qkv(nq=200, nk=50, logit_std=4.0)
    attn = build_attention(NAME, budget=1.0)
    assert attn.resolve(200, 50, q.shape[2])["exact"] and attn.score_entries(200, 50, q.shape[2]) == 200 * 50
    assert rel_err(attn(q, k, v, scale=0.9), exact(q, k, v, 0.9)) < 1e-5


@pytest.mark.parametrize("budget", [1 / 64, 1 / 32, 1 / 8, 1 / 4, 1 / 2])
def test_score_entries_fit_the_budget_and_count_every_table(budget):
    attn = build_attention(NAME, budget=budget)
    plan = attn.resolve(4096, 1024, 32)
    assert plan["probes"] * 1024 <= budget * 4096 * 1024 / 8  # the probes hold at most an eighth
    expected = plan["groups"] * (4096 + 1024) + plan["probes"] * 1024 + 4096
    assert attn.score_entries(4096, 1024, 32) == expected <= budget * 4096 * 1024
    # the groups take what the probes leave: one more would not fit
    assert expected + 4096 + 1024 > budget * 4096 * 1024


def test_explicit_groups_and_probes_override_the_budget():
    attn = build_attention(NAME, groups=5, probes=12)
    assert attn.resolve(1024, 256, 16) == {"groups": 5, "probes": 12, "exact": False}
    assert build_attention(NAME, groups=5000).resolve(1024, 256, 16)["groups"] < 1024  # at most the queries


@pytest.mark.parametrize("budget", [1 / 32, 1 / 8])
def test_measured_peak_memory_follows_the_score_entries(budget):
    # The profiler's peak of one call (batch 1, BigGAN's widths) within the rule of docs/attention.md: the score
    # entries in fp32, four copies of the inputs and three output-sized accumulators.
    q, k, v = qkv(b=1, nq=1024, nk=256, d=32, dv=128, logit_std=2.0)
    attn = build_attention(NAME, budget=budget)
    attn(q, k, v)  # the pilot and probe rows are drawn on the first call
    peak, out = peak_bytes(lambda: attn(q, k, v))
    bound = clustered_peak_bound(attn.score_entries(1024, 256, 32), 1024, 256, 32, 128, plans=())
    assert peak <= bound, (peak, bound)


def test_more_groups_are_more_accurate_on_clustered_inputs():
    # 32 clusters: a few groups mix clusters, one group per pilot at 1/4 mostly does not.
    q, k, v = clustered_qkv(nq=2048, nk=512, d=32, dv=16, logit_std=4.0)
    ref = exact(q, k, v)
    errors = [rel_err(build_attention(NAME, budget=b)(q, k, v), ref) for b in (1 / 64, 1 / 16, 1 / 4)]
    assert errors[0] > errors[1] > errors[2], errors


def test_an_image_gives_the_same_output_alone_and_in_a_batch():
    q, k, v = qkv(b=3, nq=256, nk=64, logit_std=3.0)
    attn = build_attention(NAME, budget=1 / 4)
    together = attn(q, k, v)
    alone = attn(q[:1], k[:1], v[:1])
    assert torch.allclose(together[:1], alone, atol=1e-5, rtol=1e-5)
