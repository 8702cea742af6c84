"""The Gradio Blocks comparison page and its two endpoints: ``/generate`` and ``/render``."""
from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import gradio as gr
import numpy as np
import torch

from gan.attention import available_attentions
from gan.sampling import per_image_latents
from weights import available_models

from .compare import REFERENCE, BackendRun, compare_backends
from .imaging import grid, heatmap
from .inputs import ADVANCED_HEADERS, MAX_IMAGES, RANDOM_CLASS, TRUNCATION_RANGE, class_choices, model_name, parse_request
from .model_cache import GeneratorCache
from .params import tunable_parameters

TABLE_HEADERS = ["backend", "generation (s)", "attention (ms)", "attention memory (MiB)", "attention rel. error", "pixel diff", "parameters"]
GRID_MAX_AGE_S = 600  # grid PNGs older than this are removed from the app's scratch folder


def advanced_rows(backends: Sequence[str]) -> list[list[str]]:
    """One editable row per tunable parameter of each approximate backend; empty value = chosen from the budget."""
    rows = []
    for name in backends:
        for param, default in tunable_parameters(name).items():
            rows.append([name, param, "auto (budget)" if default is None else str(default), ""])
    return rows


def _gallery_items(runs: Sequence[dict[str, Any]], show_diff: bool) -> list[tuple[np.ndarray, str]]:
    vmax = max((float(run["diff"].max()) for run in runs), default=0.0)
    items = []
    for run in runs:
        images = heatmap(run["diff"], vmax) if show_diff else run["images"]
        items += [(image, f"{run['caption']} | image {i + 1}") for i, image in enumerate(images)]
    return items


class ComparisonApp:
    """Holds the model cache and the device; its methods are the UI callbacks (callable without a server)."""

    def __init__(self, default_model: str, device: str, cache: GeneratorCache | None = None):
        self.default_model = default_model
        self.device = device
        self.cache = cache or GeneratorCache()
        self.scratch = Path(tempfile.mkdtemp(prefix="biggan-attn-app-"))  # grid PNGs; removed at exit
        atexit.register(shutil.rmtree, self.scratch, ignore_errors=True)

    def generate(self, model, class_choice, seed, truncation, num_images, backends, budget, advanced, show_diff):
        """Form values -> (gallery, results table, grid PNG path, state for re-rendering)."""
        with reported_to_page():
            G = self.cache.get(model_name(model), self.device)
            request = parse_request(model, class_choice, seed, truncation, num_images, backends, budget, _rows(advanced), G.num_classes)
            device = next(G.parameters()).device
            z = per_image_latents(range(request.num_images), G.z_dim, request.truncation, request.seed).to(device)
            class_ids = torch.tensor(request.class_ids, device=device)
            runs = compare_backends(G, z, class_ids, request.truncation, request.backends)
        state = [_run_state(run) for run in runs]
        gallery, grid_path = self.render(state, show_diff)
        table = [
            [r.name, round(r.gen_seconds, 4), round(r.attn_seconds * 1e3, 3), round(r.attn_bytes / 2**20, 3),
             float(f"{r.attn_rel_error:.4g}"), round(r.pixel_diff, 5), _describe(r.params)]
            for r in runs
        ]
        return gallery, table, grid_path, state

    def render(self, state, show_diff):
        """Stored runs -> (gallery of images or difference heatmaps, one row per backend; grid PNG path)."""
        if not state:  # toggled before anything was generated
            return gr.Gallery(value=[]), None
        items = _gallery_items(state, bool(show_diff))
        columns = len(state[0]["images"])
        rows = [(run["name"], np.stack([image for image, _ in items[i * columns:(i + 1) * columns]])) for i, run in enumerate(state)]
        return gr.Gallery(value=items, columns=columns), str(self._write_grid(rows))

    def _write_grid(self, rows) -> Path:
        now = time.time()
        for old in self.scratch.glob("grid-*.png"):
            if now - old.stat().st_mtime > GRID_MAX_AGE_S:
                old.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.scratch, prefix="grid-", suffix=".png", delete=False) as f:
            grid(rows).save(f, format="PNG")
        return Path(f.name)

    def build(self) -> gr.Blocks:
        approximate = [name for name in available_attentions() if name != REFERENCE]
        models = list(dict.fromkeys([self.default_model, *available_models()]))
        with gr.Blocks(title="biggan-attn: attention backends side by side", analytics_enabled=False) as demo:
            gr.Markdown(
                "## biggan-attn\nThe same latents and classes through exact attention and each chosen approximation. "
                "Captions: generation time, attention time, attention memory, relative error of the attention "
                "output vs exact, mean pixel difference to the exact images (pixels in [0, 1])."
            )
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    model = gr.Dropdown(models, value=self.default_model, label="Model", allow_custom_value=True,
                                        info="registry name or a local checkpoint path")
                    class_choice = gr.Dropdown(class_choices(), value=RANDOM_CLASS, label="ImageNet class",
                                               allow_custom_value=True, info="type to search by name or id")
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    truncation = gr.Slider(*TRUNCATION_RANGE, value=0.4, step=0.01, label="Truncation")
                    num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
                    backends = gr.CheckboxGroup(approximate, value=approximate[:1], label="Attention backends",
                                                info="exact is always included as the reference", elem_id="backends")
                    budget = gr.Slider(0.01, 1.0, value=0.25, step=0.01, label="Memory budget",
                                       info="fraction of the dense score matrix, applied to every approximate backend")
                    with gr.Accordion("Advanced parameters per backend", open=False):
                        advanced = gr.Dataframe(advanced_rows(approximate), headers=ADVANCED_HEADERS, type="array",
                                                datatype="str", interactive=True, static_columns=[0, 1, 2],
                                                label="Leave a value empty to let the budget choose it")
                    show_diff = gr.Checkbox(False, label="Show difference heatmap vs exact")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="One row per backend", columns=4, format="png", height="auto",
                                         object_fit="contain", elem_id="gallery")
                    table = gr.Dataframe(headers=TABLE_HEADERS, label="Measurements", interactive=False)
                    grid_file = gr.File(label="Grid (PNG)")
            state = gr.State([])
            run.click(self.generate, [model, class_choice, seed, truncation, num_images, backends, budget, advanced, show_diff],
                      [gallery, table, grid_file, state], api_name="generate", concurrency_limit=1, concurrency_id="generator")
            show_diff.change(self.render, [state, show_diff], [gallery, grid_file], api_name="render")
        return demo


@contextmanager
def reported_to_page() -> Iterator[None]:
    """Turn user mistakes and GPU out-of-memory into a gr.Error the page shows; the app stays usable."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise gr.Error("out of GPU memory: try fewer images, a smaller budget or fewer backends") from None
    except (ValueError, FileNotFoundError) as err:
        raise gr.Error(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def _rows(advanced) -> list[list[Any]]:
    if advanced is None:
        return []
    if hasattr(advanced, "values"):  # pandas DataFrame
        return advanced.values.tolist()
    return [list(row) for row in advanced]


def _run_state(run: BackendRun) -> dict[str, Any]:
    return {"name": run.name, "caption": run.caption(), "images": run.images, "diff": run.diff}


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"
