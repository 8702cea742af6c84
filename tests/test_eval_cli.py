"""eval/fid.py end to end, offline: tiny random BigGAN-deep, tiny random FID Inception (1/16 width)."""
from __future__ import annotations

import csv
import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval.runner as runner
from eval.fid import main
from eval.inception import random_inception_state
from gan.generator import Generator
from gan.sampling import balanced_class_ids, latents_for, per_image_latents, repeated_class_ids

ROOT = Path(__file__).resolve().parents[1]
APPROX = ["smyrf", "performer"]
CHEAP = "performer"  # the cheapest approximation on the CPU, for the sweeps
N = 6
# every backend's fields in results.json, as the issues list them (not read from the module under test)
ISSUE_FIELDS = {"published", "fid", "fid_ci_low", "fid_ci_high", "fid_to_exact", "fid_eps", "is_mean", "is_std",
                "is_ci_low", "is_ci_high", "attn_rel_error", "top1_changed", "images_per_s", "attn_ms",
                "attn_peak_mb", "n", "attn_share", "attn_speedup", "gen_speedup"}
NUMERIC = ISSUE_FIELDS - {"published", "fid_eps"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_assets")
    torch.save(random_inception_state(1 / 16, seed=0), root / "inception_tiny.pth")
    feats = np.random.default_rng(0).normal(size=(400, 128))
    np.savez(root / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    np.savez(root / "ref_dim64.npz", mu=np.zeros(64), sigma=np.eye(64))
    np.savez(root / "ref_nokeys.npz", mean=np.zeros(128))
    return {"inception": root / "inception_tiny.pth", "ref": root / "ref.npz",
            "ref64": root / "ref_dim64.npz", "nokeys": root / "ref_nokeys.npz"}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / "cache"))


def _argv(model, assets, out, *extra) -> list[str]:
    return ["--model", str(model), "--num-samples", str(N), "--batch-size", "4", "--shard-size", "4",
            "--inception-weights", str(assets["inception"]), "--ref-stats", str(assets["ref"]),
            "--is-splits", "2", "--bootstrap", "5", "--device", "cpu", "--out", str(out), *extra]


def _drop(argv: list[str], option: str) -> list[str]:
    i = argv.index(option)
    return argv[:i] + argv[i + 2:]


def _one_line_error(err: str) -> str:
    line = err.rsplit("\r", 1)[-1]  # after the progress bar's last redraw
    assert line.startswith("error: ") and line.count("\n") == 1 and "Traceback" not in err, err
    return line


@pytest.fixture
def generate_calls(monkeypatch) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Every Generator.generate call as (backend name, z, class ids)."""
    calls = []
    original = Generator.generate

    def spy(self, z, class_ids, truncation=1.0):
        calls.append((self.attention.name, z.clone(), torch.as_tensor(class_ids).clone()))
        return original(self, z, class_ids, truncation)

    monkeypatch.setattr(Generator, "generate", spy)
    return calls


def test_several_backends_paired_results_and_cache_reuse(tiny_deep_dir, assets, tmp_path, generate_calls, capsys):
    out = tmp_path / "out"
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", ",".join(APPROX), "--seed", "3")) == 0
    results = json.loads((out / "results.json").read_text())
    labels = ["exact", *APPROX]
    assert list(results["methods"]) == labels  # exact added as the baseline
    for label in labels:
        row = results["methods"][label]
        assert set(row) == ISSUE_FIELDS and row["n"] == N and row["published"] is True
        assert all(np.isfinite(row[f]) for f in NUMERIC), row
        assert row["fid_eps"] is None  # the exact Frechet distance was computable (singular covariances included)
        # cost was measured: every backend ran the attention layer and holds some score/feature memory
        assert row["images_per_s"] > 0 and row["attn_ms"] > 0 and row["attn_peak_mb"] > 0, (label, row)
        assert row["fid_ci_low"] <= row["fid_ci_high"] and row["is_ci_low"] <= row["is_ci_high"]
    exact = results["methods"]["exact"]
    assert exact["attn_rel_error"] == 0.0 and exact["top1_changed"] == 0.0
    # end-to-end honesty: speed-ups against exact agree with the per-image and per-call figures (1e-9 relative)
    for label in labels:
        row = results["methods"][label]
        assert 0 < row["attn_share"] < 1, row
        assert row["gen_speedup"] == pytest.approx(row["images_per_s"] / exact["images_per_s"], rel=1e-9)
        assert row["attn_speedup"] == pytest.approx(exact["attn_ms"] / row["attn_ms"], rel=1e-9)
    # FID to exact of exact: the Frechet distance of a Gaussian to itself, 0 up to float64 round-off of tr(sigma)
    assert abs(exact["fid_to_exact"]) < 1e-6
    for label in APPROX:  # an approximation moves the attention output (tiny d=2 maps: clearly > 1e-6)
        assert results["methods"][label]["attn_rel_error"] > 1e-6
        assert results["methods"][label]["fid_to_exact"] > 1e-6
        assert 0.0 <= results["methods"][label]["top1_changed"] <= 1.0
    config = results["config"]
    assert config["num_samples"] == N and config["inception_input"] == "pytorch-fid"  # an .npz of unknown origin
    assert config["inception_score"] == {"splits": 2, "shuffled": False, "shuffle_seed": None}
    assert config["class_order"] == "balanced" and config["latents"] == "per-image"
    assert config["bootstrap"]["resamples"] == 5
    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    # the CSV holds the same rows as results.json (float repr round-trips exactly); fails on a dropped field or row
    assert [r["method"] for r in csv_rows] == labels
    assert all(float(r[f]) == results["methods"][r["method"]][f] for r in csv_rows for f in NUMERIC)
    md = (out / "results.md").read_text()
    assert all(f"| {label} |" in md for label in labels) and "fid_to_exact" in md
    printed = capsys.readouterr().out
    assert "device cpu" in printed and "18 to generate" in printed and "fid" in printed
    assert "estimated time: " in printed and "for 18 images" in printed  # after the first measured batch

    # paired: every backend saw exactly the same latents and classes, the per-image seeded ones
    by_backend: dict[str, list] = {}
    for name, z, cls in generate_calls:
        by_backend.setdefault(name, []).append((z, cls))
    assert set(by_backend) == set(labels)
    idx = torch.arange(N)
    expected_z = per_image_latents(idx, z.shape[1], 1.0, seed=3)
    expected_cls = balanced_class_ids(idx, list(range(1000)))
    for calls in by_backend.values():
        torch.testing.assert_close(torch.cat([z for z, _ in calls]), expected_z, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([c for _, c in calls]), expected_cls, rtol=0, atol=0)

    # a second run regenerates nothing and reproduces the metrics exactly (same cached features)
    generate_calls.clear()
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", ",".join(APPROX), "--seed", "3")) == 0
    assert generate_calls == []
    again = json.loads((out / "results.json").read_text())
    for label in labels:
        for f in ("fid", "fid_ci_low", "is_mean", "attn_rel_error", "top1_changed", "fid_to_exact"):
            assert again["methods"][label][f] == results["methods"][label][f]

    # another Inception input protocol is another cache entry: everything is generated again
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact", "--seed", "3", "--inception-input", "tf")) == 0
    assert sum(z.shape[0] for _, z, _ in generate_calls) == N
    assert json.loads((out / "results.json").read_text())["config"]["inception_input"] == "tf"


def test_resume_after_interruption(tiny_deep_dir, assets, tmp_path, generate_calls, monkeypatch):
    out = tmp_path / "out"
    original = runner.compute_shard
    done = []

    def interrupted(*args, **kwargs):
        if len(done) == 1:  # the second shard: the process "dies" (Ctrl-C)
            raise KeyboardInterrupt
        done.append(original(*args, **kwargs))
        return done[-1]

    monkeypatch.setattr(runner, "compute_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_argv(tiny_deep_dir, assets, out, "--attn", "exact"))
    shards = sorted((out / "features").rglob("shard_*.pt"))
    assert [p.name for p in shards] == ["shard_00000000_00000004.pt"]  # one finished shard, no temp files
    assert not list((out / "features").rglob("*.tmp")) and not (out / "results.json").exists()
    first_mtime = shards[0].stat().st_mtime_ns

    monkeypatch.setattr(runner, "compute_shard", original)
    generate_calls.clear()
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact")) == 0
    assert sum(z.shape[0] for _, z, _ in generate_calls) == N - 4  # only the missing shard
    assert shards[0].stat().st_mtime_ns == first_mtime
    assert json.loads((out / "results.json").read_text())["methods"]["exact"]["n"] == N

    # an added backend generates only its own images; exact's features come from the cache
    generate_calls.clear()
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", f"exact,{CHEAP}")) == 0
    assert {name for name, _, _ in generate_calls} == {CHEAP}
    assert sum(z.shape[0] for _, z, _ in generate_calls) == N


def _old_format_shard(size: int) -> dict:
    """A shard as the runner wrote them before shards carried a format version, holding fake values."""
    return {"features": torch.full((size, 128), 1e3), "logits": torch.zeros(size, 1008),
            "attn_error": torch.zeros(size), "gen_seconds": 1.0, "attn_seconds": 1.0, "attn_calls": 1,
            "attn_peak_bytes": 1, "attn_shape": [16, 4, 2]}


@pytest.mark.parametrize("stale", ["older format", "missing field"])
def test_stale_shards_are_recomputed_never_merged(tiny_deep_dir, assets, tmp_path, generate_calls, stale):
    out = tmp_path / "out"
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact")) == 0
    fid = json.loads((out / "results.json").read_text())["methods"]["exact"]["fid"]
    first = sorted((out / "features").rglob("shard_*.pt"))[0]  # images 0-3
    assert first.name == "shard_00000000_00000004.pt"
    if stale == "older format":  # every field the merge reads, but no format version
        shard = _old_format_shard(4)
    else:  # the current format (as just written) without the logits
        shard = {k: v for k, v in runner.read_checkpoint(first).items() if k != "logits"}
        shard["features"] = torch.full((4, 128), 1e3)
    torch.save(shard, first)
    generate_calls.clear()
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact")) == 0
    regenerated = torch.cat([z for _, z, _ in generate_calls])
    torch.testing.assert_close(regenerated, per_image_latents(range(4), regenerated.shape[1], 1.0, seed=0))
    rewritten = runner.read_checkpoint(first)
    assert "logits" in rewritten and not bool((rewritten["features"] == 1e3).all())  # the fake shard was replaced
    # the same images again: the FID of the first run, not one moved by the fake features (1e-6 relative)
    assert json.loads((out / "results.json").read_text())["methods"]["exact"]["fid"] == pytest.approx(fid, rel=1e-6)


def test_another_shard_format_is_another_cache_entry(tiny_deep_dir, assets, tmp_path, generate_calls, monkeypatch):
    out = tmp_path / "out"
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact")) == 0
    monkeypatch.setattr(runner, "SHARD_FORMAT", runner.SHARD_FORMAT + 1)  # a later format change
    generate_calls.clear()
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact")) == 0
    assert sum(z.shape[0] for _, z, _ in generate_calls) == N  # nothing of the earlier format was reused
    assert len([d for d in (out / "features").iterdir() if d.is_dir()]) == 2  # kept beside, under its own key


def test_full_disk_is_one_line_and_keeps_finished_shards(tiny_deep_dir, assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    original = runner.write_atomic
    writes = []

    def disk_full_on_second_shard(path, write):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, write)

    monkeypatch.setattr(runner, "write_atomic", disk_full_on_second_shard)
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and "shard_00000004_00000006.pt" in line and "1 finished shard" in line
    shards = sorted((out / "features").rglob("shard_*.pt"))
    assert [p.name for p in shards] == ["shard_00000000_00000004.pt"]
    assert runner.read_checkpoint(shards[0])["features"].shape == (4, 128)  # intact, readable
    assert not list((out / "features").rglob(".*.tmp")) and not (out / "results.json").exists()


def test_budget_sweep_labels_and_plot(tiny_deep_dir, assets, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", CHEAP, "--budget", "1/4,1/2")) == 0
    methods = json.loads((out / "results.json").read_text())["methods"]
    assert list(methods) == ["exact", f"{CHEAP}@1/4", f"{CHEAP}@1/2"]
    assert (out / "fid_vs_budget.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_plot_still_leaves_the_results(tmp_path, monkeypatch):
    # the plot comes after results.json/csv/md; its failure (no matplotlib) is reported, the files stay
    import eval.report as report

    def broken_plot(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "plot_fid_vs_budget", broken_plot)
    row = {m.name: 1.0 for m in report.metrics.METRICS}
    methods = {"exact": row, "performer@1/4": row, "performer@1/2": row}
    budgets = {"performer@1/4": ("performer", 0.25), "performer@1/2": ("performer", 0.5)}
    written, error = report.write_results(tmp_path / "out", methods, {"num_samples": 6}, budgets)
    assert [p.name for p in written] == ["results.json", "results.csv", "results.md"]
    assert list(json.loads((tmp_path / "out" / "results.json").read_text())["methods"]) == list(methods)
    assert not (tmp_path / "out" / "fid_vs_budget.png").exists()
    assert error == "fid_vs_budget.png not written (ImportError: No module named 'matplotlib')"


def test_published_table_setting_reference_latents_repeated_classes(tiny_deep_dir, assets, tmp_path, generate_calls):
    # the published BigGAN table's sampling: truncation 0.4, one truncated_noise_sample draw with seed 123,
    # classes in numpy-repeat order; 2 classes x 3 images here
    out = tmp_path / "out"
    argv = _drop(_argv(tiny_deep_dir, assets, out, "--attn", "exact,smyrf-topkeys", "--truncation", "0.4",
                       "--latents", "reference", "--classes", "7,3", "--class-order", "repeat", "--per-class", "3"),
                 "--num-samples")
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["seed"] == 123 and results["config"]["num_samples"] == 6
    assert results["methods"]["exact"]["published"] is True
    assert results["methods"]["smyrf-topkeys"]["published"] is False  # a project variant, marked as such
    idx = torch.arange(6)
    expected_z = latents_for(idx, 128, 0.4, 123, mode="reference", total=6)
    expected_cls = repeated_class_ids(idx, [7, 3], 3)
    for name in ("exact", "smyrf-topkeys"):
        calls = [(z, c) for n, z, c in generate_calls if n == name]
        torch.testing.assert_close(torch.cat([z for z, _ in calls]), expected_z, rtol=0, atol=0)
        assert torch.cat([c for _, c in calls]).tolist() == expected_cls.tolist() == [7, 7, 7, 3, 3, 3]


def test_random_class_order_is_batch_independent_and_recorded(tiny_deep_dir, assets, tmp_path, generate_calls):
    # batches of 4 and 2 images get the classes the plan gives all six images at once
    from eval.image_plan import random_class_ids

    out = tmp_path / "out"
    assert main(_argv(tiny_deep_dir, assets, out, "--attn", "exact", "--class-order", "random", "--is-shuffle")) == 0
    seen = torch.cat([c for _, _, c in generate_calls]).tolist()
    assert [len(c) for _, _, c in generate_calls] == [4, 2]
    assert seen == random_class_ids(torch.arange(N), tuple(range(1000)), 0).tolist()
    assert len(set(seen)) > 1  # not all one class
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["class_order"] == "random" and config["inception_score"]["shuffled"] is True


def test_random_class_ids_are_uniform_and_seeded():
    from eval.image_plan import random_class_ids

    ids = random_class_ids(torch.arange(20000), (3, 5, 7, 9), seed=1)
    counts = torch.bincount(ids, minlength=10)[[3, 5, 7, 9]].double()
    assert ((counts - 5000).abs() < 5 * 5000 ** 0.5).all()  # within 5 sigma of uniform
    assert random_class_ids(torch.arange(7, 9), (3, 5, 7, 9), seed=1).tolist() == ids[7:9].tolist()
    assert random_class_ids(torch.arange(100), (3, 5, 7, 9), seed=2).tolist() != ids[:100].tolist()


def _write_images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_reference_images_of_mixed_sizes_give_the_same_statistics_in_any_batch(tiny_deep_dir, assets, tmp_path,
                                                                                 monkeypatch):
    # 200x256 (non-square: cropped, not squashed), 300x300 (box-halved), 64x96 (upscaled) and 128x128 images:
    # one rule per image, so batch 64 (through the CLI), 1 and 3 give the same statistics (float32 round-off aside)
    from eval.folder_stats import folder_statistics
    from eval.inception import load_inception

    folder = tmp_path / "real"
    _write_images(folder, [(200, 256), (300, 300), (64, 96), (128, 128), (128, 128)])
    argv = _drop(_argv(tiny_deep_dir, assets, tmp_path / "out", "--attn", "exact", "--ref-images", str(folder)),
                 "--ref-stats")
    argv[argv.index("--batch-size") + 1] = "64"
    assert main(argv) == 0
    config = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert config["ref_images_protocol"] == "adm-center-crop"
    cached = list((tmp_path / "cache" / "ref_stats").glob("images-*.npz"))
    assert len(cached) == 1 and config["ref_stats"] == str(cached[0])
    with np.load(cached[0]) as data:
        stats = [(data["mu"], data["sigma"])]
    assert stats[0][0].shape == (128,) and stats[0][1].shape == (128, 128)
    inception, inception_id = load_inception(assets["inception"], input_mode="pytorch-fid")
    for batch in (1, 3):
        monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / f"cache{batch}"))
        mu, sigma, _ = folder_statistics(folder, inception, inception_id, batch, torch.device("cpu"), 128,
                                         show_progress=False)
        np.testing.assert_allclose(mu, stats[0][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sigma, stats[0][1], rtol=1e-4, atol=1e-6)


def test_center_crop_resize_crops_the_long_side():
    # a 100x200 image whose left and right quarters are black and centre white: cropping keeps only the
    # white centre; squashing would keep the black columns
    from PIL import Image

    from eval.folder_stats import center_crop_resize

    arr = np.zeros((100, 200, 3), dtype=np.uint8)
    arr[:, 50:150] = 255
    out = center_crop_resize(Image.fromarray(arr), 50)
    assert out.shape == (50, 50, 3) and out.min() >= 250


def _bad_cases(assets, tmp_path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for i in range(2):
        (corrupt / f"{i}.png").write_bytes(b"not a png")
    (tmp_path / "a_file").write_text("x")
    return {
        "unknown backend": (["--attn", "nope"], "available: exact"),
        "bad json": (["--attn-kwargs", "exact={bad"], "bad JSON in --attn-kwargs exact"),
        "bad parameter": (["--attn-kwargs", 'exact={"n_hashes": 8}'], "does not take n_hashes"),
        "kwargs for an unlisted backend": (["--attn", "exact", "--attn-kwargs", "smyrf:n_hashes=2"],
                                           "not among the backends"),
        "too few samples": (["--num-samples", "1"], "--num-samples must be >= 2"),
        "fewer images than splits": (["--is-splits", "10"], "6 images are fewer than --is-splits 10"),
        "bad budget": (["--budget", "2"], "outside (0, 1]"),
        "wrong dimension": (["--ref-stats", str(assets["ref64"])], "need mu (128,)"),
        "missing keys": (["--ref-stats", str(assets["nokeys"])], "lacks key(s) mu, sigma"),
        "missing image folder": (["--ref-images", str(tmp_path / "nowhere")], "image folder not found"),
        "unreadable images": (["--ref-images", str(corrupt)], "unreadable image"),
        "missing inception": (["--inception-weights", str(tmp_path / "none.pth")], "Inception weights file not found"),
        "missing model": (["--model", str(tmp_path / "no_model")], "no such file or directory"),
        "shape-dependent parameter": (["--attn", "topk", "--attn-kwargs", "topk:k=5000"],
                                      "k=5000 exceeds the number of keys"),
        # top-k's cheapest configuration keeps one key per query: 1/Nk of the dense matrix (Nk = 1024 here)
        "budget below every configuration": (["--attn", "topk", "--budget", "1/100000"],
                                             "the smallest possible is 0.000977 (1/1024)"),
        "out is a file": (["--out", str(tmp_path / "a_file")], "is a file"),
        "out under a file": (["--out", str(tmp_path / "a_file" / "results")],
                             f"is under the file {tmp_path / 'a_file'}"),
        "unwritable out": (["--out", "/sys/biggan-attn-results"], "--out /sys/biggan-attn-results is not writable"),
        "repeat without per-class": (["--class-order", "repeat"], "needs --per-class"),
    }


CASES = ["unknown backend", "bad json", "bad parameter", "kwargs for an unlisted backend", "too few samples",
         "fewer images than splits", "bad budget", "wrong dimension", "missing keys", "missing image folder",
         "unreadable images", "missing inception", "missing model", "shape-dependent parameter",
         "budget below every configuration", "out is a file", "out under a file", "unwritable out",
         "repeat without per-class"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line_before_any_work(case, tiny_deep_dir, assets, tmp_path, capsys, generate_calls):
    extra, fragment = _bad_cases(assets, tmp_path)[case]
    argv = _argv(tiny_deep_dir, assets, tmp_path / "out", *extra)
    if "--ref-images" in extra:  # the two reference options are exclusive
        argv = _drop(argv, "--ref-stats")
    # a repeated option (--out, --is-splits): argparse keeps the case's value, which comes last
    assert main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert fragment in line, line
    assert generate_calls == []  # nothing generated before the error
    assert not (tmp_path / "out").exists()  # nothing written


# The published URLs, written out here (not read from the code under test)
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
S3 = "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-128"
ADM_128_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/128/"
               "VIRTUAL_imagenet128_labeled.npz")
SMOKE_TAIL = "python eval/smoke_assets.py smoke && python eval/fid.py --model smoke/biggan-deep-128-tiny "


def _first_run_message(err: str, pieces: int) -> list[str]:
    """The missing-downloads message: 'error: <header>', one '- ' line per missing piece, the smoke command."""
    lines = err.rsplit("\r", 1)[-1].strip("\n").split("\n")
    assert lines[0].startswith("error: ") and lines[0].endswith(":"), err
    assert len(lines) == 1 + pieces + 1 and all(line.startswith("- ") for line in lines[1:-1]), err
    assert SMOKE_TAIL in lines[-1], lines[-1]
    assert "Traceback" not in err and not re.search(r"[A-Za-z]*(Error|Exception)\b", err), err  # no class names
    return lines


def _no_network(monkeypatch, tmp_path) -> None:
    import socket
    import urllib.request

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))


def test_offline_first_run_lists_every_missing_piece_then_the_smoke_run(assets, tmp_path, monkeypatch, capfd,
                                                                         generate_calls):
    # No network, empty caches, named generator, default Inception weights, default reference statistics:
    # one line per missing piece (what, URLs, folder, flag), then the offline smoke command; nothing generated
    # or written.
    _no_network(monkeypatch, tmp_path)
    argv = _drop(_drop(_argv("biggan-deep-128", assets, tmp_path / "out"), "--inception-weights"), "--ref-stats")
    assert main(argv) == 2
    _, inception, generator, ref, smoke = _first_run_message(capfd.readouterr().err, 3)
    cache = tmp_path / "cache"
    assert INCEPTION_URL in inception and f"{cache / 'inception'}/" in inception and "--inception-weights" in inception
    assert f"{S3}-config.json" in generator and f"{S3}-pytorch_model.bin" in generator  # the weights' URL too
    assert f"{cache / 'models' / 'biggan-deep-128'}/" in generator and "--model" in generator
    assert ADM_128_URL in ref and f"{cache / 'downloads'}/" in ref and "--ref-stats" in ref
    assert generate_calls == [] and not (tmp_path / "out").exists()


def test_help_names_the_folder_the_message_names(capsys, tmp_path, monkeypatch):
    # --inception-weights' help and the offline message agree on where the default weights live
    monkeypatch.setenv("COLUMNS", "2000")  # no line wrapping inside the path
    with pytest.raises(SystemExit):
        main(["--help"])
    assert f"(default: downloaded once into {tmp_path / 'cache' / 'inception'};" in capsys.readouterr().out


def test_adm_reference_statistics_default_to_the_tf_input(tiny_deep_dir, assets, tmp_path):
    # ADM's batches come from a TF evaluator: with them (here a stand-in placed in the cache) the default input is tf
    cached = tmp_path / "cache" / "ref_stats" / "imagenet-128.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(assets["ref"].read_bytes())
    out = tmp_path / "out"
    assert main(_drop(_argv(tiny_deep_dir, assets, out, "--attn", "exact"), "--ref-stats")) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["ref_stats"] == "imagenet-128" and config["inception_input"] == "tf"


def test_default_reference_stats_offline_say_where_to_put_them(tiny_deep_dir, assets, tmp_path, monkeypatch, capsys):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    argv = _argv(tiny_deep_dir, assets, tmp_path / "out", "--ref-stats", "imagenet-128")
    assert main(argv) == 2
    _, line, _ = _first_run_message(capsys.readouterr().err, 1)
    assert ADM_128_URL in line and str(tmp_path / "cache" / "downloads") in line and "--ref-stats" in line, line
    assert not (tmp_path / "out").exists()


def test_named_model_unavailable_offline_fails_fast(assets, tmp_path, monkeypatch, capfd, generate_calls):
    # No network at all (DNS fails) and an empty Hugging Face cache: the named model cannot be had.
    # Fails if huggingface_hub's retry warnings reach stderr, if the back-off (about 25 s) is waited
    # out, or if anything is generated or written before the error.
    import socket
    import time

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    argv = _argv("biggan-deep-128", assets, tmp_path / "out", "--attn", "exact")
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 10
    _, line, _ = _first_run_message(capfd.readouterr().err, 1)
    assert line.startswith("- biggan-deep-128: download "), line
    assert str(tmp_path / "cache" / "models" / "biggan-deep-128") in line  # where to put the files
    assert generate_calls == [] and not (tmp_path / "out").exists()


def test_nan_output_names_the_backend(tiny_deep_dir, assets, tmp_path, monkeypatch, capsys):
    from gan.attention.published.exact import ExactAttention

    def nan_attend(self, q, k, v, scale):
        return torch.full((*q.shape[:2], v.shape[2]), float("nan"), dtype=q.dtype)

    monkeypatch.setattr(ExactAttention, "attend", nan_attend)
    assert main(_argv(tiny_deep_dir, assets, tmp_path / "out", "--attn", "exact")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("error: exact: NaN or inf in the generated images")
    assert not (tmp_path / "out" / "results.json").exists()


def test_nan_features_name_the_backend(tiny_deep_dir, assets, tmp_path, monkeypatch, capsys):
    # Finite images but NaN Inception features (e.g. fp16 overflow inside the network): the same one-line
    # error naming the backend, instead of a NaN FID or a linear-algebra traceback from the statistics.
    from eval.inception import FIDInception

    forward = FIDInception.forward

    def nan_features(self, images):
        feats, logits = forward(self, images)
        return torch.full_like(feats, float("nan")), logits

    monkeypatch.setattr(FIDInception, "forward", nan_features)
    assert main(_argv(tiny_deep_dir, assets, tmp_path / "out", "--attn", "exact")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("error: exact: NaN or inf in the Inception features"), line
    assert not (tmp_path / "out" / "results.json").exists()


def test_default_inception_weights_offline_say_where_to_put_them(tiny_deep_dir, assets, tmp_path, monkeypatch, capsys):
    # No --inception-weights, an empty cache and no network: one line naming the file's
    # place in the cache and the variable/option to change it; nothing generated or written.
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    argv = _drop(_argv(tiny_deep_dir, assets, tmp_path / "out", "--attn", "exact"), "--inception-weights")
    assert main(argv) == 2
    _, line, _ = _first_run_message(capsys.readouterr().err, 1)
    assert INCEPTION_URL in line and str(tmp_path / "cache" / "inception") in line, line
    assert "--inception-weights" in line, line
    assert not (tmp_path / "out").exists()


def test_script_exits_2_with_one_line_on_stderr():
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "fid.py"), "--num-samples", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--num-samples" in proc.stderr


def test_offline_smoke_run_of_the_readme(tmp_path, capsys):
    # eval/smoke_assets.py writes the random stand-ins and prints the command; that command runs offline
    import shlex

    from eval.smoke_assets import main as smoke_main

    assert smoke_main([str(tmp_path / "smoke")]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python eval/fid.py ")]
    command = shlex.split(line)
    argv = command[2:]
    argv[argv.index("--num-samples") + 1] = "4"  # the README's 20 images, cut to keep the suite fast
    argv[argv.index("--batch-size") + 1] = "4"
    assert main(argv) == 0
    methods = json.loads((tmp_path / "smoke" / "results" / "results.json").read_text())["methods"]
    assert list(methods) == ["exact", "smyrf"] and all(np.isfinite(row["fid"]) for row in methods.values())


def test_backend_shape_errors_come_before_reference_images_are_read(tiny_deep_dir, assets, tmp_path, monkeypatch,
                                                                     capsys):
    import eval.folder_stats as folder_stats

    folder = tmp_path / "real"
    _write_images(folder, [(64, 64), (64, 64)])
    computed = []
    monkeypatch.setattr(folder_stats, "folder_statistics", lambda *a, **k: computed.append(a))
    argv = _drop(_argv(tiny_deep_dir, assets, tmp_path / "out", "--attn", "topk", "--attn-kwargs", "topk:k=5000",
                       "--ref-images", str(folder)), "--ref-stats")
    assert main(argv) == 2
    assert "k=5000 exceeds the number of keys Nk=1024" in _one_line_error(capsys.readouterr().err)
    assert computed == []
