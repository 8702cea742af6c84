"""The registry: names, error messages, the common constructor contract, and the benchmark CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gan.attention import AttentionBackend, available_attentions, build_attention

REPO = Path(__file__).resolve().parents[1]


def test_available_attentions_lists_exact_first_and_the_shipped_methods():
    # Fails if a module stops registering (wrong base class, missing name) or the order changes.
    names = available_attentions()
    assert names[0] == "exact"
    assert {"exact", "performer", "topk"} <= set(names)
    assert len(names) == len(set(names))


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


@pytest.mark.parametrize("name", available_attentions())
def test_every_backend_takes_budget_and_seed_and_keeps_shapes(name):
    # The common contract the evaluation and the app rely on: budget= and seed= accepted,
    # (B,Nq,d),(B,Nk,d),(B,Nk,dv) -> (B,Nq,dv) in the input dtype, a JSON-serialisable resolve(),
    # and score entries within the budget (exact always holds the full matrix).
    b, nq, nk, d, dv, budget = 2, 256, 64, 16, 8, 0.25
    attn = build_attention(name, budget=budget, seed=3)
    assert isinstance(attn, AttentionBackend)
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(b, nq, d, generator=gen), torch.randn(b, nk, d, generator=gen), torch.randn(b, nk, dv, generator=gen)
    out = attn(q, k, v, scale=1.0)
    assert out.shape == (b, nq, dv) and out.dtype == torch.float32 and torch.isfinite(out).all()
    json.dumps(attn.resolve(nq, nk, d))
    entries = attn.score_entries(nq, nk, d)
    assert isinstance(entries, int) and entries > 0
    assert entries <= (nq * nk if name == "exact" else budget * nq * nk)


@pytest.mark.parametrize("name", available_attentions())
def test_every_backend_rejects_bad_budget_and_seed(name):
    with pytest.raises(ValueError, match="budget"):
        build_attention(name, budget=1.5)
    with pytest.raises(ValueError, match="seed"):
        build_attention(name, seed="0")


def test_benchmark_cli_runs_and_writes_json(tmp_path):
    # The benchmark as users run it (script path, repo root put on sys.path by the script), at a
    # tiny size: one table per regime plus the scaling table, and one JSON record per
    # (regime, size, method, budget). Fails on an import-path bug or a broken record.
    out = tmp_path / "attention.json"
    cmd = [sys.executable, str(REPO / "bench" / "attention.py"), "--quick", "--methods", "exact,topk,performer",
           "--regimes", "clustered-peaked", "--budgets", "1/8", "--sizes", "256,512", "--threads", "1", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert "### clustered-peaked" in result.stdout and "### scaling" in result.stdout
    records = json.loads(out.read_text())["results"]
    assert len(records) == 2 * 3 and not any("error" in r for r in records)
    topk = next(r for r in records if r["method"] == "topk" and r["nq"] == 256)
    assert topk["rel_error"] == pytest.approx(topk["topk_floor_error"], abs=1e-9)  # top-k is its own floor


def test_benchmark_cli_rejects_bad_options_with_exit_code_2():
    cmd = [sys.executable, str(REPO / "bench" / "attention.py"), "--methods", "nope"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown method" in result.stderr and "Traceback" not in result.stderr
