"""The batch sampler ``app/sample.py`` on the tiny random checkpoint: per-image latents, resume, sharding, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from attention_inputs import block_inputs
from PIL import Image

from app.sample import main
from gan.attention import available_attentions
from gan.sampling import balanced_class_ids, per_image_latents
from weights import load_generator

ROOT = Path(__file__).resolve().parents[1]
CLASSES = "goldfish,207"  # ids 1 and 207
PER_CLASS = 4  # 8 images
# Same images whatever the batching: batched convolutions may round differently in the last float bit,
# which can move a pixel by one uint8 level; anything larger means the latents or classes differ.
MAX_LEVEL_DIFF = 1
MAX_CHANGED_FRACTION = 1e-3


def _args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--classes", CLASSES, "--per-class", str(PER_CLASS), "--truncation", "0.4",
            "--seed", "5", "--device", "cpu", "--out", str(out), *extra]


def _pngs(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted((out / "images").glob("*.png"))}


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= MAX_LEVEL_DIFF and (diff > 0).mean() <= MAX_CHANGED_FRACTION, (diff.max(), (diff > 0).mean())


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def reference(tiny_deep_dir, tmp_path_factory) -> Path:
    """A finished 1-process run with batch size 7 (8 images: batches of 7 and 1) and a grid."""
    out = tmp_path_factory.mktemp("reference")
    assert main(_args(tiny_deep_dir, out, "--batch-size", "7", "--grid")) == 0
    return out


def test_reference_run_layout(reference):
    images = _pngs(reference)
    assert sorted(images) == [f"{i:06d}.png" for i in range(8)]
    assert all(image.shape == (128, 128, 3) for image in images.values())
    lines = _manifest(reference)
    # Balanced classes: image i has classes[i % 2]; the manifest records file, class, seed, backend and params.
    assert [(line["file"], line["index"], line["class"]) for line in lines] == [
        (f"images/{i:06d}.png", i, [1, 207][i % 2]) for i in range(8)
    ]
    assert all(line["seed"] == 5 and line["backend"] == "exact" and isinstance(line["params"], dict) for line in lines)
    assert Image.open(reference / "grid.png").size == (2 + 8 * 130, 2 + 130)  # 8 tiles in one row, 2 px padding


def test_image_matches_direct_generation(reference, tiny_deep_dir):
    """Image i is G(per_image_latents(i), classes[i % 2]); fails if the sampler drew latents any other way."""
    G = load_generator(tiny_deep_dir, device="cpu")
    idx = [0, 7]
    x = G.generate(per_image_latents(idx, G.z_dim, 0.4, seed=5), balanced_class_ids(idx, [1, 207]), 0.4)
    direct = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    images = _pngs(reference)
    _assert_same_images(np.stack([images["000000.png"], images["000007.png"]]), direct)


def test_batch_size_does_not_change_images(reference, tiny_deep_dir, tmp_path):
    assert main(_args(tiny_deep_dir, tmp_path, "--batch-size", "1")) == 0
    ours, ref = _pngs(tmp_path), _pngs(reference)
    assert sorted(ours) == sorted(ref)
    _assert_same_images(np.stack(list(ours.values())), np.stack(list(ref.values())))


def test_npz_output_matches_png(reference, tiny_deep_dir, tmp_path):
    # 3-image chunks: 8 images -> chunks of 3, 3, 2, streamed into one samples.npz at the end.
    assert main(_args(tiny_deep_dir, tmp_path, "--batch-size", "7", "--format", "npz", "--npz-chunk", "3")) == 0
    with np.load(tmp_path / "samples.npz") as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (8, 128, 128, 3)  # (N, H, W, 3) as FID tools read
    assert labels.tolist() == [1, 207] * 4
    np.testing.assert_array_equal(images, np.stack(list(_pngs(reference).values())))  # same batches -> bit-equal
    assert not (tmp_path / "chunks").exists()  # chunks are merged and removed
    assert [line["file"] for line in _manifest(tmp_path)] == ["samples.npz"] * 8


def test_out_of_memory_halves_the_batch(reference, tiny_deep_dir, tmp_path, monkeypatch):
    """A device that only fits 2 images: batch 8 -> 4 -> 2 and the run completes with the same images."""
    import app.sample

    sizes = []

    def small_device_loader(*args, **kwargs):
        G = load_generator(*args, **kwargs)
        real = G.generate

        def generate(z, class_ids, truncation):
            sizes.append(z.shape[0])
            if z.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(z, class_ids, truncation)

        G.generate = generate
        return G

    monkeypatch.setattr(app.sample, "load_generator", small_device_loader)
    assert main(_args(tiny_deep_dir, tmp_path, "--batch-size", "8")) == 0
    # No probe pass (parameters come from the config's attention shape): halved twice and kept at 2.
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) == {2}
    _assert_same_images(np.stack(list(_pngs(tmp_path).values())), np.stack(list(_pngs(reference).values())))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_resume_after_kill(tiny_deep_dir, tmp_path, fmt):
    """SIGKILL mid-run, then re-run: no partial files, no duplicates, manifest lists every image once."""
    per_class, total = 5, 10
    args = _args(tiny_deep_dir, tmp_path, "--batch-size", "2", "--format", fmt, "--npz-chunk", "3")
    args[args.index("--per-class") + 1] = str(per_class)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app" / "sample.py"), *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = ("images", "*.png") if fmt == "png" else ("chunks", "*.npz")

    def finished():
        return list((tmp_path / pattern[0]).glob(pattern[1]))

    deadline = time.monotonic() + 120
    while len(finished()) < (2 if fmt == "png" else 1) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # poll often: the kill must land before the last batch is written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = finished()
    # The kill must land midway for this test to mean anything.
    assert 1 <= len(before) * (1 if fmt == "png" else 3) < total, len(before)
    for path in before:  # every file that has its final name is complete
        if fmt == "png":
            Image.open(path).load()
        else:
            with np.load(path) as chunk:
                assert chunk["images"].shape == (3, 128, 128, 3)
    mtimes = {p: p.stat().st_mtime_ns for p in before}

    assert main(args) == 0
    assert not list(tmp_path.rglob("*.tmp"))  # temporaries of the killed run are gone
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.exists())  # finished work was kept, not redone
    lines = _manifest(tmp_path)
    assert [line["index"] for line in lines] == list(range(total))  # each image once, in order, none missing
    if fmt == "png":
        assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:06d}.png" for i in range(total)]
        assert len({line["file"] for line in lines}) == total
    else:
        with np.load(tmp_path / "samples.npz") as data:
            assert data["arr_0"].shape == (total, 128, 128, 3)
            resumed = data["arr_0"]
        G = load_generator(tiny_deep_dir, device="cpu")
        idx = [0, total - 1]  # one image from before the kill, one from after
        x = G.generate(per_image_latents(idx, G.z_dim, 0.4, seed=5), balanced_class_ids(idx, [1, 207]), 0.4)
        _assert_same_images(resumed[idx], ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


@pytest.mark.slow
def test_two_process_gloo_run_is_the_union_of_one_process(reference, tiny_deep_dir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "app" / "sample.py"), *_args(tiny_deep_dir, tmp_path, "--batch-size", "3")]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, ref = _pngs(tmp_path), _pngs(reference)
    assert sorted(ours) == sorted(ref)  # no gap; an overlap would show as rewritten files, not extra names
    _assert_same_images(np.stack(list(ours.values())), np.stack(list(ref.values())))
    assert _manifest(tmp_path) == _manifest(reference)  # rank 0's manifest covers both ranks' images, in order


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--classes": "goldfsh"}, "unknown ImageNet class name 'goldfsh'"),
        ({"--per-class": "0"}, "--per-class must be >= 1"),
        ({"--per-class": "ten"}, "argument --per-class: invalid int value: 'ten'"),  # argparse's own check, one line
        ({"--attn": "nope"}, "unknown attention 'nope'"),
        # common.cli.parse_attention_kwargs: NAME='{json}' or '{json}'; a NAME other than --attn lists the accepted one
        ({"--attn-kwargs": "n_hashes"}, "--attn-kwargs"),
        ({"--attn-kwargs": "smyrf={}"}, "exact"),
        ({"--attn-kwargs": "[1]"}, "--attn-kwargs"),
        ({"--attn-kwargs": '{"k": 1'}, "--attn-kwargs"),
        ({"--truncation": "0"}, "--truncation must be in (0, 1]"),
        ({"--budget": "2"}, "--budget 2 is outside (0, 1]"),
        ({"--budget": "lots"}, "--budget 'lots' is not a fraction"),
        ({"--attn": "topk", "--budget": "1/8", "--attn-kwargs": '{"budget": 0.5}'}, "not both"),
        ({"--out": "FILE/sub"}, "cannot write to --out"),
        ({"--model": "/no/such/dir"}, "no such file or directory"),
    ],
)
def test_bad_arguments_give_one_line_errors(tiny_deep_dir, tmp_path, capsys, change, message):
    (tmp_path / "FILE").write_text("a file, not a directory")
    args = _args(tiny_deep_dir, tmp_path / "out")
    for flag, value in change.items():
        args += [flag, value.replace("FILE", str(tmp_path / "FILE"))]  # argparse: the last occurrence wins
    assert main(args) == 2
    err = capsys.readouterr().err
    # One line on stderr saying what was wrong; fails on a traceback or a multi-line dump.
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_resume_with_other_settings_is_refused(reference, tiny_deep_dir, capsys):
    args = _args(tiny_deep_dir, reference)
    args[args.index("--seed") + 1] = "6"
    assert main(args) == 2
    assert "other settings (seed differ)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"--model": "/no/such/dir"}, "no such file or directory"),
        ({"--attn": "topk", "--attn-kwargs": '{"k": 1025}'}, "topk: k=1025 exceeds the number of keys Nk=1024"),
        ({"--attn": "topk", "--budget": "0"}, "--budget 0 is outside (0, 1]"),  # refused before any work
    ],
)
def test_failed_start_leaves_out_untouched_and_the_corrected_command_runs(tiny_deep_dir, tmp_path, capsys, bad,
                                                                            message):
    out = tmp_path / "out"
    args = _args(tiny_deep_dir, out, "--per-class", "1")
    fixed = [*args, *(["--attn", bad["--attn"]] if "--attn" in bad else [])]
    for flag, value in bad.items():
        args += [flag, value]  # argparse: the last occurrence wins
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing was written, not even run.json or the folder
    assert main(fixed) == 0  # the corrected command is not refused as "other settings"
    assert len(_pngs(out)) == 2 and len(_manifest(out)) == 2


def test_nan_checkpoint_exits_2_and_writes_no_image(nan_deep_dir, tmp_path, capsys):
    assert main(_args(nan_deep_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds NaN/inf weights" in err and "generator.gen_z.bias" in err, err
    assert not (tmp_path / "out").exists()


def test_nan_images_are_an_error_and_never_written(tiny_deep_dir, tmp_path, monkeypatch, capsys):
    """A backend that overflows mid-run (finite weights): the batch with inf pixels is refused, none of it written."""
    import app.sample

    def overflowing_loader(*args, **kwargs):
        G = load_generator(*args, **kwargs)
        real = G.generate

        def generate(z, class_ids, truncation):
            x = real(z, class_ids, truncation)
            return x if z.shape[0] < 4 else x.index_fill(0, torch.tensor([1]), float("inf"))

        G.generate = generate
        return G

    monkeypatch.setattr(app.sample, "load_generator", overflowing_loader)
    # batch size 4 with --per-class 3 (6 images): batches of 4 (second image inf) and 2, never reached
    assert main(_args(tiny_deep_dir, tmp_path, "--batch-size", "4", "--per-class", "3")) == 2
    assert "exact produced NaN/inf pixels for images 0..3; none of them was written" in capsys.readouterr().err
    assert _pngs(tmp_path) == {} and _manifest(tmp_path) == []


def test_manifest_lines_are_written_as_units_finish(tiny_deep_dir, tmp_path, monkeypatch):
    """With npz chunks of 3: after each chunk file is renamed, its 3 lines are already in the manifest."""
    import app.sample_store

    seen = []
    real_add = app.sample_store.NpzStore.add

    def add(self, index, image, label):
        seen.append((index, len(_manifest(tmp_path))))  # manifest length when image `index` arrives
        return real_add(self, index, image, label)

    monkeypatch.setattr(app.sample_store.NpzStore, "add", add)
    assert main(_args(tiny_deep_dir, tmp_path, "--batch-size", "2", "--format", "npz", "--npz-chunk", "3")) == 0
    # images 0-2 form chunk 0: once it is written (during image 2's add) its lines are there when image 3 arrives
    assert [count for _, count in seen] == [0, 0, 0, 3, 3, 3, 6, 6]
    assert [line["file"] for line in _manifest(tmp_path)] == ["samples.npz"] * 8  # rewritten after the merge


def test_budget_sizes_the_backend_as_in_eval(tiny_deep_dir, tmp_path):
    # topk keeps floor(budget x Nk) keys per query (its documented rule); Nk comes from the generator's config.
    nk = load_generator(tiny_deep_dir, device="cpu").attention_shape().nk
    assert main(_args(tiny_deep_dir, tmp_path, "--attn", "topk", "--budget", "1/4", "--per-class", "1")) == 0
    params = [line["params"] for line in _manifest(tmp_path)]
    assert len(params) == 2 and all(p["budget"] == 0.25 and p["k"] == nk // 4 and p["seed"] == 5 for p in params)
    assert json.loads((tmp_path / "run.json").read_text())["attn_kwargs"] == {"budget": 0.25}  # a resume keeps it


@pytest.mark.parametrize("name", available_attentions())
def test_every_registered_backend_is_accepted(tiny_deep_dir, tmp_path, name):
    assert main(_args(tiny_deep_dir, tmp_path, "--attn", name, "--per-class", "1")) == 0
    lines = _manifest(tmp_path)
    assert [line["backend"] for line in lines] == [name, name] and all(line["params"]["seed"] == 5 for line in lines)


def test_saves_the_attention_inputs_of_its_first_images(tiny_deep_dir, tmp_path):
    from eval.attention_capture import load_capture

    file = tmp_path / "inputs" / "qkv.pt"
    file.parent.mkdir()
    assert main(_args(tiny_deep_dir, tmp_path / "out", "--save-attention-inputs", str(file),
                      "--save-attention-images", "3", "--batch-size", "2")) == 0
    state = load_capture(file)
    # the oracle: the attention block's own projections on images 0..2 sampled as the documented latents/classes
    G = load_generator(str(tiny_deep_dir), attention="exact", device="cpu")
    labels = balanced_class_ids([0, 1, 2], [1, 207])
    latents = per_image_latents([0, 1, 2], G.z_dim, truncation=0.4, seed=5)
    for name, t in zip("qkv", block_inputs(G, lambda: G.generate(latents, labels, truncation=0.4)), strict=True):
        torch.testing.assert_close(state[name], t, rtol=1e-5, atol=1e-6)
    assert main(_args(tiny_deep_dir, tmp_path / "out2", "--save-attention-images", "0")) == 2
    assert not (tmp_path / "out2").exists()  # refused before anything was written
