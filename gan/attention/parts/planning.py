"""The one budget search every clustered backend resolves its rounds and cluster counts with.

A clustered method (SMYRF, Scatterbrain's support, Reformer) trades hash rounds against cluster
size: for a budget it tries round counts in a preferred order and, for each, cluster counts from
the fewest (largest clusters, most accurate) upwards, and takes the first plan that fits. A plan
that fits but is ``enough``-rejected (e.g. clusters too small to be worth the extra rounds) moves
the search on to the next round count; the last round count takes whatever fits first. Explicit
cluster sizes are checked against the shapes here once for every clustered backend (``explicit_cluster_count``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence


def search_plan(
    round_counts: Sequence[int],
    cluster_counts: Callable[[int], Iterable[int]],
    fits: Callable[[int, int], bool],
    enough: Callable[[int, int], bool] = lambda hashes, clusters: True,
) -> tuple[int, int] | None:
    """First (n_hashes, n_clusters) in search order that ``fits`` (and is ``enough``, except for the
    last round count); None when nothing fits.

    ``cluster_counts(hashes)`` yields the cluster counts to try for that many rounds, fewest first.
    For each round count only the first fitting cluster count is considered.
    """
    for i, hashes in enumerate(round_counts):
        for clusters in cluster_counts(hashes):
            if fits(hashes, clusters):
                if enough(hashes, clusters) or i == len(round_counts) - 1:
                    return hashes, clusters
                break  # fits, but not worth it: try fewer rounds
    return None


def fewest_clusters_from(hashes: int, fraction: float, most: int) -> range:
    """Cluster counts worth trying at ``fraction`` of the dense matrix: from hashes / fraction (below it a plan of
    ``hashes`` rounds holds more than the budget whatever the padding) up to ``most``."""
    return range(min(most, math.ceil(hashes / fraction - 1e-9)), most + 1)


def cuts_evenly(n: int, n_clusters: int) -> bool:
    """True when cutting n items (padded) into clusters of ceil(n / n_clusters) makes exactly n_clusters
    clusters, none of them all padding: (n_clusters - 1) * size < n."""
    return -(-n // -(-n // n_clusters)) == n_clusters


def explicit_cluster_count(nq: int, nk: int, q_cluster_size: int | None, k_cluster_size: int | None) -> int:
    """Clusters that explicit cluster sizes make (at least one given): ceil(Nq / q_cluster_size) query clusters,
    ceil(Nk / k_cluster_size) key clusters; query and key clusters pair one to one, so given both they must agree."""
    q_clusters = -(-nq // q_cluster_size) if q_cluster_size else None
    k_clusters = -(-nk // k_cluster_size) if k_cluster_size else None
    if q_clusters is not None and k_clusters is not None and q_clusters != k_clusters:
        raise ValueError(
            f"q_cluster_size={q_cluster_size} makes {q_clusters} query clusters of Nq={nq} but k_cluster_size="
            f"{k_cluster_size} makes {k_clusters} key clusters of Nk={nk}; they must be equal "
            f"(accepted k_cluster_size = {-(-nk // q_clusters)} here, or give only one of the two)"
        )
    return q_clusters or k_clusters

