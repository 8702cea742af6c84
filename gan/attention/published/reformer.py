"""Reformer LSH attention (Kitaev et al., ICLR 2020) in the form the published BigGAN experiments ran it.

Reformer shares queries and keys (QK); BigGAN's q and k differ and there are 4x more queries than
keys. The BigGAN experiments with Reformer numbers (majid-daliri/kdeformer ``Reformer.py`` +
``biggan_models/model_reformer.py``, and the identical copy in microsoft/thinformer
``examples/biggan/biggan_models``, whose results the KDEformer and Thinformer papers' BigGAN tables
report, e.g. FID 72.1 on BigGAN-deep-512) both make the same choice, which is the default here
(``mode="biggan-shared-qk"``): the queries are cut into consecutive chunks of Nk tokens, and each
chunk is its own shared-QK sequence attending to the values by position (query t of a chunk pairs
with value t); BigGAN's keys (phi) are not used. Per chunk, as lucidrains' Reformer that file adapts:
fresh Gaussian rotations (d, n_hashes, n_buckets/2) hash every token to argmax([xR, -xR]); tokens are
sorted by (round, bucket, position) and cut into chunks of ``bucket_size``; each chunk attends to
itself and the previous chunk of that flat order (the first chunk of a round looks back at the last
of the previous round), to keys that are the L2-normalised queries, with a token's own position
masked to -5e4; rounds are mixed by their log-sum-exp weights (duplicates counted, no correction).
Sequences are zero-padded to a multiple of 2 * bucket_size and the padding is NOT masked (as there).
Because the keys are ignored this mode approximates a different matrix: budget 1 is not exact.

``mode="separate-qk"`` is the project's earlier form for q != k: shared rotations hash queries and
keys separately, both cut by rank into n_buckets chunks, query chunk i meets key chunks i-1 and i,
rounds over the union of supports; one bucket is exact attention.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from ..base import REDRAW, AttentionBackend, Parameter, one_of, positive_int
from ..parts.planning import fewest_clusters_from, search_plan
from ..parts.round_attention import clustered_attention
from ..parts.round_layout import RoundLayout, chunk_neighbours
from ..parts.shared_qk_lsh import draw_rotations, padded_length, shared_qk_attention

MODES = ("biggan-shared-qk", "separate-qk")
SEPARATE_QK_N_HASHES = 4
SHARED_QK_N_HASHES = 8  # the BigGAN experiments' ReformerAttention(bucket_size=64, n_hashes=8)
MIN_BUCKET_SIZE = 8  # budget plans with smaller buckets take fewer rounds instead
# Floats per batch element per step of biggan-shared-qk, in whole query chunks: a chunk's sequence holds its scores
# and, as the reference, its values gathered per round and again for the look-back (R L (2 bs + 3 dv + 3 d)
# floats). A bound per element, so the number of steps (and ops) depends on the shape, not on the batch.
FLOATS_PER_ELEMENT_STEP = 1 << 21


def query_chunks(nq: int, nk: int) -> list[tuple[int, int]]:
    """(start, length) of the consecutive query chunks of Nk tokens (the last one shorter) of biggan-shared-qk."""
    return [(start, min(nk, nq - start)) for start in range(0, nq, nk)]


def shared_qk_entries(n_hashes: int, bucket_size: int, nq: int, nk: int) -> int:
    """Scores (each round's chunks times their own and the previous chunk) plus one sort key per token and round."""
    return sum(n_hashes * padded_length(n, bucket_size) * (2 * bucket_size + 1) for _, n in query_chunks(nq, nk))


def bucket_sizes(nk: int) -> list[int]:
    """Bucket sizes a budget may pick, largest first: those the chunk length divides without padding, if any."""
    even = [size for size in range(nk // 2, 0, -1) if nk % (2 * size) == 0]
    return even or list(range(-(-nk // 2), 0, -1))


def chunk_width(n_chunks: int, nk: int) -> int:
    """Keys one query chunk attends to per round: its own chunk and, with C > 1, the one before."""
    return -(-nk // n_chunks) * (2 if n_chunks > 1 else 1)


def support_entries(n_hashes: int, n_chunks: int, nq: int, nk: int) -> int:
    """Scores held: every round's (padded) query chunks times the keys they meet."""
    return n_hashes * -(-nq // n_chunks) * n_chunks * chunk_width(n_chunks, nk)


class ReformerAttention(AttentionBackend):
    """Reformer LSH attention; ``mode`` says how q != k is handled (module doc).

    biggan-shared-qk (default): ``n_hashes`` rounds of buckets of ``bucket_size`` per query chunk; holds
    n_hashes * L * (2 bucket_size + 1) entries per chunk of L (padded) queries. From ``budget`` (default 1/8):
    the most of 8, 4, 2, 1 rounds with buckets of at least 8 and the largest bucket that fits. ``redraw=True``
    (the reference draws rotations on every call) draws each call's rotations, chunk by chunk, from a generator
    seeded once with ``seed``; False (default) draws them once per shape.
    separate-qk: ``n_hashes`` rounds and ``n_buckets`` buckets (= chunks); holds n_hashes * Nq * 2Nk/C scores.
    """

    name = "reformer"
    paper = "Kitaev et al., ICLR 2020"

    mode = Parameter(one_of, default=MODES[0], choices=MODES)
    n_hashes = Parameter(positive_int)
    bucket_size = Parameter(positive_int)
    n_buckets = Parameter(positive_int)
    redraw = REDRAW

    def __init__(self, **params: Any):
        super().__init__(**params)
        mode = self.mode
        if mode == MODES[0] and self.n_buckets is not None:
            raise ValueError(f"n_buckets is a separate-qk parameter; mode {mode} takes bucket_size (tokens per bucket)")
        if mode == MODES[1] and self.bucket_size is not None:
            raise ValueError(f"bucket_size is a biggan-shared-qk parameter; mode {mode} takes n_buckets")
        self._generator = torch.Generator().manual_seed(self.seed)
        self._rotations: dict[tuple, Any] = {}

    # -- biggan-shared-qk -------------------------------------------------------------------------------------------

    def shared_plan(self, nq: int, nk: int) -> tuple[int, int]:
        """(n_hashes, bucket_size) for biggan-shared-qk at these shapes."""
        fraction = self.effective_budget
        if self.bucket_size is not None:
            return self.n_hashes or SHARED_QK_N_HASHES, self.bucket_size
        sizes = bucket_sizes(nk)
        found = search_plan(
            [self.n_hashes] if self.n_hashes else [SHARED_QK_N_HASHES, 4, 2, 1],
            lambda hashes: sizes,
            fits=lambda h, size: shared_qk_entries(h, size, nq, nk) <= fraction * nq * nk,
            enough=lambda h, size: size >= MIN_BUCKET_SIZE,
        )
        return found if found is not None else (1, 1)

    def chunk_rotations(self, n_hashes: int, bucket_size: int, nq: int, nk: int, d: int, device) -> list[torch.Tensor]:
        """One (d, R, n_buckets / 2) rotation per query chunk, drawn in chunk order (per call with ``redraw``)."""

        def draw(generator):
            return [
                draw_rotations(generator, d, n_hashes, padded_length(n, bucket_size) // bucket_size).to(device)
                for _, n in query_chunks(nq, nk)
            ]

        if self.redraw:
            return draw(self._generator)
        key = (n_hashes, bucket_size, nq, nk, d, str(device))
        if key not in self._rotations:
            self._rotations[key] = draw(torch.Generator().manual_seed(self.seed))
        return self._rotations[key]

    def _attend_shared(self, q: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        nq, nk, d, dv = q.shape[1], v.shape[1], q.shape[2], v.shape[2]
        n_hashes, bucket_size = self.shared_plan(nq, nk)
        rotations = self.chunk_rotations(n_hashes, bucket_size, nq, nk, d, q.device)
        full = nq // nk  # chunks of Nk queries, then the shorter rest
        per_sequence = n_hashes * padded_length(nk, bucket_size) * (2 * bucket_size + 3 * dv + 3 * d)
        step = max(1, FLOATS_PER_ELEMENT_STEP // per_sequence)  # full chunks per step
        steps = [(first, min(first + step, full)) for first in range(0, full, step)]
        parts = [  # (B, chunks * n, dv) per step
            _attend_chunks(q[:, first * nk : last * nk], v[:, :nk], rotations[first:last], bucket_size, scale)
            for first, last in steps
        ]
        if nq > full * nk:
            rest = nq - full * nk
            parts.append(_attend_chunks(q[:, full * nk :], v[:, :rest], rotations[full:], bucket_size, scale))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, Nq, dv) fp32

    # -- separate-qk ------------------------------------------------------------------------------------------------

    def plan(self, nq: int, nk: int) -> tuple[int, int]:
        """separate-qk (n_hashes, n_buckets): the most rounds (of 4, 2, 1) and fewest buckets that fit."""
        fraction = self.effective_budget
        if self.n_buckets is not None:
            return self.n_hashes or SEPARATE_QK_N_HASHES, self.n_buckets
        if fraction >= 1.0:
            return self.n_hashes or 1, 1
        found = search_plan(
            [self.n_hashes] if self.n_hashes else [SEPARATE_QK_N_HASHES, 2, 1],
            lambda hashes: fewest_clusters_from(2 * hashes, fraction, nk),
            fits=lambda h, buckets: support_entries(h, buckets, nq, nk) <= fraction * nq * nk,
        )
        return found if found is not None else (1, nk)

    def rotations(self, n_hashes: int, n_buckets: int, d: int, device: torch.device) -> torch.Tensor:
        """separate-qk (R, d, ceil(n_buckets / 2)) Gaussian rotations, per call with ``redraw``, else once per shape."""
        if self.redraw:
            return torch.randn(n_hashes, d, -(-n_buckets // 2), generator=self._generator).to(device)
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
                parts.append(
                    torch.where(top >= -low, top_id, half + low_id)
                )  # ties go to xR, as argmax of the concatenation
            rounds.append(torch.cat(parts, dim=1))
        position = torch.arange(x.shape[1], device=x.device, dtype=torch.float64) / x.shape[1]
        return torch.stack(rounds, dim=1).double() + position  # (B, R, N)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if self.mode == MODES[0]:
            return self._attend_shared(q, v, scale).to(q.dtype)  # (B, Nq, dv)
        qf, kf = q.float() * scale, k.float()
        return clustered_attention(qf, kf, v.float(), self.layout(qf, kf)).to(q.dtype)  # (B, Nq, dv)

    def layout(self, q: torch.Tensor, k: torch.Tensor) -> RoundLayout:
        """Each round's query chunks and the key chunks they meet, for fp32 q (B,Nq,d) (scaled), k (B,Nk,d)."""
        n_hashes, n_buckets = self.plan(q.shape[1], k.shape[1])
        if n_buckets > k.shape[1]:
            raise ValueError(f"n_buckets={n_buckets} exceeds the number of keys Nk={k.shape[1]}; accepted 1..Nk")
        rotations = self.rotations(n_hashes, n_buckets, q.shape[2], q.device)
        chunk = max(
            1, support_entries(1, n_buckets, q.shape[1], k.shape[1]) // rotations.shape[-1]
        )  # one round's support
        return chunk_neighbours(
            self.sort_key(q, rotations, n_buckets, chunk), self.sort_key(k, rotations, n_buckets, chunk), n_buckets
        )

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        if self.mode == MODES[0]:
            return shared_qk_entries(*self.shared_plan(nq, nk), nq, nk)
        return support_entries(*self.plan(nq, nk), nq, nk)

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        if self.mode == MODES[0]:
            n_hashes, bucket_size = self.shared_plan(nq, nk)
            return {
                "mode": self.mode,
                "n_hashes": n_hashes,
                "bucket_size": bucket_size,
                "query_chunks": len(query_chunks(nq, nk)),
                "redraw": self.redraw,
            }
        n_hashes, n_buckets = self.plan(nq, nk)
        return {
            "mode": self.mode,
            "n_hashes": n_hashes,
            "n_buckets": n_buckets,
            "keys_per_round": chunk_width(n_buckets, nk),
            "redraw": self.redraw,
        }


def _attend_chunks(
    q: torch.Tensor, v: torch.Tensor, rotations: list[torch.Tensor], bucket_size: int, scale: float
) -> torch.Tensor:
    """q (B, c*n, d): c consecutive query chunks of n tokens, each a shared-QK sequence with the values v (B,n,dv)
    (query t of a chunk pairs with value t) and its own rotation (d,R,h) -> (B, c*n, dv) fp32. Every (chunk, batch
    element) sequence is attended in one call (ops independent of B and c), zero-padded to a multiple of
    2 bucket_size (unmasked, as the reference)."""
    b, c, n = q.shape[0], len(rotations), v.shape[1]
    pad = (0, 0, 0, padded_length(n, bucket_size) - n)
    qk = F.pad(rearrange(q.float(), "b (c n) d -> (c b) n d", c=c), pad)  # (c*B, L, d)
    values = F.pad(v.float(), pad).repeat(c, 1, 1)  # (c*B, L, dv): every chunk pairs with the same values
    rotation = torch.stack(rotations).repeat_interleave(b, dim=0)  # (c*B, d, R, h)
    out = shared_qk_attention(qk, values, rotation, bucket_size, scale)  # (c*B, L, dv)
    return rearrange(out[:, :n], "(c b) n e -> b (c n) e", c=c)
