"""LSH transforms and hashes shared by the clustered methods: XBOX+ (both forms), E2LSH, centroid sort keys.

XBOX+ maps maximum inner product search to nearest neighbours: queries and keys get two extra
coordinates so that all lie at one norm and the largest inner products become the shortest
distances. SMYRF's reference pads both sets to the common norm sqrt(MQ^2 + MK^2)
(``xbox_plus_common_norm``); smyrf-topkeys puts both on the unit sphere with M the largest norm of
both sets (``xbox_plus``). A hash turns the transformed points into a scalar sort key per round.
"""

from __future__ import annotations

import torch
from einops import rearrange


def xbox_plus_common_norm(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B,Nq,d), k (B,Nk,d) -> (B,Nq,d+2), (B,Nk,d+2): both padded to the norm sqrt(MQ^2 + MK^2) per batch element."""
    q_norm, k_norm = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)  # (B, N, 1)
    common_sq = q_norm.amax(1, keepdim=True).square() + k_norm.amax(1, keepdim=True).square()  # (B, 1, 1)
    q_fill, k_fill = (common_sq - q_norm.square()).sqrt(), (common_sq - k_norm.square()).sqrt()
    return torch.cat([q, torch.zeros_like(q_fill), q_fill], -1), torch.cat([k, k_fill, torch.zeros_like(k_fill)], -1)


def xbox_plus(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric XBOX+ transform: q (B,Nq,d), k (B,Nk,d) -> (B,Nq,d+2), (B,Nk,d+2), all on the unit sphere.

    With M the max norm over BOTH sets: q -> [q, 0, sqrt(M^2-|q|^2)] / M, k -> [k, sqrt(M^2-|k|^2), 0] / M,
    so |q' - k'|^2 = 2 - 2 q.k / M^2: the largest inner products become the nearest neighbours.
    """
    q_sq = q.square().sum(-1, keepdim=True)  # (B, Nq, 1)
    k_sq = k.square().sum(-1, keepdim=True)  # (B, Nk, 1)
    m_sq = torch.maximum(q_sq.amax(1, keepdim=True), k_sq.amax(1, keepdim=True)).clamp_min(1e-30)  # (B, 1, 1)
    q_fill = (m_sq - q_sq).clamp_min(0).sqrt()
    k_fill = (m_sq - k_sq).clamp_min(0).sqrt()
    qx = torch.cat([q, torch.zeros_like(q_fill), q_fill], dim=-1) / m_sq.sqrt()
    kx = torch.cat([k, k_fill, torch.zeros_like(k_fill)], dim=-1) / m_sq.sqrt()
    return qx, kx


def draw_e2lsh(generator: torch.Generator, n_hashes: int, dim: int, r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One E2LSH draw: alpha (dim, R) ~ N(0, 1) and beta (1, R) ~ U(0, r), in that order, from ``generator``."""
    alpha = torch.randn(dim, n_hashes, generator=generator, device=generator.device)
    beta = r * torch.rand(1, n_hashes, generator=generator, device=generator.device)
    return alpha, beta


def e2lsh_hash(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """x (B,N,D) -> (B,R,N) hashes x . alpha + beta."""
    return rearrange(x @ alpha + beta, "b n r -> b r n")


def centroid_sort_key(x: torch.Tensor, centroids: torch.Tensor, directions: torch.Tensor, chunk: int) -> torch.Tensor:
    """x (B,N,D), centroids (B,R,c,D), directions (R,D) -> float64 sort keys (B,R,N), one order per round.

    The key is the nearest centroid's id (by inner product) plus a (0, 1) fraction from the
    projection on the round's direction: one sort groups points by centroid and orders each group
    along an angular coordinate, so cutting the order into equal pieces splits big groups along it.
    The point-centroid scores of every round are formed ``chunk`` points at a time (chunk * R * c
    scores per batch element alive), so hashing holds no more than the caller allows.
    """
    b, n_rounds, n_centroids, dim = centroids.shape
    every_round = centroids.reshape(b, n_rounds * n_centroids, dim).transpose(1, 2)  # (B, D, R*c)
    nearest = torch.cat(
        [torch.bmm(part, every_round).view(b, -1, n_rounds, n_centroids).argmax(-1) for part in x.split(chunk, dim=1)],
        dim=1,
    ).transpose(1, 2)  # (B, R, N)
    fraction = torch.sigmoid(torch.matmul(x, directions.t())).transpose(1, 2)  # (B, R, N) in (0, 1)
    return nearest.double() + fraction.double()
