"""Reference statistics (mu, sigma) of real images: named public sets, local .npz files, image folders.

Named sets are the ImageNet reference batches of the ADM evaluation suite (openai/guided-diffusion,
``evaluations/``). Their .npz files hold the images (``arr_0``) plus ``mu``/``sigma`` of the 2048-d
pool3 features; only ``mu``/``sigma`` are kept, in the cache as ``<name>.npz``. They were computed
with the TF Inception graph, which pytorch-fid's network ports.

A local .npz needs ``mu`` (D,) and ``sigma`` (D, D) (pytorch-fid, BigGAN-PyTorch and ADM all write those).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.download import RemoteFile, cache_root, fetch_files

_ADM = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet"
NAMED_STATS = {
    "imagenet-128": f"{_ADM}/128/VIRTUAL_imagenet128_labeled.npz",
    "imagenet-256": f"{_ADM}/256/VIRTUAL_imagenet256_labeled.npz",
    "imagenet-512": f"{_ADM}/512/VIRTUAL_imagenet512.npz",
}
# SHA-256 of the batches where a published copy states it (imagenet-256, 2,037,122,530 bytes); None: recorded
# at first download and checked on every later one (no digest of the 128 / 512 batches is published)
NAMED_STATS_SHA256 = {
    "imagenet-128": None,
    "imagenet-256": "b32732719497e42660a9affb4a966068cba0855ac449b82015e34ec376d20758",
    "imagenet-512": None,
}


def cache_dir() -> Path:
    """The project's cache root: ``$BIGGAN_ATTN_CACHE``, default ``~/.cache/biggan-attn`` (``common.download``)."""
    return cache_root()


def named_stats_path(name: str) -> Path:
    return cache_dir() / "ref_stats" / f"{name}.npz"


def save_stats(path: Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write mu/sigma to ``path`` atomically (temp file in the same folder, then rename)."""
    from common.files import write_atomic

    write_atomic(path, lambda f: np.savez(f, mu=mu, sigma=sigma))


def read_stats(path: str | Path, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """mu (D,), sigma (D, D) float64 from an .npz; ValueError on missing keys or a wrong dimension."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file not found: {path} (need an .npz with mu and sigma)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                raise ValueError(
                    f"{path} lacks key(s) {', '.join(missing)}; it holds {', '.join(data.files) or 'nothing'}; "
                    "need mu and sigma"
                )
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read reference statistics {path}: {err}") from None
    if mu.shape != (feature_dim,) or sigma.shape != (feature_dim, feature_dim):
        raise ValueError(
            f"{path} holds mu {mu.shape} and sigma {sigma.shape}; the Inception features have {feature_dim} "
            f"dimensions, so need mu ({feature_dim},) and sigma ({feature_dim}, {feature_dim})"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path} holds NaN or inf in mu/sigma")
    return mu, sigma


def _download_named(name: str, target: Path) -> None:
    """Fetch the ADM reference batch (SHA-256 checked), keep only mu/sigma at ``target``, delete the batch.

    The batch's digest record (``<batch>.sha256``, for batches without a published hash) stays, so a
    later download of it must match.
    """
    url = NAMED_STATS[name]
    remote = RemoteFile(url.rsplit("/", 1)[1], url, NAMED_STATS_SHA256[name])
    alternative = f"(or an .npz with just mu/sigma at {target}), set BIGGAN_ATTN_CACHE, or pass --ref-stats FILE.npz"
    what = f"reference statistics {name!r}"  # the error adds the URL
    batch = fetch_files((remote,), cache_dir() / "downloads", what, alternative=alternative) / remote.name
    try:
        with np.load(batch, allow_pickle=False) as data:
            save_stats(target, data["mu"], data["sigma"])
    except (OSError, KeyError, ValueError) as err:
        reason = f"{type(err).__name__}: {err}"
        raise ValueError(f"{batch} is not an ADM reference batch with mu and sigma ({reason})") from None
    batch.unlink()


def resolve_named_or_file(spec: str, feature_dim: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``imagenet-128|256|512`` (downloaded once, cached) or a path to an .npz -> (mu, sigma, source)."""
    if spec in NAMED_STATS:
        path = named_stats_path(spec)
        if not path.is_file():
            _download_named(spec, path)
        return (*read_stats(path, feature_dim), spec)
    if spec.endswith(".npz") or os.sep in spec or Path(spec).exists():
        return (*read_stats(spec, feature_dim), str(Path(spec).resolve()))
    raise ValueError(
        f"unknown reference statistics {spec!r}; use {', '.join(NAMED_STATS)} or a path to an .npz with mu and sigma"
    )
