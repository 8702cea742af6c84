"""The app's callbacks without a server: caching, comparison, input parsing, errors, rendering, CLI start-up."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.compare import compare_backends
from app.imaging import colormap_lut, grid, heatmap
from app.inputs import MAX_BACKENDS, backend_kwargs, parse_budget, parse_truncation, resolve_classes
from app.params import checked_backend, tunable_parameters
from common.cli import parse_attention_kwargs
from gan.attention import available_attentions, build_attention

ROOT = Path(__file__).resolve().parents[1]
APPROXIMATE = [name for name in available_attentions() if name != "exact"]
OK = ""  # the status line after a success: empty


# app.ui imports gradio (~4 s): imported where used, so collecting this file on every pytest-xdist worker stays cheap


@pytest.fixture(scope="module")
def comparison(tiny_deep_dir):
    from app.ui import ComparisonApp

    return ComparisonApp(str(tiny_deep_dir), "cpu")


def _form(model, **overrides):
    values = dict(model=model, class_choice="random", seed=0, truncation=0.5, num_images=1,
                  published=[n for n in APPROXIMATE if n in available_attentions(published=True)][:1], variants=[],
                  budget="1/8", parameters="", show_diff=False)
    return values | overrides


def test_model_is_loaded_once_and_left_with_exact_attention(comparison, tiny_deep_dir):
    comparison.generate(**_form(str(tiny_deep_dir), published=[]))
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")
    status, *_ = comparison.generate(**_form(str(tiny_deep_dir)))
    assert status == OK
    # Same object: backends were swapped with set_attention, not reloaded; fails if the cache missed.
    assert comparison.cache.get(str(tiny_deep_dir), "cpu") is G
    assert G.attention.name == "exact" and all(block.probe is None for block in G.attention_blocks())


def test_exact_row_reproduces_plain_sampling(comparison, tiny_deep_dir):
    """The probe must not change what the generator computes: exact row == G.sample without any probe."""
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")
    ids = torch.tensor([1, 207])
    runs = compare_backends(G, range(2), ids, 0.5, 1, [(APPROXIMATE[0], {"budget": 0.25, "seed": 1})])
    plain = ((G.sample(range(2), ids, 0.5, 1).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(runs[0].images, plain)  # same ops, same order -> bit-equal
    assert runs[0].attn_rel_error == 0 and runs[0].pixel_diff == 0
    # Exact on CPU holds the dense Nq x Nk = 4096 x 1024 fp32 scores per image.
    assert runs[0].attn_bytes == 2 * 4096 * 1024 * 4
    assert runs[1].attn_rel_error > 0 and runs[1].pixel_diff > 0
    assert [run.group for run in runs] == ["reference", "published" if runs[1].name in available_attentions(True)
                                           else f"project variant of {build_attention(runs[1].name).variant_of}"]


def test_every_registered_backend_runs_in_the_app(comparison, tiny_deep_dir):
    published = set(available_attentions(published=True))
    for start in range(0, len(APPROXIMATE), MAX_BACKENDS - 1):  # at most 8 rows per request, exact included
        names = APPROXIMATE[start:start + MAX_BACKENDS - 1]
        status, html, _, table, _, state = comparison.generate(**_form(
            str(tiny_deep_dir), published=[n for n in names if n in published],
            variants=[n for n in names if n not in published]))
        assert status == OK, status
        assert [row[0] for row in table] == ["exact", *names]  # every name ran, in the page's order
        assert re.findall(r"data-backend='([^']+)'", html) == ["exact", *names]


def test_out_of_memory_is_reported_and_app_stays_usable(comparison, tiny_deep_dir, monkeypatch):
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(G, "sample", out_of_memory)
        status, html, *_ = comparison.generate(**_form(str(tiny_deep_dir)))
    assert "out of GPU memory" in status and html == {"__type__": "update"}  # results untouched
    assert G.attention.name == "exact"  # the failed request left no approximate backend behind
    status, _, _, table, _, _ = comparison.generate(**_form(str(tiny_deep_dir)))
    assert status == OK and len(table) == 2  # exact + one backend


def test_shape_checks_come_from_the_config_before_any_image(comparison, tiny_deep_dir, monkeypatch):
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")
    calls = []
    monkeypatch.setattr(G, "sample", lambda *a, **k: calls.append(1))
    status, *_ = comparison.generate(**_form(str(tiny_deep_dir), published=["topk"], parameters='topk={"k": 5000}'))
    # tiny generator: Nq = 4096, Nk = 1024; k > Nk is refused from G.attention_shape(), with no forward pass
    assert "k=5000 exceeds the number of keys Nk=1024" in status and "Nq=4096" in status
    assert calls == []
    with pytest.raises(ValueError, match="topk: k=1025 exceeds"):
        checked_backend("topk", {"k": 1025}, G.attention_shape())


def test_random_class_is_seeded_and_names_resolve():
    drawn = resolve_classes("random", 8, seed=3, num_classes=1000)
    assert drawn == resolve_classes("random", 8, seed=3, num_classes=1000)  # reproducible from the seed
    assert all(0 <= c < 1000 for c in drawn) and len(set(drawn)) > 1  # real ids, not one constant class
    assert drawn != resolve_classes("random", 8, seed=4, num_classes=1000)  # 8 draws coincide with p ~ 1e-24
    assert resolve_classes("207: golden retriever", 2, 0, 1000) == [207, 207]  # the dropdown's own label
    assert resolve_classes("goldfish,207", 3, 0, 1000) == [1, 207, 1]  # several classes cycle over the images
    with pytest.raises(ValueError, match="unknown ImageNet class name"):
        resolve_classes("goldfsh", 1, 0, 1000)


def test_budget_is_a_fraction_and_bad_values_are_refused_not_clamped():
    assert parse_budget("1/8") == 0.125 and parse_budget("1/64") == 1 / 64 and parse_budget(" 1 ") == 1.0
    assert parse_budget("0.3") == 0.3
    for bad in ("0", "2", "abc", "1/0", "-1/8", ""):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)
    assert parse_truncation("1") == 1.0 and parse_truncation(0.02) == 0.02
    for bad in (0, -0.1, 1.5, "nan", "x"):
        with pytest.raises(ValueError, match=r"truncation must be .*\(0, 1\]"):
            parse_truncation(bad)


def test_budget_goes_to_every_approximate_backend_and_parameters_override():
    chosen = backend_kwargs(["exact", *APPROXIMATE[:3]], 0.3, f'{APPROXIMATE[0]}={{"some_param": 4}}\n\n', seed=2)
    assert [name for name, _ in chosen] == APPROXIMATE[:3]  # exact is the reference, never a compared backend
    assert all(kw["budget"] == 0.3 and kw["seed"] == 2 for _, kw in chosen)
    assert chosen[0][1]["some_param"] == 4 and "some_param" not in chosen[1][1]
    only = backend_kwargs(APPROXIMATE[:1], 0.3, '{"some_param": 5}', seed=0)  # one backend: its name may be left out
    assert only[0][1]["some_param"] == 5
    with pytest.raises(ValueError, match="names no backend"):  # several backends: each line names its backend
        backend_kwargs(APPROXIMATE[:2], 0.3, '{"some_param": 5}', seed=0)
    with pytest.raises(ValueError, match="unknown attention backend"):
        backend_kwargs(["nope"], 0.3, "", seed=0)
    with pytest.raises(ValueError, match=f"exact.*{APPROXIMATE[0]}|{APPROXIMATE[0]}.*exact"):  # names both
        backend_kwargs(APPROXIMATE[:1], 0.3, 'exact={"x": 1}', seed=0)


def test_attention_kwargs_grammar():
    names = ["smyrf", "topk"]
    parsed = parse_attention_kwargs(['smyrf={"seed": 1}', 'topk={"k": 8}', "topk:seed=2"], names)
    assert {name: parsed.get(name, {}) for name in names} == {"smyrf": {"seed": 1}, "topk": {"seed": 2, "k": 8}}
    assert parse_attention_kwargs([], names).get("topk", {}) == {}
    for bad in ("k=8", "topk={k: 8}", "topk", "topk=[1]", 'exact={"a": 1}'):
        with pytest.raises(ValueError) as err:
            parse_attention_kwargs([bad], names)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="smyrf, topk"):  # a name that is not chosen: the accepted names are listed
        parse_attention_kwargs(['exact={"a": 1}'], names)


def test_listed_parameters_are_the_registrys_and_build():
    for name in available_attentions():
        params = tunable_parameters(name)
        assert "budget" not in params and "seed" not in params
        build_attention(name, **{key: value for key, value in params.items() if value is not None})  # as listed


def test_heatmap_grid_and_scale():
    diff = np.zeros((2, 8, 8), np.float32)
    diff[1] = 1.0
    colours = heatmap(diff, vmax=1.0)
    assert colours.shape == (2, 8, 8, 3) and colours.dtype == np.uint8
    # zero -> darkest, vmax -> brightest (magma(1) = (252, 253, 191))
    assert colours[0].max() < 10 and colours[1].min() > 180
    labels = ["exact", "reference", "gen 0.1 s"]
    plain = grid([(labels, colours), (labels, colours)])
    row_h = 16 * len(labels) + 4  # three 16-px text lines in the label column are taller than the 8-px images
    assert plain.size[1] == 2 + 2 * (row_h + 2)
    label_column = np.asarray(plain)[:, :40]
    assert label_column.min() < 100  # the row labels are drawn into the PNG (dark text on white)
    scaled = np.asarray(grid([(labels, colours)], scale=("heatmap", 0.5)))
    assert scaled.shape[0] == 2 + (row_h + 2) + 3 * 16 + 4
    bar = scaled[2 + row_h + 2 + 16 + 8]  # the colour bar's middle line: left = 0, right = the stated max
    lut = colormap_lut()
    np.testing.assert_allclose(bar[4], lut[0], atol=2)
    assert np.abs(bar[4:].astype(int) - lut[255]).sum(axis=1).min() <= 6  # the bar reaches the brightest colour


def test_grid_header_adds_its_lines_above_the_rows():
    images = np.full((1, 8, 8, 3), 128, np.uint8)
    rows = [(["exact", "reference"], images)]
    plain = np.asarray(grid(rows).convert("L"))
    headed = np.asarray(grid(rows, header=["model: x | budget: 1/8", "classes: 1 goldfish"]).convert("L"))
    band = 2 * 16 + 4  # two 16-px text lines and their padding
    assert headed.shape[0] == plain.shape[0] + band and headed[:band].min() < 100  # dark header text
    np.testing.assert_array_equal(headed[band:, :plain.shape[1]], plain)  # the rows below, unchanged


def test_grid_file_name_is_descriptive_and_deterministic():
    from app.grid_labels import grid_file_name, grid_setting

    setting = grid_setting("/models/biggan-deep-256", "1/8", 3, 0.4, [1, 207, 1], [("smyrf", {"budget": 0.125})])
    name = grid_file_name(setting, heatmaps=False)
    assert re.fullmatch(r"grid-biggan-deep-256-budget1_8-seed3-trunc0\.4-classes1_207-[0-9a-f]{8}\.png", name), name
    assert grid_file_name(dict(setting), heatmaps=False) == name  # the same settings, the same name
    assert grid_file_name(setting, heatmaps=True) == name.replace(".png", "-heatmaps.png")
    other = grid_setting("/models/biggan-deep-256", "1/8", 3, 0.4, [1, 207, 1], [("smyrf", {"budget": 0.25})])
    assert grid_file_name(other, heatmaps=False) != name  # a backend parameter changes the digest


def test_rows_html_carries_names_groups_numbers_and_scale():
    from app.ui import rows_html

    images = np.zeros((2, 8, 8, 3), np.uint8)
    state = [{"name": name, "group": group, "numbers": {"gen": "gen 1.000 s", "err": f"attn err {err}"},
              "images": images, "diff": np.full((2, 8, 8), err, np.float32)}
             for name, group, err in (("exact", "reference", 0.0), ("smyrf-x", "project variant of smyrf", 0.25))]
    html = rows_html(state, show_diff=False)
    assert re.findall(r"data-backend='([^']+)'", html) == ["exact", "smyrf-x"]
    assert "project variant of smyrf" in html and "attn err 0.25" in html and html.count("<img") == 4
    assert "bg-scale" not in html
    diff_html = rows_html(state, show_diff=True)
    assert re.search(r"class='bg-max'>max 0\.25<", diff_html)  # the stated maximum is the largest difference


def test_non_finite_images_of_one_backend_are_an_error_naming_it(comparison, tiny_deep_dir, monkeypatch):
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")
    real = G.sample
    name = APPROXIMATE[0]

    def overflowing(*args, **kwargs):  # the chosen backend overflows; exact stays finite
        x = real(*args, **kwargs)
        return x.index_fill(0, torch.tensor([0]), float("inf")) if G.attention.name == name else x

    monkeypatch.setattr(G, "sample", overflowing)
    status, html, *_ = comparison.generate(**_form(str(tiny_deep_dir), published=[name]))
    assert f"{name} produced NaN/inf pixels" in status and "exact" not in status and html == {"__type__": "update"}


def test_nan_checkpoint_is_reported_naming_the_backend(comparison, nan_deep_dir):
    status, html, *_ = comparison.generate(**_form(str(nan_deep_dir)))
    assert "exact produced NaN/inf pixels" in status and html == {"__type__": "update"}


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/no/such/checkpoint"], "no such file or directory"),
        (["--model", "not-a-model"], "unknown model name 'not-a-model'"),
        (["--device", "tpu"], "device"),
        (["--port", "http"], "argument --port: invalid int value"),  # argparse's own check, without the usage dump
        (["--port", "-1"], "--port -1 is out of range; accepted: 1-65535"),
        (["--port", "99999"], "--port 99999 is out of range; accepted: 1-65535"),
        (["--host", "no.such.host.invalid"], "--host 'no.such.host.invalid' is not a usable address"),
        (["--host", "10.255.255.1"], "cannot serve on 10.255.255.1:"),  # resolves, but is no interface here
    ],
)
def test_app_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    from app.app import main

    assert main(["--port", str(_free_port()), *argv]) == 2  # before any server starts
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_app_busy_port_exits_2_before_loading_the_model():
    with _busy_port() as sock:
        port = sock.getsockname()[1]
        # The model path does not exist: had the model been loaded first, the error would name it.
        result = subprocess.run([sys.executable, str(ROOT / "app" / "app.py"), "--model", "/no/such/checkpoint",
                                 "--port", str(port)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: cannot serve on 127.0.0.1:{port}")
    assert "checkpoint" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_grid_png_is_written_atomically_and_the_scratch_folder_is_bounded(comparison, tiny_deep_dir, monkeypatch):
    from app import ui

    monkeypatch.setattr(ui, "MAX_GRIDS", 3)
    for seed in range(ui.MAX_GRIDS + 3):  # other settings, other file names
        *_, path, state = comparison.generate(**_form(str(tiny_deep_dir), published=[], seed=seed))
    files = sorted(comparison.scratch.iterdir())
    assert len(files) <= ui.MAX_GRIDS and all(f.name.startswith("grid-") and f.suffix == ".png" for f in files)
    with Image.open(path) as picture:
        picture.load()  # the returned file is complete
