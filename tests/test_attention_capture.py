"""Captured attention inputs: the file round-trips, loads with weights_only=True, and bench/pareto.py replays it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from attention_inputs import block_inputs, gaussian_qkv

from bench import pareto
from eval.attention_capture import AttentionCapture, load_capture, save_capture
from eval.fid import main as fid_main
from eval.image_plan import ImagePlan
from eval.inception import random_inception_state
from gan.sampling import per_image_latents
from weights import load_generator


def test_capture_keeps_the_first_images_of_the_attention_layer_and_round_trips(tiny_deep_dir, tmp_path):
    G = load_generator(str(tiny_deep_dir), attention="exact", device="cpu")
    [block] = G.attention_blocks()
    seen = []  # the oracle: q, k, v recomputed from the block itself on the same inputs, outside the capture
    original_qkv = block.qkv

    def recording_qkv(x):
        out = original_qkv(x)
        seen.append(tuple(t.detach().clone() for t in out))
        return out

    block.qkv = recording_qkv
    capture = AttentionCapture(limit=5)
    block.probe = capture
    z = per_image_latents(list(range(3)), G.z_dim, truncation=0.5)
    classes = torch.tensor([1, 2, 3])
    with torch.no_grad():
        plain = G.generate(z, classes, truncation=0.5)
        block.probe = None
        G.generate(z, classes, truncation=0.5)  # without the probe (seen[1]): nothing may be captured
        block.probe = capture
        G.generate(z, classes, truncation=0.5)  # a second batch: only 2 more images are wanted
    assert capture.captured == 5
    q, k, v = capture.tensors()
    expected = [torch.cat([seen[0][i], seen[2][i][:2]]) for i in range(3)]
    for got, want in zip((q, k, v), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    block.probe = None
    with torch.no_grad():  # the capture hands the call through unchanged
        torch.testing.assert_close(G.generate(z, classes, truncation=0.5), plain, rtol=0, atol=0)

    path = save_capture(tmp_path / "inputs.pt", q, k, v, model="tiny", attention="exact")
    raw = torch.load(path, weights_only=True)  # a plain tensor dict: nothing but tensors, strings, numbers
    assert set(raw) == {"format", "version", "q", "k", "v", "model", "attention"}
    state = load_capture(path)
    for name, t in zip("qkv", (q, k, v), strict=True):
        torch.testing.assert_close(state[name], t, rtol=0, atol=0)


def test_load_capture_rejects_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_capture(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable attention inputs file"):
        load_capture(tmp_path / "junk.pt")
    torch.save({"q": torch.zeros(1, 2, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an attention inputs file"):
        load_capture(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="must be >= 1"):
        AttentionCapture(limit=0)


def test_pareto_front_by_definition():
    pairs = [(0.5, 1.0), (0.4, 2.0), (0.6, 0.5), (0.45, 2.5), (0.0, 10.0), (0.5, 1.5)]
    # dominated: (0.45, 2.5) by (0.4, 2.0); (0.5, 1.5) by (0.5, 1.0)
    assert pareto.pareto_front(pairs) == {(0.5, 1.0), (0.4, 2.0), (0.6, 0.5), (0.0, 10.0)}


def test_pareto_replays_captured_inputs(tmp_path, capsys):
    q, k, v = gaussian_qkv(3, 64, 16, 8, 12, seed=0)
    path = save_capture(tmp_path / "inputs.pt", q, k, v, model="synthetic", attention="exact")
    out = tmp_path / "front"
    code = pareto.main(["--inputs", str(path), "--methods", "performer,topk", "--budgets", "1/4,1/2",
                        "--repeats", "1", "--threads", "1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "pareto.json").read_text())
    [case] = result["results"]
    assert case["regime"] == "captured" and (case["nq"], case["nk"]) == (64, 16)
    points = {(p["method"], p["budget"]): p for p in case["points"]}
    assert set(points) == {("exact", None), ("performer", "1/4"), ("performer", "1/2"), ("topk", "1/4"),
                           ("topk", "1/2")}
    # the replay ran on the file's first two images: exact attention reproduces them (float64 reference, fp32 run)
    assert points["exact", None]["error"] < 1e-5
    assert points["exact", None]["front_time_ms"]  # error 0 is on every front
    # topk at budget 1/2 keeps 8 of 16 keys per query: its error is that of the exact top-8 renormalised
    reference = torch.softmax(q[:2].double() @ k[:2].double().mT, -1)
    top = reference.topk(8, -1)
    kept = torch.zeros_like(reference).scatter(-1, top.indices, top.values)
    want = ((kept / kept.sum(-1, keepdim=True)) @ v[:2].double() - reference @ v[:2].double()).norm() / (
        reference @ v[:2].double()).norm()
    assert points["topk", "1/2"]["error"] == pytest.approx(float(want), rel=1e-4)
    for p in case["points"]:
        assert p["peak_bytes"] is not None and p["peak_bytes"] >= 0 and p["time_ms"] > 0
    assert (out / "pareto-time-64.png").stat().st_size > 0 and (out / "pareto-peak-64.png").stat().st_size > 0
    assert "time front:" in capsys.readouterr().out


def test_pareto_bad_arguments_are_one_line(capsys):
    assert pareto.main(["--methods", "nope"]) == 2
    assert pareto.main(["--budgets", "2"]) == 2
    assert pareto.main(["--sizes", "30"]) == 2
    assert pareto.main(["--regimes", "martian-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err), err
    for line, says in zip(err, ("accepted: exact", "(0, 1]", "multiples of 4", "accepted: isotropic-diffuse"),
                          strict=True):
        assert says in line, (line, says)


def test_fid_saves_the_attention_inputs_of_its_first_images(tiny_deep_dir, tmp_path):
    torch.save(random_inception_state(1 / 16, seed=0), tmp_path / "inception_tiny.pth")
    feats = np.random.default_rng(0).normal(size=(400, 128))
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))

    def argv(out: str, *extra: str) -> list[str]:
        return ["--model", str(tiny_deep_dir), "--num-samples", "4", "--batch-size", "2", "--device", "cpu",
                "--inception-weights", str(tmp_path / "inception_tiny.pth"), "--ref-stats", str(tmp_path / "ref.npz"),
                "--is-splits", "2", "--bootstrap", "0", "--truncation", "0.5", "--out", str(tmp_path / out), *extra]

    file = tmp_path / "qkv.pt"
    assert fid_main(argv("out", "--attn", "exact", "--save-attention-inputs", str(file),
                         "--save-attention-images", "3")) == 0
    state = load_capture(file)
    # the oracle: the block's own q, k, v projections on a fresh generator run for images 0..2 (latent seed 0)
    G = load_generator(str(tiny_deep_dir), attention="exact", device="cpu")
    plan = ImagePlan(0.5, 0, tuple(range(G.num_classes)), "per-image", "balanced", None, None)
    for name, t in zip("qkv", block_inputs(G, lambda: plan.sample(G, torch.arange(3))), strict=True):
        torch.testing.assert_close(state[name], t, rtol=1e-6, atol=1e-6)
    assert fid_main(argv("out2", "--save-attention-images", "0")) == 2


def test_attention_bench_replays_captured_inputs(tmp_path, capsys):
    from bench import attention as attention_bench

    q, k, v = gaussian_qkv(2, 64, 16, 8, 12, seed=1)
    path = save_capture(tmp_path / "inputs.pt", q, k, v, model="synthetic", attention="exact")
    out = tmp_path / "bench.json"
    assert attention_bench.main(["--inputs", str(path), "--methods", "exact,performer", "--budgets", "1/2",
                                 "--seeds", "0", "--repeats", "0", "--threads", "1", "--out", str(out)]) == 0
    records = json.loads(out.read_text())["results"]
    exact = next(r for r in records if r["method"] == "exact")
    assert exact["regime"] == "captured" and (exact["nq"], exact["nk"]) == (64, 16)
    assert exact["rel_error"] < 1e-5  # against the float64 reference on the same (file's) inputs
    mean = next(r for r in records if r["method"] == "mean-of-values")
    reference = torch.softmax(q.double() @ k.double().mT, -1) @ v.double()
    want = (v.double().mean(1, keepdim=True) - reference).norm() / reference.norm()
    assert mean["rel_error"] == pytest.approx(float(want), rel=1e-6)
    assert "captured" in capsys.readouterr().out
