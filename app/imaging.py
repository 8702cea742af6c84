"""Pixels: generator output -> uint8 images, difference heatmaps with their scale, labelled grids, thumbnails."""
from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import common.images

PAD = 2  # pixels between grid cells
COLORMAP = "magma"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) float in [-1,1] -> (B,H,W,3) uint8 NumPy, the same pixels the metrics see (``common.images``)."""
    return common.images.to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


@functools.cache
def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """(256, 3) uint8 colours of matplotlib's ``name`` map, dark (0) to bright (255)."""
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def heatmap(diff: np.ndarray, vmax: float) -> np.ndarray:
    """(N,H,W) non-negative differences -> (N,H,W,3) uint8 colour map, 0 black .. vmax bright."""
    scaled = np.clip(diff / max(vmax, 1e-8), 0.0, 1.0)
    return colormap_lut()[(scaled * 255).round().astype(np.intp)]


def colormap_css(stops: int = 9) -> str:
    """The heatmap's colour map as a CSS ``linear-gradient`` (left = 0, right = the stated maximum)."""
    lut = colormap_lut()
    colours = [lut[round(i * 255 / (stops - 1))] for i in range(stops)]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours) + ")"


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def grid(rows: Sequence[tuple[Sequence[str], np.ndarray]], scale: tuple[str, float] | None = None,
         header: Sequence[str] = ()) -> Image.Image:
    """Labelled rows -> one RGB image. Each row is (label lines, (N,H,W,3) uint8 images); the label column
    holds every line (name, group, numbers). ``header`` lines (the settings) go above the rows;
    ``scale=(title, vmax)`` adds a colour bar 0 .. vmax below."""
    if not rows:
        raise ValueError("grid needs at least one row of images")
    _, h, w, _ = rows[0][1].shape
    font = _font(13)
    line_h = 16
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 3 * PAD + max(int(measure.textlength(line, font=font)) for lines, _ in rows for line in lines) + 4 * PAD
    row_h = max(h, line_h * max(len(lines) for lines, _ in rows) + 2 * PAD)
    ncols = max(images.shape[0] for _, images in rows)
    bar_h = 3 * line_h + 2 * PAD if scale else 0
    head_h = len(header) * line_h + 2 * PAD if header else 0
    head_w = max((int(measure.textlength(line, font=font)) + 4 * PAD for line in header), default=0)
    width = max(label_w + ncols * (w + PAD), 320 if scale else 0, head_w)
    canvas = Image.new("RGB", (width, head_h + PAD + len(rows) * (row_h + PAD) + bar_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(header):
        draw.text((2 * PAD, PAD + i * line_h), line, fill="black", font=font)
    for r, (lines, images) in enumerate(rows):
        top = head_h + PAD + r * (row_h + PAD)
        for i, line in enumerate(lines):
            draw.text((2 * PAD, top + PAD + i * line_h), line, fill="black", font=font)
        for c, image in enumerate(images):
            canvas.paste(Image.fromarray(image), (label_w + c * (w + PAD), top))
    if scale:
        title, vmax = scale
        top = head_h + PAD + len(rows) * (row_h + PAD)
        bar_w = width - 4 * PAD
        ramp = colormap_lut()[np.linspace(0, 255, bar_w).round().astype(np.intp)]  # (bar_w, 3)
        canvas.paste(Image.fromarray(np.repeat(ramp[None], line_h, axis=0)), (2 * PAD, top + line_h))
        draw.text((2 * PAD, top), title, fill="black", font=font)
        draw.text((2 * PAD, top + 2 * line_h), "0", fill="black", font=font)
        draw.text((2 * PAD + bar_w, top + 2 * line_h), f"max {vmax:.4g}", fill="black", font=font, anchor="ra")
    return canvas


def tile(images: np.ndarray, columns: int = 8) -> Image.Image:
    """(N,H,W,3) uint8 -> unlabelled grid image with ``columns`` images per row."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = Image.new("RGB", (PAD + min(n, columns) * (w + PAD), PAD + rows * (h + PAD)), "white")
    for i, image in enumerate(images):
        canvas.paste(Image.fromarray(image), (PAD + (i % columns) * (w + PAD), PAD + (i // columns) * (h + PAD)))
    return canvas


def thumbnail_uri(image: np.ndarray, side: int) -> str:
    """(H,W,3) uint8 -> PNG data URI at most ``side`` pixels wide (downscaled, never upscaled)."""
    picture = Image.fromarray(image)
    if picture.width > side:
        picture = picture.resize((side, round(picture.height * side / picture.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
