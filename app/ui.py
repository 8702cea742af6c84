"""The Gradio Blocks comparison page and its two endpoints: ``/generate`` and ``/render``.

Layout (readable at 1400x900 for 8 backends x 8 images, no hovering, no scroll box): controls on
the left with the status line under the Generate button; on the right one row per backend whose
label holds its name, its group (published algorithm or project variant) and its numbers, next to
its images (or difference heatmaps with a colour bar and the stated maximum); below, a plot of
attention error and pixel difference per backend, the labelled grid PNG and the full table.
"""
from __future__ import annotations

import atexit
import html
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from common.files import write_atomic
from gan.attention import attention_info, available_attentions
from weights import available_models

from .compare import REFERENCE, SPEED_METRICS, BackendRun, compare_backends
from .grid_labels import grid_file_name, grid_header, grid_setting
from .imaging import colormap_css, grid, heatmap, thumbnail_uri
from .inputs import (
    BUDGET_PRESETS,
    DEFAULT_BUDGET_TEXT,
    MAX_IMAGES,
    RANDOM_CLASS,
    class_choices,
    model_name,
    parse_request,
)
from .model_cache import GeneratorCache
from .params import checked_backend, describe, tunable_parameters
from .plots import error_plot

TABLE_HEADERS = ["backend", "group", "gen (s)", "gen x", "attn (ms)", "attn x", "attn share", "attn mem (MiB)",
                 "attn err", "pixel diff", "parameters (resolved for this generator)"]
# at 1400 px (13 px monospace): names, groups and parameters wrap at spaces and hyphens ("scatterbrain-",
# "all_sparse_n_clusters=64,"); each number column fits its widest value (gen 12.345, gen x 12.34, attn 1234.56,
# attn x 123.45, share 0.123, mem 2048.5, err and diff 0.00000123: the browser writes no exponent above 1e-6)
COLUMN_WIDTHS = ["12%", "11%", "6%", "5.5%", "7%", "6%", "5.5%", "6%", "9.5%", "9.5%", "22%"]
GRID_MAX_AGE_S = 600  # grid PNGs older than this are removed from the app's scratch folder
MAX_GRIDS = 16  # and at most this many are kept
GRADIO_CACHE = (300, 900)  # Gradio's own file cache: every 5 min, files older than 15 min are deleted
THUMB_MAX = 128  # pixels; row images are shown at most this wide (the grid PNG keeps full resolution)
DIFF_TITLE = "|x - x_exact|, mean over RGB, pixels in [0, 1]"
NUMBERS_LEGEND = ("gen, attn: generation and attention time; gen x, attn x: exact's time / this one's (> 1: faster "
                  "than exact); attn share: attention's share of gen; mem: attention memory; attn err: "
                  "||o - o_exact|| / ||o_exact|| on the same q, k, v; pixel diff: mean |x - x_exact|")
# the row label's lines of numbers (BackendRun.numbers keys), in the page and in the grid PNG
NUMBER_LINES = (("gen", "gen_speedup"), ("attn", "attn_speedup"), ("attn_share", "mem"), ("err", "pix"))

CSS = """
.gradio-container footer { margin-top: 0 !important; }  /* the page at rest fits 900 px: nothing left to scroll */
#controls { gap: 4px; }
#status:not(:has(.bg-error)) { display: none; }  /* no empty block under the button: the page fits 900 px */
#controls .block { padding: 6px 8px; }
#status:empty { display: none; }
#controls .bg-hint { font-size: 12px; color: #555; }
#controls :is(#backends-published, #backends-variants) label { padding: 3px 8px; }  /* 13 backends fit 900 px */
#status .bg-error { color: #b00020; font-weight: 600; margin: 0; overflow-wrap: anywhere; }  /* long paths, URLs */
.gradio-container:has(#status .bg-error) .bg-idle { display: none; }  /* an error replaces the idle hint */
#measurements [role=gridcell] span { word-break: normal; overflow-wrap: normal; }  /* break at spaces, hyphens */
#measurements [role=gridcell]:is([data-col="2"], [data-col="3"], [data-col="4"], [data-col="5"], [data-col="6"],
  [data-col="7"], [data-col="8"], [data-col="9"]) span { white-space: nowrap; }  /* numbers are never broken */
#measurements :is([role=gridcell], [role=columnheader]) > div { padding-left: 4px; padding-right: 4px; }
#measurements [role=gridcell] span { font-size: 13px; }  /* 11 columns fit 1400 px */
#measurements [role=columnheader] span { font-size: 12px; }  /* headers break at spaces only */
#bg-results { --label-w: 232px; }
#bg-results .bg-legend { font-size: 12px; color: #555; margin: 0 0 4px 0; white-space: normal; }
#bg-results .bg-row { display: flex; align-items: flex-start; gap: 6px; margin-bottom: 4px; }
#bg-results .bg-label { flex: 0 0 var(--label-w); width: var(--label-w); font-size: 12.5px; line-height: 15px;
                        overflow: hidden; white-space: nowrap; }
#bg-results .bg-name { font-weight: 700; font-size: 14px; }
#bg-results .bg-group { display: inline-block; margin: 1px 0; padding: 0 5px; border-radius: 4px; font-size: 11.5px;
                        line-height: 15px; }
#bg-results .bg-published { background: #dbeafe; color: #1e3a8a; }
#bg-results .bg-variant { background: #fde68a; color: #78350f; }
#bg-results .bg-reference { background: #e5e7eb; color: #111827; }
#bg-results .bg-num { display: inline-block; margin-right: 8px; }
#bg-results .bg-images { display: flex; gap: 3px; flex-wrap: nowrap; }
#bg-results .bg-img { width: var(--side); height: var(--side); object-fit: contain; image-rendering: auto; }
#bg-results .bg-scale { display: flex; align-items: center; gap: 8px; font-size: 12.5px; margin: 0 0 4px 0; }
#bg-results .bg-bar { display: inline-block; width: 260px; height: 14px; border: 1px solid #999; }
"""


def parameter_help(backends: Sequence[str]) -> str:
    """Markdown list (narrow enough for the controls column): each backend's group, paper and tunable
    parameters with their defaults (None = chosen from the budget)."""
    lines = ["Parameters left unset are chosen from the budget (default shown; None = from the budget)."]
    for name in backends:
        info = attention_info(name)
        group = "published" if info["published"] else f"project variant of {info['variant_of']}"
        params = ", ".join(f"`{key}={value}`" for key, value in tunable_parameters(name).items()) or "none"
        lines.append(f"- **{name}** ({group}; {info['paper']}): {params}")
    return "\n".join(lines)


def _side(rows: int, cols: int) -> str:
    """CSS size of one image so that ``rows`` x ``cols`` fit the window (1400x900 included) without scrolling."""
    return (f"min({THUMB_MAX}px, calc((100vh - 150px) / {rows} - 4px), "
            f"calc((100vw - 450px - var(--label-w)) / {cols} - 3px))")


def rows_html(state: Sequence[dict[str, Any]], show_diff: bool) -> str:
    """The results: one labelled row per backend (name, group, numbers, then its images or heatmaps)."""
    if not state:
        return "<div id='bg-results'><p class='bg-legend bg-idle'>Choose backends and press Generate.</p></div>"
    vmax = max(float(run["diff"].max()) for run in state)
    cols = len(state[0]["images"])
    side = _side(len(state), cols)
    parts = [f"<div id='bg-results' style='--side: {side}'>", f"<p class='bg-legend'>{html.escape(NUMBERS_LEGEND)}</p>"]
    if show_diff:
        parts.append(
            f"<div class='bg-scale' id='bg-scale'><span>heatmap {html.escape(DIFF_TITLE)}:</span><span>0</span>"
            f"<span class='bg-bar' style='background: {colormap_css()}'></span>"
            f"<span class='bg-max'>max {vmax:.4g}</span></div>"
        )
    for run in state:
        images = heatmap(run["diff"], vmax) if show_diff else run["images"]
        group_class = {"published": "bg-published", "reference": "bg-reference"}.get(run["group"], "bg-variant")
        numbers = "<br>".join(" ".join(_number_span(key, run["numbers"][key]) for key in line)
                              for line in _line_keys(run["numbers"]))
        thumbs = "".join(f"<img class='bg-img' alt='{html.escape(run['name'])} image {i + 1}' "
                         f"src='{thumbnail_uri(im, THUMB_MAX)}'>" for i, im in enumerate(images))
        parts.append(
            f"<div class='bg-row' data-backend='{html.escape(run['name'])}'><div class='bg-label'>"
            f"<span class='bg-name'>{html.escape(run['name'])}</span><br>"
            f"<span class='bg-group {group_class}'>{html.escape(run['group'])}</span><br>{numbers}</div>"
            f"<div class='bg-images'>{thumbs}</div></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def _number_span(key: str, text: str) -> str:
    tip = f" title='{html.escape(SPEED_METRICS[key].doc)}'" if key in SPEED_METRICS else ""
    return f"<span class='bg-num' data-key='{key}'{tip}>{html.escape(text)}</span>"


def _line_keys(numbers: dict[str, str]) -> list[list[str]]:
    """The keys of ``numbers`` by label line: NUMBER_LINES' order, any other key on a last line."""
    lines = [[key for key in line if key in numbers] for line in NUMBER_LINES]
    lines.append([key for key in numbers if not any(key in line for line in NUMBER_LINES)])
    return [line for line in lines if line]


def number_lines(numbers: dict[str, str]) -> list[str]:
    """A row's numbers (``BackendRun.numbers``) as the label's lines of text, two numbers a line."""
    return ["  ".join(numbers[key] for key in line) for line in _line_keys(numbers)]


def status_html(message: str) -> str:
    return f"<p class='bg-error' role='alert'>{html.escape(message)}</p>" if message else ""


class ComparisonApp:
    """Holds the model cache and the device; its methods are the UI callbacks (callable without a server)."""

    def __init__(self, default_model: str, device: str, cache: GeneratorCache | None = None):
        self.default_model = default_model
        self.device = device
        self.cache = cache or GeneratorCache()
        self.scratch = Path(tempfile.mkdtemp(prefix="biggan-attn-app-"))  # grid PNGs; removed at exit
        atexit.register(self.cleanup)

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def compare(self, model, class_choice, seed, truncation, num_images, backends, budget, parameters) -> list[dict]:
        """Form values -> stored runs (one dict per backend, exact first); ValueError on bad input or NaN/inf images."""
        G = self.cache.get(model_name(model), self.device)
        request = parse_request(model, class_choice, seed, truncation, num_images, backends, budget, parameters,
                                G.num_classes)
        shape = G.attention_shape()
        for name, kwargs in request.backends:
            checked_backend(name, kwargs, shape)  # e.g. topk's k > Nk: refused before any image is generated
        class_ids = torch.tensor(request.class_ids)
        # a compiled generator compiles again for a new batch size: its warm-up runs the whole batch
        warmup = request.num_images if self.cache.compile_backend is not None else 1
        runs = compare_backends(G, range(request.num_images), class_ids, request.truncation, request.seed,
                                request.backends, warmup=warmup)
        setting = grid_setting(request.model, request.budget, request.seed, request.truncation, request.class_ids,
                               request.backends)
        return [_run_state(run, request.budget) | {"setting": setting} for run in runs]

    def generate(self, model, class_choice, seed, truncation, num_images, published, variants, budget, parameters,
                 show_diff, state=None):
        """Form -> (status, rows, plot, table, grid PNG, state). On an error only the status changes:
        the previous results stay on the page; the next success clears the message."""
        try:
            with _gpu_memory_reported():
                runs = self.compare(model, class_choice, seed, truncation, num_images,
                                    [*(published or []), *(variants or [])], budget, parameters)
        except (ValueError, FileNotFoundError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            return status_html(message), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        html_rows, grid_path = self.render(runs, show_diff)
        table = [[run["name"], run["group"], *run["values"], run["params"]] for run in runs]
        return status_html(""), html_rows, error_plot(runs), table, grid_path, runs

    def render(self, state, show_diff):
        """Stored runs -> (rows HTML with images or difference heatmaps, grid PNG path)."""
        if not state:  # toggled before anything was generated
            return rows_html([], False), None
        return rows_html(state, bool(show_diff)), str(self._write_grid(state, bool(show_diff)))

    def _write_grid(self, state, show_diff: bool) -> Path:
        self._prune_grids()
        vmax = max(float(run["diff"].max()) for run in state)
        rows = [([run["name"], run["group"], *number_lines(run["numbers"])],
                 heatmap(run["diff"], vmax) if show_diff else run["images"]) for run in state]
        setting = state[0].get("setting")
        picture = grid(rows, scale=(f"heatmap {DIFF_TITLE}", vmax) if show_diff else None,
                       header=grid_header(setting) if setting else ())
        name = grid_file_name(setting, show_diff) if setting else f"grid-{time.time_ns()}.png"
        return write_atomic(self.scratch / name, lambda f: picture.save(f, format="PNG"))

    def _prune_grids(self) -> None:
        grids = sorted(self.scratch.glob("grid-*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
        now = time.time()
        for i, old in enumerate(grids):
            if i >= MAX_GRIDS - 1 or now - old.stat().st_mtime > GRID_MAX_AGE_S:
                old.unlink(missing_ok=True)

    def build(self) -> gr.Blocks:
        published = [name for name in available_attentions(published=True) if name != REFERENCE]
        variants = available_attentions(published=False)
        models = list(dict.fromkeys([self.default_model, *available_models()]))
        with gr.Blocks(title="biggan-attn: attention backends side by side", analytics_enabled=False,
                       fill_width=True, delete_cache=GRADIO_CACHE) as demo:
            with gr.Row(equal_height=False):
                with gr.Column(scale=0, min_width=360, elem_id="controls"):
                    gr.HTML("<b>biggan-attn</b>: same latents, exact vs approximate attention")
                    model = gr.Dropdown(models, value=self.default_model, label="Model", allow_custom_value=True,
                                        elem_id="model")
                    class_choice = gr.Dropdown(class_choices(), value=RANDOM_CLASS, label="ImageNet class",
                                               allow_custom_value=True)
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", min_width=50, elem_id="seed")
                        truncation = gr.Number(0.4, label="Truncation", min_width=70, elem_id="truncation")
                        num_images = gr.Number(4, label="Images", min_width=60, elem_id="num-images")
                        # a fraction of the dense score matrix, as eval/fid.py --budget takes it
                        budget = gr.Dropdown(list(BUDGET_PRESETS), value=DEFAULT_BUDGET_TEXT, allow_custom_value=True,
                                             label="Budget", min_width=100, elem_id="budget")
                    gr.HTML(f"<span class='bg-hint'>truncation in (0, 1]; 1-{MAX_IMAGES} images; budget: fraction of "
                            f"the dense score matrix, {BUDGET_PRESETS[0]} ... {BUDGET_PRESETS[-1]}</span>")
                    chosen_published = gr.CheckboxGroup(published, value=published[:1], elem_id="backends-published",
                                                        label="Published algorithms (exact is always the reference)")
                    chosen_variants = gr.CheckboxGroup(variants, value=[], label="Project variants",
                                                       elem_id="backends-variants")
                    with gr.Row(equal_height=True):
                        run = gr.Button("Generate", variant="primary", elem_id="generate", min_width=120)
                        show_diff = gr.Checkbox(False, label="Heatmaps vs exact", elem_id="show-diff", min_width=150)
                    status = gr.HTML("", elem_id="status")
                    with gr.Accordion("Backend parameters", open=False):  # below the button: opening it moves nothing
                        parameters = gr.Textbox("", lines=2, label="One per line: NAME={json} or {json} for all",
                                                placeholder='topk={"k": 64}', elem_id="parameters")
                        gr.Markdown(parameter_help([*published, *variants]))
                with gr.Column(scale=1):
                    results = gr.HTML(rows_html([], False), elem_id="rows")
                    with gr.Row():
                        plot = gr.Plot(label="Attention error and pixel difference per backend", show_label=False,
                                       format="png", elem_id="plot", scale=2)
                        grid_file = gr.File(label="Grid PNG (row labels and numbers)", elem_id="grid", scale=1)
                    table = gr.Dataframe(headers=TABLE_HEADERS, label="Measurements", interactive=False, wrap=True,
                                         max_height=900, elem_id="measurements",
                                         column_widths=COLUMN_WIDTHS)
            state = gr.State([])
            run.click(self.generate,
                      [model, class_choice, seed, truncation, num_images, chosen_published, chosen_variants, budget,
                       parameters, show_diff, state],
                      [status, results, plot, table, grid_file, state], api_name="generate",
                      concurrency_limit=1, concurrency_id="generator")
            show_diff.change(self.render, [state, show_diff], [results, grid_file], api_name="render")
        return demo


class _gpu_memory_reported:
    """Context: CUDA out-of-memory becomes a ValueError with advice, after freeing the cache."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is not None and issubclass(kind, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            raise ValueError("out of GPU memory: try fewer images, a smaller budget or fewer backends") from None
        return False


def _run_state(run: BackendRun, budget: str) -> dict[str, Any]:
    speed = {name: None if getattr(run, name) is None else float(run.speed_text(name)) for name in SPEED_METRICS}
    values = [round(run.gen_seconds, 3), speed["gen_speedup"], round(run.attn_seconds * 1e3, 2),
              speed["attn_speedup"], speed["attn_share"], round(run.attn_bytes / 2**20, 2),
              float(f"{run.attn_rel_error:.3g}"), float(f"{run.pixel_diff:.3g}")]  # as the row labels print them
    return {"name": run.name, "group": run.group, "budget": budget, "numbers": run.numbers(), "values": values,
            "params": describe(run.params), "images": run.images, "diff": run.diff,
            "attn_rel_error": run.attn_rel_error, "pixel_diff": run.pixel_diff}

