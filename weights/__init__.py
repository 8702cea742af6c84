"""Where pretrained generators come from: names, downloads, local paths, format detection, random checkpoints.

    G = load_generator("biggan-deep-128", attention="exact", device="cpu")   # or a local dir / file
    write_random_checkpoint(tmp / "deep", channel_width=8)                   # for tests and demos

Checkpoint formats are a table (``weights/formats``); downloads go through ``common.download``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.devices import resolve_device, resolve_dtype
from common.download import cache_root, fetch_files
from common.files import read_checkpoint
from gan.attention import AttentionBackend, build_attention
from gan.generator import Generator

from .formats import FORMAT_NAMES, FORMATS, LoadOptions, detect_format, format_named
from .formats.biggan_deep import CONFIG_NAME
from .registry import MODELS, ModelSource, available_models

__all__ = ["available_models", "load_generator", "model_cache_dir", "resolve_device", "resolve_dtype",
           "write_random_checkpoint"]



def load_generator(
    name_or_path: str | Path,
    attention: str | AttentionBackend = "exact",
    attention_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    eps: float | None = None,
) -> Generator:
    """A pretrained generator in eval mode with frozen weights, attention backend in place.

    ``name_or_path``: one of ``available_models()``, a directory (config.json + pytorch_model.bin,
    or G_ema.pth) or a checkpoint file. Spectral norm is folded in fp32, then the model is cast to
    ``dtype`` (float32 default; float16 / bfloat16 accepted) on ``device`` (default: cuda if available).
    ``eps``: batch-norm and spectral-norm epsilon of a BigGAN-PyTorch checkpoint without a sidecar
    (1e-4 for the output of BigGAN-PyTorch's TF-Hub converter).
    """
    options = LoadOptions(eps=eps)
    if isinstance(attention, AttentionBackend):
        if attention_kwargs:
            raise ValueError("pass attention_kwargs with an attention name, not with a built AttentionBackend")
        backend = attention
    else:
        backend = build_attention(attention, **(attention_kwargs or {}))  # bad names fail before loading
    target_device, target_dtype = resolve_device(device), resolve_dtype(dtype)
    model = _load_fp32(name_or_path, options)
    model.set_attention(backend)
    model.eval().requires_grad_(False)
    return model.to(device=target_device, dtype=target_dtype)


def write_random_checkpoint(path: str | Path, fmt: str = "biggan-deep", seed: int = 0, **config_overrides: Any) -> Path:
    """Write random weights in a published format and return what ``load_generator`` takes.

    ``fmt="biggan-deep"``: directory ``path`` with config.json + pytorch_model.bin in the exact
    Hugging Face key layout (the 128 config unless ``output_dim`` picks 256/512; other fields override).
    ``fmt="biggan"``: ajbrock's G_ema.pth; ``fmt="openmmlab-biggan"``: an mmagic training checkpoint.
    """
    return format_named(fmt).write_random(path, seed=seed, **config_overrides)


def model_cache_dir(name: str) -> Path:
    """Where the files of the named model are downloaded to (and may be put by hand): ``<cache root>/models/<name>``."""
    return cache_root() / "models" / name


def fetch_model(source: ModelSource) -> Path:
    """A local directory holding every file of ``source``, downloading only what is missing."""
    if not source.files:
        raise ValueError(
            f"{source.name} cannot be downloaded automatically: pass the path of a local G_ema.pth; "
            f"public copies: {source.where}"
        )
    folder = model_cache_dir(source.name)
    return fetch_files(source.files, folder, source.name, source.hub, "or pass a local directory path")


def _load_fp32(name_or_path: str | Path, options: LoadOptions) -> Generator:
    key = str(name_or_path)
    if key in MODELS:
        return _load_path(fetch_model(MODELS[key]), options)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_path(path, options)
    if isinstance(name_or_path, str) and "/" not in key and "\\" not in key and not path.suffix:
        raise ValueError(
            f"unknown model name {key!r}; available: {', '.join(available_models())}, "
            f"or a local directory or checkpoint file ({', '.join(FORMAT_NAMES)})"
        )
    names = ", ".join(available_models())
    raise FileNotFoundError(f"no such file or directory: {path}; pass an existing path or one of {names}")


def _load_path(path: Path, options: LoadOptions) -> Generator:
    if path.is_dir():
        for name in (name for fmt in FORMATS for name in fmt.file_names):
            if (path / name).is_file():
                return _load_file(path / name, options)
        expected = " / ".join(f"{name} ({fmt.name})" for fmt in FORMATS for name in fmt.file_names)
        raise FileNotFoundError(f"{path} holds none of {expected}; pass the checkpoint file itself for other names")
    if path.name == CONFIG_NAME:
        return _load_path(path.parent, options)
    return _load_file(path, options)


def _load_file(path: Path, options: LoadOptions) -> Generator:
    state = read_checkpoint(path)
    return detect_format(state, str(path)).load(state, path, options)
