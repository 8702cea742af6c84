"""Reference statistics from a folder of real images, cached by folder content, resolution and Inception.

Every image, whatever its size, is brought to the generator's ``resolution`` x ``resolution`` by the
protocol of ADM's ImageNet reference batches (guided-diffusion's ``center_crop_arr``): halve with a box
filter while the short side is at least twice the target, resize with PIL bicubic so the short side
equals the target, then crop the centre square. So a non-square image is cropped, never squashed, and
the rule does not depend on the batch size. Then the 8-bit images take the same path as generated ones.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.images import check_readable, list_images

from .frechet import feature_statistics
from .reference_stats import cache_dir, read_stats, save_stats

CROP_PROTOCOL = "adm-center-crop"  # recorded in results.json


def center_crop_resize(image, resolution: int) -> np.ndarray:
    """PIL image -> (resolution, resolution, 3) uint8: box halvings, bicubic short side, centre crop."""
    from PIL import Image

    image = image.convert("RGB")
    while min(image.size) >= 2 * resolution:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - resolution) // 2, (arr.shape[1] - resolution) // 2
    return arr[top:top + resolution, left:left + resolution]


def read_cropped(files: list[Path], resolution: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield (B,3,R,R) float tensors in [-1, 1] (8-bit levels), each image cropped and resized on its own."""
    from PIL import Image

    for start in range(0, len(files), batch_size):
        arrays = []
        for path in files[start:start + batch_size]:
            try:
                with Image.open(path) as img:
                    arrays.append(center_crop_resize(img, resolution))
            except OSError as err:
                raise ValueError(f"unreadable image {path}: {err}") from None
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()  # (B,3,R,R) in [0, 255]
        yield batch / 127.5 - 1.0


def _folder_key(files: list[Path], inception_id: str, input_mode: str, resolution: int) -> str:
    digest = hashlib.sha256(f"{inception_id}|{input_mode}|{resolution}|{CROP_PROTOCOL}".encode())
    for path in files:
        st = path.stat()
        digest.update(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def folder_statistics(folder: str | Path, inception, inception_id: str, batch_size: int, device: torch.device,
                      resolution: int, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, cache path) of the Inception pool3 features of every image in ``folder`` at ``resolution``."""
    files = list_images(folder)
    key = _folder_key(files, inception_id, inception.input_mode, resolution)
    path = cache_dir() / "ref_stats" / f"images-{key}.npz"
    if path.is_file():
        return (*read_stats(path, inception.feature_dim), str(path))
    check_readable(files)
    feats = []
    with tqdm(total=len(files), desc=f"reference features {Path(folder).name}", unit="img",
              disable=not show_progress, leave=False) as bar:
        for batch in read_cropped(files, resolution, batch_size):
            feats.append(inception(batch.to(device))[0].double())
            bar.update(batch.shape[0])
    mu, sigma = feature_statistics(torch.cat(feats))
    save_stats(path, mu.cpu().numpy(), sigma.cpu().numpy())
    return mu.cpu().numpy(), sigma.cpu().numpy(), str(path)
