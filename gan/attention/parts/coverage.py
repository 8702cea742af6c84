"""Covering key selection for clustered attention: each round's clusters pick the keys their queries still miss.

With "top keys per cluster" every round hands a query a cluster whose summed queries point much
the same way, so the rounds pick largely the same keys and the union of the supports holds few
distinct pairs. Here round r's cluster c picks its W keys greedily by estimated marginal mass:

    gain(c, j) = sum over the cluster's queries i that have not met j in rounds < r of exp(s_ij)
              ~ |c| (1 - f_cj) exp(mean_i s_ij)         (Jensen's proxy for the cluster's mass on j)

so the selection score is mean_i s_ij + log(1 - f_cj), with f_cj the fraction of the cluster's
queries that already met key j in some earlier round. Where attention is peaked a key far above the rest is picked
again for the few queries still missing it; where it is diffuse the rounds spread over new keys.
f is counted without forming any (query, key) table: the earlier rounds' key lists are spread over round r's
clusters, all earlier rounds e at once, through the cluster-to-cluster contingency counts n_e(c, c') of rounds r
and e or through each member query's round-e cluster (whichever moves fewer entries), giving per earlier round the
fraction f_e that met j then; 1 - f = prod_e (1 - f_e) treats the rounds as independent
(exact for one earlier round; with more it slightly overstates coverage when the same queries keep
meeting the same key, which the rounds' shared geometry makes likely).
Working set: round r takes its clusters in pieces whose (r, clusters, Nk) met counts and spread entries fit in
``entries`` per batch element, so later rounds (more earlier rounds to count) take smaller pieces.
"""

from __future__ import annotations

import torch

from .round_layout import RoundLayout

COVERED_FLOOR = 1e-6  # log(1 - f) floor: keys every query already met rank last, still by score


def covering_top_keys(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rows: torch.Tensor,
    q_cluster: torch.Tensor,
    width: int,
    entries: int,
    by_query: bool | None = None,
) -> RoundLayout:
    """q (B,Nq,d) scaled, k (B,Nk,d) fp32; q_rows (B,R,C,qs), q_cluster (B,R,Nq) -> the layout with W keys per
    cluster, holding at most about ``entries`` working entries per batch element (``piece_clusters``).

    The met counts of every earlier round are spread at once, from cluster to cluster (C * C * W entries per round
    pair) or from query to query (Nq * W), whichever is fewer (``by_query`` None); both give the same counts. The
    rounds are sequential (round r ranks by what rounds < r picked), and so are a round's pieces of clusters."""
    b, n_rounds, n_clusters, qs = q_rows.shape
    nq, nk, d = q.shape[1], k.shape[1], q.shape[-1]
    if by_query is None:
        by_query = n_clusters * n_clusters > nq
    spread = _ByQuery(q_rows, q_cluster, nk, width) if by_query else _ByCluster(q_cluster, n_clusters, nk, width)
    # (B, R, C, 1) queries per cluster (empty clusters count 1: they meet nothing)
    size = (q_rows >= 0).sum(-1, keepdim=True, dtype=q.dtype).clamp_min_(1.0)
    cluster_of = q_cluster.unsqueeze(-1).expand(-1, -1, -1, d).unbind(1)  # (B, Nq, d) per round: each query's cluster
    no_sums = spread.zero.expand(b, n_clusters, d)
    k_t = k.transpose(1, 2)  # (B, d, Nk)
    # Each round's chosen keys are (B, C + 1, W): row C is a dummy cluster, which the padding slots join
    dummy = q_rows.new_full((b, 1, width), spread.dummy_key)
    picked: list[torch.Tensor] = []
    # room for the pieces: entries less a round's centres, the sizes and the chosen keys (listed and stacked, int64)
    room = entries - n_clusters * (d + n_rounds) - 4 * n_rounds * (n_clusters + 1) * width
    for r, (size_r, size_rows) in enumerate(zip(size.unsqueeze(1).unbind(2), size.unbind(1), strict=True)):
        centre = no_sums.scatter_add(1, cluster_of[r], q).div_(size_rows)  # (B, C, d) mean query of each cluster
        piece = piece_clusters(room, n_clusters, r, spread.met_width, *spread.entries(r, room))
        met_of = spread.round(torch.stack(picked, 1), piece) if r else None
        parts = zip(_pieces(centre, piece, 1), _pieces(size_r, piece, 2), strict=True)
        keys = [_piece_keys(part, k_t, width, sizes, spread.one, met_of, i) for i, (part, sizes) in enumerate(parts)]
        picked.append(torch.cat([*keys, dummy], dim=1))  # (B, C + 1, W)
    k_ids = torch.stack(picked, 1)[:, :, :n_clusters]  # (B, R, C, W) local key ids
    k_rows = k_ids + (torch.arange(b, device=k.device) * nk).view(-1, 1, 1, 1)
    return RoundLayout(q_rows, q_cluster, k_rows)


def _piece_keys(
    centre: torch.Tensor, k_t: torch.Tensor, width: int, size: torch.Tensor, one: torch.Tensor, met_of, i: int
) -> torch.Tensor:
    """centre (B,c,d) a piece's mean queries, k_t (B,d,Nk), size (B,1,c,1) its clusters' queries -> (B, c, W) key ids,
    the best by mean score plus log(missing); ``met_of(i)`` gives the piece's (B, r, c, met_width) met counts (None in
    round 0). A function, so that nothing of one piece is alive in the next."""
    if met_of is None:
        return torch.bmm(centre, k_t).topk(width, dim=-1).indices
    met = met_of(i)  # (B, r, c, met_width): queries of each cluster that met the key in each round e < r
    # fraction of the cluster's queries that met none of the earlier rounds' keys (rounds taken as independent):
    # prod_e (1 - met_e / size)
    missing = torch.addcdiv(one, met, size, value=-1.0, out=met).prod(1)
    del met
    missing = missing.clamp_(min=COVERED_FLOOR).log_()  # (B, c, met_width)
    nk = k_t.shape[-1]
    return torch.baddbmm(missing[..., :nk] if missing.shape[-1] > nk else missing, centre, k_t).topk(width, -1).indices


def piece_clusters(entries: int, n_clusters: int, n_earlier: int, met_width: int, spread: int, per_round: int) -> int:
    """Clusters per piece (the C clusters in equal pieces) in a round after ``n_earlier`` rounds, such that what the
    round holds fits in ``entries``: its spreading bookkeeping (``per_round`` entries) and per cluster its
    (n_earlier, met_width) met counts with either the ``spread`` entries being spread into them or the missing
    fractions (in round 0 only the scores); int64 entries count twice."""
    held = n_earlier * met_width + max(spread, met_width)
    most = max(1, (entries - per_round) // held)
    return -(-n_clusters // -(-n_clusters // most))


def _pieces(x: torch.Tensor, piece: int, dim: int) -> tuple[torch.Tensor, ...]:
    """x in pieces of ``piece`` along ``dim`` (x itself when it fits in one)."""
    return (x,) if x.shape[dim] <= piece else x.split(piece, dim)


class _ByCluster:
    """Met counts from cluster to cluster: n_e(c, c'), the queries in round r's cluster c and round e's cluster c',
    spread over round e's key lists (each key slot of c' adds n_e(c, c') to its key; the dummy cluster has nobody
    and its slots name key 0)."""

    dummy_key = 0

    def __init__(self, q_cluster: torch.Tensor, n_clusters: int, nk: int, width: int):
        self.n_clusters, self.width, self.met_width = n_clusters, width, nk
        self.zero = torch.zeros((), device=q_cluster.device)
        self.one = self.zero + 1
        self.then = q_cluster  # (B, R, Nq)
        self.ones = self.one.expand_as(q_cluster)  # scatter_add reads its source only where the index is
        # (B, 1, Nq) per round: each query's row in a round pair's (C, C + 1) contingency table
        self.now = q_cluster.split(1, dim=1)
        # ((C + 1) W,) the cluster of each of a round's key slots
        self.slot_cluster = torch.arange(n_clusters + 1, device=q_cluster.device).repeat_interleave(width)

    def entries(self, n_earlier: int, room: int) -> tuple[int, int]:
        """(per cluster: the spread counts, per round: the contingency tables)."""
        return n_earlier * (self.n_clusters + 1) * self.width, n_earlier * self.n_clusters * (self.n_clusters + 1)

    def round(self, picked: torch.Tensor, piece: int):
        """picked (B,r,C+1,W): the earlier rounds' keys -> ``met(i)``: piece i's (B, r, c, Nk) met counts."""
        b, r = picked.shape[:2]
        n_clusters = self.n_clusters
        pair = torch.add(self.then[:, :r], self.now[r], alpha=n_clusters + 1)  # (B, r, Nq) (cluster now, then)
        overlap = self.zero.expand(b, r, n_clusters * (n_clusters + 1)).scatter_add(2, pair, self.ones)
        overlap = overlap.view(b, r, n_clusters, n_clusters + 1)  # (B, r, C, C + 1): in cluster c now, c' in round e
        parts = _pieces(overlap, piece, 2)
        keys = picked.view(b, r, 1, -1)  # (B, r, 1, (C + 1) W)
        shaped = {}  # piece size -> (zero counts, key ids) views

        def met(i: int) -> torch.Tensor:
            c = parts[i].shape[2]
            if c not in shaped:
                shaped[c] = self.zero.expand(b, r, c, self.met_width), keys.expand(-1, -1, c, -1)
            counts, ids = shaped[c]
            return counts.scatter_add(-1, ids, parts[i].index_select(-1, self.slot_cluster))

        return met


class _ByQuery:
    """Met counts from query to query: each member of round r's cluster adds 1 to every key of its round-e cluster
    (padding slots join the dummy cluster, whose slots name the spare column Nk)."""

    def __init__(self, q_rows: torch.Tensor, q_cluster: torch.Tensor, nk: int, width: int):
        b, n_rounds, self.n_clusters, self.qs = q_rows.shape
        self.width, self.met_width, self.dummy_key = width, nk + 1, nk
        self.zero = torch.zeros((), device=q_cluster.device)
        self.one = self.zero + 1
        self.q_cluster = q_cluster  # (B, R, Nq)
        self.slots = q_rows.view(b, n_rounds, -1).split(1, dim=1)  # (B, 1, C*qs) per round: flat query ids, -1 padding
        # scatter_add reads its source only where the index is: one view of ones serves every piece
        self.ones = self.one.expand(b, n_rounds, self.n_clusters, self.qs * width)

    def entries(self, n_earlier: int, room: int) -> tuple[int, int]:
        """(per cluster: its members' int64 key ids, per round: every slot's int64 query id and, if that leaves most
        of ``room``, its earlier clusters (else they are gathered per piece, a few ops more, per cluster))."""
        slots = 2 * self.n_clusters * self.qs
        self.whole = 4 * n_earlier * slots <= room
        if self.whole:
            return 2 * n_earlier * self.qs * self.width, (n_earlier + 1) * slots
        return 2 * n_earlier * self.qs * (self.width + 1), slots

    def round(self, picked: torch.Tensor, piece: int):
        """picked (B,r,C+1,W): the earlier rounds' keys -> ``met(i)``: piece i's (B, r, c, Nk + 1) met counts."""
        b, r = picked.shape[:2]
        qs, width, n_clusters = self.qs, self.width, self.n_clusters
        slots = self.slots[r]
        members = slots % self.q_cluster.shape[-1]  # (B, 1, C*qs) local query ids (padding: a real one, masked below)
        earlier = self.q_cluster[:, :r]  # (B, r, Nq)

        def clusters_then(members: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            """(B, 1, n) slots' queries -> (B, r, n, W) their clusters in each earlier round, once per key slot."""
            then = earlier.gather(2, members.expand(-1, r, -1)).masked_fill_(padding, n_clusters)
            return then.unsqueeze(-1).expand(-1, -1, -1, width)

        if self.whole:
            parts = _pieces(clusters_then(members, slots < 0), piece * qs, 2)
        else:
            parts = tuple(zip(_pieces(members, piece * qs, 2), _pieces(slots < 0, piece * qs, 2), strict=True))
        counts = {}  # piece size -> (B, r, c, Nk + 1) zeros (a view)

        def met(i: int) -> torch.Tensor:
            then = parts[i] if self.whole else clusters_then(*parts[i])  # (B, r, c*qs, W)
            c = then.shape[2] // qs
            keys = picked.gather(2, then).view(b, r, c, qs * width)  # (B, r, c, qs*W) the members' earlier keys
            if c not in counts:
                counts[c] = self.zero.expand(b, r, c, self.met_width)
            return counts[c].scatter_add(-1, keys, self.ones)

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
