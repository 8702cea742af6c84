"""SMYRF (Daras et al., NeurIPS 2020) as giannisdaras/smyrf ``smyrf/torch/attn.py`` computes it.

Per round (``sorted_clusters``): XBOX+ with both sets padded to one common norm, one E2LSH
projection, queries and keys sorted by it and cut by rank into C equal clusters; query cluster c
attends densely to key cluster c. Rounds are mixed by their log-sum-exp weights, so a (query, key)
pair met in r rounds counts r times (``count_duplicates=True``, the reference); ``False`` counts
every pair once (SBSmyrf's duplicate correction). Hashing sees the unscaled q and k; the scale
multiplies the scores only (the reference's ``norm_factor``).

Draws: the reference builds a fresh E2LSH (alpha ~ N(0, 1), beta ~ U(0, r)) on every call; that is
``redraw=True`` here (each call draws the next hashes from a generator seeded once with ``seed``).
The default ``redraw=False`` draws once per shape from ``seed`` (the reference's first call after
``torch.manual_seed(seed)``), so an image's output does not depend on how many batches came before
it: resumed, sharded and re-batched runs give the same images (docs/attention.md, "Draws").
Sizes the clusters do not divide, which the reference rejects, are padded as SBSmyrf pads them
(see ``sorted_clusters``).
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch

from .base import DEFAULT_BUDGET, AttentionBackend, SeededDraws, check_bool, positive_int
from .sorted_clusters import (
    SortedClusterPlan,
    draw_e2lsh,
    pad_tokens,
    plan_sorted_clusters,
    sorted_cluster_attention,
    sorted_positions,
)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class E2LSHDraws:
    """E2LSH draws for one backend: fresh from one seeded generator per call (``redraw``) or cached per shape."""

    def __init__(self, seed: int, redraw: bool, r: float):
        self.redraw, self.r = redraw, r
        self._generator = torch.Generator().manual_seed(seed)
        self._cached = SeededDraws(seed)

    def __call__(self, n_hashes: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (dim, R), beta (1, R) on ``device``."""
        if self.redraw:
            return tuple(t.to(device) for t in draw_e2lsh(self._generator, n_hashes, dim, self.r))
        return self._cached(("e2lsh", n_hashes, dim), device, lambda g: draw_e2lsh(g, n_hashes, dim, self.r))


class SmyrfAttention(AttentionBackend):
    """SMYRF: ``n_hashes`` rounds of asymmetric-LSH clusters of ``q_cluster_size`` queries and ``k_cluster_size`` keys.

    Holds n_hashes * C * q_cluster_size * k_cluster_size scores plus n_hashes * (C q_cluster_size + C k_cluster_size)
    hashes (padding included). From ``budget`` (default 1/8): the most of 8, 4, 2, 1 rounds with at least 8 keys per
    cluster and the fewest clusters that fit (``plan_sorted_clusters``).
    """

    name = "smyrf"
    paper = "Daras et al., NeurIPS 2020"

    def __init__(
        self,
        *,
        n_hashes: int | None = None,
        q_cluster_size: int | None = None,
        k_cluster_size: int | None = None,
        r: float = 1.0,
        count_duplicates: bool = True,
        redraw: bool = False,
        budget: float | None = None,
        seed: int = 0,
    ):
        super().__init__(budget=budget, seed=seed)
        self.n_hashes = positive_int("n_hashes", n_hashes)
        self.q_cluster_size = positive_int("q_cluster_size", q_cluster_size)
        self.k_cluster_size = positive_int("k_cluster_size", k_cluster_size)
        self.r = check_positive("r", r)
        self.count_duplicates = check_bool("count_duplicates", count_duplicates)
        self.redraw = check_bool("redraw", redraw)
        self.hash_draws = E2LSHDraws(self.seed, self.redraw, self.r)

    def plan(self, nq: int, nk: int) -> SortedClusterPlan:
        fraction = DEFAULT_BUDGET if self.budget is None else self.budget
        return plan_sorted_clusters(nq, nk, self.n_hashes, self.q_cluster_size, self.k_cluster_size, fraction)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        nq, nk = q.shape[1], k.shape[1]
        plan = self.plan(nq, nk)
        t, s = plan.n_clusters * plan.q_cluster_size, plan.n_clusters * plan.k_cluster_size
        qf, kf, vf = pad_tokens(q.float(), t), pad_tokens(k.float(), s), pad_tokens(v.float(), s)
        if plan.n_clusters == 1:  # nothing to sort: every round is the same dense attention
            q_pos = torch.arange(t, device=q.device).expand(q.shape[0], plan.n_hashes, t)
            k_pos = torch.arange(s, device=q.device).expand(q.shape[0], plan.n_hashes, s)
        else:
            alpha, beta = self.hash_draws(plan.n_hashes, q.shape[2] + 2, q.device)
            q_pos, k_pos = sorted_positions(qf, kf, nk, alpha, beta)
        out = sorted_cluster_attention(qf * scale, kf, vf, q_pos, k_pos, plan, nk, union=not self.count_duplicates)
        return out[:, :nq].to(q.dtype)  # (B, Nq, dv)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return self.plan(nq, nk).score_entries()

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        return {**self.plan(nq, nk).as_dict(), "count_duplicates": self.count_duplicates, "redraw": self.redraw}

    def extra_repr(self) -> str:
        return (
            f"n_hashes={self.n_hashes}, q_cluster_size={self.q_cluster_size}, k_cluster_size={self.k_cluster_size}, "
            f"r={self.r}, count_duplicates={self.count_duplicates}, redraw={self.redraw}, {super().extra_repr()}"
        )
