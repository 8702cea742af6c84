"""--compile: the generator compiled with its attention backend gives the eager images (tiny model, CPU).

The tests compile with torch.compile's ``aot_eager`` backend: the same Dynamo trace and graph capture as
inductor, without its C++ code generation, which takes minutes for a whole generator on 2 cores. Inductor
itself is tested on every attention backend (tests/test_attention_compile.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.sample import main as sample_main
from gan.sampling import balanced_class_ids
from weights import load_generator

ATOL = 1e-5  # pixels in [-1, 1]; aot_eager runs the same kernels, so only op reordering could move them


@pytest.mark.slow
def test_compiled_generator_matches_eager_and_recompiles_a_swapped_backend(tiny_deep_dir):
    torch._dynamo.reset()
    G = load_generator(str(tiny_deep_dir), attention="performer", device="cpu").eval()
    indices, classes = [0, 1, 2], balanced_class_ids([0, 1, 2], [3, 7])
    eager = G.sample(indices, classes, truncation=0.5, seed=1)
    G.compile(backend="aot_eager")
    torch.testing.assert_close(G.sample(indices, classes, truncation=0.5, seed=1), eager, rtol=0, atol=ATOL)
    G.set_attention("smyrf", budget=1 / 4)  # swapped in place: the compiled model follows it
    swapped = G.sample(indices, classes, truncation=0.5, seed=1)
    G2 = load_generator(str(tiny_deep_dir), attention="exact", device="cpu").eval()
    G2.set_attention("smyrf", budget=1 / 4)
    torch.testing.assert_close(swapped, G2.sample(indices, classes, truncation=0.5, seed=1), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_sampler_compile_flag_writes_the_eager_images(tiny_deep_dir, tmp_path, capsys):
    torch._dynamo.reset()
    args = ["--model", str(tiny_deep_dir), "--classes", "1,2", "--per-class", "2", "--truncation", "0.4",
            "--device", "cpu", "--batch-size", "4", "--attn", "performer"]
    assert sample_main([*args, "--out", str(tmp_path / "eager")]) == 0
    assert sample_main([*args, "--compile", "aot_eager", "--out", str(tmp_path / "compiled")]) == 0
    eager = sorted((tmp_path / "eager" / "images").glob("*.png"))
    compiled = sorted((tmp_path / "compiled" / "images").glob("*.png"))
    assert [p.name for p in eager] == [p.name for p in compiled] and len(eager) == 4
    for a, b in zip(eager, compiled, strict=True):
        diff = np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(b), np.int16))
        assert diff.max() <= 1  # one uint8 level at most: a pixel on the quantisation boundary
    capsys.readouterr()
    assert sample_main([*args, "--compile", "warp-drive", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "accepted:" in err[0] and "inductor" in err[0], err
    assert not (tmp_path / "bad").exists()
