"""The one --attn-kwargs grammar of every CLI (common.cli.parse_attention_kwargs)."""
from __future__ import annotations

import pytest

from common.cli import parse_attention_kwargs

NAMES = ["exact", "smyrf", "performer"]


def test_named_json_the_old_fid_grammar():
    assert parse_attention_kwargs(['smyrf={"n_hashes": 8, "q_cluster_size": 64}'], NAMES) == {
        "smyrf": {"n_hashes": 8, "q_cluster_size": 64}}
    assert parse_attention_kwargs(['smyrf:{"n_hashes": 8}'], NAMES) == {"smyrf": {"n_hashes": 8}}


def test_named_pairs_with_json_literals():
    values = ["smyrf:n_hashes=8, q_cluster_size=64", "performer:redraw=true,num_features=0.5"]
    got = parse_attention_kwargs(values, NAMES)
    assert got == {"smyrf": {"n_hashes": 8, "q_cluster_size": 64}, "performer": {"redraw": True, "num_features": 0.5}}
    assert parse_attention_kwargs(["smyrf:mode=fast"], NAMES) == {"smyrf": {"mode": "fast"}}  # not JSON: a string


def test_unnamed_forms_with_one_backend_the_old_sample_grammar():
    assert parse_attention_kwargs(['{"n_hashes": 4}'], ["smyrf"]) == {"smyrf": {"n_hashes": 4}}
    got = parse_attention_kwargs(["n_hashes=4,q_cluster_size=32"], ["smyrf"])
    assert got == {"smyrf": {"n_hashes": 4, "q_cluster_size": 32}}
    assert parse_attention_kwargs(["", "  "], ["smyrf"]) == {}


def test_repeated_values_merge_later_keys_win():
    got = parse_attention_kwargs(["smyrf:n_hashes=2,q_cluster_size=16", 'smyrf={"n_hashes": 4}'], NAMES)
    assert got == {"smyrf": {"n_hashes": 4, "q_cluster_size": 16}}


@pytest.mark.parametrize("values, names, fragment", [
    (["n_hashes=4"], NAMES, "names no backend; with several backends (exact, smyrf, performer)"),
    (["reformer:n_hashes=4"], NAMES, "given for reformer, which is not among the backends"),
    (["smyrf={bad"], NAMES, "bad JSON in --attn-kwargs smyrf"),
    (["smyrf=[1, 2]"], NAMES, "must be a JSON object, got list"),
    (["smyrf:n_hashes"], NAMES, "write key=value pairs"),
])
def test_bad_values_are_one_line_errors(values, names, fragment):
    with pytest.raises(ValueError) as err:
        parse_attention_kwargs(values, names)
    assert fragment in str(err.value) and "\n" not in str(err.value)
