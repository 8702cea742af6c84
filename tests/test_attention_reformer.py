"""Reformer LSH attention: exact with one bucket, chunk + look-back support, budgets, numerics."""
import json
import math

import pytest
import torch

from attention_inputs import exact, qkv, rel_err, support_mask
from gan.attention import build_attention


@pytest.mark.parametrize("params", [{"budget": 1.0}, {"n_buckets": 1, "n_hashes": 4}, {"n_buckets": 2, "n_hashes": 3}])
def test_one_bucket_or_full_coverage_is_exact(params):
    # One bucket, or two chunks with look-back (every key), over several rounds: duplicates across
    # rounds and the look-back must be counted once, giving exact attention (1e-4).
    q, k, v = qkv()
    assert rel_err(build_attention("reformer", **params)(q, k, v, scale=0.8), exact(q, k, v, 0.8)) < 1e-4


@pytest.mark.parametrize("nq,nk", [(256, 64), (250, 62)])
def test_output_is_softmax_over_chunk_and_previous_chunk(nq, nk):
    # Nq = 4 Nk, with and without padding. Dense softmax restricted to the union of the rounds'
    # (chunk, previous chunk) pairs must match to 1e-5; fails on double counting or padding leaks.
    q, k, v = qkv(nq=nq, nk=nk)
    attn = build_attention("reformer", n_hashes=3, n_buckets=8, seed=5)
    out = attn(q, k, v)
    layout = attn.layout(q, k)
    assert layout.k_rows.shape[-1] == 2 * math.ceil(nk / 8)  # own chunk + the previous one
    mask = support_mask(layout, nq, nk)
    assert 0 < mask.float().mean() < 1
    assert rel_err(out, exact(q, k, v, mask=mask)) < 1e-5


def test_same_rotations_hash_queries_and_keys():
    # A key equal to a query direction lands in the query's bucket in every round (shared rotations).
    q, _, _ = qkv(nq=64, nk=16)
    attn = build_attention("reformer", n_hashes=2, n_buckets=8)
    rotations = attn.rotations(2, 8, q.shape[2], q.device)
    assert torch.equal(attn.sort_key(q, rotations, 8, 64).floor(), attn.sort_key(3 * q, rotations, 8, 64).floor())


@pytest.mark.parametrize("n_buckets", [1, 7, 8])
def test_bucket_is_argmax_of_rotations_and_their_negatives(n_buckets):
    # The hash finds argmax([xR, -xR][:n_buckets]) from max/min of xR, 5 points at a time; it must
    # equal the concatenation's argmax exactly (odd counts drop the last -xR column; one bucket is 0).
    q, _, _ = qkv(nq=64, nk=16)
    attn = build_attention("reformer", n_hashes=2, n_buckets=n_buckets)
    rotations = attn.rotations(2, n_buckets, q.shape[2], q.device)
    rotated = torch.einsum("bnd,rdh->brnh", q, rotations)
    expected = torch.cat([rotated, -rotated], dim=-1)[..., :n_buckets].argmax(-1)
    assert torch.equal(attn.sort_key(q, rotations, n_buckets, 5).floor().long(), expected)


def test_deterministic_by_seed():
    q, k, v = qkv()
    a = build_attention("reformer", budget=0.25, seed=1)(q, k, v)
    assert torch.equal(a, build_attention("reformer", budget=0.25, seed=1)(q, k, v))
    assert not torch.equal(a, build_attention("reformer", budget=0.25, seed=2)(q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_and_large_logits_finite(dtype):
    q, k, v = qkv(logit_std=30.0)
    assert (q @ k.transpose(1, 2)).abs().max() > 90
    out = build_attention("reformer", budget=0.125)(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_err(build_attention("reformer", budget=1.0)(q, k, v), exact(q, k, v)) < 1e-4


@pytest.mark.parametrize("nq,nk", [(4096, 1024), (1024, 256), (1000, 250)])
@pytest.mark.parametrize("budget", [1 / 32, 1 / 8, 1 / 4, 1.0])
def test_budget_resolves_within_budget(nq, nk, budget):
    attn = build_attention("reformer", budget=budget)
    json.dumps(attn.resolve(nq, nk, 32))
    assert attn.score_entries(nq, nk, 32) <= budget * nq * nk


@pytest.mark.parametrize("params,name", [({"n_hashes": 0}, "n_hashes"), ({"n_buckets": "8"}, "n_buckets"), ({"chunk": 2}, "chunk")])
def test_bad_params_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        build_attention("reformer", **params)


def test_more_buckets_than_keys_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="n_buckets=65 exceeds the number of keys Nk=64"):
        build_attention("reformer", n_buckets=65)(q, k, v)
