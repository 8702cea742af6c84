"""SMYRF: exact at full budget, the union-of-rounds support computed right, budgets, numerics."""

import json
import math

import pytest
import torch
from attention_inputs import (
    cluster_valued_qkv,
    clustered_peak_bound,
    clustered_qkv,
    exact,
    peak_bytes,
    qkv,
    rel_err,
    support_mask,
)

from gan.attention import build_attention
from gan.attention.parts.hashing import xbox_plus


def test_full_budget_is_exact():
    # Fails if one cluster/one round does not cover every key or the log-sum-exp combination is off.
    q, k, v = qkv()
    assert rel_err(build_attention("smyrf-topkeys", budget=1.0)(q, k, v), exact(q, k, v)) < 1e-4


def test_rounds_do_not_double_count():
    # Four rounds of one cluster meet every pair four times; counted once each it is exact (1e-4).
    q, k, v = qkv()
    attn = build_attention("smyrf-topkeys", n_hashes=4, q_cluster_size=256, k_cluster_size=64)
    assert rel_err(attn(q, k, v, scale=0.7), exact(q, k, v, 0.7)) < 1e-4


@pytest.mark.parametrize("nq,nk", [(256, 64), (250, 62)])
def test_output_is_softmax_over_union_of_round_supports(nq, nk):
    # Nq = 4 Nk, and sizes that do not divide into clusters (padding). Dense softmax restricted to
    # the union of the rounds' pairs must match to 1e-5: fails on double counting, a dropped or
    # padded key leaking in, or a query written back to the wrong row.
    q, k, v = qkv(nq=nq, nk=nk)
    attn = build_attention("smyrf-topkeys", n_hashes=3, q_cluster_size=16, k_cluster_size=4, seed=3)
    out = attn(q, k, v, scale=0.5)
    mask = support_mask(attn.layout(q * 0.5, k), nq, nk)
    assert out.shape == (2, nq, 8)
    assert 0 < mask.float().mean() < 1
    assert rel_err(out, exact(q, k, v, 0.5, mask)) < 1e-5


def test_each_batch_element_hashed_on_its_own():
    # Norms, XBOX+ maxima, centroids and cluster query sums are per batch element: element 1 alone
    # must be attended exactly as next to element 0 (1e-5: only matmul round-off may differ), with
    # padded clusters (250 queries in clusters of 16), where padding used to borrow element 0's row.
    q, k, v = qkv(nq=250, nk=62, logit_std=2.0)
    attn = build_attention("smyrf-topkeys", n_hashes=3, q_cluster_size=16, k_cluster_size=4, seed=1)
    assert rel_err(attn(q[1:], k[1:], v[1:])[0], attn(q, k, v)[1].double()) < 1e-5


def test_hash_bookkeeping_within_budget():
    # The hashing (point-centroid scores of every round, the covering selection's (clusters, Nk) tables)
    # works in pieces of at most the support's score entries. Peak bytes of one call (public profiler
    # API), less the output, within the score entries, four input copies and the layout's bookkeeping
    # (``clustered_peak_bound``): fails if an (R, Nq, C)-sized float table (4 MiB here) comes back.
    nq, nk, d, dv, budget = 2048, 512, 32, 16, 1 / 32
    q, k, v = qkv(b=1, nq=nq, nk=nk, d=d, dv=dv, logit_std=2.0)
    attn = build_attention("smyrf-topkeys", budget=budget)
    attn(q, k, v)
    peak, _ = peak_bytes(lambda: attn(q, k, v))
    plan = attn.plan(nq, nk)
    bound = clustered_peak_bound(attn.score_entries(nq, nk, d), nq, nk, d, dv, [(plan.n_hashes, plan.n_clusters)])
    assert peak - 4 * nq * dv <= bound < 4 * plan.n_hashes * nq * plan.n_clusters


def plain_covering_keys(q, k, q_cluster, width):
    """Plain reading of the covering selection (gan/attention/coverage.py), one cluster and key at a time:
    round r's cluster c scores key j by mean_{i in c} q_i.k_j + log(max(1e-6, prod_{e<r} (1 - f_e))), f_e the
    fraction of c's queries whose round-e cluster picked j; it keeps the ``width`` best. q (Nq,d), k (Nk,d),
    q_cluster (R,Nq) -> per round a list of key sets per cluster."""
    n_rounds, nq = q_cluster.shape
    n_clusters = int(q_cluster.max()) + 1
    picked = []
    for r in range(n_rounds):
        sets = []
        for c in range(n_clusters):
            members = [i for i in range(nq) if q_cluster[r, i] == c]
            mean_q = q[members].mean(0) if members else torch.zeros(q.shape[1])
            scores = []
            for j in range(k.shape[0]):
                missing = 1.0
                for e in range(r):
                    met = sum(1 for i in members if j in picked[e][int(q_cluster[e, i])])
                    missing *= 1 - met / max(len(members), 1)
                scores.append(float(mean_q @ k[j]) + math.log(max(missing, 1e-6)))
            sets.append(set(torch.tensor(scores).topk(width).indices.tolist()))
        picked.append(sets)
    return picked


@pytest.mark.parametrize("by_query,entries", [(False, 900), (True, 900), (True, 1040)])
def test_covering_selection_matches_its_plain_reading(by_query, entries):
    # Same clusters in, the same key sets out, round by round (ties are impossible at random inputs),
    # whether earlier rounds' met counts are spread cluster to cluster or query to query. 45 queries in 7 clusters
    # of 7 slots: 4 padding slots per round. With 900 working entries round 1 takes its clusters in pieces of 4, 3
    # (from cluster to cluster) or 2, 2, 2, 1 (query to query), round 2 one at a time; with 1040 (query to query)
    # round 1 holds its slots' earlier clusters for the whole round, in pieces of 3, 3, 1.
    from gan.attention.parts.coverage import covering_top_keys
    from gan.attention.parts.round_layout import query_clusters

    q, k, _ = qkv(b=1, nq=45, nk=24, d=8, logit_std=2.0, seed=4)
    sort_key = torch.rand(1, 3, 45, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q_rows, q_cluster = query_clusters(sort_key, 7)
    assert (q_rows < 0).sum() == 3 * 4
    layout = covering_top_keys(q, k, q_rows, q_cluster, width=5, entries=entries, by_query=by_query)
    expected = plain_covering_keys(q[0], k[0], q_cluster[0], 5)
    for r in range(3):
        assert [set(row.tolist()) for row in layout.k_rows[0, r]] == expected[r]


def test_covering_meets_more_distinct_keys_where_attention_is_diffuse():
    # Diffuse logits around a shared mean (as after a ReLU): plain top keys per cluster repeat across
    # rounds (measured ~18 distinct of 32 slots per query); covering must give each query at least 1.4x
    # as many distinct (query, key) pairs from the same slots (measured ~27).
    from gan.attention.parts.coverage import distinct_pairs

    q, k, _ = qkv(nq=1024, nk=256, d=32, logit_std=1.0)
    q, k = q + 0.3, k + 0.3
    counts = {}
    for covering in (False, True):
        attn = build_attention("smyrf-topkeys", budget=1 / 8, covering=covering)
        counts[covering] = distinct_pairs(attn.layout(q, k), 256).float().mean()
    assert counts[True] >= 1.4 * counts[False]


def test_clustered_peaked_error_far_below_reference():
    # The issue's hard regime at budget 1/8: the public SMYRF's error was 1.3-3.0. Ours must stay
    # under a quarter of the lower end (0.3) at this small size; fails if the hash stops putting
    # queries with their heaviest keys.
    q, k, v = clustered_qkv()
    err = rel_err(build_attention("smyrf-topkeys", budget=0.125)(q, k, v), exact(q, k, v))
    assert err < 0.3


def test_xbox_plus_turns_inner_products_into_distances():
    # |q' - k'|^2 = 2 - 2 q.k / M^2 on the unit sphere (1e-5): the transform behind the hashing.
    q, k, _ = qkv(nq=32, nk=8)
    qx, kx = xbox_plus(q, k)
    m_sq = torch.maximum(q.square().sum(-1).amax(1), k.square().sum(-1).amax(1)).view(2, 1, 1)  # per batch element
    assert torch.allclose(qx.norm(dim=-1), torch.ones(2, 32), atol=1e-5)
    assert torch.allclose(torch.cdist(qx, kx).square(), 2 - 2 * (q @ k.transpose(1, 2)) / m_sq, atol=1e-5)


@pytest.mark.parametrize("nq,nk", [(4096, 1024), (1024, 256), (16384, 4096)])
@pytest.mark.parametrize("budget", [1 / 32, 1 / 8, 1 / 4, 1.0])
def test_budget_resolves_within_budget(nq, nk, budget):
    # score_entries (the support; hashing works within one round of it) must fit the budget; resolve() must be JSON.
    attn = build_attention("smyrf-topkeys", budget=budget)
    json.dumps(attn.resolve(nq, nk, 32))
    assert attn.score_entries(nq, nk, 32) <= budget * nq * nk


@pytest.mark.parametrize("budget,expected", [(1 / 64, (4, 4)), (1 / 32, (8, 4)), (1 / 8, (8, 16)), (1 / 4, (8, 32))])
def test_default_rounds_keep_at_least_4_keys_per_cluster(budget, expected):
    # The most rounds (of 8, 4, 2, 1) that fit with at least 4 keys per cluster: at 1/32 eight rounds of 4
    # keys (they beat 4 rounds of 8 in every benchmark regime with covering rounds), at 1/64 four rounds of 4.
    # Fails if the rounds-vs-cluster-size rule changes.
    plan = build_attention("smyrf-topkeys", budget=budget).resolve(4096, 1024, 32)
    assert (plan["n_hashes"], plan["k_cluster_size"]) == expected


def test_reference_setting_resolves_to_the_issue_parameters():
    plan = build_attention("smyrf-topkeys", n_hashes=8, q_cluster_size=64, k_cluster_size=16).resolve(4096, 1024, 32)
    assert plan == {"n_hashes": 8, "n_clusters": 64, "q_cluster_size": 64, "k_cluster_size": 16, "mix": False}


def test_more_clusters_than_keys_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q_cluster_size"):
        build_attention("smyrf-topkeys", q_cluster_size=1)(q, k, v)


@pytest.mark.parametrize("name", ["smyrf-topkeys", "scatterbrain-centred"])
def test_cluster_steps_do_not_change_the_result(name, monkeypatch):
    # clustered_attention scores the rounds in steps of whole clusters (PAIRS_PER_ELEMENT_STEP bounds the working
    # set); tiny steps (one or two clusters each) must give the one-step result to float round-off (1e-5):
    # fails if a step drops clusters, misses earlier-round duplicates or rescales other queries wrongly.
    from gan.attention.parts import round_attention

    q, k, v = qkv(nq=250, nk=62)
    attn = build_attention(name, n_hashes=3, seed=1, q_cluster_size=16, k_cluster_size=4)
    whole = attn(q, k, v, scale=0.7)
    monkeypatch.setattr(round_attention, "PAIRS_PER_ELEMENT_STEP", 16 * 8)
    stepped = attn(q, k, v, scale=0.7)
    assert rel_err(stepped, whole.double()) < 1e-5


def test_explicit_cluster_sizes_must_make_the_same_number_of_clusters():
    # 32 queries per cluster makes 128 query clusters of 4096, 32 keys per cluster only 32 of 1024:
    # SMYRF pairs query and key clusters one to one, so this is an error, not a silent k_cluster_size=8.
    q, k, v = qkv(nq=4096, nk=1024, d=8, dv=4)
    with pytest.raises(ValueError, match="k_cluster_size=32 makes 32 key clusters.*accepted k_cluster_size = 8"):
        build_attention("smyrf-topkeys", q_cluster_size=32, k_cluster_size=32)(q, k, v)
    assert (
        build_attention("smyrf-topkeys", q_cluster_size=32, k_cluster_size=8).resolve(4096, 1024, 8)["n_clusters"]
        == 128
    )


def plain_first_meetings(layout, nq, nk):
    """Plain reading of round_attention.first_meetings: walk the rounds in order, slot by slot, keeping each query's
    set of keys met so far; a pair counts if its query slot and key are not padding and the key is new to it."""
    b, n_rounds, n_clusters, qs = layout.q_rows.shape
    width = layout.k_rows.shape[-1]
    out = torch.zeros(b, n_rounds, n_clusters, qs, width, dtype=torch.bool)
    for e in range(b):
        met = {}
        for r in range(n_rounds):
            seen_before = {query: set(keys) for query, keys in met.items()}
            for c in range(n_clusters):
                for i in range(qs):
                    query = int(layout.q_rows[e, r, c, i])
                    if query < 0:
                        continue
                    for w in range(width):
                        key = int(layout.k_rows[e, r, c, w])
                        if key >= 0 and key not in seen_before.get(query, set()):
                            out[e, r, c, i, w] = True
                            met.setdefault(query, set()).add(key)
    return out


def test_first_meetings_match_their_plain_reading():
    # Padding on both sides (250 queries, 62 keys do not fill 16 x 4 clusters: the sampled rounds of the mixed layout
    # have padding keys), covering rounds that meet keys again.
    from gan.attention.parts import round_attention
    from gan.attention.parts.sampled_rounds import mixed_layout

    q, k, _ = qkv(nq=250, nk=62, logit_std=2.0)
    attn = build_attention("smyrf-topkeys", n_hashes=4, q_cluster_size=16, k_cluster_size=4, seed=2)
    layout = mixed_layout(attn.layout(q, k), 2, attn.permutations(2, 62, q.device))
    assert (layout.k_rows < 0).any()
    expected = plain_first_meetings(layout, 250, 62)
    got = round_attention.first_meetings(layout, 62)
    assert expected.sum() < (layout.q_rows >= 0).sum() * 4  # some keys are met again in later rounds
    assert torch.equal(got, expected)


@pytest.mark.parametrize("nq,nk", [(256, 64), (250, 62)])
def test_sampled_rounds_are_weighted_by_the_rest_of_the_row(nq, nk):
    # Plain reading of clustered_attention(sampled_from=h): exp(s) summed over the first h rounds' pairs T_i,
    # plus (Nk - |T_i|) / |D_i| times the sum over the later rounds' new pairs D_i. Equal to 1e-5, padding included.
    from gan.attention.parts.round_attention import clustered_attention
    from gan.attention.parts.sampled_rounds import mixed_layout, rounds

    q, k, v = qkv(nq=nq, nk=nk, logit_std=2.0)
    attn = build_attention("smyrf-topkeys", n_hashes=4, q_cluster_size=16, k_cluster_size=4, seed=3)
    layout = mixed_layout(attn.layout(q, k), 2, attn.permutations(2, nk, q.device))
    out = clustered_attention(q, k, v, layout, sampled_from=2)
    top = support_mask(rounds(layout, slice(0, 2)), nq, nk)
    drawn = support_mask(rounds(layout, slice(2, None)), nq, nk) & ~top
    assert drawn.any() and (top.sum(-1) < nk).all()
    weight = (nk - top.sum(-1, keepdim=True)).double() / drawn.sum(-1, keepdim=True).clamp_min(1).double()
    e = (q.double() @ k.double().transpose(1, 2)).exp()
    e = e * top + e * drawn * weight
    assert rel_err(out, (e @ v.double()) / e.sum(-1, keepdim=True)) < 1e-5


def test_mix_is_chosen_where_top_keys_miss_the_spread():
    # Keys carrying their cluster's value at logit std 1: attention spreads over every cluster, top keys gather the
    # query's own. The probes choose the sampled mix there: over 2 seeds it must be under 0.6x the plain top keys and
    # under the published SMYRF (which the plain top keys lose to here).
    inputs = [cluster_valued_qkv(seed=s) for s in range(2)]

    def errors(name, **params):
        return sum(rel_err(build_attention(name, budget=1 / 8, seed=s, **params)(q, k, v), exact(q, k, v))
                   for s, (q, k, v) in enumerate(inputs))

    mixed = errors("smyrf-topkeys")
    assert mixed < 0.6 * errors("smyrf-topkeys", mix=False)
    assert mixed < errors("smyrf")


def test_mix_is_left_out_where_top_keys_suffice():
    # Clustered, peaked logits: the mix does not clear the probes' evidence rule, so every row but the probes'
    # (exact) is the plain top-key output (1e-6).
    from gan.attention.parts.probes import probe_queries

    q, k, v = clustered_qkv(b=2, nq=2048, nk=512, logit_std=6.0)
    attn = build_attention("smyrf-topkeys", budget=1 / 8, seed=1)
    out, plain = attn(q, k, v), build_attention("smyrf-topkeys", budget=1 / 8, seed=1, mix=False)(q, k, v)
    rows = torch.ones(2048, dtype=torch.bool)
    rows[probe_queries(2048, attn.probe_count(2048, 512), 1)] = False
    assert attn.probe_count(2048, 512) >= 8
    assert rel_err(out[:, rows], plain[:, rows].double()) < 1e-6
    assert rel_err(out[:, ~rows], exact(q, k, v)[:, ~rows]) < 1e-5
