"""Where pretrained generators come from: names, downloads, local paths, format detection, random checkpoints.

    G = load_generator("biggan-deep-128", attention="exact", device="cpu")   # or a local dir / file
    write_random_checkpoint(tmp / "deep", channel_width=8)                   # for tests and demos
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gan.attention import AttentionBackend, build_attention
from gan.biggan_deep import BigGANDeepConfig
from gan.generator import Generator

from .download import fetch
from common.files import read_checkpoint

from .formats import BIGGAN, BIGGAN_DEEP, FORMATS, detect_format, read_config
from .hf_deep import CONFIG_NAME, WEIGHTS_NAME, build_from_state_dict, infer_config, random_state_dict, write_checkpoint_dir
from .registry import MODELS, available_models

__all__ = ["available_models", "load_generator", "resolve_device", "write_random_checkpoint"]

AJBROCK_NAMES = ("G_ema.pth", "G.pth")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def load_generator(
    name_or_path: str | Path,
    attention: str | AttentionBackend = "exact",
    attention_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Generator:
    """A pretrained generator in eval mode with frozen weights, attention backend in place.

    ``name_or_path``: one of ``available_models()``, a directory (config.json + pytorch_model.bin,
    or G_ema.pth) or a checkpoint file. Spectral norm is folded in fp32, then the model is cast to
    ``dtype`` (float32 default; float16 / bfloat16 accepted) on ``device`` (default: cuda if available).
    """
    if isinstance(attention, AttentionBackend):
        if attention_kwargs:
            raise ValueError("pass attention_kwargs with an attention name, not with a built AttentionBackend")
        backend = attention
    else:
        backend = build_attention(attention, **(attention_kwargs or {}))  # bad names fail before loading
    model = _load_fp32(name_or_path)
    model.set_attention(backend)
    model.eval().requires_grad_(False)
    return model.to(device=resolve_device(device), dtype=resolve_dtype(dtype))


def write_random_checkpoint(path: str | Path, fmt: str = BIGGAN_DEEP, seed: int = 0, **config_overrides: Any) -> Path:
    """Write random weights in a published format and return what ``load_generator`` takes.

    ``fmt="biggan-deep"``: directory ``path`` with config.json + pytorch_model.bin in the exact
    Hugging Face key layout (the 128 config unless ``output_dim`` picks 256/512; other fields override).
    ``fmt="biggan"``: ajbrock's G_ema.pth (see ``weights.ajbrock``).
    """
    if fmt == BIGGAN_DEEP:
        overrides = dict(config_overrides)
        config = BigGANDeepConfig.preset(overrides.pop("output_dim", 128), **overrides)
        return write_checkpoint_dir(Path(path), config, random_state_dict(config, seed))
    if fmt == BIGGAN:
        from .ajbrock import write_random_ajbrock_checkpoint

        return write_random_ajbrock_checkpoint(path, seed=seed, **config_overrides)
    raise ValueError(f"unknown checkpoint format {fmt!r}; accepted: {', '.join(FORMATS)}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cuda when available, else cpu; a named device must parse and, if CUDA, be present."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    resolved = _DTYPES.get(dtype.lower()) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported dtype {dtype!r}; accepted: float32, float16, bfloat16")
    return resolved


def _load_fp32(name_or_path: str | Path) -> Generator:
    key = str(name_or_path)
    if key in MODELS:
        source = MODELS[key]
        if not source.urls:
            raise ValueError(f"{key} cannot be downloaded automatically: pass the path of a local G_ema.pth; public copies: {source.where}")
        return _load_path(fetch(source))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_path(path)
    if isinstance(name_or_path, str) and "/" not in key and "\\" not in key and not path.suffix:
        raise ValueError(
            f"unknown model name {key!r}; available: {', '.join(available_models())}, "
            f"or a local directory ({CONFIG_NAME} + {WEIGHTS_NAME}) or checkpoint file"
        )
    raise FileNotFoundError(f"no such file or directory: {path}; pass an existing path or one of {', '.join(available_models())}")


def _load_path(path: Path) -> Generator:
    if path.is_dir():
        for name in (WEIGHTS_NAME, *AJBROCK_NAMES):
            if (path / name).is_file():
                return _load_file(path / name)
        raise FileNotFoundError(
            f"{path} holds neither {WEIGHTS_NAME} (+ {CONFIG_NAME}, BigGAN-deep) nor {' / '.join(AJBROCK_NAMES)} (BigGAN)"
        )
    if path.name == CONFIG_NAME:
        return _load_path(path.parent)
    return _load_file(path)


def _load_file(path: Path) -> Generator:
    state = read_checkpoint(path)
    source = str(path)
    if detect_format(state, source) == BIGGAN:
        from .ajbrock import generator_from_ajbrock_state_dict

        return generator_from_ajbrock_state_dict(state, source=source)
    config_path = path.with_name(CONFIG_NAME)
    config = read_config(config_path, BigGANDeepConfig) if config_path.is_file() else infer_config(state, source)
    return build_from_state_dict(state, config, source)
