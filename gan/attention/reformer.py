"""Reformer-style LSH attention (Kitaev et al., 2020) for separate queries and keys.

Per round, random rotations R (d, n_buckets/2) shared by queries and keys hash every vector to
argmax([xR, -xR]) (angular LSH). Queries and keys are sorted by (bucket, relative position) and
cut into the same number C of equal chunks (C = n_buckets); query chunk i attends to key chunks
i-1 and i. Rounds are combined over the union of their supports: a pair met in an earlier round
is masked in later ones, so nothing is counted twice. One bucket (one chunk) is exact attention.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .base import DEFAULT_BUDGET, AttentionBackend, positive_int
from .lsh import RoundLayout, chunk_neighbours, clustered_attention

DEFAULT_N_HASHES = 4


def chunk_width(n_chunks: int, nk: int) -> int:
    """Keys one query chunk attends to per round: its own chunk and, with C > 1, the one before."""
    return -(-nk // n_chunks) * (2 if n_chunks > 1 else 1)


def support_entries(n_hashes: int, n_chunks: int, nq: int, nk: int) -> int:
    """Scores held: every round's (padded) query chunks times the keys they meet."""
    return n_hashes * -(-nq // n_chunks) * n_chunks * chunk_width(n_chunks, nk)


class ReformerAttention(AttentionBackend):
    """Angular-LSH attention with ``n_hashes`` rounds and ``n_buckets`` buckets (= chunks).

    Holds n_hashes * Nq * 2Nk/C scores. From ``budget`` b (default 1/8): n_hashes (4, or fewer
    where that cannot fit) and the fewest buckets C >= 2 n_hashes / b that fit, at most Nk; b = 1
    is one bucket of everything (exact).
    """

    name = "reformer"
    paper = "Kitaev et al., ICLR 2020"

    def __init__(
        self, *, n_hashes: int | None = None, n_buckets: int | None = None, budget: float | None = None, seed: int = 0
    ):
        super().__init__(budget=budget, seed=seed)
        self.n_hashes = positive_int("n_hashes", n_hashes)
        self.n_buckets = positive_int("n_buckets", n_buckets)
        self._rotations: dict[tuple, torch.Tensor] = {}

    def plan(self, nq: int, nk: int) -> tuple[int, int]:
        """(n_hashes, n_buckets) for these shapes: the most rounds (of 4, 2, 1) and fewest buckets that fit."""
        fraction = DEFAULT_BUDGET if self.budget is None else self.budget
        if self.n_buckets is not None:
            return self.n_hashes or DEFAULT_N_HASHES, self.n_buckets
        if fraction >= 1.0:
            return self.n_hashes or 1, 1
        for hashes in [self.n_hashes] if self.n_hashes else [DEFAULT_N_HASHES, 2, 1]:
            for n_buckets in range(min(nk, math.ceil(2 * hashes / fraction - 1e-9)), nk + 1):
                if support_entries(hashes, n_buckets, nq, nk) <= fraction * nq * nk:
                    return hashes, n_buckets
        return 1, nk

    def rotations(self, n_hashes: int, n_buckets: int, d: int, device: torch.device) -> torch.Tensor:
        """(R, d, ceil(n_buckets / 2)) Gaussian rotations, drawn once per shape/device from ``seed``."""
        key = (n_hashes, n_buckets, d, str(device))
        if key not in self._rotations:
            generator = torch.Generator().manual_seed(self.seed)
            self._rotations[key] = torch.randn(n_hashes, d, -(-n_buckets // 2), generator=generator).to(device)
        return self._rotations[key]

    def sort_key(self, x: torch.Tensor, rotations: torch.Tensor, n_buckets: int, chunk: int) -> torch.Tensor:
        """x (B,N,d) -> (B,R,N) float64 bucket + relative position (i / N) inside it.

        The bucket is argmax([xR, -xR][:n_buckets]), found from the max and min of xR without forming
        the concatenation; one round and ``chunk`` points at a time (chunk * n_buckets/2 values alive).
        """
        half = rotations.shape[-1]  # ceil(n_buckets / 2); the last -xR column is dropped when n_buckets is odd
        rounds = []
        for rotation in rotations:  # (d, half)
            parts = []
            for part in x.split(chunk, dim=1):
                rotated = part @ rotation  # (B, chunk, half)
                top, top_id = rotated.max(-1)
                if n_buckets == half:  # one bucket
                    parts.append(top_id)
                    continue
                low, low_id = rotated[..., : n_buckets - half].min(-1)
                parts.append(torch.where(top >= -low, top_id, half + low_id))  # ties go to xR, as argmax of the concatenation
            rounds.append(torch.cat(parts, dim=1))
        position = torch.arange(x.shape[1], device=x.device, dtype=torch.float64) / x.shape[1]
        return torch.stack(rounds, dim=1).double() + position  # (B, R, N)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        qf, kf = q.float() * scale, k.float()
        return clustered_attention(qf, kf, v.float(), self.layout(qf, kf)).to(q.dtype)  # (B, Nq, dv)

    def layout(self, q: torch.Tensor, k: torch.Tensor) -> RoundLayout:
        """Each round's query chunks and the key chunks they meet, for fp32 q (B,Nq,d) (scaled), k (B,Nk,d)."""
        n_hashes, n_buckets = self.plan(q.shape[1], k.shape[1])
        if n_buckets > k.shape[1]:
            raise ValueError(f"n_buckets={n_buckets} exceeds the number of keys Nk={k.shape[1]}; accepted 1..Nk")
        rotations = self.rotations(n_hashes, n_buckets, q.shape[2], q.device)
        chunk = max(1, support_entries(1, n_buckets, q.shape[1], k.shape[1]) // rotations.shape[-1])  # one round's support
        return chunk_neighbours(
            self.sort_key(q, rotations, n_buckets, chunk), self.sort_key(k, rotations, n_buckets, chunk), n_buckets
        )

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return support_entries(*self.plan(nq, nk), nq, nk)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        n_hashes, n_buckets = self.plan(nq, nk)
        return {"n_hashes": n_hashes, "n_buckets": n_buckets, "keys_per_round": chunk_width(n_buckets, nk)}

    def extra_repr(self) -> str:
        return f"n_hashes={self.n_hashes}, n_buckets={self.n_buckets}, {super().extra_repr()}"
