"""bench/gpu_check.py --device cpu --quick: the first-GPU script is known to run before a GPU exists."""
from __future__ import annotations

import json

from bench.gpu_check import main as gpu_check_main
from gan.attention import available_attentions


def test_quick_cpu_run_writes_every_step(tmp_path, monkeypatch, capsys):
    # In this process (the script's own start-up is tested with bench/attention.py in test_attention_registry).
    monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / "cache"))
    code = gpu_check_main(["--device", "cpu", "--quick", "--out", str(tmp_path / "gc")])
    assert code == 0, capsys.readouterr().out[-2000:]
    report = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["tests", "pipeline", "attention", "generator", "throughput", "backends"]
    assert steps["tests"]["status"] == "skipped"
    assert all(steps[s]["status"] == "ok" for s in ("pipeline", "attention", "generator", "throughput",
                                                   "backends")), steps
    timed = {r["backend"]: r for r in steps["backends"]["detail"]}
    assert set(timed) == set(available_attentions())
    assert all(r["ms_per_forward"] > 0 and r["cuda_graph"] == "skipped (needs CUDA)" for r in timed.values())
    checked = {(r["backend"], r["dtype"]) for r in steps["attention"]["detail"]}
    assert checked == {(name, dt) for name in available_attentions() for dt in ("fp16", "bf16")}
    assert {r["dtype"] for r in steps["generator"]["detail"]} == {"fp16", "bf16"}
    rows = {r["backend"]: r for r in steps["throughput"]["detail"]}
    assert set(rows) == {"exact", "smyrf"}
    for r in rows.values():
        assert r["generation_images_per_s"] > 0 and r["inception_images_per_s"] > 0 and r["attn_ms"] > 0
    md = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "| throughput | ok |" in md and "| smyrf | fp16 | yes |" in md
    assert "| backends | ok |" in md and "| exact | 2 |" in md
