"""Pixels: generator output -> uint8 images, difference heatmaps, labelled grids."""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import common.images as eval_images

PAD = 2  # pixels between grid cells


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) float in [-1,1] -> (B,H,W,3) uint8 NumPy, the same pixels the metrics see (``common.images``)."""
    return eval_images.to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


@functools.cache
def _colormap_lut(name: str = "magma") -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)  # (256, 3)


def heatmap(diff: np.ndarray, vmax: float) -> np.ndarray:
    """(N,H,W) non-negative differences -> (N,H,W,3) uint8 colour map, 0 black .. vmax bright."""
    scaled = np.clip(diff / max(vmax, 1e-8), 0.0, 1.0)
    return _colormap_lut()[(scaled * 255).round().astype(np.intp)]


def grid(rows: Sequence[tuple[str, np.ndarray]]) -> Image.Image:
    """Labelled rows of (label, (N,H,W,3) uint8 images) -> one RGB image, one row per label."""
    if not rows:
        raise ValueError("grid needs at least one row of images")
    _, h, w, _ = rows[0][1].shape
    font = ImageFont.load_default(size=max(10, min(h // 6, 20)))
    label_w = 4 * PAD + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)) for label, _ in rows) + PAD
    ncols = max(images.shape[0] for _, images in rows)
    canvas = Image.new("RGB", (label_w + ncols * (w + PAD), PAD + len(rows) * (h + PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        top = PAD + r * (h + PAD)
        draw.text((PAD, top + h // 2), label, fill="black", font=font, anchor="lm")
        for c, image in enumerate(images):
            canvas.paste(Image.fromarray(image), (label_w + c * (w + PAD), top))
    return canvas


def tile(images: np.ndarray, columns: int = 8) -> Image.Image:
    """(N,H,W,3) uint8 -> unlabelled grid image with ``columns`` images per row."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = Image.new("RGB", (PAD + min(n, columns) * (w + PAD), PAD + rows * (h + PAD)), "white")
    for i, image in enumerate(images):
        canvas.paste(Image.fromarray(image), (PAD + (i % columns) * (w + PAD), PAD + (i // columns) * (h + PAD)))
    return canvas
