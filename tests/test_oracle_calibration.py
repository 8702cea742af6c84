"""Every calibration branch of the project's variants, reached by an input built for it, with the estimator it
selects recomputed here from its definition (docs/attention.md, "scatterbrain-centred", "smyrf-topkeys",
"performer-centred-shrunk").

scatterbrain-centred's output for query i of a batch element is, per the docs, for one support S (the whole
support, or a split of it: its first rounds, or each cluster's best keys) and one residual R with weight lam:

    out_i = (sum_{j in S_i} e_ij v_j + lam sum_{j not in S_i} R_ij v_j) / (the same with v_j = 1),

and the probes' exact rows. (smyrf-topkeys' sampled mix: the top keys of the first half of the rounds plus uniformly
drawn keys of the others, the drawn ones weighted by (Nk - m_i) / n_i.) The residuals, written out here:

- mean-field: R_ij = exp(s q_i.mu + s^2 q_i^T Sigma q_i / 2), mu and Sigma the keys' mean and (population)
  covariance;
- centred FAVOR+: R_ij = exp(s q_i.mean(k) + s mean(q).(k_j - mean(k))) * mean_f phi_f(x_i) phi_f(y_j),
  phi_f(x) = exp(w_f.x - |x|^2 / 2), x = sqrt(s) (q_i - mean(q)), y = sqrt(s) (k_j - mean(k));
- key centroids: R_ij = exp(s q_i.c_g(j)), groups by 8 Lloyd steps (nearest centre in Euclidean distance, centre =
  mean of its keys, an empty group keeps its centre) from the seeded start keys.

From the backend this reads only its plan and draws: the hash layout of its support, the split sizes, the random
projection, the k-means start keys, smyrf-topkeys' key permutations; the probe queries are drawn here (the first
``probe_count`` of randperm(Nq) from ``seed``, sorted). lam is not read either: for each candidate (support,
residual) the one lam that fits the output best (least squares over the non-probe rows) is solved for, and the
candidate must then reproduce the output to 2e-5 (fp32 against fp64). A residual weighted in the numerator but
not the denominator fits no candidate once lam != 1, which the FAVOR+ input below ensures.
"""

from __future__ import annotations

import math

import pytest
import torch
from attention_inputs import cluster_valued_qkv, clustered_qkv, qkv

from gan.attention import build_attention

TOLERANCE = 2e-5
NAME = "scatterbrain-centred"


# -- inputs built for each branch ------------------------------------------------------------------------------------


def shared_mean_qkv(b=2, nq=512, nk=128, d=16, dv=8, logit_std=1.0, r=0.3, eps=0.02, seed=0):
    """Queries nearly equal (a large common mean, tiny spread), keys of small norm r: the centred FAVOR+ features
    see vectors of norm ~r, so they estimate every key's weight well, while the logits (query mean . key, std
    ``logit_std``) spread attention over many keys; the keys are isotropic, so centroids are coarse."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(b, 1, d, generator=g), dim=-1)
    k = torch.randn(b, nk, d, generator=g) * r / math.sqrt(d)
    q = logit_std / (r / math.sqrt(d)) * direction + eps * torch.randn(b, nq, d, generator=g)
    return q, k, torch.randn(b, nk, dv, generator=g)


# -- plain readings --------------------------------------------------------------------------------------------------


def layout_mask(layout, e, nk, rounds, width=None):
    """(Nq, Nk) bool: the keys batch element e's queries meet in ``rounds`` of a (B,R,C,W) layout, each cluster's first
    ``width`` keys (flat key rows b*Nk + j, -1 for padding)."""
    k_rows = layout.k_rows[e, rounds, :, :width]  # (R', C, W')
    q_cluster = layout.q_cluster[e, rounds]  # (R', Nq)
    mask = torch.zeros(q_cluster.shape[1], nk, dtype=torch.bool)
    for keys, clusters in zip(k_rows, q_cluster, strict=True):
        member = torch.zeros(keys.shape[0], nk + 1, dtype=torch.bool)
        member.scatter_(1, torch.where(keys < 0, nk, keys % nk), True)
        mask |= member[clusters, :nk]
    return mask


def lloyd_groups(k, starts, steps=8):
    """k (Nk, d) float64 -> (centres (G, d), group of each key (Nk,)) by ``steps`` Lloyd steps from k[starts]."""
    centres = k[starts].clone()
    for _ in range(steps):
        group = torch.cdist(k, centres).argmin(1)
        for g in range(len(centres)):
            if (group == g).any():
                centres[g] = k[group == g].mean(0)
    return centres, torch.cdist(k, centres).argmin(1)


def residual_estimates(attn, q, k, scale, e, num_features):
    """{kind: (Nq, Nk) float64 log of the residual's estimate of exp(s q.k)} for batch element e."""
    qe, ke = q[e].double(), k[e].double()
    mu = ke.mean(0)
    sigma = (ke - mu).t() @ (ke - mu) / ke.shape[0]
    qs = scale * qe
    logs = {"mean-field": (qs @ mu + 0.5 * ((qs @ sigma) * qs).sum(-1)).view(-1, 1).expand(-1, ke.shape[0])}
    if num_features:
        w = attn.projection(num_features, q.shape[2], q.device).double()  # the draw: (m, d)
        x, y = math.sqrt(scale) * (qe - qe.mean(0)), math.sqrt(scale) * (ke - mu)
        fx = x @ w.t() - x.square().sum(-1, keepdim=True) / 2  # (Nq, m) log phi(x)
        fy = y @ w.t() - y.square().sum(-1, keepdim=True) / 2  # (Nk, m)
        kernel = torch.logsumexp(fx.unsqueeze(1) + fy.unsqueeze(0), -1) - math.log(num_features)  # (Nq, Nk)
        logs["favor"] = kernel + scale * (qe @ mu).view(-1, 1) + scale * ((ke - mu) @ qe.mean(0)).view(1, -1)
        starts = attn.group_starts(ke.shape[0], num_features, q.device)  # the draw: start keys
        centres, group = lloyd_groups(ke, starts)
        logs["centroids"] = (scale * qe @ centres.t())[:, group]
    return logs


def fitted(out, s_num, s_den, r_num, r_den, rows):
    """(lam, plain output) with the lam that best explains ``out`` on ``rows``; all (Nq, ...) float64."""
    a = out[rows] * r_den[rows, None] - r_num[rows]
    b = s_num[rows] - out[rows] * s_den[rows, None]
    lam = float((a * b).sum() / (a * a).sum().clamp_min(1e-300))
    return lam, (s_num + lam * r_num) / (s_den + lam * r_den).unsqueeze(-1)


def probe_rows(attn, nq, nk):
    count = attn.probe_count(nq, nk)
    return torch.randperm(nq, generator=torch.Generator().manual_seed(attn.seed))[:count].sort().values


def identify(attn, q, k, v, scale, out):
    """Per batch element: (support, residual, lam, error) of the candidate that reproduces ``out`` best, trying the
    supports in order whole, splits, and for each the support alone, then each residual."""
    b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    whole, splits, num_features = attn.calibration_plan(nq, nk)  # the plan: support, split sizes, feature count
    layout = attn.hash.layout(q.float() * scale, k.float(), whole)  # the hash's clusters and keys
    n_rounds, width = layout.k_rows.shape[1], layout.k_rows.shape[3]
    probes = probe_rows(attn, nq, nk)
    rows = torch.ones(nq, dtype=torch.bool)
    rows[probes] = False
    supports = {"whole": (slice(None), None)}
    for r, w in splits:
        if r and (r, w) != (n_rounds, width):
            supports[f"split {r} rounds x {w} keys"] = (slice(0, r), w)
    found = []
    for e in range(b):
        s = scale * (q[e].double() @ k[e].double().t())
        shift = s.amax(-1, keepdim=True)
        weights, values, o = (s - shift).exp(), v[e].double(), out[e].double()
        exact_rows = weights @ values / weights.sum(-1, keepdim=True)
        assert torch.allclose(o[probes], exact_rows[probes], atol=1e-5)  # the probes' rows are exact
        logs = residual_estimates(attn, q, k, scale, e, num_features)
        candidates = []
        for name, (rounds, w) in supports.items():
            mask = layout_mask(layout, e, nk, rounds, w)
            inside = weights * mask
            s_num, s_den = inside @ values, inside.sum(-1)
            alone = s_num / s_den.unsqueeze(-1)
            candidates.append((name, "none", 0.0, alone))
            for kind, log_estimate in logs.items():
                outside = (log_estimate - shift).exp() * ~mask
                lam, plain = fitted(o, s_num, s_den, outside @ values, outside.sum(-1), rows)
                candidates.append((name, kind, lam, plain))
        scored = [(name, kind, lam, rel(o[rows], plain[rows])) for name, kind, lam, plain in candidates]
        found.append(next((c for c in scored if c[3] < TOLERANCE), min(scored, key=lambda c: c[3])))
    return found


def mix_reading(attn, layout, keep, e, nk, weights, values):
    """The sampled mix: rounds < keep as hashed; rounds >= keep give cluster c the keys c W .. c W + W - 1 of a
    fresh permutation of the keys per round (the draw); the drawn pairs not already met weigh (Nk - m_i) / n_i."""
    n_rounds, n_clusters, width = layout.k_rows.shape[1:]
    kept = layout_mask(layout, e, nk, slice(0, keep))
    perms = attn.permutations(n_rounds - keep, nk, weights.device)  # (R - keep, Nk)
    drawn = torch.zeros_like(kept)
    for r, perm in enumerate(perms):
        member = torch.zeros(n_clusters, nk, dtype=torch.bool)
        for c in range(n_clusters):
            member[c, perm[c * width : (c + 1) * width]] = True
        drawn |= member[layout.q_cluster[e, keep + r]]
    drawn &= ~kept
    scale_i = (nk - kept.sum(-1)) / drawn.sum(-1).clamp_min(1)
    top, sampled = weights * kept, weights * drawn * scale_i.unsqueeze(-1)
    return (top + sampled) @ values / (top + sampled).sum(-1, keepdim=True)


def rel(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


# -- scatterbrain-centred --------------------------------------------------------------------------------------------

SHAPE = {"nq": 512, "nk": 128, "d": 16, "dv": 8}
CASES = {
    # name: (input, backend parameters, the branch expected on every batch element: (support, residual))
    "peaked: the whole support alone": (lambda: clustered_qkv(**SHAPE, logit_std=6.0), {"budget": 1 / 8},
                                        ("whole", "none")),
    "diffuse isotropic: whole support + mean-field": (lambda: qkv(**SHAPE, logit_std=1.0), {"budget": 1 / 8},
                                                     ("whole", "mean-field")),
    "value-carrying key clusters: split + centroids": (lambda: cluster_valued_qkv(**SHAPE, logit_std=1.0, seed=1),
                                                       {"budget": 1 / 8}, ("split", "centroids")),
    "shared query mean, small keys: split + FAVOR+": (lambda: shared_mean_qkv(**SHAPE, r=0.3), {"budget": 1 / 8},
                                                      ("split", "favor")),
    "fixed split, 16 features: FAVOR+ with lam < 1": (lambda: shared_mean_qkv(**SHAPE, r=0.7), {"num_features": 16},
                                                      ("whole", "favor")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scatterbrain_centred_branch_is_its_plain_estimator(case):
    make, params, (support, residual) = CASES[case]
    q, k, v = make()
    attn = build_attention(NAME, seed=0, **params)
    out = attn(q, k, v)
    found = identify(attn, q, k, v, 1.0, out)
    for e, (name, kind, lam, error) in enumerate(found):
        assert error < TOLERANCE, (e, name, kind, lam, error)
        assert name.startswith(support) and kind == residual, (e, name, kind, lam)
        if kind != "none":
            assert lam > 0.01, (e, lam)
    if "lam < 1" in case:  # the weight must act on numerator and denominator alike: only lam != 1 shows it
        assert any(0.05 < lam < 0.95 for _, _, lam, _ in found), found


def test_scatterbrain_centred_fixed_estimator_is_unbiased_scatterbrain():
    # calibrate=False: the split's support plus the centred FAVOR+ residual at lam = 1 (no probes, no fit).
    q, k, v = shared_mean_qkv(**SHAPE, r=0.7)
    attn = build_attention(NAME, calibrate=False, budget=1 / 8, seed=0)
    out = attn(q, k, v)
    clusters, num_features = attn.plan(q.shape[1], k.shape[1])
    layout = attn.layout(q, k, 1.0)
    for e in range(q.shape[0]):
        s = q[e].double() @ k[e].double().t()
        shift = s.amax(-1, keepdim=True)
        mask = layout_mask(layout, e, k.shape[1], slice(None))
        favor = (residual_estimates(attn, q, k, 1.0, e, num_features)["favor"] - shift).exp()
        terms = (s - shift).exp() * mask + favor * ~mask
        assert rel(out[e].double(), terms @ v[e].double() / terms.sum(-1, keepdim=True)) < TOLERANCE


# -- smyrf-topkeys: the top-key support or the sampled mix ------------------------------------------------------------


@pytest.mark.parametrize("make,expected", [
    (lambda: clustered_qkv(**SHAPE, logit_std=6.0), "top keys"),  # peaked: the top keys hold the rows
    (lambda: cluster_valued_qkv(**SHAPE, logit_std=0.5), "mix"),  # keys carry their cluster's value, diffuse rows
])
def test_smyrf_topkeys_branch_is_its_plain_estimator(make, expected):
    q, k, v = make()
    attn = build_attention("smyrf-topkeys", budget=1 / 8, seed=0)
    out = attn(q, k, v)
    nq, nk = q.shape[1], k.shape[1]
    layout = attn.layout(q, k)  # the hash's clusters and their top keys (scale 1)
    keep = layout.k_rows.shape[1] // 2
    probes = probe_rows(attn, nq, nk)
    rows = torch.ones(nq, dtype=torch.bool)
    rows[probes] = False
    for e in range(q.shape[0]):
        s = q[e].double() @ k[e].double().t()
        weights, values = (s - s.amax(-1, keepdim=True)).exp(), v[e].double()
        assert torch.allclose(out[e, probes].double(), (weights @ values / weights.sum(-1, keepdim=True))[probes],
                              atol=1e-5)
        inside = weights * layout_mask(layout, e, nk, slice(None))
        candidates = {"top keys": inside @ values / inside.sum(-1, keepdim=True),
                      "mix": mix_reading(attn, layout, keep, e, nk, weights, values)}
        errors = {name: rel(out[e, rows].double(), plain[rows]) for name, plain in candidates.items()}
        assert errors[expected] < TOLERANCE, (e, errors)
        assert min(errors.values()) == errors[expected] and max(errors.values()) > 1e-3, errors  # distinguishable


# -- performer-centred-shrunk: kappa from the probes, per-query James-Stein shrinkage --------------------------------


def centred_favor_with_noise(q, k, v, proj, scale):
    """Per query, float64: (P (B,Nq,dv) the centred FAVOR+ output, var (B,Nq) its noise estimate from G feature
    groups: feature f in group f mod G, G = max(min(8, m), ceil(m / 32)); P_g each group's ratio, w_g its share of the
    denominator, var = sum_g w_g |P_g - P|^2 * sum w^2 / (1 - sum w^2))."""
    q, k, v, proj = q.double(), k.double(), v.double(), proj.double()
    qm, km = q.mean(1, keepdim=True), k.mean(1, keepdim=True)
    x, y = math.sqrt(scale) * (q - qm), math.sqrt(scale) * (k - km)
    lx = x @ proj.t() - x.square().sum(-1, keepdim=True) / 2  # (B, Nq, m); per-query terms cancel in the ratios
    ly = y @ proj.t() - y.square().sum(-1, keepdim=True) / 2 + scale * (k - km) @ qm.transpose(1, 2)  # (B, Nk, m)
    lx = lx - lx.amax(-1, keepdim=True)  # one constant per query: cancels
    ly = ly - ly.amax((1, 2), keepdim=True)  # one constant per batch element: cancels
    m = proj.shape[0]
    groups = max(min(8, m), -(-m // 32))
    feature_mass = ly.exp()  # (B, Nk, m)
    kv = feature_mass.transpose(1, 2) @ v  # (B, m, dv): per feature, sum_j exp(ly_jf) v_j
    mass = feature_mass.sum(1)  # (B, m)
    query = lx.exp()  # (B, Nq, m)
    nums = torch.stack([query[..., g::groups] @ kv[:, g::groups] for g in range(groups)], 2)  # (B, Nq, G, dv)
    dens = torch.stack([query[..., g::groups] @ mass[:, g::groups].unsqueeze(-1) for g in range(groups)], 2)
    estimate = nums.sum(2) / dens.sum(2)
    share = (dens / dens.sum(2, keepdim=True)).squeeze(-1)  # (B, Nq, G)
    spread = (share * (nums / dens - estimate.unsqueeze(2)).square().sum(-1)).sum(-1)
    w_sq = share.square().sum(-1)
    return estimate, spread * w_sq / (1 - w_sq)


@pytest.mark.parametrize("make,params,expected", [
    # near-equal queries, small keys, 256 features: accurate and far from mean(v), so kept: every lam above 0.99
    (lambda: shared_mean_qkv(r=0.1, logit_std=4.0), {"num_features": 256}, "kept"),
    # moderate logits: each query shrunk by its own noise, some all the way to mean(v)
    (lambda: qkv(nq=512, nk=128, d=16, dv=8, logit_std=2.0), {"budget": 1 / 8}, "shrunk"),
])
def test_performer_shrunk_branch_is_its_plain_estimator(make, params, expected):
    # out_i = mean(v) + lam_i (P_i - mean(v)), lam_i = max(0, 1 - kappa var_i / |P_i - mean(v)|^2), with P and var the
    # plain centred FAVOR+ output and group noise above and one kappa per batch element (solved for here from the
    # queries strictly between the two ends). 2e-3: the backend forms var in fp32 from a difference of near-equal
    # sums (the plain reading matches it to 1e-3, test_attention_performer_shrunk.py).
    q, k, v = make()
    attn = build_attention("performer-centred-shrunk", seed=0, **params)
    out = attn(q, k, v).double()
    nq, nk = q.shape[1], k.shape[1]
    m = attn.resolve(nq, nk, q.shape[2])["num_features"]
    estimate, var = centred_favor_with_noise(q, k, v, attn.projection(m, q.shape[2], q.device), 1.0)
    base = v.double().mean(1, keepdim=True)
    count = attn.probe_count(nq, nk, m)
    probes = torch.randperm(nq, generator=torch.Generator().manual_seed(0))[:count].sort().values
    rows = torch.ones(nq, dtype=torch.bool)
    rows[probes] = False
    gap = estimate - base
    lam = (gap * (out - base)).sum(-1) / gap.square().sum(-1)  # (B, Nq): where each output sits on [base, estimate]
    for e in range(q.shape[0]):
        assert rel(out[e, rows], (base + lam.unsqueeze(-1) * gap)[e, rows]) < 2e-3  # on the segment
        inner = rows & (lam[e] > 0.02) & (lam[e] < 0.98)
        if expected == "kept":
            assert (lam[e, rows] > 0.99).all(), lam[e, rows].min()
        else:
            assert inner.sum() > 10 and (lam[e, rows].abs() < 1e-4).any()  # both ends and the inside are reached
        kappa = ((1 - lam[e, inner]) * gap[e, inner].square().sum(-1) / var[e, inner]).median() if inner.any() else 0
        plain = (1 - kappa * var[e] / gap[e].square().sum(-1)).clamp(0, 1)  # positive-part James-Stein
        assert rel(out[e, rows], (base + plain.unsqueeze(-1) * gap)[e, rows]) < 2e-3, kappa
