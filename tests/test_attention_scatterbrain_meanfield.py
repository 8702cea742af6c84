"""scatterbrain-meanfield: query chunks on their top keys plus a mean-field residual with a value slope."""

import pytest
import torch
from attention_inputs import clustered_qkv, exact, plain_probe_fit, qkv, rel_err
from torch.utils._python_dispatch import TorchDispatchMode

from gan.attention import attention_info, build_attention

NAME = "scatterbrain-meanfield"


def plain_meanfield(q, k, v, scale, plan, pilots, probes):
    """Plain dense reading of the estimator in float64, one image and one chunk at a time.

    Chunks: queries sorted by (nearest pilot by cosine, index), cut into ``chunk_size`` pieces, the last padded
    with the last sorted query. Support: the chunk's ``support`` keys of largest qbar.k + var.k^2 / 2. Residual:
    the other keys with weights exp(qbar.k), their mean key Kb, key variance Kvar, mean value Vb; query logit
    log sum w + delta.Kb + delta^2.Kvar / 2, value Vb. Slope part: residual share * A delta, A = mean over keys of
    v (k - mean k)^T. Output mean(v) + a (estimate - mean(v)) + b slope, (a, b) the least squares on the probes'
    exact rows clamped to [0, 1]; probe rows exact."""
    q, k, v = q.double() * scale, k.double(), v.double()
    truth = torch.softmax(q @ k.mT, -1) @ v
    outs = []
    cq, kk = plan["chunk_size"], plan["support"]
    for qi, ki, vi, ti in zip(q, k, v, truth, strict=True):
        nq, nk = qi.shape[0], ki.shape[0]
        cos = qi @ torch.nn.functional.normalize(qi[pilots], dim=-1).T
        nearest = cos.argmax(-1).tolist()
        order = sorted(range(nq), key=lambda i: (nearest[i], i))
        order += [order[-1]] * (plan["n_chunks"] * cq - nq)
        est = torch.zeros(nq, vi.shape[1], dtype=torch.float64)
        slope_part = torch.zeros_like(est)
        a_mat = vi.T @ (ki - ki.mean(0)) / nk
        for c in range(plan["n_chunks"]):
            members = order[c * cq : (c + 1) * cq]
            qc = qi[members]
            qbar, var = qc.mean(0), qc.var(0, unbiased=False)
            score = ki @ qbar + 0.5 * ki.square() @ var
            supp = score.topk(kk).indices
            rest = torch.ones(nk, dtype=torch.bool)
            rest[supp] = False
            w = torch.exp(ki[rest] @ qbar)
            kb = (w[:, None] * ki[rest]).sum(0) / w.sum()
            kvar = (w[:, None] * ki[rest].square()).sum(0) / w.sum() - kb.square()
            vb = (w[:, None] * vi[rest]).sum(0) / w.sum()
            for i in set(members):
                delta = qi[i] - qbar
                res_logit = w.sum().log() + delta @ kb + 0.5 * delta.square() @ kvar
                logits = torch.cat([ki[supp] @ qi[i], res_logit[None]])
                p = torch.softmax(logits, 0)
                est[i] = p[:-1] @ vi[supp] + p[-1] * vb
                slope_part[i] = p[-1] * (a_mat @ delta)
        outs.append(plain_probe_fit(vi.mean(0), est, slope_part, ti, probes))
    return torch.stack(outs)


def test_is_a_project_variant_of_scatterbrain():
    info = attention_info(NAME)
    assert info["published"] is False and info["variant_of"] == "scatterbrain"


@pytest.mark.parametrize(
    "inputs, budget",
    [
        (qkv(nq=256, nk=64, logit_std=2.0), 1 / 4),
        (qkv(nq=250, nk=62, logit_std=2.0), 1 / 4),  # Nq not a multiple of the chunk size: last chunk padded
        (clustered_qkv(nq=512, nk=128, d=16, dv=8, logit_std=4.0), 1 / 8),
        # values wider than the support (BigGAN's case): the weights are scaled before their product, not after
        (qkv(nq=256, nk=64, dv=64, logit_std=2.0), 1 / 4),
    ],
)
def test_output_is_the_plain_dense_reading(inputs, budget):
    # Same plan and the same seeded pilot/probe positions through the plain float64 reading: the chunk rule, the
    # support rule, the residual formula and the probe fit must agree to 1e-4 (fp32 vs fp64).
    q, k, v = inputs
    attn = build_attention(NAME, budget=budget, seed=5)
    nq, nk = q.shape[1], k.shape[1]
    plan = attn.resolve(nq, nk, q.shape[2])
    assert not plan["exact"] and plan["support"] < nk
    pilots, probes = attn.rows(nq, plan["pilots"], plan["probes"])
    assert not set(pilots.tolist()) & set(probes.tolist())
    reference = plain_meanfield(q, k, v, 0.7, plan, pilots, probes)
    assert rel_err(attn(q, k, v, scale=0.7), reference) < 1e-4


def test_tiny_budget_is_the_plain_first_order_estimate():
    # Too few keys per chunk for a support: mean(v) + b (q - mean q) A^T with b the probes' least squares in [0, 1]
    # (A = mean over keys of v (k - mean k)^T), probe rows exact; float64 plain reading within 1e-4.
    q, k, v = qkv(nq=1024, nk=256, d=16, dv=8, logit_std=1.0)
    attn = build_attention(NAME, budget=1 / 128)
    plan = attn.resolve(1024, 256, 16)
    assert plan["support"] == 0 and attn.score_entries(1024, 256, 16) == plan["probes"] * 256 + 1024
    probes = attn.rows(1024, 0, plan["probes"])[1]
    qd, kd, vd = q.double() * 0.8, k.double(), v.double()
    truth = torch.softmax(qd @ kd.mT, -1) @ vd
    mean_v = vd.mean(1, keepdim=True)
    slope_part = (qd - qd.mean(1, keepdim=True)) @ ((vd.mT @ (kd - kd.mean(1, keepdim=True))) / 256).mT
    reference = []
    for i in range(q.shape[0]):
        x, y = slope_part[i, probes].reshape(-1), (truth[i, probes] - mean_v[i]).reshape(-1)
        out = mean_v[i] + ((x @ y) / (x @ x)).clamp(0, 1) * slope_part[i]
        out[probes] = truth[i, probes]
        reference.append(out)
    assert rel_err(attn(q, k, v, scale=0.8), torch.stack(reference)) < 1e-4


def test_collapses_to_exact_attention_at_budget_one():
    q, k, v = qkv(nq=200, nk=50, logit_std=4.0)
    attn = build_attention(NAME, budget=1.0)
    assert attn.resolve(200, 50, q.shape[2])["exact"] and attn.score_entries(200, 50, q.shape[2]) == 200 * 50
    assert rel_err(attn(q, k, v, scale=0.9), exact(q, k, v, 0.9)) < 1e-5


def test_score_entries_fit_the_budget_and_count_every_table():
    attn = build_attention(NAME, budget=1 / 8)
    plan = attn.resolve(4096, 1024, 32)
    assert plan["chunk_size"] * plan["n_chunks"] == 4096
    expected = 4096 * plan["support"] + plan["n_chunks"] * 1024 + plan["probes"] * 1024 + 4096
    assert attn.score_entries(4096, 1024, 32) == expected <= 4096 * 1024 / 8
    assert plan["support"] >= 64  # the support gets most of the budget


@pytest.mark.parametrize("logit_std, most", [(1.0, 0.6), (6.0, 0.5)])
def test_is_more_accurate_than_mean_of_values(logit_std, most):
    # Diffuse isotropic (the slope carries it) and peaked clustered (the chunk supports do): error at 1/8 at most
    # `most` of the mean-of-values baseline's.
    if logit_std > 2:
        q, k, v = clustered_qkv(nq=1024, nk=256, d=32, dv=16, logit_std=logit_std)
    else:
        q, k, v = qkv(nq=1024, nk=256, d=32, dv=16, logit_std=logit_std)
    ref = exact(q, k, v)
    out = build_attention(NAME, budget=1 / 8)(q, k, v)
    assert rel_err(out, ref) < most * rel_err(v.mean(1, keepdim=True).expand_as(ref), ref)


def test_peaked_isotropic_never_loses_to_mean_of_values():
    # No chunk support finds each query's few keys here: the probe fit must shrink towards mean(v).
    q, k, v = qkv(nq=1024, nk=256, d=32, dv=16, logit_std=10.0)
    ref = exact(q, k, v)
    for budget in (1 / 32, 1 / 8):
        out = build_attention(NAME, budget=budget)(q, k, v)
        assert rel_err(out, ref) <= rel_err(v.mean(1, keepdim=True).expand_as(ref), ref)


def test_an_image_gives_the_same_output_alone_and_in_a_batch():
    q, k, v = qkv(b=3, nq=256, nk=64, logit_std=3.0)
    attn = build_attention(NAME, budget=1 / 4)
    together = attn(q, k, v)
    alone = attn(q[:1], k[:1], v[:1])
    assert torch.allclose(together[:1], alone, atol=1e-5, rtol=1e-5)


class _CountOps(TorchDispatchMode):
    """Counts the tensor ops dispatched to kernels."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_op_count_does_not_grow_with_the_batch():
    # GPU readiness: a fixed number of dispatched tensor ops whatever the batch (B >= 2: at B = 1 a reshape or two
    # differ in whether they copy), well under 1,000.
    attn = build_attention(NAME, budget=1 / 4)

    def ops(b):
        q, k, v = qkv(b=b, nq=256, nk=64)
        attn(q, k, v)  # the first call per shape draws the pilot and probe rows; steady state is what counts
        with _CountOps() as counter:
            attn(q, k, v)
        return counter.count

    assert ops(2) == ops(5) < 1000


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_outputs_in_their_dtype(dtype):
    q, k, v = (t.to(dtype) for t in qkv(nq=256, nk=64, logit_std=4.0))
    out = build_attention(NAME, budget=1 / 8)(q, k, v)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(out.float(), exact(q.float(), k.float(), v.float())) < 1.0


