"""Inputs and dense references shared by the LSH-based attention tests (SMYRF, Reformer, Scatterbrain)."""

import math

import torch
import torch.nn.functional as F

BIGGAN = (1, 4096, 1024, 32, 128)  # (B, Nq, Nk, d, dv) of BigGAN-128's attention layer, one image
ODD = (2, 300, 77, 16, 8)  # (B, Nq, Nk, d, dv) that no cluster, bucket, chunk or window size divides

# (Nq, Nk, budget) the clustered backends' budget plans are checked at: BigGAN's 4096 x 1024, a size the clusters
# do not divide and a 4x larger map, from a tight budget to the full matrix
BUDGET_GRID = [
    (nq, nk, budget)
    for nq, nk in [(4096, 1024), (1000, 250), (16384, 4096)]
    for budget in (1 / 32, 1 / 8, 1 / 4, 1.0)
]


def gaussian_qkv(b, nq, nk, d, dv, seed=0):
    """Standard normal q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv), drawn in that order from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, nq, d, generator=g), torch.randn(b, nk, d, generator=g), torch.randn(b, nk, dv, generator=g)


def qkv(b=2, nq=256, nk=64, d=16, dv=8, logit_std=1.0, seed=0):
    """Isotropic Gaussian q, k (logit std ~ ``logit_std``) and v."""
    q, k, v = gaussian_qkv(b, nq, nk, d, dv, seed)
    gain = math.sqrt(logit_std / math.sqrt(d))
    return q * gain, k * gain, v


def clustered_qkv(b=2, nq=1024, nk=256, d=32, dv=16, logit_std=6.0, n_centres=32, seed=0):
    """Unit centres plus noise (cosine ~0.8 within a cluster): queries attend within their cluster."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_centres, d, generator=g), dim=-1)
    q = centres[torch.randint(n_centres, (b, nq), generator=g)] + torch.randn(b, nq, d, generator=g) * 0.5 / math.sqrt(
        d
    )
    k = centres[torch.randint(n_centres, (b, nk), generator=g)] + torch.randn(b, nk, d, generator=g) * 0.5 / math.sqrt(
        d
    )
    gain = math.sqrt(logit_std / (q @ k.transpose(1, 2)).std().item())
    return q * gain, k * gain, torch.randn(b, nk, dv, generator=g)


def cluster_valued_qkv(b=2, nq=2048, nk=512, d=32, dv=16, logit_std=1.0, seed=0):
    """16 clusters whose keys carry their cluster's value (plus noise), logits rescaled to ``logit_std``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(16, d, generator=g), dim=-1)  # (16, d)
    values = torch.randn(16, dv, generator=g)  # (16, dv)
    q_of, k_of = torch.randint(16, (b, nq), generator=g), torch.randint(16, (b, nk), generator=g)
    q = centres[q_of] + 0.7 / d**0.5 * torch.randn(b, nq, d, generator=g)
    k = centres[k_of] + 0.7 / d**0.5 * torch.randn(b, nk, d, generator=g)
    gain = (logit_std / (q[0] @ k[0].t()).std()).sqrt()
    return q * gain, k * gain, values[k_of] + 0.5 * torch.randn(b, nk, dv, generator=g)


def block_inputs(G, run):
    """The (q, k, v) the one attention block of generator ``G`` computes on its first call while ``run()`` runs
    (the block's own projections, recorded; no gradients)."""
    [block] = G.attention_blocks()
    seen = []
    original_qkv = block.qkv
    block.qkv = lambda x: seen.append(original_qkv(x)) or seen[-1]
    with torch.no_grad():
        run()
    return seen[0]


def exact(q, k, v, scale=1.0, mask=None):
    """float64 softmax(scale q k^T) v, restricted to ``mask`` (B,Nq,Nk) when given."""
    s = (q.double() @ k.double().transpose(1, 2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    return torch.softmax(s, -1) @ v.double()


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def errors_over_seeds(name, params, q, k, v, seeds=range(5)):
    """Relative error against exact attention of backend ``name`` built with ``params`` and each seed (the
    measure the backends' means are compared with their authors' code by)."""
    from gan.attention import build_attention

    ref = exact(q, k, v)
    return [rel_err(build_attention(name, seed=seed, **params)(q, k, v), ref) for seed in seeds]


def support_mask(layout, nq, nk):
    """(B, Nq, Nk) bool: the pairs any round's clusters put together (the reference for the union)."""
    b = layout.q_cluster.shape[0]
    q_rows = layout.q_rows.unsqueeze(-1).expand(*layout.q_rows.shape, layout.k_rows.shape[-1])
    k_rows = layout.k_rows.unsqueeze(-2).expand_as(q_rows)
    valid = (q_rows >= 0) & (k_rows >= 0)
    mask = torch.zeros(b * nq * nk, dtype=torch.bool)
    mask[q_rows[valid] * nk + k_rows[valid] % nk] = True
    return mask.view(b, nq, nk)


def plain_probe_fit(mean_v, part0, part1, truth, probes):
    """Plain reading (float64, one image) of how the mean-field variants finish: mean_v + a (part0 - mean_v) + b part1,
    (a, b) the unconstrained least squares on the probes' rows of the exact output ``truth`` (Nq, dv), each then
    clamped to [0, 1]; the probes' rows exact. part0: the zero-order estimate (Nq, dv); part1: the slope term."""
    x = torch.stack([(part0[probes] - mean_v).reshape(-1), part1[probes].reshape(-1)], 1)
    y = (truth[probes] - mean_v).reshape(-1)
    a, b = torch.linalg.lstsq(x, y[:, None]).solution[:, 0].clamp(0, 1)
    out = mean_v + a * (part0 - mean_v) + b * part1
    out[probes] = truth[probes]
    return out


def peak_bytes(fn):
    """Peak of live CPU bytes allocated while ``fn()`` runs (its result included), from the public profiler
    API: each recorded event's own allocations minus frees (``self_cpu_memory_usage``), summed in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    records = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak, result


def clustered_peak_bound(score_entries, nq, nk, d, dv, plans):
    """Bytes a clustered backend may hold beyond its output (batch 1): its score entries (fp32) and four copies
    of q, k, v, plus what score_entries does not count: three (Nq, dv + 1) fp32 accumulators of the output's size
    (the union's [num | den] sums, a residual's sums over all keys, the candidates' before they are combined),
    each layout's int64 bookkeeping (query rows, clusters, round offsets: 4 * 8 bytes per query and round; every
    plan's layout may be alive at once) and the union's record of the keys each query met (one bit per query and
    key, in int32 words with a spare word and row). ``plans``: (n_hashes, n_clusters) pairs."""
    inputs = nq * (d + 2) + nk * (d + dv)
    accumulators = 3 * nq * (dv + 1)
    layouts = sum(4 * 8 * n_hashes * nq for n_hashes, _ in plans)
    met_keys = 4 * (nq + 1) * (nk // 32 + 1)
    return 4 * (score_entries + 4 * inputs + accumulators) + layouts + met_keys


def lowrank_qkv(b=2, nq=2048, nk=512, d=32, dv=16, logit_std=2.0, seed=0):
    """q, k = z A with A's singular values 1/i (a few dominant directions), logits rescaled to ``logit_std``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(d, d, generator=g))[0] / torch.arange(1, d + 1.0)  # (d, d)
    q, k = torch.randn(b, nq, d, generator=g) @ a, torch.randn(b, nk, d, generator=g) @ a
    gain = (logit_std / (q[0] @ k[0].t()).std()).sqrt()
    return q * gain, k * gain, torch.randn(b, nk, dv, generator=g)
