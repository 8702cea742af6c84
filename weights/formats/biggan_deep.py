"""The Hugging Face BigGAN-deep checkpoint format (pytorch-pretrained-biggan): config.json + pytorch_model.bin.

The state dict is what ``pytorch_pretrained_biggan.BigGAN(config).state_dict()`` holds: spectral-
normed modules store ``weight_orig`` with power-iteration vectors ``weight_u`` (out,) and
``weight_v`` (in*k*k,); batch norms store ``running_means`` / ``running_vars`` of shape (n_stats, C).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from common.files import save_checkpoint
from gan.biggan_deep import BigGANDeep, BigGANDeepConfig

from ..spectral_norm import fold_torch_spectral_norm
from ..strict import check_state_dict
from .base import CheckpointFormat, LoadOptions, read_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"

# the reference's attention conv names -> gan.layers.SelfAttention's
_ATTENTION_RENAMES = {"snconv1x1_theta": "theta", "snconv1x1_phi": "phi", "snconv1x1_g": "g", "snconv1x1_o_conv": "o"}


def hf_layout(config: BigGANDeepConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the published state dict -> its shape, in the reference's ``state_dict()`` order."""
    ch, cond, n_stats = config.channel_width, 2 * config.z_dim, config.n_stats
    layout: dict[str, tuple[int, ...]] = {"embeddings.weight": (config.z_dim, config.num_classes)}

    def spectral(prefix: str, shape: tuple[int, ...], bias: bool) -> None:
        if bias:
            layout[f"{prefix}.bias"] = shape[:1]
        layout[f"{prefix}.weight_orig"] = shape
        layout[f"{prefix}.weight_u"] = shape[:1]
        layout[f"{prefix}.weight_v"] = (math.prod(shape[1:]),)

    def batch_norm(prefix: str, channels: int) -> None:
        layout[f"{prefix}.running_means"] = (n_stats, channels)
        layout[f"{prefix}.running_vars"] = (n_stats, channels)
        spectral(f"{prefix}.scale", (channels, cond), bias=False)
        spectral(f"{prefix}.offset", (channels, cond), bias=False)

    spectral("generator.gen_z", (4 * 4 * 16 * ch, cond), bias=True)
    index = 0
    for i, (_, cin, cout) in enumerate(config.layers):
        cin, cout, mid = ch * cin, ch * cout, ch * cin // 4
        if i == config.attention_layer_position:
            prefix = f"generator.layers.{index}"
            layout[f"{prefix}.gamma"] = (1,)
            spectral(f"{prefix}.snconv1x1_theta", (cin // 8, cin, 1, 1), bias=False)
            spectral(f"{prefix}.snconv1x1_phi", (cin // 8, cin, 1, 1), bias=False)
            spectral(f"{prefix}.snconv1x1_g", (cin // 2, cin, 1, 1), bias=False)
            spectral(f"{prefix}.snconv1x1_o_conv", (cin, cin // 2, 1, 1), bias=False)
            index += 1
        prefix = f"generator.layers.{index}"
        for k, (c_in, c_out, size) in enumerate([(cin, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, cout, 1)]):
            batch_norm(f"{prefix}.bn_{k}", c_in)
            spectral(f"{prefix}.conv_{k}", (c_out, c_in, size, size), bias=True)
        index += 1
    last = ch * config.layers[-1][2]
    layout["generator.bn.weight"] = (last,)
    layout["generator.bn.bias"] = (last,)
    layout["generator.bn.running_means"] = (n_stats, last)
    layout["generator.bn.running_vars"] = (n_stats, last)
    spectral("generator.conv_to_rgb", (last, last, 3, 3), bias=True)
    return layout


def generator_state_dict(state: Mapping[str, torch.Tensor], config: BigGANDeepConfig) -> dict[str, torch.Tensor]:
    """Published state dict -> ``BigGANDeep`` state dict: folds spectral norm, renames attention, keeps RGB rows."""
    attention = f"generator.layers.{config.attention_layer_position}."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((".weight_u", ".weight_v")):
            continue
        value = value.float()
        if key.endswith(".weight_orig"):
            prefix = key[: -len("_orig")]
            value = fold_torch_spectral_norm(value, state[prefix + "_u"], state[prefix + "_v"], key)
            key = prefix
        if key.startswith(attention):
            module, _, rest = key[len(attention):].partition(".")
            key = attention + _ATTENTION_RENAMES.get(module, module) + (f".{rest}" if rest else "")
        out[key] = value
    out[attention + "gamma"] = out[attention + "gamma"].reshape(())  # (1,) -> the block's scalar
    # the reference slices channels [:3] after conv_to_rgb; computing only those rows is identical
    out["generator.conv_to_rgb.weight"] = out["generator.conv_to_rgb.weight"][:3].clone()
    out["generator.conv_to_rgb.bias"] = out["generator.conv_to_rgb.bias"][:3].clone()
    return out


def build_from_state_dict(state: Mapping[str, torch.Tensor], config: BigGANDeepConfig, source: str) -> BigGANDeep:
    """Strictly check ``state`` against the published layout of ``config`` and build the fp32 generator."""
    check_state_dict(hf_layout(config), state, source)
    with torch.device("meta"):  # no throw-away initialisation: the converted tensors are assigned
        model = BigGANDeep(config)
    model.load_state_dict(generator_state_dict(state, config), strict=True, assign=True)
    return model


def infer_config(state: Mapping[str, torch.Tensor], source: str) -> BigGANDeepConfig:
    """The published config whose layout ``state`` has, for a bare ``pytorch_model.bin`` without config.json."""
    try:
        z_dim, num_classes = state["embeddings.weight"].shape
        ch = state["generator.gen_z.weight_orig"].shape[0] // (4 * 4 * 16)
        n_stats = state["generator.bn.running_means"].shape[0]
    except (KeyError, ValueError, AttributeError):
        raise ValueError(
            f"{source} lacks the keys that identify a BigGAN-deep configuration; put its {CONFIG_NAME} next to it"
        ) from None
    for resolution in (128, 256, 512):
        config = BigGANDeepConfig.preset(
            resolution, z_dim=z_dim, class_embed_dim=z_dim, channel_width=ch, num_classes=num_classes, n_stats=n_stats
        )
        layout = hf_layout(config)
        if set(layout) == set(state):
            return config
    raise ValueError(f"{source} matches no published BigGAN-deep layout (128/256/512); put its {CONFIG_NAME} beside it")


def random_state_dict(config: BigGANDeepConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors in the published layout, valid as a checkpoint.

    Spectral-norm vectors come from a few power iterations (so u.Wv > 0, as in the released files),
    variances are positive, and ``gamma`` is non-zero so the attention layer matters.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layout = hf_layout(config)
    for key, shape in layout.items():
        if key.endswith(("weight_u", "weight_v")):
            continue
        if key.endswith("weight_orig"):
            weight = torch.randn(shape, generator=gen)
            state[key] = weight
            state[key[: -len("_orig")] + "_u"], state[key[: -len("_orig")] + "_v"] = _power_iteration(weight, gen)
        elif key.endswith("running_vars"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith(("running_means", "bias")):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("gamma"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key == "generator.bn.weight":
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:  # embeddings.weight
            state[key] = 0.5 * torch.randn(shape, generator=gen)
    return {key: state[key] for key in layout}


def _power_iteration(weight: torch.Tensor, gen: torch.Generator, steps: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(u (out,), v (in*k*k,)) after a few power iterations from a random u, as training leaves them."""
    matrix = weight.reshape(weight.shape[0], -1)
    u = F.normalize(torch.randn(matrix.shape[0], generator=gen), dim=0)
    for _ in range(steps):
        v = F.normalize(torch.mv(matrix.t(), u), dim=0)
        u = F.normalize(torch.mv(matrix, v), dim=0)
    return u, v


def write_checkpoint_dir(path: Path, config: BigGANDeepConfig, state: Mapping[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``pytorch_model.bin`` into directory ``path`` (created)."""
    save_checkpoint(state, path / WEIGHTS_NAME)
    (path / CONFIG_NAME).write_text(config.to_json(), encoding="utf-8")
    return path


def recognises(state: Mapping[str, object]) -> bool:
    return "embeddings.weight" in state and any(str(key).startswith("generator.gen_z.") for key in state)


def load(state: Mapping[str, torch.Tensor], path: Path, options: LoadOptions) -> BigGANDeep:
    """The generator of ``path``'s state dict; the ``config.json`` beside it if there is one, else inferred."""
    if options.eps is not None:
        raise ValueError(f"{path}: eps applies to BigGAN-PyTorch checkpoints; BigGAN-deep's is in its {CONFIG_NAME}")
    config_path = path.with_name(CONFIG_NAME)
    config = read_config(config_path, BigGANDeepConfig) if config_path.is_file() else infer_config(state, str(path))
    return build_from_state_dict(state, config, str(path))


def write_random(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Directory ``path`` with config.json + pytorch_model.bin: the 128 preset unless ``output_dim`` picks 256/512."""
    overrides = dict(config_overrides)
    config = BigGANDeepConfig.preset(overrides.pop("output_dim", 128), **overrides)
    return write_checkpoint_dir(Path(path), config, random_state_dict(config, seed))


FORMAT = CheckpointFormat(
    name="biggan-deep",
    summary="BigGAN-deep, Hugging Face port (keys embeddings.weight / generator.*)",
    file_names=(WEIGHTS_NAME,),
    recognises=recognises,
    load=load,
    write_random=write_random,
)
