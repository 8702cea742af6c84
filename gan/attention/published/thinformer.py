"""Thinformer (Carrell et al., ICML 2025, "Low-Rank Thinning"): exact softmax over a kernel-thinned key coreset.

As microsoft/thinformer ``thinformer/thinformer.py`` computes it (the BigGAN script
``examples/biggan/biggan_models/model_thinformer.py`` uses ``ThinformerAttention(g=config.g, scale=1)``
with g = 1 for BigGAN-deep-128/256 and g = 2 for BigGAN-deep-512):

1. Standard-thin the keys/values to n = the largest power of 4 <= Nk (every (Nk // n)-th pair).
2. KH-Compress(g): if n >= 4^(g+1), cut the n pairs into consecutive buckets of 4^(g+1) and halve
   every bucket by kernel halving, log4(n) - g times, doubling the bucket each round, which leaves
   2^g sqrt(n) pairs. The kernel is k((k, v), (k', v')) = exp(s k.k' - shift) (v.v' + b^2), with
   shift = max_j s |k_j|^2 and b = max |v| entry; halving walks the consecutive pairs (2i, 2i+1) in
   order, keeping one of each by comparing a uniform threshold (scaled by the pair's kernel distance
   and the running maximum of those) with the signed sum of the differences kept so far. After each
   round one fair coin swaps every choice for its complement (``symmetrize``).
3. softmax(s q K_core^T) V_core.

The halving walk is sequential by construction (each choice depends on all earlier ones): it runs
as a loop over the pairs of one bucket (2^g sqrt(n) steps in all, at BigGAN 221), each step
vectorised over every bucket and batch element, as in the reference.

The reference draws its thresholds and coins afresh on every call (``redraw=True``); the default
``redraw=False`` draws them once from ``seed`` per shape. They are drawn in the reference's order and
layout, so on the CPU a generator seeded with s reproduces the reference run after
``torch.manual_seed(s)``. Nq != Nk needs nothing special (queries only
read the coreset). At g >= log4(n) nothing is compressed and, when Nk is a power of 4, the result is
exact attention.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from einops import rearrange

from ..base import REDRAW, AttentionBackend, Parameter, nonnegative_int, unit_fraction


class HalvingDraws(NamedTuple):
    """One halving round's draws: uniforms on [-L, L) (B, buckets, pairs), L = 0.5 + log(2 s / delta_round),
    and one fair coin (a (1,) bool), drawn in the reference's order and layout (buckets before batch)."""

    uniforms: torch.Tensor
    coin: torch.Tensor


class ThinformerAttention(AttentionBackend):
    """Thinformer: exact softmax attention over a KH-Compress(g) coreset of 2^g sqrt(n) keys.

    From a budget (default 1/8; at BigGAN's shape that is g = 2, the BigGAN-deep-512 setting) the
    largest g >= 0 whose entries fit: max(Nq x coreset, 2 x n x 4^(g+1)) (the final scores, or one
    halving round's kernel matrices). An explicit ``g`` overrides. ``delta`` is the kernel-halving
    failure parameter (0.5, the reference's).
    """

    name = "thinformer"
    published = True
    paper = 'Carrell et al., ICML 2025 ("Low-Rank Thinning")'
    variant_of = None

    g = Parameter(nonnegative_int, meaning="the oversampling parameter")
    delta = Parameter(unit_fraction, default=0.5)
    redraw = REDRAW

    def g_for(self, nq: int, nk: int) -> int:
        """The oversampling parameter g used for these shapes."""
        if self.g is not None:
            return self.g
        allowed = self.effective_budget * nq * nk + 1e-6
        log4_n = log4_largest_power_of_four(nk)
        fits = [g for g in range(log4_n + 1) if _entries(nq, log4_n, g) <= allowed]
        return max(fits) if fits else 0

    def draws(self, batch: int, nk: int, g: int, device) -> list[HalvingDraws]:
        """The draws of one call, one per halving round (fresh with ``redraw``, else cached from ``seed``)."""
        log4_n = log4_largest_power_of_four(nk)
        rounds = halving_rounds(log4_n, g)

        def draw(generator):
            out = []
            for buckets, pairs in rounds:
                bound = threshold_bound(log4_n, g, self.delta, 2 * pairs)
                uniforms = torch.empty(buckets, batch, pairs).uniform_(-bound, bound, generator=generator)
                out += [uniforms.transpose(0, 1), torch.empty(1, dtype=torch.bool).bernoulli_(generator=generator)]
            return tuple(out)

        flat = self.seeded_draws(("thin", batch, nk, g), "cpu", draw)
        return [HalvingDraws(flat[i].to(device), flat[i + 1].to(device)) for i in range(0, len(flat), 2)]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if scale <= 0:
            raise ValueError(f"thinformer attention needs scale > 0 (its kernel uses sqrt(scale) k), got {scale}")
        g = self.g_for(q.shape[1], k.shape[1])
        draws = self.draws(q.shape[0], k.shape[1], g, q.device)
        keys, values = kh_compress(k.float() * math.sqrt(scale), v.float(), g, draws)
        logits = (q.float() @ keys.transpose(1, 2)).mul_(math.sqrt(scale))  # (B, Nq, coreset)
        return (torch.softmax(logits, dim=-1) @ values).to(q.dtype)

    def score_entries(self, nq: int, nk: int, d: int) -> int:
        return _entries(nq, log4_largest_power_of_four(nk), self.g_for(nq, nk))

    def resolve(self, nq: int, nk: int, d: int) -> dict[str, Any]:
        g = self.g_for(nq, nk)
        log4_n = log4_largest_power_of_four(nk)
        return {"g": g, "coreset": coreset_size(log4_n, g), "delta": self.delta, "redraw": self.redraw}


def log4_largest_power_of_four(n: int) -> int:
    """log4 of the largest power of four <= n."""
    return (n.bit_length() - 1) // 2


def coreset_size(log4_n: int, g: int) -> int:
    """Keys kept: min(n, 2^g sqrt(n)) for n = 4^log4_n."""
    n = 4**log4_n
    return n if n < 4 ** (g + 1) else 2**g * 2**log4_n


def halving_rounds(log4_n: int, g: int) -> list[tuple[int, int]]:
    """(buckets, pairs per bucket) of each KH-Compress(g) round; [] when nothing is compressed."""
    n, bucket = 4**log4_n, 4 ** (g + 1)
    if n < bucket:
        return []
    rounds = []
    for r in range(log4_n - g):
        rounds.append((n // 2**r // bucket, bucket // 2))
        bucket *= 2
    return rounds


def threshold_bound(log4_n: int, g: int, delta: float, bucket: int) -> float:
    """L of the halving thresholds' uniforms for a bucket of ``bucket`` points: 0.5 + log(2 s / delta_round)."""
    halve_prob = delta / 4 ** (g + 1) / (log4_n - g) / 4**log4_n
    return 0.5 + math.log(2 * bucket / (halve_prob * bucket * bucket))


def _entries(nq: int, log4_n: int, g: int) -> int:
    kernel = 2 * 4**log4_n * 4 ** (g + 1) if halving_rounds(log4_n, g) else 0  # one round's kernel matrices
    return max(nq * coreset_size(log4_n, g), kernel)


def kh_compress(
    keys: torch.Tensor, values: torch.Tensor, g: int, draws: list[HalvingDraws]
) -> tuple[torch.Tensor, torch.Tensor]:
    """keys (B, Nk, d) already scaled by sqrt(scale), values (B, Nk, dv) -> the coreset (B, c, d), (B, c, dv)."""
    nk = keys.shape[1]
    log4_n = log4_largest_power_of_four(nk)
    n = 4**log4_n
    stride = nk // n
    keys, values = keys[:, : n * stride : stride], values[:, : n * stride : stride]  # standard thinning to n
    rounds = halving_rounds(log4_n, g)
    if not rounds:
        return keys, values
    shift = keys.square().sum(dim=-1).amax(dim=1).view(-1, 1, 1, 1)  # (B, 1, 1, 1): max |k|^2
    b_sqd = values.abs().amax(dim=(1, 2)).square().view(-1, 1, 1, 1)  # (B, 1, 1, 1): max |v| entry, squared
    bucket = 4 ** (g + 1)
    for draw in draws:
        kb = rearrange(keys, "b (a s) e -> b a s e", s=bucket)
        vb = rearrange(values, "b (a s) e -> b a s e", s=bucket)
        kernel = torch.einsum("base,bare->basr", kb, kb).sub_(shift).exp_()
        kernel.mul_(torch.einsum("base,bare->basr", vb, vb).add_(b_sqd))  # (B, A, s, s)
        chosen = halve(kernel, draw)  # (B, A, s/2) indices within each bucket
        keys = rearrange(kb.gather(2, chosen.unsqueeze(-1).expand(-1, -1, -1, kb.shape[-1])), "b a s e -> b (a s) e")
        values = rearrange(vb.gather(2, chosen.unsqueeze(-1).expand(-1, -1, -1, vb.shape[-1])), "b a s e -> b (a s) e")
        bucket *= 2
    return keys, values


def halve(kernel: torch.Tensor, draw: HalvingDraws) -> torch.Tensor:
    """Kernel halving of each bucket: kernel (B, A, s, s) -> (B, A, s/2) kept indices (one of each pair 2i, 2i+1)."""
    size = kernel.shape[-1]
    diff = kernel[..., ::2] - kernel[..., 1::2]
    diff = diff[..., ::2, :] - diff[..., 1::2, :]  # (B, A, s/2, s/2): <phi_2i - phi_2i+1, phi_2j - phi_2j+1>
    del kernel
    root_diag = diff.diagonal(dim1=-2, dim2=-1).sqrt()  # (B, A, s/2)
    thresholds = draw.uniforms * root_diag * root_diag.cummax(dim=-1).values
    signed_sum = diff[..., 0, :].clone()  # (B, A, s/2); pair 0 keeps its first point
    # The walk is sequential (each choice depends on the ones before it), so its per-step work is cut to three
    # ops (a launch each on a GPU): the views below are taken once, and the signed step is a select of +-diff,
    # which is what (1 - 2 swap) * diff computes exactly.
    sums, limits = signed_sum.split(1, dim=-1), thresholds.split(1, dim=-1)  # (B, A, 1) views, one per pair
    plus, minus = diff.unbind(dim=-2), diff.neg().unbind(dim=-2)  # (B, A, s/2) rows, one per pair
    swaps = [torch.zeros_like(limits[0], dtype=torch.bool)]
    for i in range(1, size // 2):
        swap = limits[i] <= sums[i]  # (B, A, 1)
        signed_sum += torch.where(swap, minus[i], plus[i])
        swaps.append(swap)
    return (torch.cat(swaps, dim=-1) ^ draw.coin).long() + torch.arange(0, size, 2, device=diff.device)
