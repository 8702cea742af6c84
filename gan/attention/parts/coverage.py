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
Working set: ``chunk`` clusters at a time, a few (chunk, Nk) tables per batch element.
"""

from __future__ import annotations

import torch

from .round_layout import RoundLayout

COVERED_FLOOR = 1e-6  # log(1 - f) floor: keys every query already met rank last, still by score
COVERING_TABLES = 4  # (chunk, Nk) tables alive per piece: scores, missing fraction, met counts, their source


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

    The met counts of an earlier round are spread from cluster to cluster (C * C * W entries per round pair)
    or from query to query (Nq * W), whichever is fewer (``by_query`` None); both give the same counts."""
    b, n_rounds, n_clusters, _ = q_rows.shape
    nq, nk = q.shape[1], k.shape[1]
    if by_query is None:
        by_query = n_clusters * n_clusters > nq
    first_cluster = (torch.arange(b, device=q.device) * n_clusters).view(b, 1)  # (B, 1)
    flat_q = q.reshape(-1, q.shape[-1])  # (B*Nq, d)
    ones = q.new_ones(q_cluster.shape[0], q_cluster.shape[2])  # (B, Nq)
    k_ids: list[torch.Tensor] = []  # per round (B, C, W) local key ids
    for r in range(n_rounds):
        clusters = (q_cluster[:, r] + first_cluster).reshape(-1)  # (B*Nq,) flat cluster id
        centre = q.new_zeros(b * n_clusters, q.shape[-1]).index_add_(0, clusters, flat_q).view(b, n_clusters, -1)
        size = q.new_zeros(b, n_clusters).scatter_add_(1, q_cluster[:, r], ones).clamp_min_(1.0)  # (B, C)
        centre = centre / size.unsqueeze(-1)  # (B, C, d): mean query of each cluster
        spread = _spread_by_query(q_rows[:, r], q_cluster, k_ids, nq) if by_query else _spread_by_cluster(
            q_cluster, r, k_ids, n_clusters
        )
        picked = []
        for start in range(0, n_clusters, chunk):
            part = slice(start, start + chunk)
            score = torch.einsum("bcd,bnd->bcn", centre[:, part], k)  # (B, c, Nk) mean score of the cluster
            if r:
                missing = torch.ones_like(score)  # fraction of the cluster's queries that have not met the key
                for met in spread(part, score):  # per earlier round: (B, c, Nk) queries that met each key then
                    missing *= (1.0 - met / size[:, part].unsqueeze(-1)).clamp_(min=0.0)
                score += missing.clamp_(min=COVERED_FLOOR).log_()
            picked.append(score.topk(width, dim=-1).indices)  # (B, c, W)
        k_ids.append(torch.cat(picked, dim=1))
    k_rows = torch.stack(k_ids, dim=1) + (torch.arange(b, device=k.device) * nk).view(-1, 1, 1, 1)  # (B, R, C, W)
    return RoundLayout(q_rows, q_cluster, k_rows)


def _spread_by_cluster(q_cluster: torch.Tensor, r: int, k_ids: list[torch.Tensor], n_clusters: int):
    """met counts of round r's clusters from the contingency n(c, c') of clusters now and in each earlier round."""
    b = q_cluster.shape[0]
    ones = q_cluster.new_ones(q_cluster.shape[2], dtype=torch.float32).expand(b, -1)  # (B, Nq)
    overlap = [
        ones.new_zeros(b, n_clusters * n_clusters)
        .scatter_add_(1, q_cluster[:, r] * n_clusters + q_cluster[:, e], ones)
        .view(b, n_clusters, n_clusters)
        for e in range(r)
    ]  # (B, C, C) each: queries in cluster c now and in c' in round e

    def spread(part: slice, score: torch.Tensor):
        width = k_ids[0].shape[-1] if k_ids else 0
        for e, counts in enumerate(overlap):
            src = counts[:, part].repeat_interleave(width, dim=-1)  # (B, c, C*W)
            yield torch.zeros_like(score).scatter_add_(-1, k_ids[e].reshape(b, 1, -1).expand_as(src), src)

    return spread


def _spread_by_query(q_rows: torch.Tensor, q_cluster: torch.Tensor, k_ids: list[torch.Tensor], nq: int):
    """met counts of this round's clusters (q_rows (B,C,qs) flat ids) from each member query's keys in earlier
    rounds."""
    b = q_rows.shape[0]
    local = torch.where(q_rows >= 0, q_rows % nq, 0)  # (B, C, qs) local query ids, padding -> query 0
    present = (q_rows >= 0).float()  # (B, C, qs)

    def spread(part: slice, score: torch.Tensor):
        c, qs = local[:, part].shape[1:]
        members = local[:, part].reshape(b, -1)  # (B, c*qs)
        weight = present[:, part].unsqueeze(-1)  # (B, c, qs, 1)
        for e, keys in enumerate(k_ids):
            then = q_cluster[:, e].gather(1, members)  # (B, c*qs): each member's cluster in round e
            met_keys = keys.gather(1, then.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))  # (B, c*qs, W)
            src = weight.expand(-1, -1, -1, keys.shape[-1]).reshape(b, c, -1)  # (B, c, qs*W)
            yield torch.zeros_like(score).scatter_add_(-1, met_keys.view(b, c, -1), src)

    return spread


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
