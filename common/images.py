"""Image tensors as the metric sees them: generated images quantised like saved PNGs, image folders read back.

Both paths end in the same place: (B,3,H,W) float in [-1,1] holding multiples of 1/127.5, so samples
and reference images reach the Inception network through identical arithmetic.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) float in [-1,1] -> (B,3,H,W) uint8, rounding (x+1)*127.5 (as a saved PNG holds it)."""
    return ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [-1,1] -> the same images rounded to 8 bits, as float32 in [-1,1]."""
    return to_uint8(images).float() / 127.5 - 1.0


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in or below ``folder``, sorted; ValueError/FileNotFoundError when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found or not a directory: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        kinds = ", ".join(IMAGE_SUFFIXES)
        raise ValueError(f"{root} holds {len(files)} image(s) ({kinds}); need at least 2 for statistics")
    return files


def check_readable(files: list[Path]) -> None:
    """Open every file's header (cheap, no decoding) so a bad file fails before any work starts."""
    from PIL import Image

    for path in files:
        try:
            with Image.open(path):
                pass
        except OSError as err:
            raise ValueError(f"unreadable image {path}: {err}") from None


def read_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    """Yield (B,3,H,W) float tensors in [-1,1]; images in one batch must share a size."""
    from PIL import Image

    for start in range(0, len(files), batch_size):
        arrays = []
        for path in files[start:start + batch_size]:
            try:
                with Image.open(path) as img:
                    arrays.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            except OSError as err:
                raise ValueError(f"unreadable image {path}: {err}") from None
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"images in {files[start].parent} differ in size; resize them to one size first")
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # (B,3,H,W) in [0,255]
        yield batch / 127.5 - 1.0
