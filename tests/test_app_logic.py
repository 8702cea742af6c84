"""The app's callbacks without a server: caching, the comparison itself, input parsing, out-of-memory."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch

from app.compare import compare_backends
from app.imaging import grid, heatmap
from app.inputs import backend_kwargs, resolve_classes
from app.params import parse_attention_kwargs
from app.ui import ComparisonApp
from gan.attention import available_attentions
from gan.sampling import per_image_latents

APPROXIMATE = [name for name in available_attentions() if name != "exact"]


@pytest.fixture(scope="module")
def comparison(tiny_deep_dir) -> ComparisonApp:
    return ComparisonApp(str(tiny_deep_dir), "cpu")


def _form(model, **overrides):
    values = dict(model=model, class_choice="random", seed=0, truncation=0.5, num_images=1, backends=APPROXIMATE[:1],
                  budget=0.25, advanced=[], show_diff=False)
    return values | overrides


def test_model_is_loaded_once_and_left_with_exact_attention(comparison, tiny_deep_dir):
    comparison.generate(**_form(str(tiny_deep_dir), backends=[]))
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")
    comparison.generate(**_form(str(tiny_deep_dir), backends=APPROXIMATE[:1]))
    # Same object: backends were swapped with set_attention, not reloaded; fails if the cache missed.
    assert comparison.cache.get(str(tiny_deep_dir), "cpu") is G
    assert G.attention.name == "exact" and all(block.probe is None for block in G.attention_blocks())


def test_exact_row_reproduces_plain_generation(comparison, tiny_deep_dir):
    """The probe must not change what the generator computes: exact row == G.generate without any probe."""
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")
    z = per_image_latents(range(2), G.z_dim, 0.5, seed=1)
    ids = torch.tensor([1, 207])
    runs = compare_backends(G, z, ids, 0.5, [(APPROXIMATE[0], {"budget": 0.25, "seed": 1})])
    plain = ((G.generate(z, ids, 0.5).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(runs[0].images, plain)  # same ops, same order -> bit-equal
    assert runs[0].attn_rel_error == 0 and runs[0].pixel_diff == 0
    # Exact on CPU holds the dense Nq x Nk = 4096 x 1024 fp32 scores per image.
    assert runs[0].attn_bytes == 2 * 4096 * 1024 * 4
    assert runs[1].attn_rel_error > 0 and runs[1].pixel_diff > 0


def test_out_of_memory_is_reported_and_app_stays_usable(comparison, tiny_deep_dir, monkeypatch):
    G = comparison.cache.get(str(tiny_deep_dir), "cpu")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    with monkeypatch.context() as patch:
        patch.setattr(G, "generate", out_of_memory)
        with pytest.raises(gr.Error, match="out of GPU memory"):
            comparison.generate(**_form(str(tiny_deep_dir)))
    assert G.attention.name == "exact"  # the failed request left no approximate backend behind
    gallery, table, _, _ = comparison.generate(**_form(str(tiny_deep_dir)))
    assert len(gallery.value) == 2 and len(table) == 2  # exact + one backend, one image each


def test_random_class_is_seeded_and_names_resolve():
    drawn = resolve_classes("random", 8, seed=3, num_classes=1000)
    assert drawn == resolve_classes("random", 8, seed=3, num_classes=1000)  # reproducible from the seed
    assert all(0 <= c < 1000 for c in drawn) and len(set(drawn)) > 1  # real ids, not one constant class
    # another seed draws other classes (8 draws from 1000 coincide with probability 1e-24)
    assert drawn != resolve_classes("random", 8, seed=4, num_classes=1000)
    assert resolve_classes("207: golden retriever", 2, 0, 1000) == [207, 207]  # the dropdown's own label
    assert resolve_classes("goldfish,207", 3, 0, 1000) == [1, 207, 1]  # several classes cycle over the images
    with pytest.raises(ValueError, match="unknown ImageNet class name"):
        resolve_classes("goldfsh", 1, 0, 1000)


def test_budget_goes_to_every_approximate_backend_and_rows_override():
    rows = [[APPROXIMATE[0], "some_param", "auto (budget)", "4"], [APPROXIMATE[0], "unset", "auto (budget)", ""]]
    chosen = backend_kwargs(["exact", *APPROXIMATE], 0.3, rows, seed=2)
    assert [name for name, _ in chosen] == APPROXIMATE  # exact is the reference, never a compared backend
    assert all(kw["budget"] == 0.3 and kw["seed"] == 2 for _, kw in chosen)
    assert chosen[0][1]["some_param"] == 4 and "unset" not in chosen[0][1]
    with pytest.raises(ValueError, match="unknown attention backend"):
        backend_kwargs(["nope"], 0.3, [], seed=0)


def test_attention_kwargs_text_forms():
    assert parse_attention_kwargs('{"n_hashes": 4}') == {"n_hashes": 4}
    assert parse_attention_kwargs("n_hashes=4, redraw=true, mode=fast, k=none") == {"n_hashes": 4, "redraw": True, "mode": "fast", "k": None}
    with pytest.raises(ValueError, match="key=value"):
        parse_attention_kwargs("n_hashes")


def test_heatmap_and_grid_shapes():
    diff = np.zeros((2, 8, 8), np.float32)
    diff[1] = 1.0
    colours = heatmap(diff, vmax=1.0)
    assert colours.shape == (2, 8, 8, 3) and colours.dtype == np.uint8
    assert colours[0].max() < 10 and colours[1].min() > 180  # zero -> darkest, vmax -> brightest (magma(1) = (252, 253, 191))
    image = grid([("exact", colours), ("other", colours)])
    assert image.size[1] == 2 + 2 * (8 + 2)  # two rows of 8 px with 2 px padding


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/no/such/checkpoint"], "no such file or directory"),
        (["--model", "not-a-model"], "unknown model name 'not-a-model'"),
        (["--device", "tpu"], "device"),
        (["--port", "http"], "argument --port: invalid int value"),  # argparse's own check, without the usage dump
    ],
)
def test_app_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    from app.app import main

    assert main(argv) == 2  # before any server starts
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
