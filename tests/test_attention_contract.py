"""What the backends promise alike, one table per promise (a row per backend and setting): a bad parameter is a
one-line ValueError naming it, kernel methods reject scale <= 0, large logits stay finite in fp32, fp16 and
bf16, a support holding every pair is exact attention, and every random draw comes from ``seed``
(``redraw=True``: a fresh draw per call from one seeded stream). What only one backend promises stays in its
own test module."""

from __future__ import annotations

import re

import pytest
import torch
from attention_inputs import ODD, clustered_qkv, exact, qkv, rel_err

from gan.attention import backend_parameters, build_attention

ODD_SIZES = dict(zip(("b", "nq", "nk", "d", "dv"), ODD, strict=True))  # as qkv keywords

# (backend, parameters, the parameter the message must name as a word)
BAD_PARAMS = [
    ("smyrf", {"n_hashes": 0}, "n_hashes"),
    ("smyrf", {"q_cluster_size": -1}, "q_cluster_size"),
    ("smyrf", {"r": 0}, "r"),
    ("smyrf", {"count_duplicates": 1}, "count_duplicates"),
    ("smyrf", {"redraw": "no"}, "redraw"),
    ("smyrf", {"n_buckets": 4}, "n_buckets"),  # a Reformer parameter
    ("reformer", {"n_hashes": 0}, "n_hashes"),
    ("reformer", {"n_buckets": "8", "mode": "separate-qk"}, "n_buckets"),
    ("reformer", {"chunk": 2}, "chunk"),
    ("reformer", {"mode": "shared"}, "mode"),
    ("reformer", {"n_buckets": 8}, "n_buckets"),  # a separate-qk parameter in the shared-qk mode
    ("reformer", {"bucket_size": 8, "mode": "separate-qk"}, "bucket_size"),
    ("reformer", {"bucket_size": 0}, "bucket_size"),
    ("reformer", {"redraw": None}, "redraw"),
    ("performer", {"num_features": 0}, "num_features"),
    ("performer", {"num_features": 2.5}, "num_features"),
    ("performer", {"num_features": True}, "num_features"),
    ("performer", {"redraw": "yes"}, "redraw"),
    ("performer", {"budget": 0}, "budget"),
    ("performer", {"eps": -1e-4}, "eps"),
    ("performer", {"normalization_eps": float("inf")}, "normalization_eps"),
    ("performer", {"eps": "0"}, "eps"),
    ("scatterbrain", {"num_features": 1}, "num_features"),  # cosh features come in pairs
    ("scatterbrain", {"n_hashes": 0}, "n_hashes"),
    ("scatterbrain", {"ortho_scaling": 2}, "ortho_scaling"),
    ("scatterbrain", {"softmax_eps": -1.0}, "softmax_eps"),
    ("scatterbrain", {"redraw": 1}, "redraw"),
    ("scatterbrain", {"r": -1}, "r"),
    ("sblocal", {"local_context": 0}, "local_context"),
    ("sblocal", {"num_features": 1}, "num_features"),
    ("sblocal", {"ortho_scaling": 2}, "ortho_scaling"),
    ("sblocal", {"softmax_eps": -1.0}, "softmax_eps"),
    ("sblocal", {"redraw": 1}, "redraw"),
    ("topk", {"k": 0}, "k"),
    ("topk", {"k": -3}, "k"),
    ("topk", {"k": 2.5}, "k"),
    ("topk", {"k": True}, "k"),
    ("topk", {"chunk_size": 0}, "chunk_size"),
    ("topk", {"budget": 2.0}, "budget"),
    ("kdeformer", {"bucket_size": 0}, "bucket_size"),
    ("kdeformer", {"sample_size": -1}, "sample_size"),
    ("kdeformer", {"num_projs": 31}, "num_projs"),  # accepted: 1..30
    ("kdeformer", {"redraw": "yes"}, "redraw"),
    ("thinformer", {"g": -1}, "g"),
    ("thinformer", {"g": 1.5}, "g"),
    ("thinformer", {"delta": 0.0}, "delta"),
    ("thinformer", {"delta": 2.0}, "delta"),
    ("thinformer", {"redraw": None}, "redraw"),
    ("smyrf-topkeys", {"n_hashes": 0}, "n_hashes"),
    ("smyrf-topkeys", {"q_cluster_size": -1}, "q_cluster_size"),
    ("smyrf-topkeys", {"k_cluster_size": 1.5}, "k_cluster_size"),
    ("smyrf-topkeys", {"budget": 2.0}, "budget"),
    ("smyrf-topkeys", {"n_buckets": 4}, "n_buckets"),
    ("scatterbrain-centred", {"num_features": 0}, "num_features"),
    ("scatterbrain-centred", {"n_hashes": -2}, "n_hashes"),
    ("scatterbrain-centred", {"q_cluster_size": 0}, "q_cluster_size"),
    ("scatterbrain-centred", {"seed": 1.5}, "seed"),
    ("performer-centred-shrunk", {"num_features": 0}, "num_features"),
    ("performer-centred-shrunk", {"shrink": 1}, "shrink"),
    ("performer-centred-shrunk", {"budget": 0}, "budget"),
    ("scatterbrain-meanfield", {"chunk_size": 0}, "chunk_size"),
    ("scatterbrain-meanfield", {"support": -1}, "support"),
    ("scatterbrain-meanfield", {"pilots": None}, "pilots"),
    ("scatterbrain-meanfield", {"probes": 1.5}, "probes"),
    ("scatterbrain-centroids", {"groups": 0}, "groups"),
    ("scatterbrain-centroids", {"probes": -2}, "probes"),
    ("scatterbrain-centroids", {"groups": 2.5}, "groups"),
]


@pytest.mark.parametrize("name, params, word", BAD_PARAMS)
def test_bad_params_are_one_line_naming_the_parameter(name, params, word):
    with pytest.raises(ValueError, match=rf"\b{re.escape(word)}\b") as err:
        build_attention(name, **params)
    assert "\n" not in str(err.value)


# Kernel feature maps need scale > 0 (performer, sblocal, scatterbrain: exp(scale q.k) as features of q and k).
NON_POSITIVE_SCALES = [
    ("performer", 0.0),
    ("performer", -1.0),
    ("sblocal", 0.0),
    ("scatterbrain", 0.0),
    ("scatterbrain-centred", -1.0),
    ("performer-centred-shrunk", 0.0),
]


@pytest.mark.parametrize("name, scale", NON_POSITIVE_SCALES)
def test_non_positive_scale_rejected(name, scale):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="scale > 0"):
        build_attention(name)(q, k, v, scale=scale)


def isotropic_large_logits():
    """qkv at logit std 30: the largest |q.k| and |q.q| over 90 (shared-qk Reformer scores queries with queries)."""
    q, k, v = qkv(logit_std=30.0)
    assert (q @ k.transpose(1, 2)).abs().max() > 90 and (q @ q.transpose(1, 2)).abs().max() > 90
    return q, k, v


def clustered_logits_up_to_100():
    """Clustered q, k at odd sizes, q rescaled so the largest |logit| is 100 (raw exp would overflow fp32)."""
    q, k, v = clustered_qkv(*ODD, logit_std=30.0, seed=0)
    return q * (100 / (q @ k.transpose(1, 2)).abs().max()), k, v


# (backend, parameters, inputs); exact, performer and topk check their low-precision error in their own modules
LARGE_LOGITS = [
    ("smyrf", {"budget": 0.125}, isotropic_large_logits),
    ("reformer", {"mode": "biggan-shared-qk", "budget": 0.125}, isotropic_large_logits),
    ("reformer", {"mode": "separate-qk", "budget": 0.125}, isotropic_large_logits),
    ("scatterbrain", {"budget": 0.125}, isotropic_large_logits),
    ("smyrf-topkeys", {"budget": 0.125}, isotropic_large_logits),
    ("scatterbrain-centred", {"budget": 0.125}, isotropic_large_logits),
    ("performer-centred-shrunk", {"budget": 0.125}, isotropic_large_logits),
    ("scatterbrain-centroids", {"budget": 0.125}, isotropic_large_logits),
    ("scatterbrain-centroids", {"budget": 0.125}, clustered_logits_up_to_100),
    ("kdeformer", {"bucket_size": 10, "sample_size": 20, "redraw": False}, clustered_logits_up_to_100),
    ("sblocal", {"local_context": 8, "num_features": 16}, clustered_logits_up_to_100),
    ("thinformer", {"g": 1, "redraw": False}, clustered_logits_up_to_100),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name, params, inputs", LARGE_LOGITS)
def test_large_logits_stay_finite_in_every_precision(name, params, inputs, dtype):
    q, k, v = inputs()
    attn = build_attention(name, **params)
    assert torch.isfinite(attn(q, k, v)).all()
    out = attn(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


# A support that holds every pair (budget 1, or one cluster) is exact attention (1e-4), at large logits too: SMYRF's
# rounds are then identical, Scatterbrain's features cancel on the support. Reformer's shared-qk form ignores k, so
# no budget makes it exact.
COMPLETE_SUPPORT = [
    ("smyrf", {"budget": 1.0}),
    ("smyrf", {"n_hashes": 3, "q_cluster_size": 256, "k_cluster_size": 64}),
    ("reformer", {"mode": "separate-qk", "budget": 1.0}),
    ("scatterbrain", {"budget": 1.0}),
    ("scatterbrain", {"n_hashes": 3, "q_cluster_size": 256, "num_features": 16}),
    ("smyrf-topkeys", {"budget": 1.0}),
    ("scatterbrain-centred", {"budget": 1.0}),
]


@pytest.mark.parametrize("inputs, scale", [(qkv, 0.8), (isotropic_large_logits, 1.0)])
@pytest.mark.parametrize("name, params", COMPLETE_SUPPORT)
def test_complete_support_is_exact(name, params, inputs, scale):
    q, k, v = inputs()
    assert rel_err(build_attention(name, **params)(q, k, v, scale=scale), exact(q, k, v, scale)) < 1e-4


# (backend, parameters, qkv arguments) for the backends that draw at random (topk draws nothing; performer checks
# its features' seeds with a margin in its own module)
SEEDED = [
    ("smyrf", {"budget": 0.25}, {"nq": 250, "nk": 62}),
    ("reformer", {"mode": "biggan-shared-qk", "budget": 0.25}, {}),
    ("reformer", {"mode": "separate-qk", "budget": 0.25}, {}),
    ("scatterbrain", {"budget": 0.25}, {"nq": 250, "nk": 62}),
    ("sblocal", {}, {**ODD_SIZES, "seed": 5}),
    ("kdeformer", {}, {**ODD_SIZES, "seed": 5}),
    ("thinformer", {"g": 0}, {**ODD_SIZES, "seed": 5}),
    ("smyrf-topkeys", {"budget": 0.25}, {}),
    ("scatterbrain-centred", {"budget": 0.25}, {}),
    ("performer-centred-shrunk", {"budget": 0.25}, {"nq": 1024, "nk": 256, "logit_std": 2.0}),
    ("scatterbrain-centroids", {"budget": 0.25}, {"nq": 250, "nk": 62, "logit_std": 2.0}),
]
REDRAWN = [case for case in SEEDED if "redraw" in backend_parameters(case[0])]


@pytest.mark.parametrize("name, params, inputs", SEEDED)
def test_draws_come_from_the_seed_once(name, params, inputs):
    # Same seed: the same output, call after call (drawn once per shape); another seed draws differently.
    q, k, v = qkv(**inputs)
    attn = build_attention(name, seed=1, **params)
    first = attn(q, k, v)
    assert torch.equal(first, build_attention(name, seed=1, **params)(q, k, v))
    assert torch.equal(attn(q, k, v), first) and torch.equal(attn(q, k, v), first)
    assert not torch.equal(first, build_attention(name, seed=2, **params)(q, k, v))


@pytest.mark.parametrize("name, params, inputs", REDRAWN)
def test_redraw_draws_afresh_per_call_from_one_seeded_stream(name, params, inputs):
    # As the references draw per call: every call differs from the one before, the first call is the fixed draw,
    # and two backends with one seed give the same sequence.
    q, k, v = qkv(**inputs)
    attn, twin = (build_attention(name, seed=1, redraw=True, **params) for _ in range(2))
    first, second = attn(q, k, v), attn(q, k, v)
    assert not torch.equal(first, second)
    assert torch.equal(first, build_attention(name, seed=1, **params)(q, k, v))
    assert torch.equal(first, twin(q, k, v)) and torch.equal(second, twin(q, k, v))
