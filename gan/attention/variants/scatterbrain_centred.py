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
of the queries allows, ``probes.probe_plan``; their rows scored in chunks whose tables fit in the
budget beside the features, before the attention runs) score, per batch element, these candidates with the best
residual weight lam of a grid for each (lam = 0: the support alone, always a candidate):
  - the whole-budget support (smyrf-topkeys' own) + lam * mean-field residual,
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

from ..base import AttentionBackend, Parameter, check_bool, positive_int
from ..parts.key_centroids import GroupStarts, centroid_probe_estimate, centroid_terms, key_groups
from ..parts.low_rank import LowRankTerms
from ..parts.parameter_groups import CLUSTERS
from ..parts.probe_calibration import (
    FAVOR_WEIGHTS,
    MEAN_FIELD_WEIGHTS,
    best_weight,
    clearly_better,
    gaussian_log_mean_kernel,
    grid,
    lam_table,
    stacked_errors,
    with_ones,
)
from ..parts.probes import ProbeQueries, probe_plan, probe_supports, probe_truth
from ..parts.random_features import ProjectionCache, favor_log_features
from ..parts.round_attention import clustered_attention
from ..parts.round_layout import RoundLayout
from ..parts.topkey_support import ClusterPlan, SmyrfHash, plan_clusters

SPARSE_SHARE = 0.75  # fraction of the budget spent on the sparse support; the rest on features
# The sparse correction costs num_features multiply-adds per support pair (the low-rank estimate of
# each pair), so budget-resolved features stop here, well before the correction costs as much as exact
# attention at large Nq (docs/attention.md, "Why these constants"). Explicit values are kept.
MAX_BUDGET_FEATURES = 256
LOG_CAP = 60.0  # estimates above e^60 times a probe's largest exact weight are capped (fp32 range)
# (c, Nk) fp32 tables of a probe chunk alive at once: the exact weights and one product of them (or an estimate and
# its masked copy), beside at most three supports' bool masks (3/4 of a table)
PROBE_TABLES = 2.75
# lam grids per residual: FAVOR+ is unbiased (lam = 1), the mean-field and the centroids only model the scale
WEIGHTS = {"favor": FAVOR_WEIGHTS, "mean-field": MEAN_FIELD_WEIGHTS, "centroids": MEAN_FIELD_WEIGHTS}
KINDS = ("mean-field", "favor", "centroids")  # residual kinds by id (the baseline, no residual: -1)


def low_rank_terms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, scale: float) -> LowRankTerms:
    """FAVOR+ estimate of exp(scale q.k) in stabilised factors: q (B,Nq,d), k (B,Nk,d), v (B,Nk,dv) fp32.

    The features see q and k centred on their own batch element's means (q_, k_); the exact identity
    q.k = q_.k_ + q.k_mean + q_mean.k - q_mean.k_mean moves the rest into per-query and per-key factors,
    so the estimate stays unbiased and its variance is that of the smaller centred norms.
    """
    q_mean, k_mean = q.mean(1, keepdim=True), k.mean(1, keepdim=True)  # (B, 1, d)
    key_shift = scale * torch.bmm(k - k_mean, q_mean.transpose(1, 2))  # (B, Nk, 1): q_mean.(k - k_mean)
    lk = favor_log_features(k - k_mean, proj, scale) + key_shift  # (B, Nk, m)
    key_max = lk.amax(dim=1, keepdim=True)  # (B, 1, m): per feature, so no feature underflows wholesale
    b = (lk - key_max).exp_()  # (B, Nk, m) <= 1
    # (B, Nq, m)
    lq = favor_log_features(q - q_mean, proj, scale) + scale * torch.bmm(q, k_mean.transpose(1, 2)) + key_max
    log_offset = lq.amax(-1)  # (B, Nq)
    a = (lq - log_offset.unsqueeze(-1)).exp_()  # (B, Nq, m) <= 1
    num = torch.bmm(a, torch.bmm(b.transpose(1, 2), v))  # (B, Nq, dv): sum over all keys, in units of exp(log_offset)
    den = torch.bmm(a, b.sum(1).unsqueeze(-1)).squeeze(-1)  # (B, Nq)
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

    num_features = Parameter(positive_int)
    n_hashes, q_cluster_size, k_cluster_size = CLUSTERS
    calibrate = Parameter(check_bool, default=True)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.hash = SmyrfHash(self.seed)
        self.projection = ProjectionCache(self.seed)  # (num_features, d, device) -> (m, d), drawn once
        self.group_starts = GroupStarts(self.seed)  # the key-centroid residual's k-means starts
        self.probes = ProbeQueries(self.seed)  # the calibration's probe queries, drawn once per shape

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
        return probe_plan(self.effective_budget, nq, PROBE_TABLES)[0] if self.calibrate else 0

    def probe_chunk(self, nq: int, nk: int) -> int:
        """Probes per chunk: the most whose PROBE_TABLES (c, Nk) tables fit in the budget beside the features (alive
        during the calibration), at least 1."""
        room = self.effective_budget * nq * nk - (nq + nk) * self.calibration_plan(nq, nk)[2]
        return max(1, int(room / (PROBE_TABLES * nk)))

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
        probes = self.probes(nq, n_probe, q.device)  # (p,)
        out, truth = self.calibrated(qf, kf, vf, scale, probes)
        return out.index_copy_(1, probes, truth).to(q.dtype)  # the probes' exact rows are known

    def calibration_plan(self, nq: int, nk: int) -> tuple[ClusterPlan, tuple, int]:
        """(the hashed support, (rounds, keys per cluster) of the two split supports, their number of features).

        With a whole-budget candidate (``sparse_plan``) there are two splits of its support, each the most that fits
        in the budget beside the fixed split's features: its first rounds (5 of 8 at 1/8) and every cluster's best
        keys (11 of 16: the selection ranks them, best first); one hash serves every candidate and a batch element's
        choice is a mask, not another layout. A split with nothing left is (0, 0). Fixed parameters: the fixed
        split's support, all of it, as the one split, and its features."""
        clusters, num_features = self.plan(nq, nk)
        whole = self.sparse_plan(nq, nk)
        if whole is None:
            return clusters, ((clusters.n_hashes, clusters.k_cluster_size),), num_features
        left = self.effective_budget * nq * nk - (nq + nk) * num_features  # what the fixed split's features leave
        per_key = whole.n_clusters * whole.q_cluster_size  # support entries per round and key of a cluster
        rounds = min(whole.n_hashes - 1, int(left // (per_key * whole.k_cluster_size)))
        keys = min(whole.k_cluster_size - 1, int(left // (per_key * whole.n_hashes)))
        splits = (
            (rounds, whole.k_cluster_size) if rounds > 0 else (0, 0),
            (whole.n_hashes, keys) if keys > 0 else (0, 0),
        )
        return whole, splits, num_features if any(r for r, _ in splits) else 0

    def calibrated(self, q, k, v, scale, probes):
        """(output (B, Nq, dv), the probes' exact rows (B, p, dv)): per batch element the candidate that lowers the
        error on the probes' exact rows most, beyond EVIDENCE standard errors, relative to the whole support alone
        (kept where no candidate clearly helps).

        Candidates: the whole support with the mean-field residual, and either split (first rounds, or each
        cluster's best keys) with the mean-field, the
        FAVOR+ or the key-centroid residual (``key_centroids``, m groups). Each residual with its best weight lam
        (0 = no residual). Every choice is a fixed-shape tensor op (no host sync, no per-element subsets): the chosen
        keys are a mask of the one layout, and the residual terms of every kind are formed and selected per batch
        element, weighted by lam (0 where no residual was chosen)."""
        nq, nk = q.shape[1], k.shape[1]
        whole, split_sizes, num_features = self.calibration_plan(nq, nk)
        proj = self.projection(num_features, q.shape[2], q.device) if num_features else None  # (m, d)
        log_mean = gaussian_log_mean_kernel(q, k, scale)  # (B, Nq): the mean-field residual's scale
        residuals = {}
        if proj is not None:  # the features' residuals: FAVOR+ of every query (the probes' rows calibrate), key groups
            residuals["favor"] = low_rank_terms(q, k, v, proj, scale)
            residuals["centroids"] = key_groups(k, self.group_starts(nk, proj.shape[0], k.device))
        layout = self.hash.layout(q * scale, k, whole)
        n_rounds, width = whole.n_hashes, whole.k_cluster_size
        # support id (0: the whole layout; 1, 2: the splits, its first rounds or every cluster's best keys) -> sizes
        sizes = {0: (n_rounds, width), **{i: size for i, size in enumerate(split_sizes, start=1) if size[0]}}
        parts = list(dict.fromkeys(sizes.values()))  # the distinct supports, as (rounds, keys)
        # per candidate: (support id, residual kind); the split that is the whole support has its mean-field already
        candidates = [(0, "mean-field")] + [
            (i, kind) for i in sizes if i for kind in ("mean-field", *residuals)
            if not (kind == "mean-field" and sizes[i] == (n_rounds, width))
        ]
        errors, lams, truth = _probe_errors(
            layout, [(0, r, w) for r, w in parts], [(parts.index(sizes[i]), kind) for i, kind in candidates],
            probes, self.probe_chunk(nq, nk), q, k, v, scale, log_mean, residuals,
        )  # (B, K, L, p), (K, L)
        lam, held_out = best_weight(errors, lams)  # (B, K), (B, K, p)
        # choice 0: the baseline, the whole support alone (candidate 0 at lam = 0), which needs no evidence
        gains = torch.nn.functional.pad(clearly_better(errors[:, :1, 0], held_out), (1, 0))  # (B, 1 + K)
        chosen = gains.argmax(-1)  # (B,) choice per batch element
        lam = torch.nn.functional.pad(lam.float(), (1, 0)).gather(-1, chosen[:, None]).squeeze(-1)  # (B,)
        # per choice (Python ints, made once per device): the rounds and keys per cluster it keeps, its residual kind
        table = [(n_rounds, width, -1)] + [(*sizes[i], KINDS.index(kind)) for i, kind in candidates]
        rounds, keys, kind = grid(tuple(zip(*table, strict=True)), torch.int64, q.device).index_select(1, chosen)
        rounds_past = grid(tuple(((r,),) for r in range(n_rounds)), torch.int64, q.device) >= rounds.view(-1, 1, 1, 1)
        drop = rounds_past | (grid(tuple(range(width)), torch.int64, q.device) >= keys.view(-1, 1, 1, 1))  # (B,R,1,W)
        chosen_layout = RoundLayout(layout.q_rows, layout.q_cluster, torch.where(drop, -1, layout.k_rows))
        # lam of each residual kind per batch element: 0 where another was chosen
        weight = (lam.unsqueeze(-1) * (kind.unsqueeze(-1) == grid((0, 1, 2), torch.int64, q.device))).unbind(-1)
        residual = _mean_field_terms(log_mean, v, weight[0])
        if residuals:
            favor = _weighted(residuals.pop("favor"), weight[1])
            centroids = centroid_terms(residuals.pop("centroids"), q, v, scale, weight[2])
            residual = _combined(residual, favor, centroids, kind == KINDS.index("favor"))
            del favor, centroids  # only the combined terms stay alive during the attention
        active = lam > 0  # (B,): no residual: the sums start from nothing (as without one)
        residual.log_offset = torch.where(active.view(-1, 1), residual.log_offset, -1e30)
        out = clustered_attention(q * scale, k, v, chosen_layout, residual)
        return out, truth

    def layout(self, q: torch.Tensor, k: torch.Tensor, scale: float) -> RoundLayout:
        """The fixed split's sparse support: query clusters and their keys for fp32 q (B,Nq,d), k (B,Nk,d)."""
        return self.hash.layout(q * scale, k, self.plan(q.shape[1], k.shape[1])[0])

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        """The larger of the attention (the fixed split's support and features; calibrated: the whole support, or
        the split's rounds and their features) and the calibration before it (features and one probe chunk's
        tables; the support is not scored yet)."""
        clusters, num_features = self.plan(nq, nk)
        if not self.probe_count(nq, nk):
            return clusters.score_entries() + (nq + nk) * num_features
        calibration = int(PROBE_TABLES * min(self.probe_count(nq, nk), self.probe_chunk(nq, nk)) * nk)  # one chunk
        support, split_sizes, num_features = self.calibration_plan(nq, nk)
        features = (nq + nk) * num_features
        split = max(r * w for r, w in split_sizes) * support.n_clusters * support.q_cluster_size
        return max(support.score_entries(), split + features, features + calibration)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        clusters, num_features = self.plan(nq, nk)
        resolved = {**clusters.as_dict(), "num_features": num_features, "calibrate": self.calibrate}
        sparse = self.sparse_plan(nq, nk)
        if sparse is not None:
            _, split_sizes, split_features = self.calibration_plan(nq, nk)
            resolved.update(all_sparse_n_clusters=sparse.n_clusters, splits=split_sizes,
                            split_num_features=split_features)
        return resolved


def _probe_errors(layout, parts, candidates, probes, size, q, k, v, scale, log_mean, residuals):
    """((B, K, L, p) probe errors of each candidate for each lam of its grid, those grids (K, L) (``lam_table``), the
    probes' exact rows (B, p, dv)), in chunks of ``size`` probes (each probe's exact row once).

    parts: (first round, end round, keys) of each support of ``layout`` (``probe_supports``); candidates: (part,
    residual kind), the kind "mean-field" or one of ``residuals``: "favor" (LowRankTerms of every query) and
    "centroids" (KeyGroups). A support's sums of exact weights serve all its candidates; the mean-field residual is
    one constant per row, so its sums off a support are that constant times the values' less the support's."""
    nk = k.shape[1]
    v1 = with_ones(v)  # (B, Nk, dv + 1)
    mean_field = list(dict.fromkeys(part for part, kind in candidates if kind == "mean-field"))
    estimated = [(part, kind) for part, kind in candidates if kind != "mean-field"]
    inside, plain, outside, shifts, truths = [], [], [], [], []
    for chunk in probes.split(size):
        shift, weights, truth = probe_truth(q[:, chunk], k, v, scale)  # (B,c,1), (B,c,Nk), (B,c,dv)
        masks = probe_supports(layout, chunk, nk, parts).unbind(2)  # per support (B, c, Nk) bool
        inside.append(torch.stack([torch.bmm(weights * mask, v1) for mask in masks], 1))  # (B, S, c, dv + 1)
        weights = None  # freed before the estimates (not ``del``: comprehensions capture it, a graph break)
        plain.append(torch.stack([torch.bmm(masks[part].to(v.dtype), v1) for part in mean_field], 1))  # (B,M,c,dv+1)
        sums = {}
        for kind, terms in residuals.items():  # one (c, Nk) estimate alive at a time
            if kind == "favor":
                estimate = _probe_estimate(terms, chunk, shift)
            else:
                estimate = centroid_probe_estimate(terms, q[:, chunk], scale, shift, LOG_CAP)
            sums.update({(part, kd): torch.bmm(estimate.masked_fill(masks[part], 0.0), v1)
                         for part, kd in estimated if kd == kind})
            estimate = None
        if estimated:
            outside.append(torch.stack([sums[candidate] for candidate in estimated], 1))  # (B, E, c, dv + 1)
        shifts.append(shift)
        truths.append(truth)
    mf = (log_mean[:, probes, None] - _joined(shifts, 1)).clamp_max(LOG_CAP).exp()  # (B, p, 1)
    # (B, M + E, p, dv + 1): the mean-field's sums off each support, then the estimated residuals'
    outside = torch.cat([mf.unsqueeze(1) * (v1.sum(1)[:, None, None] - _joined(plain, 2)), *(
        [_joined(outside, 2)] if estimated else [])], 1)
    order = tuple(mean_field.index(part) if kind == "mean-field" else len(mean_field) + estimated.index((part, kind))
                  for part, kind in candidates)
    at = grid(order, torch.int64, q.device), grid(tuple(part for part, _ in candidates), torch.int64, q.device)
    lams = lam_table(tuple(WEIGHTS[kind] for _, kind in candidates), q.device)
    truth = _joined(truths, 1)
    errors = stacked_errors(_joined(inside, 2).index_select(1, at[1]), outside.index_select(1, at[0]), truth, lams)
    return errors, lams, truth


def _joined(chunks: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The probe chunks' tensors joined along ``dim`` (the one chunk itself, no copy, when there is one)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim)


def _combined(mean_field: LowRankTerms, favor: LowRankTerms, centroids: LowRankTerms, use_favor: torch.Tensor):
    """One residual of m + 1 columns per batch element: the mean-field column beside FAVOR+ (where ``use_favor``
    (B,)) or the key centroids, each already weighted by its lam (0 where not chosen, so one kind is active). The
    log-offset is the active kind's (a kind's ``a`` is in units of its own offset). The sums over all keys are
    added up in favor's tensors (no more output-sized copies)."""
    pick = use_favor.view(-1, 1, 1)
    width = max(favor.a.shape[-1], centroids.a.shape[-1])  # the centroids are min(m, Nk) groups

    def wide(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[-1]))

    mf_active = mean_field.den[:, :1] > 0  # (B, 1)
    offset = torch.where(use_favor.view(-1, 1), favor.log_offset, centroids.log_offset)
    offset = torch.where(mf_active, mean_field.log_offset, offset)  # (B, Nq)
    return LowRankTerms(
        offset,
        torch.cat([mean_field.a, torch.where(pick, wide(favor.a), wide(centroids.a))], -1),  # (B, Nq, m + 1)
        torch.cat([mean_field.b, torch.where(pick, wide(favor.b), wide(centroids.b))], -1),  # (B, Nk, m + 1)
        favor.num.add_(centroids.num).add_(mean_field.num),  # summed into favor's: kinds not chosen are exactly 0
        favor.den.add_(centroids.den).add_(mean_field.den),
    )


def _probe_estimate(low_rank: LowRankTerms, rows: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B,c,Nk) fp32 FAVOR+ estimate of exp(s - shift) for the queries ``rows`` (c,) of every query's terms."""
    a = low_rank.a[:, rows]  # (B, c, m)
    offset = (low_rank.log_offset[:, rows, None] - shift).clamp_max(LOG_CAP)  # (B, c, 1)
    return torch.bmm(a, low_rank.b.transpose(1, 2)).mul_(offset.exp())


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
    ones = v.new_ones(b, v.shape[1], 1)  # (B, Nk, 1)
    num = (w * v.sum(1, keepdim=True)).expand(b, nq, v.shape[2])  # (B, Nq, dv), a view: the same row for every query
    den = (lam.view(-1, 1) * v.shape[1]).expand(b, nq)  # (B, Nq), a view
    return LowRankTerms(log_mean.float(), w.expand(b, nq, 1), ones, num, den)
