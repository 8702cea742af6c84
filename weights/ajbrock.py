"""ajbrock's BigGAN-PyTorch checkpoints (``G_ema.pth`` / ``G.pth``): layout, strict loading, SN folding.

The checkpoint is a plain state dict. Every spectral-normed layer (``linear``, each GBlock's
``conv1/conv2/conv_sc`` and its batch norms' ``gain/bias`` linears, the attention's
``theta/phi/g/o``, ``output_layer.2``) stores its raw ``weight`` (plus ``bias`` where it has one) and
the buffers ``u0`` (1, out) and ``sv0`` (1,). At inference ajbrock's SN layer runs one power
iteration from ``u0`` without updating it and divides the weight by the singular value estimate
of that iteration; ``sv0`` is a training log and is not used. ``fold_ajbrock_spectral_norm`` does
exactly that once, at load.

Config: every shape-determined field (G_ch, dim_z, shared_dim, hier, resolution, attention
resolutions, num_classes) is inferred from the tensor shapes. The two epsilons cannot be, so a
checkpoint whose config differs from what inference gives (non-default ``sn_eps`` / ``bn_eps``) has
a sidecar ``<file>.json`` (``BigGANConfig.to_json``) next to it; an explicit ``config`` overrides both.

OpenMMLab's conversion of the same checkpoint (mmgeneration / mmagic ``BigGANGenerator``, e.g.
``biggan_imagenet1k_128x128_cvt_BigGAN-PyTorch_rgb_*.pth``) is the same network under other names
(``noise2feat``, ``shared_embedding``, ``conv_blocks.{j}`` with attention as its own entry,
``bn.running_*``, ``output_layer.{bn,conv}``). It is accepted as a raw state dict or a full checkpoint
(``state_dict`` with ``generator_ema.`` / ``generator.`` prefixes, EMA preferred), renamed to the
ajbrock names, and loaded the same way. Its spectral norm is either torch's (``weight_orig``,
``weight_u``, ``weight_v``) or ajbrock's (``u0``/``sv0``); ``weights.spectral_norm`` folds both.
Its ``rgb2bgr`` flag only flips the output for OpenMMLab's BGR pipeline; the weights are RGB, as here.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import torch

from gan.biggan import BOTTOM_WIDTH, BigGAN, BigGANConfig, CHANNEL_MULTIPLIERS

from common.files import save_checkpoint

from .formats import read_config
from .spectral_norm import fold_ajbrock_spectral_norm, fold_torch_spectral_norm
from .strict import check_state_dict

SN_BUFFERS = ("u0", "sv0", "weight_u", "weight_v")  # power-iteration state: not part of the folded model


def ajbrock_layout(config: BigGANConfig) -> dict[str, tuple[int, ...]]:
    """Every key of an ajbrock generator checkpoint for ``config`` -> its shape, in checkpoint order."""
    layout: dict[str, tuple[int, ...]] = {"shared.weight": (config.num_classes, config.shared_dim)}

    def add_sn(prefix: str, shape: tuple[int, ...], bias: bool) -> None:
        layout[f"{prefix}.weight"] = shape
        if bias:
            layout[f"{prefix}.bias"] = (shape[0],)
        layout[f"{prefix}.u0"] = (1, shape[0])
        layout[f"{prefix}.sv0"] = (1,)

    add_sn("linear", (config.in_channels[0] * BOTTOM_WIDTH**2, config.dim_z // config.num_slots), bias=True)
    for i, (cin, cout) in enumerate(zip(config.in_channels, config.out_channels)):
        block = f"blocks.{i}.0"
        add_sn(f"{block}.conv1", (cout, cin, 3, 3), bias=True)
        add_sn(f"{block}.conv2", (cout, cout, 3, 3), bias=True)
        add_sn(f"{block}.conv_sc", (cout, cin, 1, 1), bias=True)
        for bn, channels in (("bn1", cin), ("bn2", cout)):
            layout[f"{block}.{bn}.stored_mean"] = (channels,)
            layout[f"{block}.{bn}.stored_var"] = (channels,)
            add_sn(f"{block}.{bn}.gain", (channels, config.cond_dim), bias=False)
            add_sn(f"{block}.{bn}.bias", (channels, config.cond_dim), bias=False)
        if i in config.attention_blocks:
            layout[f"blocks.{i}.1.gamma"] = ()
            add_sn(f"blocks.{i}.1.theta", (cout // 8, cout, 1, 1), bias=False)
            add_sn(f"blocks.{i}.1.phi", (cout // 8, cout, 1, 1), bias=False)
            add_sn(f"blocks.{i}.1.g", (cout // 2, cout, 1, 1), bias=False)
            add_sn(f"blocks.{i}.1.o", (cout, cout // 2, 1, 1), bias=False)
    channels = config.out_channels[-1]
    for name in ("gain", "bias", "stored_mean", "stored_var"):
        layout[f"output_layer.0.{name}"] = (channels,)
    add_sn("output_layer.2", (3, channels, 3, 3), bias=True)
    return layout


def spectral_norm_prefixes(layout: Mapping[str, object]) -> list[str]:
    """The spectral-normed layers of a layout: every prefix with a ``u0`` buffer."""
    return [key[: -len(".u0")] for key in layout if key.endswith(".u0")]


def _is_ajbrock_layout(state_dict: Mapping[str, object]) -> bool:
    return all(k in state_dict for k in ("shared.weight", "linear.weight")) and any(
        k.startswith("blocks.0.0.bn1.gain.") for k in state_dict
    )


def _openmmlab_generator(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor] | None:
    """The generator state dict inside an OpenMMLab BigGAN checkpoint (EMA weights preferred), else None."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        return None
    for prefix in ("generator_ema.", "generator."):
        inner = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
        if inner:
            state = inner
            break
    if "shared_embedding.weight" in state and any(isinstance(k, str) and k.startswith("noise2feat.") for k in state):
        return dict(state)
    return None


def looks_like_ajbrock(state_dict: Mapping[str, object]) -> bool:
    """True for an ajbrock BigGAN-PyTorch generator state dict, or OpenMMLab's conversion of one."""
    return _is_ajbrock_layout(state_dict) or _openmmlab_generator(state_dict) is not None


_OPENMMLAB_NAMES = {
    "shared_embedding.weight": "shared.weight",
    "output_layer.bn.weight": "output_layer.0.gain",
    "output_layer.bn.bias": "output_layer.0.bias",
    "output_layer.bn.running_mean": "output_layer.0.stored_mean",
    "output_layer.bn.running_var": "output_layer.0.stored_var",
}
_OPENMMLAB_PATTERNS = [  # applied in order to the part after the stage prefix
    (r"^noise2feat\.", "linear."),
    (r"^output_layer\.conv\.", "output_layer.2."),
    (r"^(conv1|conv2|theta|phi|g|o)\.conv\.", r"\1."),
    (r"^shortcut\.conv\.", "conv_sc."),
    (r"^(bn[12])\.bn\.running_(mean|var)$", r"\1.stored_\2"),
    (r"\.weight_orig$", ".weight"),
]


def _from_openmmlab_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
        prefix, rest = "", _OPENMMLAB_NAMES.get(key, key)
        found = re.match(r"conv_blocks\.(\d+)\.(.*)$", rest)
        if found:
            prefix, rest = stage[found.group(1)] + ".", found.group(2)
        for pattern, replacement in _OPENMMLAB_PATTERNS:
            rest = re.sub(pattern, replacement, rest)
        renamed[prefix + rest] = value
    return renamed


def _torch_sn_layout(layout: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``layout`` with torch spectral-norm vectors (``weight_u`` (out,), ``weight_v`` (in,)) instead of u0/sv0."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in layout.items():
        prefix, name = key.rsplit(".", 1)
        if name == "u0":
            out[f"{prefix}.weight_u"] = (shape[1],)
        elif name == "sv0":
            out[f"{prefix}.weight_v"] = (math.prod(layout[f"{prefix}.weight"][1:]),)
        else:
            out[key] = shape
    return out


def infer_ajbrock_config(state_dict: Mapping[str, torch.Tensor], source: str) -> BigGANConfig:
    """The config implied by the tensor shapes (epsilons at their defaults)."""
    if not _is_ajbrock_layout(state_dict):
        raise ValueError(
            f"{source} is not an ajbrock BigGAN-PyTorch generator (no shared.weight / linear.weight / blocks.0.0 keys) "
            "nor OpenMMLab's conversion of one (no shared_embedding.weight / noise2feat keys)"
        )
    num_blocks = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    resolutions = {len(ins): res for res, (ins, _) in CHANNEL_MULTIPLIERS.items()}
    if num_blocks not in resolutions:
        raise ValueError(
            f"{source} has {num_blocks} generator blocks; accepted: {sorted(resolutions)} "
            f"(resolutions {sorted(CHANNEL_MULTIPLIERS)})"
        )
    resolution = resolutions[num_blocks]

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"{source} does not match the ajbrock BigGAN layout: missing key {key}")
        return tuple(state_dict[key].shape)

    num_classes, shared_dim = shape("shared.weight")
    z_linear = shape("linear.weight")[1]
    hier = shape("blocks.0.0.bn1.gain.weight")[1] != shared_dim  # z chunks are concatenated to the class embedding
    G_ch = shape("output_layer.0.gain")[0] // CHANNEL_MULTIPLIERS[resolution][1][-1]
    block_res = [BOTTOM_WIDTH * 2 ** (i + 1) for i in range(num_blocks)]
    attention = tuple(r for i, r in enumerate(block_res) if f"blocks.{i}.1.gamma" in state_dict)
    try:
        return BigGANConfig(
            G_ch=int(G_ch), dim_z=int(z_linear) * (num_blocks + 1 if hier else 1), shared_dim=int(shared_dim),
            hier=hier, resolution=resolution, attention_resolutions=attention, num_classes=int(num_classes),
        )
    except ValueError as err:
        raise ValueError(f"{source}: shapes imply an invalid BigGAN config: {err}") from None


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON config of a non-default checkpoint lives: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _config_for(state_dict: Mapping[str, torch.Tensor], source: str) -> BigGANConfig:
    sidecar = sidecar_path(source) if source else None
    if sidecar is not None and sidecar.is_file():
        return read_config(sidecar, BigGANConfig)
    return infer_ajbrock_config(state_dict, source)


def generator_from_ajbrock_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str, config: BigGANConfig | None = None
) -> BigGAN:
    """Build a ``BigGAN`` from an ajbrock generator state dict or OpenMMLab's conversion of one.

    Keys and shapes are checked strictly against the layout of the config, then spectral norm is folded.

    ``source`` names the checkpoint in error messages; when it is a file path with a ``<file>.json``
    sidecar that config is used; otherwise the config is inferred from the shapes. An explicit
    ``config`` wins over both.
    """
    openmmlab = _openmmlab_generator(state_dict)
    if openmmlab is not None:
        state_dict = _from_openmmlab_names(openmmlab)
    if config is None:
        config = _config_for(state_dict, source)
    if openmmlab is not None:
        source = f"{source} (OpenMMLab BigGANGenerator; keys shown under their BigGAN-PyTorch names)"
    torch_sn = "linear.weight_u" in state_dict
    layout = ajbrock_layout(config)
    check_state_dict(_torch_sn_layout(layout) if torch_sn else layout, state_dict, source)
    folded: dict[str, torch.Tensor] = {}
    for prefix in spectral_norm_prefixes(layout):
        key = f"{prefix}.weight"
        if torch_sn:
            u, v = state_dict[f"{prefix}.weight_u"], state_dict[f"{prefix}.weight_v"]
            folded[key] = fold_torch_spectral_norm(state_dict[key], u, v, key)
        else:
            folded[key] = fold_ajbrock_spectral_norm(state_dict[key], state_dict[f"{prefix}.u0"], config.sn_eps, key)
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[1] not in SN_BUFFERS:
            folded.setdefault(key, value.float())
    with torch.device("meta"):  # no throw-away initialisation: the checkpoint tensors are assigned
        model = BigGAN(config)
    model.load_state_dict(folded, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def random_ajbrock_state_dict(config: BigGANConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 tensors with the published key names and shapes for ``config`` (weights for tests and demos)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in ajbrock_layout(config).items():
        name = key.rsplit(".", 1)[1]
        if name == "stored_var":
            value = 0.5 + torch.rand(shape, generator=gen)
        elif name == "sv0":
            value = 1.0 + torch.rand(shape, generator=gen)  # logged singular value: unused at inference
        elif name == "gamma":
            value = 0.5 + 0.5 * torch.rand(shape, generator=gen)  # non-zero so the attention output matters
        elif key == "output_layer.0.gain":
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name in ("weight", "u0"):  # SN rescales every weight, so unit Gaussians will do
            value = torch.randn(shape, generator=gen)
        else:  # biases and stored means
            value = 0.1 * torch.randn(shape, generator=gen)
        state[key] = value.float()
    return state


def write_random_ajbrock_checkpoint(path: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Write a random ``G_ema.pth``-format checkpoint for ``BigGANConfig(**config_overrides)``; return its path.

    A ``<file>.json`` sidecar is written only when the shapes alone would not recover the config
    (non-default ``sn_eps`` / ``bn_eps``).
    """
    config = BigGANConfig(**config_overrides)
    path = Path(path)
    state = random_ajbrock_state_dict(config, seed)
    save_checkpoint(state, path)
    sidecar = sidecar_path(path)
    if infer_ajbrock_config(state, str(path)) != config:
        sidecar.write_text(config.to_json(), encoding="utf-8")
    elif sidecar.exists():
        sidecar.unlink()
    return path
