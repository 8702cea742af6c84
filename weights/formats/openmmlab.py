"""OpenMMLab's BigGAN checkpoints (mmgeneration / mmagic ``BigGANGenerator``), e.g. the BigGAN-PyTorch conversion
``biggan_imagenet1k_128x128_cvt_BigGAN-PyTorch_rgb_*.pth``.

The same network as ajbrock's under other names: ``noise2feat``, ``shared_embedding``, ``conv_blocks.{j}``
with the attention as its own entry, ``SNConvModule`` wrapping each conv as ``.conv``, batch-norm
statistics in ``bn.running_*``, ``output_layer.{bn,conv}``. Accepted as a raw generator state dict or a
full training checkpoint whose ``state_dict`` holds ``generator_ema.module.`` (mmagic / mmengine's
``ExponentialMovingAverage`` wrapper, with its ``generator_ema.steps`` counter), ``generator_ema.``
(mmgeneration) or ``generator.`` keys, EMA preferred. It is renamed to ajbrock's names and loaded by
``weights.formats.ajbrock``; spectral norm is either torch's (``weight_orig``, ``weight_u``, ``weight_v``)
or ajbrock's (``u0`` / ``sv0``). Its ``rgb2bgr`` flag only flips the output for OpenMMLab's BGR pipeline;
the weights are RGB, as here.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from common.files import save_checkpoint
from gan.biggan import BigGAN, BigGANConfig

from .ajbrock import ajbrock_config, generator_from_ajbrock_state_dict, random_ajbrock_state_dict
from .base import CheckpointFormat, LoadOptions

PREFIXES = ("generator_ema.module.", "generator_ema.", "generator.")  # in order of preference

_NAMES = {
    "shared_embedding.weight": "shared.weight",
    "output_layer.bn.weight": "output_layer.0.gain",
    "output_layer.bn.bias": "output_layer.0.bias",
    "output_layer.bn.running_mean": "output_layer.0.stored_mean",
    "output_layer.bn.running_var": "output_layer.0.stored_var",
}
_PATTERNS = [  # applied in order to the part after the stage prefix
    (r"^noise2feat\.", "linear."),
    (r"^output_layer\.conv\.", "output_layer.2."),
    (r"^(conv1|conv2|theta|phi|g|o)\.conv\.", r"\1."),
    (r"^shortcut\.conv\.", "conv_sc."),
    (r"^(bn[12])\.bn\.running_(mean|var)$", r"\1.stored_\2"),
    (r"\.weight_orig$", ".weight"),
]


def generator_state(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor] | None:
    """The generator state dict inside an OpenMMLab BigGAN checkpoint (EMA weights preferred), else None."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        return None
    for prefix in PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
        if "shared_embedding.weight" in inner:
            state = inner
            break
    if "shared_embedding.weight" in state and any(isinstance(k, str) and k.startswith("noise2feat.") for k in state):
        return dict(state)
    return None


def looks_like_openmmlab(checkpoint: Mapping[str, object]) -> bool:
    return generator_state(checkpoint) is not None


def from_openmmlab_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenMMLab BigGANGenerator state dict to ajbrock's names (unknown keys pass through unchanged).

    ``conv_blocks.{j}`` is a GBlock unless it has a ``gamma`` (self-attention after the previous GBlock).
    BatchNorm's ``num_batches_tracked`` counters are dropped: inference does not use them.
    """
    stage: dict[str, str] = {}
    block = -1
    for j in sorted({int(k.split(".")[1]) for k in state if re.match(r"conv_blocks\.\d+\.", k)}):
        is_attention = f"conv_blocks.{j}.gamma" in state
        block += not is_attention
        stage[str(j)] = f"blocks.{block}.{1 if is_attention else 0}"
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".num_batches_tracked"):
            continue
        prefix, rest = "", _NAMES.get(key, key)
        found = re.match(r"conv_blocks\.(\d+)\.(.*)$", rest)
        if found:
            prefix, rest = stage[found.group(1)] + ".", found.group(2)
        for pattern, replacement in _PATTERNS:
            rest = re.sub(pattern, replacement, rest)
        renamed[prefix + rest] = value
    return renamed


def to_openmmlab_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ajbrock's names (ajbrock-style SN) -> OpenMMLab's, with the batch norms' ``num_batches_tracked`` counters."""
    stages = sorted({tuple(map(int, k.split(".")[1:3])) for k in state if k.startswith("blocks.")})
    stage = {f"blocks.{i}.{part}": f"conv_blocks.{j}" for j, (i, part) in enumerate(stages)}
    inverse = {ajbrock: mm for mm, ajbrock in _NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in inverse:
            out[inverse[key]] = value
            continue
        if key.startswith("linear."):
            out["noise2feat." + key[len("linear."):]] = value
            continue
        if key.startswith("output_layer.2."):
            out["output_layer.conv." + key[len("output_layer.2."):]] = value
            continue
        block, rest = re.match(r"^(blocks\.\d+\.\d)\.(.*)$", key).groups()
        found = re.match(r"^(bn[12])\.stored_(mean|var)$", rest)
        if found:
            rest = f"{found.group(1)}.bn.running_{found.group(2)}"
            if found.group(2) == "mean":
                out[f"{stage[block]}.{found.group(1)}.bn.num_batches_tracked"] = torch.tensor(0)
        rest = re.sub(r"^(conv1|conv2|theta|phi|g|o)\.", r"\1.conv.", rest)
        rest = re.sub(r"^conv_sc\.", "shortcut.conv.", rest)
        out[f"{stage[block]}.{rest}"] = value
    out["output_layer.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def generator_from_openmmlab(checkpoint: Mapping[str, object], source: str, eps: float | None = None) -> BigGAN:
    """Build a ``BigGAN`` from an OpenMMLab BigGAN checkpoint or generator state dict (names shown as ajbrock's)."""
    state = generator_state(checkpoint)
    if state is None:
        raise ValueError(
            f"{source} is not an OpenMMLab BigGANGenerator checkpoint (no shared_embedding.weight / noise2feat keys)"
        )
    state = from_openmmlab_names(state)
    config = ajbrock_config(state, source, eps)
    label = f"{source} (OpenMMLab BigGANGenerator; keys shown under their BigGAN-PyTorch names)"
    return generator_from_ajbrock_state_dict(state, label, config=config)


def write_random(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """An mmagic-style training checkpoint for ``BigGANConfig(**config_overrides)``: EMA weights under
    ``generator_ema.module.`` (drawn from ``seed``), the non-EMA generator (``seed + 1``) under ``generator.``."""
    config = BigGANConfig(**config_overrides)
    ema, raw = (to_openmmlab_names(random_ajbrock_state_dict(config, s)) for s in (seed, seed + 1))
    state = {f"generator.{k}": v for k, v in raw.items()}
    state |= {f"generator_ema.module.{k}": v for k, v in ema.items()}
    state["generator_ema.steps"] = torch.tensor(1000)
    path = Path(path)
    save_checkpoint({"meta": {"layout": "mmagic BigGAN, random weights"}, "state_dict": state}, path)
    return path


def load(checkpoint: Mapping[str, object], path: Path, options: LoadOptions) -> BigGAN:
    return generator_from_openmmlab(checkpoint, str(path), eps=options.eps)


FORMAT = CheckpointFormat(
    name="openmmlab-biggan",
    summary="OpenMMLab BigGAN (mmgeneration / mmagic, keys [generator_ema.[module.]]shared_embedding / noise2feat.*)",
    file_names=(),
    recognises=looks_like_openmmlab,
    load=load,
    write_random=write_random,
)
