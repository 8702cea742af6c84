"""torchrun with 2 gloo processes gives the same results as one process on the same seeds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.fid import main as fid_main
from eval.inception import random_inception_state

ROOT = Path(__file__).resolve().parents[1]
CHEAP = "performer"


def _run(cmd: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIGGAN_ATTN_CACHE": str(tmp_path / "cache"),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_two_process_gloo_run_equals_single_process(tiny_deep_dir, tmp_path, monkeypatch):
    torch.save(random_inception_state(1 / 16, seed=0), tmp_path / "inception.pth")
    feats = np.random.default_rng(0).normal(size=(400, 128))
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    # 3 shards of 4 images: rank 0 takes shards 0 and 2, rank 1 shard 1; the batches are the same
    # as in the single process, so the features (and every derived metric) agree to float32 round-off.
    args = ["--model", str(tiny_deep_dir), "--attn", CHEAP, "--num-samples", "12", "--batch-size", "4",
            "--shard-size", "4", "--device", "cpu", "--seed", "5",
            "--inception-weights", str(tmp_path / "inception.pth"),
            "--ref-stats", str(tmp_path / "ref.npz")]
    monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1): the same float reductions
    try:
        assert fid_main([*args, "--out", str(tmp_path / "one")]) == 0  # the one-process run, in this process
    finally:
        torch.set_num_threads(threads)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "eval/fid.py",
          *args, "--out", str(tmp_path / "two")], tmp_path)
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    assert list(one["methods"]) == list(two["methods"]) == ["exact", CHEAP]
    for label, row in one["methods"].items():
        for field in ("fid", "is_mean", "is_std", "attn_rel_error", "top1_changed"):
            assert two["methods"][label][field] == pytest.approx(row[field], rel=1e-6, abs=1e-9), (label, field)
        assert two["methods"][label]["n"] == row["n"] == 12
