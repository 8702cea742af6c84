"""Who meets whom in each hash round: the ``RoundLayout`` of query clusters and the keys each one attends to.

Every layout carries the hash rounds as a second batch axis: (B, R, ...). A round sorts the
queries by a scalar sort key and cuts the order into C equal clusters (padding slots spread
evenly, so no cluster is mostly padding). Each query cluster then meets W keys: for Reformer the
keys cut the same way (chunk i and chunk i-1), for smyrf-topkeys the W keys scoring highest against
the cluster's summed queries (``top_keys_per_cluster``) or the covering selection (``coverage``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange


def balanced_slots(sort_key: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(B,R,N) sort keys -> (B,R,N) slot of each element in a sorted layout of ``n_slots`` >= N slots.

    Padding slots are spread evenly: rank p goes to slot floor(p * n_slots / N).
    """
    n = sort_key.shape[-1]
    order = sort_key.argsort(dim=-1)  # (B, R, N)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=order.device).expand_as(order))
    return rank * n_slots // n


def slot_rows(slots: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(B,R,N) slots -> (B,R,n_slots) flat row id (b*N + i) of the element in each slot; -1 for padding."""
    b, r, n = slots.shape
    rows = torch.arange(b * n, device=slots.device).view(b, 1, n).expand(b, r, n)
    return torch.full((b, r, n_slots), -1, dtype=torch.long, device=slots.device).scatter_(-1, slots, rows)


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x (B,N,f), rows (...) flat ids into B*N (-1 = padding, filled with row 0) -> (..., f)."""
    flat = x.reshape(-1, x.shape[-1])
    return flat.index_select(0, rows.clamp_min(0).reshape(-1)).view(*rows.shape, x.shape[-1])


def cluster_size(n: int, n_clusters: int) -> int:
    """Elements per cluster when n elements (padded) fill ``n_clusters`` equal clusters."""
    return -(-n // n_clusters)


@dataclass
class RoundLayout:
    """Who meets whom in each of R hash rounds.

    q_rows (B,R,C,qs): flat query row ids (b*Nq + i) of each query cluster, -1 for padding;
    q_cluster (B,R,Nq): the cluster of every query in every round; k_rows (B,R,C,W): flat key row
    ids (b*Nk + j) each query cluster attends to, -1 for padding, no key twice in one cluster.
    """

    q_rows: torch.Tensor
    q_cluster: torch.Tensor
    k_rows: torch.Tensor


def query_clusters(q_key: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,R,Nq) sort keys -> q_rows (B,R,C,qs) and q_cluster (B,R,Nq): equal clusters by rank."""
    qs = cluster_size(q_key.shape[-1], n_clusters)
    q_slots = balanced_slots(q_key, n_clusters * qs)
    q_rows = rearrange(slot_rows(q_slots, n_clusters * qs), "b r (c i) -> b r c i", c=n_clusters)
    return q_rows, q_slots // qs


def top_keys_per_cluster(
    q: torch.Tensor, k: torch.Tensor, q_rows: torch.Tensor, q_cluster: torch.Tensor, width: int, chunk: int
) -> RoundLayout:
    """Each query cluster meets the ``width`` keys scoring highest against the sum of its queries.

    q (B,Nq,d), k (B,Nk,d); the clusters' (q_rows, q_cluster) from ``query_clusters``. Selection
    scores are formed one round and ``chunk`` clusters at a time (chunk * Nk per batch element alive).
    Each cluster's query sum is a scatter-add over its own batch element's queries only.
    """
    b, n_rounds, n_clusters, _ = q_rows.shape
    first_cluster = (torch.arange(b, device=q.device) * n_clusters).view(b, 1)  # (B, 1)
    flat_q = q.reshape(-1, q.shape[-1])  # (B*Nq, d)
    k_ids = []
    for r in range(n_rounds):
        clusters = (q_cluster[:, r] + first_cluster).reshape(-1)  # (B*Nq,) flat cluster id
        centre = q.new_zeros(b * n_clusters, q.shape[-1]).index_add_(0, clusters, flat_q).view(b, n_clusters, -1)
        k_ids.append(
            torch.cat(
                [
                    torch.einsum("bcd,bnd->bcn", part, k).topk(width, dim=-1).indices
                    for part in centre.split(chunk, dim=1)
                ],
                dim=1,
            )
        )  # (B, C, W)
    k_rows = torch.stack(k_ids, dim=1) + (torch.arange(b, device=k.device) * k.shape[1]).view(
        -1, 1, 1, 1
    )  # (B, R, C, W)
    return RoundLayout(q_rows, q_cluster, k_rows)


def chunk_neighbours(q_key: torch.Tensor, k_key: torch.Tensor, n_chunks: int) -> RoundLayout:
    """Queries and keys both cut by rank into C equal chunks; query chunk i meets key chunks i-1 and i."""
    ks = cluster_size(k_key.shape[-1], n_chunks)
    q_rows, q_cluster = query_clusters(q_key, n_chunks)
    k_rows = rearrange(
        slot_rows(balanced_slots(k_key, n_chunks * ks), n_chunks * ks), "b r (c j) -> b r c j", c=n_chunks
    )
    if n_chunks > 1:
        k_rows = torch.cat([k_rows.roll(1, dims=2), k_rows], dim=-1)  # (B, R, C, 2ks): previous and own chunk
    return RoundLayout(q_rows, q_cluster, k_rows)
