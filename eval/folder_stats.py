"""Reference statistics computed from a folder of real images, cached by folder content and Inception."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .frechet import feature_statistics
from common.images import check_readable, list_images, read_batches
from .reference_stats import cache_dir, read_stats, save_stats


def _folder_key(files: list[Path], inception_id: str) -> str:
    digest = hashlib.sha256(inception_id.encode())
    for path in files:
        st = path.stat()
        digest.update(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def folder_statistics(folder: str | Path, inception, inception_id: str, batch_size: int,
                      device: torch.device, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """(mu, sigma, cache path) of the Inception pool3 features of every image in ``folder``."""
    files = list_images(folder)
    path = cache_dir() / "ref_stats" / f"images-{_folder_key(files, inception_id)}.npz"
    if path.is_file():
        return (*read_stats(path, inception.feature_dim), str(path))
    check_readable(files)
    feats = []
    with tqdm(total=len(files), desc=f"reference features {Path(folder).name}", unit="img", disable=not show_progress, leave=False) as bar:
        for batch in read_batches(files, batch_size):
            feats.append(inception(batch.to(device))[0].double())
            bar.update(batch.shape[0])
    mu, sigma = feature_statistics(torch.cat(feats))
    save_stats(path, mu.cpu().numpy(), sigma.cpu().numpy())
    return mu.cpu().numpy(), sigma.cpu().numpy(), str(path)
