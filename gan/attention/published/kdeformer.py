"""KDEformer (Zandieh et al., ICML 2023): angular-LSH blocks computed exactly plus a sampled residual.

As majid-daliri/kdeformer ``KDEformer.py`` computes it (the BigGAN script
``biggan_models/model_kdeformer.py`` uses ``Bucket_size=64, sample_size=128, num_projs=7``; its
``rep_D=1`` is swallowed by ``**kwargs`` and has no effect):

1. Hash queries and keys with ``num_projs`` random hyperplanes (one set per sequence); the sign
   pattern, read as a binary number b, maps to the Gray code b ^ (b >> 1), so neighbouring buckets
   differ in one hyperplane. Sort queries and keys by their codes.
2. Cut the sorted keys into Nk / bucket_size blocks and the sorted queries into as many blocks;
   block i of queries attends block i of keys exactly, on values augmented with a column of ones
   (the softmax denominator).
3. Residual: the top eigenvalue lambda of V'^T V' (V' = [V, 1]) by 20 power iterations; sample
   ``sample_size`` keys with replacement, p_j ~ |v'_j| / lambda + 1 / Nk; each query adds
   exp(q.k_s) v'_s / (p_s sample_size) over the samples that are NOT in its own block.
4. Output = numerator columns / the ones column.

Differences that do not change the estimate: scores are fp32 and exp is taken after subtracting
each query's largest logit over everything it sees (the BigGAN script exponentiates raw logits in
float64; the ratio in step 4 is the same, and fp16/bf16 and logits up to 100 stay finite). When Nk
is not a multiple of bucket_size (the reference needs one), the sorted keys and queries are cut into
ceil(Nk / bucket_size) near-equal consecutive blocks (identical to the reference when it divides).
With one block the sparse part is exact attention and every sample is masked, so hashing and
sampling are skipped (the result is the reference's).

Draws: the reference draws its hyperplanes, power-iteration start and samples afresh on every call
(``redraw=True`` here); the default ``redraw=False`` draws them once from ``seed`` per shape. They are
drawn in the reference's order, layout and dtype (float64), and samples are taken by
``torch.multinomial``'s own rule (the first sorted position whose cumulative mass reaches a uniform),
ties in the hash order left as ``torch.sort`` leaves them, as the reference does: so on the CPU a
generator seeded with s reproduces the reference run after ``torch.manual_seed(s)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from ..base import REDRAW, AttentionBackend, Parameter, nonnegative_int, positive_int

POWER_ITERATIONS = 20  # the reference's power_method itr_num
DEFAULT_NUM_PROJS = 7  # the BigGAN setting (and the reference default)
SAMPLES_PER_BUCKET_KEY = 2  # the BigGAN setting: sample_size 128 = 2 x Bucket_size 64
MAX_NUM_PROJS = 30


class KDEformerDraws(NamedTuple):
    """One call's float64 draws: hyperplanes (B, d, r), power-iteration start (B, dv + 1), uniforms (B, S)."""

    hyperplanes: torch.Tensor
    power_start: torch.Tensor
    uniforms: torch.Tensor


class KDEformerAttention(AttentionBackend):
    """KDEformer: exact attention inside angular-LSH blocks plus an importance-sampled residual.

    From a budget (default 1/8): ``num_projs`` = 7 (fewer if hashing would take over half the budget),
    sample_size = 2 x bucket_size (the BigGAN experiments' 128 / 64), the largest bucket_size whose
    entries fit the budget; at budget 1 (or bucket_size >= Nk) one block holds every pair and the
    result is exact. Entries held: block scores (queries x bucket), residual scores (Nq x sample_size)
    and hash projections ((Nq + Nk) x num_projs). ``bucket_size=64, sample_size=128, num_projs=7`` is
    the published BigGAN setting.
    """

    name = "kdeformer"
    published = True
    paper = "Zandieh et al., ICML 2023"
    variant_of = None

    bucket_size = Parameter(positive_int)
    sample_size = Parameter(nonnegative_int, meaning="0: no residual")
    num_projs = Parameter(positive_int, most=MAX_NUM_PROJS)
    redraw = REDRAW

    def projs_for(self, nq: int, nk: int) -> int:
        """Hyperplanes per hash: ``num_projs``, else 7 (fewer when hashing would take over half the budget)."""
        if self.num_projs is not None:
            return self.num_projs
        return max(1, min(DEFAULT_NUM_PROJS, math.floor(self.effective_budget * nq * nk / (2 * (nq + nk)))))

    def parameters_for(self, nq: int, nk: int) -> tuple[int, int]:
        """(bucket_size, sample_size) used for these shapes."""
        if self.bucket_size is not None and self.bucket_size > nk:
            raise ValueError(f"bucket_size={self.bucket_size} exceeds the number of keys Nk={nk}; accepted 1..Nk")
        allowed = self.effective_budget * nq * nk + 1e-6
        if self.bucket_size is not None:
            bucket = self.bucket_size
            if self.sample_size is not None:
                return bucket, self.sample_size
            blocks, q_max, k_max = block_sizes(nq, nk, bucket)
            if blocks == 1:
                return bucket, 0
            spare = allowed - blocks * q_max * k_max - (nq + nk) * self.projs_for(nq, nk)
            return bucket, max(0, math.floor(spare / (blocks * q_max)))
        if allowed >= nq * nk and self.sample_size in (None, 0):
            return nk, 0  # one block: exact
        per_query = (allowed - (nq + nk) * self.projs_for(nq, nk)) / nq  # entries per query for block keys + samples
        ratio = 0 if self.sample_size is not None else SAMPLES_PER_BUCKET_KEY
        fixed = self.sample_size or 0
        bucket = max(1, min(nk, math.floor((per_query - fixed) / (1 + ratio))))
        while bucket > 1 and self._entries(nq, nk, bucket, fixed + ratio * bucket) > allowed:
            bucket -= 1
        while bucket < nk and self._entries(nq, nk, bucket + 1, fixed + ratio * (bucket + 1)) <= allowed:
            bucket += 1  # near-equal blocks can be smaller than bucket_size: take what still fits
        return bucket, fixed + ratio * bucket

    def _entries(self, nq: int, nk: int, bucket: int, samples: int) -> int:
        blocks, q_max, k_max = block_sizes(nq, nk, bucket)
        if blocks == 1:
            return nq * nk
        return blocks * q_max * (k_max + samples) + (nq + nk) * self.projs_for(nq, nk)

    def draws(self, batch: int, d: int, dv: int, projs: int, samples: int, device) -> KDEformerDraws:
        """The draws for one call (fresh with ``redraw``, else cached from ``seed`` per shape)."""

        def draw(generator):
            return KDEformerDraws(
                torch.randn(batch, d, projs, generator=generator, dtype=torch.float64),
                torch.randn(batch, dv + 1, generator=generator, dtype=torch.float64),
                torch.rand(batch, samples, generator=generator, dtype=torch.float64),
            )

        return KDEformerDraws(*self.seeded_draws(("kde", batch, d, dv, projs, samples), device, draw))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        bucket, samples = self.parameters_for(q.shape[1], k.shape[1])
        if block_sizes(q.shape[1], k.shape[1], bucket)[0] == 1:
            samples = 0  # every sample would fall in the single block and be masked
        projs = self.projs_for(q.shape[1], k.shape[1])
        draws = self.draws(q.shape[0], q.shape[2], v.shape[2], projs, samples, q.device)
        return kdeformer_attention(q, k, v, scale, bucket, draws).to(q.dtype)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return self._entries(nq, nk, *self.parameters_for(nq, nk))

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        bucket, samples = self.parameters_for(nq, nk)
        return {
            "bucket_size": bucket,
            "sample_size": samples,
            "num_projs": self.projs_for(nq, nk),
            "redraw": self.redraw,
        }


def block_sizes(nq: int, nk: int, bucket: int) -> tuple[int, int, int]:
    """(blocks, largest query block, largest key block): ceil(Nk / bucket) near-equal consecutive blocks."""
    blocks = -(-nk // bucket)
    return blocks, -(-nq // blocks), -(-nk // blocks)


def gray_code(bits: torch.Tensor) -> torch.Tensor:
    """Reflected Gray code of integers: the reference's ``unit_hamming_distance_array`` read at ``bits``."""
    return bits ^ (bits >> 1)


def angular_hash(x: torch.Tensor, hyperplanes: torch.Tensor) -> torch.Tensor:
    """x (B, N, d), hyperplanes (B, d, r) -> (B, N) int64 Gray-coded sign patterns."""
    signs = (x.float() @ hyperplanes.float() > 0).long()  # (B, N, r)
    weights = 2 ** torch.arange(hyperplanes.shape[-1], device=x.device)
    return gray_code((signs * weights).sum(dim=-1))


def top_eigenvalue(gram: torch.Tensor, start: torch.Tensor, iterations: int = POWER_ITERATIONS) -> torch.Tensor:
    """gram (B, e, e), start (B, e) -> (B,) |G x| after ``iterations`` power steps from start / |start|."""
    x = F.normalize(start, dim=-1)
    for _ in range(iterations):  # a fixed 20 steps, as the reference
        y = torch.einsum("bnm,bm->bn", gram, x)
        x = F.normalize(y, dim=-1, eps=0.0)
    return y.norm(dim=-1)


def kdeformer_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bucket: int, draws: KDEformerDraws
) -> torch.Tensor:
    """q (B, Nq, d), k (B, Nk, d), v (B, Nk, dv) -> (B, Nq, dv) fp32 (module docstring)."""
    batch, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    blocks, q_max, k_max = block_sizes(nq, nk, bucket)
    q32, k32 = q.float() * scale, k.float()
    values = torch.cat([v.float(), v.new_ones(batch, nk, 1, dtype=torch.float32)], dim=-1)  # (B, Nk, dv+1)
    if blocks == 1:
        q_order = torch.arange(nq, device=q.device).expand(batch, nq)
        k_order = torch.arange(nk, device=q.device).expand(batch, nk)
    else:
        q_order = torch.sort(angular_hash(q32, draws.hyperplanes), dim=1).indices  # (B, Nq)
        k_order = torch.sort(angular_hash(k32, draws.hyperplanes), dim=1).indices  # (B, Nk)
    q_slots, q_valid = _block_slots(nq, blocks, q_max, q.device)  # (nb, qmax) sorted positions
    k_slots, k_valid = _block_slots(nk, blocks, k_max, q.device)
    q_idx = q_order[:, q_slots.flatten()]  # (B, nb*qmax) original query index per slot
    k_idx = k_order[:, k_slots.flatten()]  # (B, nb*kmax)
    q_blocks = _gather(q32, q_idx).view(batch, blocks, q_max, -1)  # (B, nb, qmax, d)
    k_blocks = _gather(k32, k_idx).view(batch, blocks, k_max, -1)  # (B, nb, kmax, d)
    v_blocks = _gather(values, k_idx).view(batch, blocks, k_max, -1)  # (B, nb, kmax, dv+1)

    sparse = torch.einsum("bjad,bjud->bjau", q_blocks, k_blocks).masked_fill_(
        ~k_valid.view(1, blocks, 1, k_max), -math.inf
    )
    top = sparse.amax(dim=-1, keepdim=True)  # (B, nb, qmax, 1)
    samples = draws.uniforms.shape[1]
    if samples:
        weights, keys, vals, key_block = _residual_samples(k32, values, k_order, blocks, nk, draws)
        residual = torch.einsum("bjad,bsd->bjas", q_blocks, keys)  # (B, nb, qmax, S)
        own_block = torch.arange(blocks, device=q.device).view(1, blocks, 1, 1) == key_block.view(batch, 1, 1, samples)
        residual.masked_fill_(own_block, -math.inf)  # pairs already counted exactly
        top = torch.maximum(top, residual.amax(dim=-1, keepdim=True))
    numerator = torch.einsum("bjau,bjue->bjae", sparse.sub_(top).exp_(), v_blocks)  # (B, nb, qmax, dv+1)
    if samples:
        numerator += torch.einsum("bjas,bse->bjae", residual.sub_(top).exp_(), vals * weights.unsqueeze(-1))
    est = rearrange(numerator[..., :-1] / numerator[..., -1:], "b j a e -> b (j a) e")  # (B, nb*qmax, dv)
    # The real slots, in sorted order, picked by a fixed-shape gather (a boolean mask would sync with the host);
    # the query at sorted position p is q_order[:, p].
    est = est[:, _slot_of_position(q_slots, q_valid, nq)]  # (B, Nq, dv) in sorted-query order
    return est.new_empty(batch, nq, est.shape[-1]).scatter_(1, q_order.unsqueeze(-1).expand_as(est), est)


def _residual_samples(
    k: torch.Tensor, values: torch.Tensor, k_order: torch.Tensor, blocks: int, nk: int, draws: KDEformerDraws
):
    """Importance samples: weights 1 / (p_s S) (B, S), keys (B, S, d), values (B, S, dv+1), key blocks (B, S)."""
    samples = draws.uniforms.shape[1]
    gram = torch.einsum("bnt,bnd->btd", values.double(), values.double())  # (B, dv+1, dv+1)
    lam = top_eigenvalue(gram, draws.power_start.double())  # (B,) float64, as the reference's
    p = values.double().norm(dim=-1) / lam.unsqueeze(-1) + 1.0 / nk  # (B, Nk)
    p = (p / p.sum(dim=-1, keepdim=True)).gather(1, k_order)  # in sorted-key order, as the reference samples
    cdf = p.cumsum(dim=-1)
    cdf = cdf / cdf[:, -1:]
    # torch.multinomial(replacement=True)'s rule: the first sorted position whose cumulative mass reaches u
    position = torch.searchsorted(cdf, draws.uniforms.double()).clamp_(max=nk - 1)  # (B, S)
    key_block = torch.searchsorted(_block_starts(nk, blocks, k.device), position, right=True) - 1  # (B, S)
    weights = (1.0 / (p.gather(1, position) * samples)).float()
    index = k_order.gather(1, position)  # original key index of each sample
    return weights, _gather(k, index), _gather(values, index), key_block


def _block_starts(n: int, blocks: int, device) -> torch.Tensor:
    """(blocks,) first sorted position of each of ``blocks`` near-equal consecutive blocks of n."""
    return torch.arange(blocks, device=device) * n // blocks


def _block_slots(n: int, blocks: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks, width) sorted positions of each block (padding repeats the block's last one) and their validity."""
    starts = _block_starts(n, blocks, device)
    ends = torch.arange(1, blocks + 1, device=device) * n // blocks  # the next block's start, n for the last
    pos = starts.unsqueeze(1) + torch.arange(width, device=device)
    valid = pos < ends.unsqueeze(1)
    return torch.minimum(pos, ends.unsqueeze(1) - 1), valid


def _slot_of_position(slots: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """slots, valid (blocks, width) from ``_block_slots`` -> (n,) the flat slot holding each sorted position."""
    real = torch.where(valid, slots, n).flatten()  # padding slots all point past the end
    flat = torch.arange(real.shape[0], device=slots.device)
    return torch.empty(n + 1, dtype=flat.dtype, device=slots.device).scatter_(0, real, flat)[:n]


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, c), index (B, M) -> (B, M, c)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
