"""Covering key selection for clustered attention: each round's clusters pick the keys their queries still miss.

With "top keys per cluster" every round hands a query a cluster whose summed queries point much
the same way, so the rounds pick largely the same keys and the union of the supports holds few
distinct pairs. Here round r's cluster c picks its W keys greedily by estimated marginal mass:

    gain(c, j) = sum over the cluster's queries i that have not met j in rounds < r of exp(s_ij)
              ~ |c| (1 - f_cj) exp(mean_i s_ij)         (Jensen's proxy for the cluster's mass on j)

so the selection score is mean_i s_ij + log(1 - f_cj), with f_cj the fraction of the cluster's
queries that already met key j in some earlier round. Where attention is peaked a key far above the rest is picked
again for the few queries still missing it; where it is diffuse the rounds spread over new keys.
f is counted without forming any (query, key) table: round e's key lists are spread over round r's
clusters, through the cluster-to-cluster contingency counts n(c, c') of rounds r and e or through each
member query's round-e cluster (whichever moves fewer entries), giving per earlier round the fraction
f_e that met j then; 1 - f = prod_e (1 - f_e) treats the rounds as independent
(exact for one earlier round; with more it slightly overstates coverage when the same queries keep
meeting the same key, which the rounds' shared geometry makes likely).
Working set: ``chunk`` clusters at a time, ``covering_tables(R)`` (chunk, Nk) tables per batch element.
"""

from __future__ import annotations

import torch

from .round_layout import RoundLayout

COVERED_FLOOR = 1e-6  # log(1 - f) floor: keys every query already met rank last, still by score


def covering_tables() -> int:
    """(chunk, Nk) tables alive per piece of ``n_rounds`` rounds: the scores, the missing fraction, one earlier
    round's met counts and its cluster-key incidence as floats (from cluster to cluster) or its source (from query to
    query)."""
    return 4


def covering_top_keys(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rows: torch.Tensor,
    q_cluster: torch.Tensor,
    width: int,
    chunk: int,
    by_query: bool | None = None,
) -> RoundLayout:
    """q (B,Nq,d) scaled, k (B,Nk,d) fp32; q_rows (B,R,C,qs), q_cluster (B,R,Nq) -> the layout with W keys per
    cluster.

    The met counts of every earlier round are spread at once, from cluster to cluster (C * C * W entries per round
    pair) or from query to query (Nq * W), whichever is fewer (``by_query`` None); both give the same counts. The
    rounds are sequential (round r ranks by what rounds < r picked); nothing else loops in Python."""
    b, n_rounds, n_clusters, _ = q_rows.shape
    nq, nk, d = q.shape[1], k.shape[1], q.shape[-1]
    if by_query is None:
        by_query = n_clusters * n_clusters > nq
    flat_q = q.reshape(-1, d)  # (B*Nq, d)
    first_cluster = (torch.arange(b, device=q.device) * n_clusters).view(b, 1)  # (B, 1)
    sizes = q.new_zeros(b, n_rounds * n_clusters).scatter_add_(
        1, (q_cluster + torch.arange(n_rounds, device=q.device).view(1, -1, 1) * n_clusters).reshape(b, -1),
        q.new_ones(1, 1).expand(b, n_rounds * nq),
    )
    size = sizes.view(b, n_rounds, n_clusters).clamp_min_(1.0)  # (B, R, C) queries per cluster
    k_ids = q_rows.new_zeros(b, n_rounds, n_clusters, width)  # (B, R, C, W) local key ids
    # (B, R, C, Nk) 1 where round r's cluster c meets key j: the met counts are contingency tables times it
    meets = None if by_query else torch.zeros(b, n_rounds, n_clusters, nk, dtype=torch.bool, device=q.device)
    for r in range(n_rounds):
        met_counts = None
        if r:
            met_counts = _by_query(q_rows[:, r], q_cluster, k_ids, r, nk) if by_query else _by_cluster(
                q_cluster, meets, r
            )
        clusters = (q_cluster[:, r] + first_cluster).reshape(-1)  # (B*Nq,) flat cluster id
        centre = q.new_zeros(b * n_clusters, d).index_add_(0, clusters, flat_q).view(b, n_clusters, d)
        centre = centre / size[:, r].unsqueeze(-1)  # (B, C, d): mean query of each cluster
        for start in range(0, n_clusters, chunk):
            part = slice(start, start + chunk)
            score = torch.einsum("bcd,bnd->bcn", centre[:, part], k)  # (B, c, Nk) mean score of the cluster
            if met_counts is not None:
                # fraction of the cluster's queries that met none of the earlier rounds' keys (rounds taken as
                # independent), one earlier round's (B, c, Nk) counts at a time
                missing = None
                for met in met_counts(part):
                    met = met.div_(size[:, r, part].unsqueeze(-1)).neg_().add_(1.0).clamp_(min=0.0)
                    missing = met if missing is None else missing.mul_(met)
                score += missing.clamp_(min=COVERED_FLOOR).log_()
            k_ids[:, r, part] = score.topk(width, dim=-1).indices  # (B, c, W)
        if meets is not None:
            meets[:, r].scatter_(-1, k_ids[:, r], True)
    k_rows = k_ids + (torch.arange(b, device=k.device) * nk).view(-1, 1, 1, 1)  # (B, R, C, W)
    return RoundLayout(q_rows, q_cluster, k_rows)


def _by_cluster(q_cluster: torch.Tensor, meets: torch.Tensor, r: int):
    """met counts of round r's clusters from the contingency n_e(c, c') of clusters now and in each earlier round e,
    times round e's cluster-key incidence ``meets`` (B,R,C,Nk) bool: ``met(part)`` yields (B, c, Nk) per earlier
    round (the contingency tables of every e at once)."""
    b, _, nq = q_cluster.shape
    n_clusters = meets.shape[2]
    device = q_cluster.device
    earlier = torch.arange(r, device=device).view(1, r, 1)  # (1, r, 1)
    # (B, r, Nq) flat index of (b, e, cluster now, cluster then)
    pair = ((torch.arange(b, device=device).view(b, 1, 1) * r + earlier) * n_clusters + q_cluster[:, r : r + 1])
    pair = pair * n_clusters + q_cluster[:, :r]
    overlap = torch.zeros(b * r * n_clusters * n_clusters, device=device).index_add_(
        0, pair.reshape(-1), torch.ones(pair.numel(), device=device)
    ).view(b, r, n_clusters, n_clusters)  # (B, r, C, C): queries in cluster c now and in c' in round e

    def met(part: slice):
        for e in range(r):  # (B, c, Nk) per earlier round
            yield overlap[:, e, part] @ meets[:, e].float()

    return met


def _by_query(q_rows: torch.Tensor, q_cluster: torch.Tensor, k_ids: torch.Tensor, r: int, nk: int):
    """met counts of round r's clusters (q_rows (B,C,qs) flat ids) from each member query's keys in earlier rounds:
    ``met(part)`` yields (B, c, Nk) per earlier round."""
    b, _, nq = q_cluster.shape
    width = k_ids.shape[-1]
    local = torch.where(q_rows >= 0, q_rows % nq, 0)  # (B, C, qs) local query ids, padding -> query 0
    present = (q_rows >= 0).float()  # (B, C, qs)

    def met(part: slice):
        c, qs = local[:, part].shape[1:]
        members = local[:, part].reshape(b, -1)  # (B, c*qs)
        src = present[:, part].unsqueeze(-1).expand(-1, -1, -1, width).reshape(b, c, -1)  # (B, c, qs*W)
        for e in range(r):
            then = q_cluster[:, e].gather(1, members)  # (B, c*qs): each member's cluster in round e
            met_keys = k_ids[:, e].gather(1, then.unsqueeze(-1).expand(-1, -1, width))  # (B, c*qs, W)
            yield torch.zeros(b, c, nk, device=q_rows.device).scatter_add_(-1, met_keys.view(b, c, -1), src)

    return met


def distinct_pairs(layout: RoundLayout, nk: int) -> torch.Tensor:
    """(B, Nq) number of distinct keys each query meets over all rounds (padding excluded); O(Nq * R * W) memory."""
    b, n_rounds, nq = layout.q_cluster.shape
    cluster = layout.q_cluster + (
        torch.arange(b * n_rounds, device=layout.q_cluster.device).view(b, n_rounds, 1) * layout.k_rows.shape[2]
    )
    keys = layout.k_rows.reshape(-1, layout.k_rows.shape[-1]).index_select(0, cluster.reshape(-1))  # (B*R*Nq, W)
    keys = keys.view(b, n_rounds, nq, -1).permute(0, 2, 1, 3).reshape(b, nq, -1)  # (B, Nq, R*W) flat key rows
    keys = keys.sort(-1).values
    new = torch.ones_like(keys, dtype=torch.bool)
    new[..., 1:] = keys[..., 1:] != keys[..., :-1]
    return (new & (keys >= 0)).sum(-1)
