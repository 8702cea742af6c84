"""bench/gpu_check.py --device cpu --quick: the first-GPU script is known to run before a GPU exists."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gan.attention import available_attentions

ROOT = Path(__file__).resolve().parents[1]


def test_quick_cpu_run_writes_every_step(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "BIGGAN_ATTN_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(tmp_path / "gc")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["tests", "pipeline", "attention", "generator", "throughput"]
    assert steps["tests"]["status"] == "skipped"
    assert all(steps[s]["status"] == "ok" for s in ("pipeline", "attention", "generator", "throughput")), steps
    checked = {(r["backend"], r["dtype"]) for r in steps["attention"]["detail"]}
    assert checked == {(name, dt) for name in available_attentions() for dt in ("fp16", "bf16")}
    assert {r["dtype"] for r in steps["generator"]["detail"]} == {"fp16", "bf16"}
    rows = {r["backend"]: r for r in steps["throughput"]["detail"]}
    assert set(rows) == {"exact", "smyrf"}
    for r in rows.values():
        assert r["generation_images_per_s"] > 0 and r["inception_images_per_s"] > 0 and r["attn_ms"] > 0
    md = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "| throughput | ok |" in md and "| smyrf | fp16 | yes |" in md
