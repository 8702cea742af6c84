"""The registry: names, error messages, the common constructor contract, and the benchmark CLI."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_inputs import gaussian_qkv

from bench import attention as attention_bench
from gan.attention import (
    AttentionBackend,
    attention_info,
    available_attentions,
    backend_class,
    backend_parameters,
    build_attention,
)

REPO = Path(__file__).resolve().parents[1]


# Every registered backend, in registry order: published algorithms first, then the project's variants with the
# published method each varies. A backend added, renamed or removed (a deleted module) must be changed here too.
PUBLISHED = ["exact", "smyrf", "reformer", "performer", "scatterbrain", "sblocal", "topk", "kdeformer", "thinformer"]
VARIANTS = {
    "smyrf-topkeys": "smyrf",
    "scatterbrain-centred": "scatterbrain",
    "performer-centred-shrunk": "performer",
    "scatterbrain-meanfield": "scatterbrain",
    "scatterbrain-centroids": "scatterbrain",
}


def test_available_attentions_lists_every_backend_published_first():
    assert available_attentions() == PUBLISHED + list(VARIANTS)
    assert available_attentions(published=True) == PUBLISHED
    assert available_attentions(published=False) == list(VARIANTS)


@pytest.mark.parametrize("name", PUBLISHED + list(VARIANTS))
def test_attention_info_says_what_each_backend_is(name):
    info = attention_info(name)
    assert {"name", "published", "paper", "variant_of", "summary", "parameters"} <= set(info)
    assert info["name"] == name and info["published"] == (name in PUBLISHED) and info["summary"]
    assert info["variant_of"] == VARIANTS.get(name)
    assert info["variant_of"] is None or info["variant_of"] in PUBLISHED
    assert isinstance(info["paper"], str) and len(info["paper"]) > 10
    if name in VARIANTS:
        assert "this project" in info["paper"]
    json.dumps(info)


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "smyrf",
            {
                "n_hashes": None,
                "q_cluster_size": None,
                "k_cluster_size": None,
                "r": 1.0,
                "count_duplicates": True,
                "redraw": False,
                "budget": None,
                "seed": 0,
            },
        ),
        (
            "scatterbrain",
            {
                "num_features": None,
                "n_hashes": None,
                "q_cluster_size": None,
                "k_cluster_size": None,
                "r": 1.0,
                "ortho_scaling": 0,
                "softmax_eps": 0.0,
                "redraw": False,
                "budget": None,
                "seed": 0,
            },
        ),
        (
            "reformer",
            {
                "mode": "biggan-shared-qk",
                "n_hashes": None,
                "bucket_size": None,
                "n_buckets": None,
                "redraw": False,
                "budget": None,
                "seed": 0,
            },
        ),
        (
            "performer",
            {"num_features": None, "redraw": False, "eps": 1e-4, "normalization_eps": 1e-6, "budget": None, "seed": 0},
        ),
        ("topk", {"k": None, "chunk_size": 256, "budget": None, "seed": 0}),
    ],
)
def test_backend_parameters_are_the_reference_defaults(name, expected):
    # The published backends' knobs with the authors' values as defaults (module docs say where each comes from).
    assert backend_parameters(name) == expected


@pytest.mark.parametrize("name", PUBLISHED + list(VARIANTS))
def test_every_backend_takes_budget_and_seed_parameters(name):
    params = backend_parameters(name)
    assert params["seed"] == 0 and ("budget" in params or name == "exact")


def test_unknown_name_error_lists_available_names():
    with pytest.raises(ValueError) as err:
        build_attention("flash")
    message = str(err.value)
    assert "'flash'" in message and all(name in message for name in available_attentions())


def test_unknown_param_error_lists_accepted_params():
    with pytest.raises(ValueError) as err:
        build_attention("topk", n_hashes=4)
    message = str(err.value)
    assert "n_hashes" in message and all(p in message for p in ("k", "chunk_size", "budget", "seed"))
    with pytest.raises(ValueError, match="topk attention does not take n_hashes"):  # built without the registry
        backend_class("topk")(n_hashes=4)


def test_signature_and_repr_show_the_declared_parameters():
    # What a reader sees of a backend class (inspect.signature, help()) and of a built one (repr): its keyword
    # parameters in declaration order with their defaults, budget and seed last; positional arguments refused.
    assert str(inspect.signature(backend_class("topk"))) == "(*, k=None, chunk_size=256, budget=None, seed=0)"
    assert repr(build_attention("topk", k=3, seed=2)) == "TopKAttention(k=3, chunk_size=256, budget=None, seed=2)"
    for name in available_attentions():
        signature = inspect.signature(backend_class(name))
        assert {p.name: p.default for p in signature.parameters.values()} == backend_parameters(name)
        assert all(p.kind is p.KEYWORD_ONLY for p in signature.parameters.values())
    with pytest.raises(TypeError):
        backend_class("topk")(3)


@pytest.mark.parametrize("name", available_attentions())
def test_every_backend_takes_budget_and_seed_and_keeps_shapes(name):
    # The common contract the evaluation and the app rely on: budget= and seed= accepted,
    # (B,Nq,d),(B,Nk,d),(B,Nk,dv) -> (B,Nq,dv) in the input dtype, a JSON-serialisable resolve(),
    # and score entries within the budget (exact always holds the full matrix).
    b, nq, nk, d, dv, budget = 2, 256, 64, 16, 8, 0.25
    attn = build_attention(name, budget=budget, seed=3)
    assert isinstance(attn, AttentionBackend)
    q, k, v = gaussian_qkv(b, nq, nk, d, dv)
    out = attn(q, k, v, scale=1.0)
    assert out.shape == (b, nq, dv) and out.dtype == torch.float32 and torch.isfinite(out).all()
    json.dumps(attn.resolve(nq, nk, d))
    entries = attn.score_entries(nq, nk, d)
    assert isinstance(entries, int) and entries > 0
    assert entries <= (nq * nk if name == "exact" else budget * nq * nk)


@pytest.mark.parametrize("name", available_attentions())
def test_every_backend_rejects_bad_budget_and_seed(name):
    # Checked once in AttentionBackend.__init__: a backend that skips super().__init__ or a check
    # that lets bools, strings or NaN through fails here.
    for budget in (1.5, 0, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="budget"):
            build_attention(name, budget=budget)
    for seed in ("0", 1.5, True, 2**64, -(2**63) - 1):  # the last two: outside torch.Generator's seed range
        with pytest.raises(ValueError, match="seed"):
            build_attention(name, seed=seed)


@pytest.mark.parametrize("name", available_attentions())
@pytest.mark.parametrize("b, nq", [(0, 8), (2, 0)])
def test_every_backend_returns_an_empty_output_for_empty_inputs(name, b, nq):
    # An empty batch (or no queries) reaches the block from an empty generate() call: the output must be
    # the empty (B, Nq, dv) tensor in the input dtype (exact used to divide by B * Nk = 0).
    q, k, v = (torch.zeros(shape, dtype=torch.bfloat16) for shape in [(b, nq, 4), (b, 3, 4), (b, 3, 5)])
    out = build_attention(name)(q, k, v)
    assert out.shape == (b, nq, 5) and out.dtype == torch.bfloat16


def _tensors(*shapes, dtype=torch.float32):
    return [torch.zeros(shape, dtype=dtype) for shape in shapes]


@pytest.mark.parametrize(
    "q, k, v, word",
    [
        (*_tensors((2, 8, 4), (2, 2, 4), (2, 2)), "expects"),  # v not 3-d
        (*_tensors((2, 8, 4), (1, 2, 4), (1, 2, 6)), "batch"),
        (*_tensors((2, 8, 4), (2, 2, 5), (2, 2, 6)), "feature size d"),
        (*_tensors((2, 8, 4), (2, 2, 4), (2, 3, 6)), "number of keys"),
        (*_tensors((2, 8, 4), (2, 0, 4), (2, 0, 6)), "at least one key"),
        (*_tensors((2, 8, 4), (2, 2, 4)), torch.zeros(2, 2, 6, dtype=torch.bfloat16), "dtype"),
        (*_tensors((2, 8, 4), (2, 2, 4), (2, 2, 6), dtype=torch.int64), "floating dtype"),
    ],
)
def test_inputs_are_checked_before_any_backend_runs(q, k, v, word):
    with pytest.raises(ValueError, match=word):
        build_attention("exact")(q, k, v)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "1"])
def test_scale_must_be_a_finite_number(scale):
    q, k, v = _tensors((1, 4, 2), (1, 2, 2), (1, 2, 3))
    with pytest.raises(ValueError, match="scale"):
        build_attention("exact")(q, k, v, scale=scale)


def test_benchmark_runs_and_writes_markdown_and_json(tmp_path, capsys):
    # The benchmark at a tiny size: a header saying where and when, one table per regime plus the
    # scaling table, and one JSON record per (regime, size, method, budget). Fails on a broken
    # record, a missing table or header line, or top-k not being its own floor.
    out = tmp_path / "attention.json"
    argv = [
        "--methods",
        "exact,topk,performer",
        "--regimes",
        "clustered-peaked",
        "--budgets",
        "1/8",
        "--sizes",
        "256,512",
        "--repeats",
        "2,0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert attention_bench.main(argv) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}, 1 thread(s)" in text and " UTC" in text and "machine: " in text
    assert "### clustered-peaked" in text and "### scaling" in text
    assert "2 at Nq=256, the warm-up call itself at Nq=512" in text
    saved = json.loads(out.read_text())
    records = [r for r in saved["results"] if r["method"] != "mean-of-values"]  # + one baseline row per error table
    assert len(saved["results"]) == len(records) + 1
    assert saved["environment"]["threads"] == 1 and len(records) == 2 * 3 and not any("error" in r for r in records)
    assert all(r["peak_extra_bytes"] > 0 and r["time_ms"] >= r["time_ms_min"] > 0 for r in records)
    assert {r["timed_calls"] for r in records if r["nq"] == 512} == {0}  # repeats 0: the warm-up call is timed
    topk = next(r for r in records if r["method"] == "topk" and r["nq"] == 256)
    assert topk["rel_error"] == pytest.approx(topk["topk_floor_error"], abs=1e-9)  # top-k is its own floor
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    table_rows = [line for line in table_rows if "logit std" not in line and not line.startswith("| clustered-peaked")]
    assert len(table_rows) == len(records) + 1 and all(line.count("|") == 9 for line in table_rows)  # 8 columns each


def _sequential_buffers():
    # Ten 4 MiB buffers, each freed before the next: 4 MiB live at most, 40 MiB allocated in total.
    for _ in range(10):
        torch.ones(1 << 20)
    return torch.zeros(1)


def _held_buffers():
    # Ten 4 MiB buffers alive together, freed on return: 40 MiB peak.
    buffers = [torch.ones(1 << 20) for _ in range(10)]
    return buffers[0][:1].clone()


@pytest.mark.parametrize("fn, mib", [(_sequential_buffers, 4), (_held_buffers, 40)])
def test_benchmark_memory_is_the_peak_not_the_total(fn, mib):
    # The CPU memory column must be the peak of live bytes (a total of allocations would read 40
    # MiB for both). 1% slack covers the small output tensor and allocator bookkeeping.
    x = torch.zeros(1)
    _, _, peak = attention_bench.call_with_peak_memory(lambda q, k, v, scale: fn(), x, x, x)
    assert peak is not None and mib * 2**20 <= peak <= 1.01 * mib * 2**20


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "nope"], "unknown method"),
        (["--budgets", "2"], "--budgets"),
        (["--sizes", "1000,6"], "--sizes"),
        (["--repeats", "3,x"], "--repeats"),
        (["--regimes", "hot"], "unknown regime"),
        (["--dtype", "int8"], "--dtype"),
    ],
)
def test_benchmark_rejects_bad_options_with_exit_code_2(argv, message, capsys):
    assert attention_bench.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_benchmark_script_resolves_imports_from_any_folder(tmp_path):
    # Run as users do (script path, from another folder, no PYTHONPATH): the installed project makes
    # `bench.regimes` and `gan` importable from anywhere; a bad option then exits 2.
    cmd = [sys.executable, str(REPO / "bench" / "attention.py"), "--methods", "nope"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}
    )
    assert result.returncode == 2 and "unknown method" in result.stderr and "Traceback" not in result.stderr
