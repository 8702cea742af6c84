"""Reformer separate-qk against a support derived here from the paper's rule, not from the backend's layout.

Kitaev et al. (ICLR 2020), section 2: hash h(x) = argmax([xR; -xR]) with a random rotation R, sort by
(bucket, position), cut the sorted sequence into equal chunks, and let chunk i attend to itself and to
chunk i - 1 (the first chunk looks back at the last, as lucidrains' ``look_one_back`` rolls). The project's
separate-qk form (docs/attention.md, "Reformer") hashes queries and keys separately with the same
rotations, cuts both sorted orders by rank into n_buckets chunks (padding slots spread evenly: rank p of N
goes to slot floor(p * C * ceil(N / C) / N)), and query chunk i meets key chunks i - 1 and i; rounds are
combined over the union of their supports. The rotations are (R, d, ceil(n_buckets / 2)) N(0, 1) draws
from a generator seeded with ``seed`` (the module's documented draw); everything else is written out here.
"""

from __future__ import annotations

import math

import pytest
import torch

from gan.attention import build_attention


def qkv(b, nq, nk, d, dv, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, nq, d, generator=g), torch.randn(b, nk, d, generator=g)
    return q * 0.6, k * 0.6, torch.randn(b, nk, dv, generator=g)


def chunk_of_each(x: torch.Tensor, rotation: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """x (N, d), rotation (d, h) -> (N,) chunk of every point: bucket argmax([xR, -xR][:C]), sorted by
    (bucket, position), rank p cut into C equal chunks of ceil(N / C) slots with padding spread evenly."""
    n = x.shape[0]
    rotated = x.double() @ rotation.double()
    bucket = torch.cat([rotated, -rotated], dim=-1)[:, :n_chunks].argmax(-1)  # (N,)
    order = sorted(range(n), key=lambda i: (int(bucket[i]), i))
    size = math.ceil(n / n_chunks)
    chunk = torch.empty(n, dtype=torch.long)
    for rank, i in enumerate(order):
        chunk[i] = (rank * n_chunks * size // n) // size
    return chunk


def paper_support(q, k, rotations, n_chunks):
    """(B, Nq, Nk) bool: query chunk i meets key chunks i and i - 1 (mod C), in any round."""
    b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    mask = torch.zeros(b, nq, nk, dtype=torch.bool)
    for e in range(b):
        for rotation in rotations:
            qc, kc = chunk_of_each(q[e], rotation, n_chunks), chunk_of_each(k[e], rotation, n_chunks)
            own = qc.view(-1, 1) == kc.view(1, -1)
            previous = ((qc.view(-1, 1) - 1) % n_chunks) == kc.view(1, -1)
            mask[e] |= own | (previous if n_chunks > 1 else own)
    return mask


def masked_softmax(q, k, v, scale, mask):
    s = (q.double() @ k.double().transpose(1, 2)) * scale
    return torch.softmax(s.masked_fill(~mask, -math.inf), -1) @ v.double()


@pytest.mark.parametrize(
    "b,nq,nk,n_hashes,n_buckets,scale",
    [
        (2, 256, 64, 3, 8, 0.8),  # Nq = 4 Nk, chunks divide both sets
        (1, 250, 62, 2, 8, 1.0),  # neither divides: padding slots spread evenly
        (1, 96, 96, 1, 5, 1.3),  # odd bucket count: the last -xR column is dropped
    ],
)
def test_separate_qk_attends_to_own_and_previous_key_chunk(b, nq, nk, n_hashes, n_buckets, scale):
    # The support is derived here (paper's rule); the backend's output must be the dense softmax restricted to
    # it (1e-5, fp32 vs fp64). Meeting chunk i + 1 instead of i - 1 moves outputs by 60-100%.
    q, k, v = qkv(b, nq, nk, 12, 6, seed=nq)
    seed = 5
    attn = build_attention("reformer", mode="separate-qk", n_hashes=n_hashes, n_buckets=n_buckets, seed=seed)
    rotations = torch.randn(n_hashes, q.shape[2], -(-n_buckets // 2), generator=torch.Generator().manual_seed(seed))
    mask = paper_support(q, k, rotations, n_buckets)
    assert 0.1 < mask.float().mean() < 0.9  # a real restriction, neither empty nor complete
    ref = masked_softmax(q, k, v, scale, mask)
    out = attn(q, k, v, scale=scale).double()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    # The neighbour rule matters on this input: chunk i + 1 instead of i - 1 gives another output.
    wrong = torch.zeros_like(mask)
    for e in range(b):
        for rotation in rotations:
            qc, kc = chunk_of_each(q[e], rotation, n_buckets), chunk_of_each(k[e], rotation, n_buckets)
            wrong[e] |= (qc.view(-1, 1) == kc.view(1, -1)) | (((qc.view(-1, 1) + 1) % n_buckets) == kc.view(1, -1))
    assert ((masked_softmax(q, k, v, scale, wrong) - ref).norm() / ref.norm()).item() > 0.1


def test_first_chunk_looks_back_at_the_last():
    # One round, 4 chunks: the queries of chunk 0 must see key chunk 3 (cyclic look-back) and not key chunk 1.
    q, k, v = qkv(1, 64, 64, 8, 4, seed=1)
    attn = build_attention("reformer", mode="separate-qk", n_hashes=1, n_buckets=4, seed=2)
    rotation = torch.randn(1, 8, 2, generator=torch.Generator().manual_seed(2))[0]
    qc, kc = chunk_of_each(q[0], rotation, 4), chunk_of_each(k[0], rotation, 4)
    first = (qc == 0).nonzero().squeeze(-1)
    assert len(first) == 16
    out = attn(q, k, v)[0, first].double()
    allowed = (kc == 0) | (kc == 3)
    s = q[0, first].double() @ k[0].double().t()
    ref = torch.softmax(s.masked_fill(~allowed, -math.inf), -1) @ v[0].double()
    assert torch.allclose(out, ref, atol=1e-5)
