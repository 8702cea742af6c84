"""scatterbrain-centred: the project's Scatterbrain variant (varies ``scatterbrain``, Chen et al., 2021):
sparse + low-rank on the smyrf-topkeys support: the unbiased estimate with centred features (``calibrate=False``),
or by default the support plus the residual (centred FAVOR+ or mean-field) that validates best on probe queries.

Low rank: FAVOR+ positive random features give exp(scale q.k) ~ exp(o_i) a_i . b_j for every pair,
computed on q and k centred on their batch element's means with the exact correction factors
(``low_rank_terms``): still unbiased, and far lower variance when q and k share a large mean.
Sparse: on the SMYRF support S (the union of the hash rounds' clusters, each pair once) the exact
exp(score) replaces that estimate. Numerator and denominator:

    sum_j est_ij v_j + sum_{j in S_i} (exp(s_ij) - est_ij) v_j,    the same with v_j = 1,

evaluated in log space with one shift per query shared by every round and the low-rank part, so
logits up to 100 stay finite. With a complete support the low-rank terms cancel: exact attention.

Budget b (the fixed split, ``calibrate=False`` or explicit parameters without probes): three quarters
for the support (smyrf-topkeys at 3b/4), the rest for the features: num_features = floor((b Nq Nk -
support entries) / (Nq + Nk)), at least 1 and at most 256. At b = 1 the support is complete and no
features are drawn (their terms would cancel). This fixed estimator is unbiased for the kernel.

Calibration (``calibrate=True``, the default; ``probe_calibration``): at BigGAN's unscaled logits the
FAVOR+ residual is mostly noise, and a fixed 3/4 support is worse than smyrf-topkeys at the whole
budget wherever attention is peaked. So probe queries (drawn from the seed; 64 to 128 where an eighth
of the queries allows, ``probes.probe_plan``; their rows scored in chunks that hold at most
half the budget before the attention runs) score, per batch element, these candidates with the best
residual weight lam of a grid for each (lam = 0: the support alone, always a candidate):
  - the whole-budget support (smyrf-topkeys' own) + lam * mean-field residual, or as its sampled mix,
  - the 3/4 support + lam * centred FAVOR+ residual (lam = 1 is the unbiased estimator),
  - the 3/4 support + lam * mean-field residual,
  - the 3/4 support + lam * key-centroid residual (``key_centroids``: as many key groups as features).
The 3/4 support is hashed only when FAVOR+ or the centroids clearly help on the whole-budget support's
probes (a proxy), which saves the second hash wherever they do not.
The mean-field residual is a rank-1 kernel exp(s_ij) ~ exp(q_i.mu + q_i^T Sigma q_i / 2) (the mean of
exp(q.k) over Gaussian keys with the keys' mean and covariance): outside its support a query sees
the plain mean of the remaining values, weighted by that mass; lam fits its scale. The probes'
outputs are their exact rows. So the estimator is the support alone wherever no residual helps on
held-out rows (never worse than its sparse part beyond the probes' sampling noise), and the
unbiased Scatterbrain estimator wherever that validates best. The core idea (smyrf-topkeys support +
centred FAVOR+) is kept as one candidate; the mean-field and centroid residuals and the choice are this project's.
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import AttentionBackend, check_bool, positive_int
from ..parts.key_centroids import GroupStarts, KeyGroups, centroid_probe_estimate, centroid_terms, key_groups
from ..parts.low_rank import LowRankTerms
from ..parts.planning import clustering
from ..parts.probe_calibration import (
    FAVOR_WEIGHTS,
    MEAN_FIELD_WEIGHTS,
    best_weight,
    clearly_better,
    gaussian_log_mean_kernel,
    residual_errors,
)
from ..parts.probes import probe_plan, probe_queries, probe_support, probe_truth
from ..parts.random_features import ProjectionCache, favor_log_features
from ..parts.round_attention import clustered_attention
from ..parts.round_layout import RoundLayout, batch_subset
from ..parts.sampled_rounds import KeyPermutations, mix_chunk_errors, mixed_layout, sampled_half
from ..parts.topkey_support import ClusterPlan, SmyrfHash, plan_clusters

SPARSE_SHARE = 0.75  # fraction of the budget spent on the sparse support; the rest on features
# The sparse correction costs num_features multiply-adds per support pair (the low-rank estimate of
# each pair), so budget-resolved features stop here, well before the correction costs as much as exact
# attention at large Nq (docs/attention.md, "Why these constants"). Explicit values are kept.
MAX_BUDGET_FEATURES = 256
LOG_CAP = 60.0  # estimates above e^60 times a probe's largest exact weight are capped (fp32 range)
PROBE_COPIES = 4  # (c, Nk) fp32 tables of a probe chunk alive at once: weights, estimate, inside, outside
# lam grids per residual: FAVOR+ is unbiased (lam = 1), the mean-field and the centroids only model the scale
WEIGHTS = {"favor": FAVOR_WEIGHTS, "mean-field": MEAN_FIELD_WEIGHTS, "centroids": MEAN_FIELD_WEIGHTS}


def low_rank_terms(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj: torch.Tensor,
    scale: float,
    rows: torch.Tensor | None = None,
) -> LowRankTerms:
    """FAVOR+ estimate of exp(scale q.k) in stabilised factors: q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) fp32; with
    ``rows`` (r,) the query side of those queries only (centred on the mean of all of q), (B,r,...) terms.

    The features see q and k centred on their own batch element's means (q_, k_); the exact identity
    q.k = q_.k_ + q.k_mean + q_mean.k - q_mean.k_mean moves the rest into per-query and per-key factors,
    so the estimate stays unbiased and its variance is that of the smaller centred norms.
    """
    q_mean, k_mean = q.mean(1, keepdim=True), k.mean(1, keepdim=True)  # (B, 1, d)
    key_shift = scale * ((k - k_mean) @ q_mean.transpose(1, 2))  # (B, Nk, 1): q_mean.(k - k_mean)
    lk = favor_log_features(k - k_mean, proj, scale) + key_shift  # (B, Nk, m)
    key_max = lk.amax(dim=1, keepdim=True)  # (B, 1, m): per feature, so no feature underflows wholesale
    b = (lk - key_max).exp_()  # (B, Nk, m) <= 1
    q = q if rows is None else q[:, rows]
    lq = favor_log_features(q - q_mean, proj, scale) + scale * (q @ k_mean.transpose(1, 2)) + key_max  # (B, Nq, m)
    log_offset = lq.amax(-1)  # (B, Nq)
    a = (lq - log_offset.unsqueeze(-1)).exp_()  # (B, Nq, m) <= 1
    num = a @ (b.transpose(1, 2) @ v)  # (B, Nq, dv): sum over all keys, in units of exp(log_offset)
    den = (a @ b.sum(1).unsqueeze(-1)).squeeze(-1)  # (B, Nq)
    return LowRankTerms(log_offset, a, b, num, den)


class ScatterbrainCentredAttention(AttentionBackend):
    """Sparse (smyrf-topkeys support) + low-rank residual, its share and weight chosen on probe queries.

    Explicit ``num_features`` and cluster parameters override the budget split (see module doc);
    ``calibrate=False`` gives the fixed unbiased estimator (3/4 support + centred FAVOR+, lam = 1).
    """

    name = "scatterbrain-centred"
    published = False
    paper = "Chen et al., NeurIPS 2021 (Scatterbrain), varied by this project"
    variant_of = "scatterbrain"

    def __init__(
        self,
        *,
        num_features: int | None = None,
        n_hashes: int | None = None,
        q_cluster_size: int | None = None,
        k_cluster_size: int | None = None,
        calibrate: bool = True,
        **base: Any,
    ):
        super().__init__(**base)
        self.num_features = positive_int("num_features", num_features)
        self.n_hashes, self.q_cluster_size, self.k_cluster_size = clustering(n_hashes, q_cluster_size, k_cluster_size)
        self.calibrate = check_bool("calibrate", calibrate)
        self.hash = SmyrfHash(self.seed)
        self.permutations = KeyPermutations(self.seed)  # the sampled mix's key draws, as smyrf-topkeys draws them
        self.projection = ProjectionCache(self.seed)  # (num_features, d, device) -> (m, d), drawn once
        self.group_starts = GroupStarts(self.seed)  # the key-centroid residual's k-means starts

    def plan(self, nq: int, nk: int) -> tuple[ClusterPlan, int]:
        """(sparse support plan, number of random features) of the sparse + FAVOR+ split for these shapes."""
        fraction = self.effective_budget
        sparse = 1.0 if fraction >= 1.0 else fraction * SPARSE_SHARE
        clusters = plan_clusters(nq, nk, self.n_hashes, self.q_cluster_size, self.k_cluster_size, sparse)
        if self.num_features is not None:
            return clusters, self.num_features
        if fraction >= 1.0:
            return clusters, 0  # complete support: the low-rank terms cancel, and the support fills the budget
        left = fraction * nq * nk - clusters.score_entries()  # the features get what the support left
        return clusters, min(MAX_BUDGET_FEATURES, max(1, int(left / (nq + nk))))

    def sparse_plan(self, nq: int, nk: int) -> ClusterPlan | None:
        """The all-sparse candidate (smyrf-topkeys' support at the whole budget, mean-field residual), or None
        when the split is fixed (explicit parameters, budget 1, or calibrate=False)."""
        fixed = self.num_features is not None or self.q_cluster_size is not None or self.k_cluster_size is not None
        if fixed or not self.probe_count(nq, nk):
            return None
        return plan_clusters(nq, nk, self.n_hashes, None, None, self.effective_budget)

    def probe_count(self, nq: int, nk: int) -> int:
        """Probe queries (``probes.probe_plan``); 0 (no calibration) with calibrate=False."""
        return probe_plan(self.effective_budget, nq, PROBE_COPIES)[0] if self.calibrate else 0

    def probe_chunk(self, nq: int) -> int:
        """Probes per chunk: a chunk's PROBE_COPIES (c, Nk) tables hold at most half the budget's entries."""
        return probe_plan(self.effective_budget, nq, PROBE_COPIES)[1]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 0:
            raise ValueError(f"scatterbrain attention needs scale > 0 (softmax kernel features), got {scale}")
        nq, nk = q.shape[1], k.shape[1]
        qf, kf, vf = q.float(), k.float(), v.float()
        clusters, num_features = self.plan(nq, nk)
        proj = self.projection(num_features, q.shape[2], q.device) if num_features else None  # (m, d)
        n_probe = self.probe_count(nq, nk)
        if not n_probe:  # the fixed estimator: support + FAVOR+ residual, lam = 1 (unbiased)
            low_rank = None if proj is None else low_rank_terms(qf, kf, vf, proj, scale)
            return clustered_attention(qf * scale, kf, vf, self.layout(qf, kf, scale), low_rank).to(q.dtype)
        probes = probe_queries(nq, n_probe, self.seed).to(q.device)  # (p,)
        out = vf.new_empty(q.shape[0], nq, v.shape[2])  # (B, Nq, dv)
        groups, truth = self.calibrated(qf, kf, vf, scale, probes, clusters, proj)
        for members, layout, residual, sampled_from in groups:
            rows = slice(None) if len(members) == q.shape[0] else members  # no copies when the batch agrees
            out[rows] = clustered_attention(qf[rows] * scale, kf[rows], vf[rows], layout, residual, sampled_from)
        out[:, probes] = truth  # their exact rows are known
        return out.to(q.dtype)

    def calibrated(self, q, k, v, scale, probes, clusters, proj):
        """([(batch elements, their layout, their residual terms or None, sampled_from)], the probes' exact rows
        (B, p, dv)): per batch element the candidate that lowers the error on the probes' exact rows most, beyond
        EVIDENCE standard errors, relative to the largest support alone (kept where no candidate clearly helps).

        Candidates: the all-sparse support with the mean-field residual or as smyrf-topkeys' sampled mix (no
        residual; ``sampled_rounds``), and the split's support with the mean-field, the FAVOR+ (``proj`` (m, d)
        its projections, None for no features) or the key-centroid residual (``key_centroids``, m groups); the
        split is hashed only when FAVOR+ or the centroids clearly help on the larger support's probes. Each
        residual with its best weight lam (0 = no residual). Only the chosen residuals' terms are built for every
        query: during calibration FAVOR+ has the probes' rows and the centroids their groups."""
        log_mean = gaussian_log_mean_kernel(q, k, scale)  # (B, Nq): the mean-field residual's scale
        size = self.probe_chunk(q.shape[1])
        # (query indices, positions among the probes) of each probe chunk
        chunks = list(zip(probes.split(size), torch.arange(len(probes)).split(size), strict=True))
        residuals = {}
        if proj is not None:  # the features' residuals: FAVOR+ on the probes' rows, and the key groups
            residuals["favor"] = low_rank_terms(q, k, v, proj, scale, rows=probes)
            residuals["centroids"] = key_groups(k, self.group_starts(k.shape[1], proj.shape[0], k.device))
        sparse = self.sparse_plan(q.shape[1], k.shape[1])
        plans = [clusters] if sparse is None else [sparse, clusters]  # the largest support first: the baseline
        layouts = [self.hash.layout(q * scale, k, plans[0])]
        keep = 0 if sparse is None else sampled_half(sparse.n_hashes)
        if keep:  # smyrf-topkeys' sampled mix of the whole-budget support (no residual), as a layout
            perms = self.permutations(sparse.n_hashes - keep, k.shape[1], q.device)
            layouts.append(mixed_layout(layouts[0], keep, perms))
        mix = (layouts[-1], keep) if keep else None
        first, truth = _probe_errors(layouts[0], chunks, q, k, v, scale, log_mean, residuals, mix)  # kind -> (B,L,p)
        kinds = [(0, "mean-field"), (0, "mean-field")]  # per candidate: (layout index, residual kind)
        errors = [first["mean-field"][:, 0]]  # per candidate: (B, p) probe errors; the first is the baseline
        lams = [torch.zeros(q.shape[0], device=q.device)]  # per candidate: (B,) residual weight
        lam, error = best_weight(first["mean-field"], WEIGHTS["mean-field"])
        errors.append(error)
        lams.append(lam.float())
        if keep:
            kinds.append((1, "mix"))
            errors.append(first["mix"][:, 0])
            lams.append(torch.zeros(q.shape[0], device=q.device))
        if sparse is None:  # the split is the only support: its residuals are candidates on it
            for kind in residuals:
                lam, error = best_weight(first[kind], WEIGHTS[kind])
                kinds.append((0, kind))
                errors.append(error)
                lams.append(lam.float())
        elif residuals:
            # Screen: the split only pays if a feature residual clearly helps; try them on the larger support's
            # probes first (a proxy) and skip hashing the split when none does.
            totals = torch.stack(errors).sum(-1)  # (candidates, B)
            best_so_far = torch.stack(errors).gather(0, totals.argmin(0).view(1, -1, 1).expand(1, *errors[0].shape))[0]
            proxies = [best_weight(first[kind], WEIGHTS[kind])[1] for kind in residuals]
            if any(bool(clearly_better(best_so_far, proxy).isfinite().any()) for proxy in proxies):
                layouts.append(self.hash.layout(q * scale, k, clusters))
                split = _probe_errors(layouts[-1], chunks, q, k, v, scale, log_mean, residuals)[0]
                for kind in ("mean-field", *residuals):
                    lam, error = best_weight(split[kind], WEIGHTS[kind])
                    kinds.append((len(layouts) - 1, kind))
                    errors.append(error)
                    lams.append(lam.float())
        gains = torch.stack([clearly_better(errors[0], e) for e in errors], -1)  # (B, candidates)
        gains[:, 0] = 0.0  # the baseline needs no evidence
        chosen = gains.argmax(-1)  # (B,) candidate per batch element
        lam = torch.stack(lams, -1).gather(-1, chosen[:, None]).squeeze(-1)  # (B,)
        groups = []
        for candidate in chosen.unique().tolist():
            members = (chosen == candidate).nonzero().squeeze(-1)  # (b,)
            index, kind = kinds[candidate]
            every = len(members) == q.shape[0]
            layout = layouts[index] if every else batch_subset(layouts[index], members, q.shape[1], k.shape[1])
            part = lam[members]
            if kind == "mix" or not bool((part > 0).any()):
                residual = None
            elif kind == "favor":
                residual = _weighted(low_rank_terms(q[members], k[members], v[members], proj, scale), part)
            elif kind == "centroids":
                centroids = residuals["centroids"]
                residual = centroid_terms(KeyGroups(*(t[members] for t in centroids)), q[members], v[members], scale,
                                          part)
            else:
                residual = _mean_field_terms(log_mean[members], v[members], part)
            groups.append((members, layout, residual, keep if kind == "mix" else None))
        return groups, truth

    def layout(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> RoundLayout:
        """The fixed split's sparse support: query clusters and their keys for fp32 q (B,Nq,d), k (B,Nk,d)."""
        return self.hash.layout(q * scale, k, self.plan(q.shape[1], k.shape[1])[0])

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        """The larger of the attention (either candidate's support, and features) and the calibration before it
        (features and the probes' tables; the support is not scored yet)."""
        clusters, num_features = self.plan(nq, nk)
        features = (nq + nk) * num_features
        calibration = PROBE_COPIES * min(self.probe_count(nq, nk), self.probe_chunk(nq)) * nk  # one probe chunk
        entries = max(clusters.score_entries() + features, features + calibration)
        sparse = self.sparse_plan(nq, nk)
        return entries if sparse is None else max(entries, sparse.score_entries())

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        clusters, num_features = self.plan(nq, nk)
        resolved = {**clusters.as_dict(), "num_features": num_features, "calibrate": self.calibrate}
        sparse = self.sparse_plan(nq, nk)
        if sparse is not None:
            resolved["all_sparse_n_clusters"] = sparse.n_clusters
        return resolved


def _probe_errors(layout, chunks, q, k, v, scale, log_mean, residuals, mix=None):
    """({residual kind: (B, L, p) probe errors per lam of its grid} on ``layout``'s support, the probes' exact rows
    (B, p, dv)), probe chunk by chunk: the mean-field residual always, "favor" (LowRankTerms of the probes' rows)
    and "centroids" (KeyGroups) where ``residuals`` has them, and "mix" (L = 1) for mix = (the sampled mixed layout,
    its top-key rounds). chunks: [((c,) probe query indices, their positions among the probes)]."""
    errors: dict[str, list] = {kind: [] for kind in ("mean-field", *residuals)}
    errors.update({"mix": []} if mix is not None else {})
    truths = []
    for chunk, positions in chunks:
        shift, weights, truth = probe_truth(q[:, chunk], k, v, scale)  # (B,c,1), (B,c,Nk), (B,c,dv)
        support = probe_support(layout, chunk, k.shape[1])  # (B, c, Nk)
        mean_field = (log_mean[:, chunk, None] - shift).clamp_max(LOG_CAP).exp().expand_as(weights)  # (B, c, Nk)
        errors["mean-field"].append(residual_errors(weights, support, mean_field, v, truth, WEIGHTS["mean-field"]))
        for kind, terms in residuals.items():  # one (c, Nk) estimate alive at a time
            if kind == "favor":
                estimate = _probe_estimate(terms, positions.to(q.device), shift)
            else:
                estimate = centroid_probe_estimate(terms, q[:, chunk], scale, shift, LOG_CAP)
            errors[kind].append(residual_errors(weights, support, estimate, v, truth, WEIGHTS[kind]))
            del estimate
        if mix is not None:
            errors["mix"].append(mix_chunk_errors(weights, truth, v, *mix, chunk).unsqueeze(1))
        truths.append(truth)
    return {kind: torch.cat(parts, -1) for kind, parts in errors.items()}, torch.cat(truths, 1)


def _probe_estimate(low_rank: LowRankTerms, positions: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B,c,Nk) fp32 FAVOR+ estimate of exp(s - shift) for the probes at ``positions`` (c,) of the probe-row terms."""
    a = low_rank.a[:, positions]  # (B, c, m)
    offset = (low_rank.log_offset[:, positions, None] - shift).clamp_max(LOG_CAP)  # (B, c, 1)
    return (a @ low_rank.b.transpose(1, 2)).mul_(offset.exp())


def _weighted(low_rank: LowRankTerms, lam: torch.Tensor) -> LowRankTerms:
    """The residual scaled by lam (B,) per batch element, in place: a, num, den times lam (linear in a)."""
    w = lam.view(-1, 1, 1)
    low_rank.a.mul_(w)
    low_rank.num.mul_(w)
    low_rank.den.mul_(lam.view(-1, 1))
    return low_rank


def _mean_field_terms(log_mean: torch.Tensor, v: torch.Tensor, lam: torch.Tensor) -> LowRankTerms:
    """Rank-1 residual: exp(s_ij) ~ lam exp(log_mean_i) for every key (the Gaussian mean-field of the kernel)."""
    b, nq = log_mean.shape
    w = lam.view(-1, 1, 1)
    a = w.expand(b, nq, 1).contiguous()  # (B, Nq, 1)
    ones = v.new_ones(b, v.shape[1], 1)  # (B, Nk, 1)
    num = (w * v.sum(1, keepdim=True)).expand(b, nq, v.shape[2]).contiguous()  # (B, Nq, dv)
    den = (lam.view(-1, 1) * v.shape[1]).expand(b, nq).contiguous()  # (B, Nq)
    return LowRankTerms(log_mean.float(), a, ones, num, den)
