"""ajbrock's BigGAN-PyTorch checkpoints (``G_ema.pth`` / ``G.pth``): layout, strict loading, SN folding.

The checkpoint is a plain state dict. Every spectral-normed layer (``linear``, each GBlock's
``conv1/conv2/conv_sc`` and its batch norms' ``gain/bias`` linears, the attention's
``theta/phi/g/o``, ``output_layer.2``) stores its raw ``weight`` (plus ``bias`` where it has one) and
the buffers ``u0`` (1, out) and ``sv0`` (1,). At inference ajbrock's SN layer runs one power
iteration from ``u0`` without updating it and divides the weight by the singular value estimate
of that iteration; ``sv0`` is a training log and is not used. ``fold_ajbrock_spectral_norm`` does
exactly that once, at load. Layers may instead hold torch's ``weight_u`` / ``weight_v`` (OpenMMLab's
``sn_style='torch'`` conversions, renamed to these names by ``weights.formats.openmmlab``).

Config: every shape-determined field (G_ch, dim_z, shared_dim, hier, resolution, attention
resolutions, num_classes) is inferred from the tensor shapes. The two epsilons cannot be: the fields
of a sidecar ``<file>.json`` override the inferred config (``BigGANConfig.to_json`` writes a full one;
``{"sn_eps": 1e-4, "bn_eps": 1e-4}`` will do), and an explicit ``eps`` overrides both epsilons.

Variants of the layout, read from BigGAN-PyTorch's code:

- ``TFHub/converter.py`` output (``biggan-128.pth`` ...): no ``sv0`` buffers and the attention ``gamma``
  as TF's shape (1,). It was built with ``BN_eps = SN_eps = 1e-4``, which the file does not record, so
  without a sidecar or ``eps`` it is refused rather than loaded with the trained models' 1e-5 / 1e-6.
- ``--mybn`` / ``--cross_replica`` runs keep batch-norm statistics in a ``bn`` submodule; BigGANdeep.py
  has four convs per block. These are refused with a message saying which one it is.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from common.files import save_checkpoint
from gan.biggan import BOTTOM_WIDTH, CHANNEL_MULTIPLIERS, BigGAN, BigGANConfig

from ..spectral_norm import fold_ajbrock_spectral_norm, fold_torch_spectral_norm
from ..strict import check_state_dict
from .base import CheckpointFormat, LoadOptions, read_config_data

SN_BUFFERS = ("u0", "sv0", "weight_u", "weight_v")  # power-iteration state: not part of the folded model
TFHUB_EPS = 1e-4  # BN_eps and SN_eps of TFHub/converter.py's get_config


def ajbrock_layout(config: BigGANConfig, sv0: bool = True) -> dict[str, tuple[int, ...]]:
    """Every key of an ajbrock generator checkpoint for ``config`` -> its shape, in checkpoint order.

    ``sv0=False``: the layout without the logged singular values (TFHub/converter.py's output).
    """
    layout: dict[str, tuple[int, ...]] = {"shared.weight": (config.num_classes, config.shared_dim)}

    def add_sn(prefix: str, shape: tuple[int, ...], bias: bool) -> None:
        layout[f"{prefix}.weight"] = shape
        if bias:
            layout[f"{prefix}.bias"] = (shape[0],)
        layout[f"{prefix}.u0"] = (1, shape[0])
        if sv0:
            layout[f"{prefix}.sv0"] = (1,)

    add_sn("linear", (config.in_channels[0] * BOTTOM_WIDTH**2, config.dim_z // config.num_slots), bias=True)
    for i, (cin, cout) in enumerate(zip(config.in_channels, config.out_channels, strict=False)):
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


def looks_like_ajbrock(state_dict: Mapping[str, object]) -> bool:
    """True for a BigGAN-PyTorch generator state dict (BigGAN.py's or BigGANdeep.py's names)."""
    return all(k in state_dict for k in ("shared.weight", "linear.weight")) and any(
        isinstance(k, str) and k.startswith("blocks.0.0.bn1.gain.") for k in state_dict
    )


def _first(state: Mapping[str, object], pattern: str) -> str | None:
    return next((k for k in state if isinstance(k, str) and re.search(pattern, k)), None)


def reject_other_layouts(state: Mapping[str, object], source: str) -> None:
    """ValueError naming the BigGAN-PyTorch variant ``state`` is in, if it is one this loader cannot run."""
    key = _first(state, r"^blocks\.\d+\.0\.conv4\.")
    if key:
        raise ValueError(
            f"{source} is a BigGAN-deep generator in BigGAN-PyTorch's layout (BigGANdeep.py, four convs per block: "
            f"{key}); not supported: BigGAN-deep loads from the Hugging Face port (biggan-deep-128/256/512, "
            "or a directory with config.json + pytorch_model.bin)"
        )
    key = _first(state, r"\.bn\.(accumulation_counter|stored_mean|stored_var)$")
    if key:
        raise ValueError(
            f"{source} was trained with --mybn (batch-norm statistics in myBN submodules: {key}); not supported: "
            "whether they are standing-statistics sums (to divide by accumulation_counter) is not in the file; "
            "move <bn>.bn.stored_mean / stored_var to <bn>.stored_mean / stored_var and drop accumulation_counter"
        )
    key = _first(state, r"\.bn\.(running_mean|running_var|num_batches_tracked)$")
    if key:
        raise ValueError(
            f"{source} was trained with --cross_replica (SyncBN statistics: {key}); not supported: BigGAN-PyTorch's "
            "eval forward of SyncBN adds the class gain instead of multiplying by it (sync_batchnorm/batchnorm.py); "
            "move <bn>.bn.running_mean / running_var to <bn>.stored_mean / stored_var and drop num_batches_tracked"
        )


def _torch_sn_layout(layout: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``layout`` with torch spectral-norm vectors (``weight_u`` (out,), ``weight_v`` (in,)) instead of u0/sv0."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in layout.items():
        prefix, name = key.rsplit(".", 1)
        if name == "u0":
            out[f"{prefix}.weight_u"] = (shape[1],)
            out[f"{prefix}.weight_v"] = (math.prod(layout[f"{prefix}.weight"][1:]),)
        else:
            out[key] = shape
    return out


def infer_ajbrock_config(state_dict: Mapping[str, torch.Tensor], source: str) -> BigGANConfig:
    """The config implied by the tensor shapes (epsilons at their defaults)."""
    if not looks_like_ajbrock(state_dict):
        raise ValueError(
            f"{source} is not an ajbrock BigGAN-PyTorch generator (no shared.weight / linear.weight / blocks.0.0 keys)"
        )
    reject_other_layouts(state_dict, source)
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


def _has_sv0(state: Mapping[str, object]) -> bool:
    return any(isinstance(k, str) and k.endswith(".sv0") for k in state)


def ajbrock_config(state: Mapping[str, torch.Tensor], source: str, eps: float | None) -> BigGANConfig:
    """Inferred config, overridden by the sidecar's fields, then by ``eps``; refuses a converter file without either."""
    config = infer_ajbrock_config(state, source)
    sidecar = sidecar_path(source) if source else None
    if sidecar is not None and sidecar.is_file():
        data = read_config_data(sidecar)
        try:
            config = BigGANConfig.from_dict({**config.to_dict(), **data})
        except ValueError as err:
            raise ValueError(f"{sidecar}: {err}") from None
    elif eps is None and "linear.u0" in state and not _has_sv0(state):
        eps_text = f"{TFHUB_EPS:g}"
        raise ValueError(
            f"{source} has no sv0 buffers, as BigGAN-PyTorch's TFHub/converter.py writes, whose batch-norm and "
            f"spectral-norm eps are {eps_text} (the file does not record them); put a sidecar "
            f'{sidecar_path(source).name} holding {{"sn_eps": {eps_text}, "bn_eps": {eps_text}}} beside it, '
            f"or pass eps={eps_text} (--eps {eps_text})"
        )
    if eps is not None:
        config = replace(config, sn_eps=eps, bn_eps=eps)
    return config


def _scalar_gammas(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The attention gains as scalars: the converter keeps TF's (1,), which ajbrock's load_state_dict accepts."""
    return {
        k: v.reshape(()) if re.fullmatch(r"blocks\.\d+\.1\.gamma", k) and tuple(v.shape) == (1,) else v
        for k, v in state.items()
    }


def generator_from_ajbrock_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str, config: BigGANConfig | None = None, eps: float | None = None
) -> BigGAN:
    """Build a ``BigGAN`` from an ajbrock generator state dict.

    Keys and shapes are checked strictly against the layout of the config, then spectral norm is folded.
    ``sv0`` buffers may be absent (all of them). ``source`` names the checkpoint in error messages; when it
    is a file path with a ``<file>.json`` sidecar, the sidecar's fields override the inferred config;
    ``eps`` sets both epsilons. An explicit ``config`` wins over all of these.
    """
    reject_other_layouts(state_dict, source)
    state_dict = _scalar_gammas(state_dict)
    if config is None:
        config = ajbrock_config(state_dict, source, eps)
    torch_sn = "linear.weight_u" in state_dict
    layout = ajbrock_layout(config, sv0=_has_sv0(state_dict) and not torch_sn)
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


def load(state: Mapping[str, torch.Tensor], path: Path, options: LoadOptions) -> BigGAN:
    return generator_from_ajbrock_state_dict(state, str(path), eps=options.eps)


FORMAT = CheckpointFormat(
    name="biggan",
    summary="BigGAN-PyTorch (G_ema.pth, keys shared.weight / linear.* / blocks.*)",
    file_names=("G_ema.pth", "G.pth"),
    recognises=looks_like_ajbrock,
    load=load,
    write_random=write_random_ajbrock_checkpoint,
)
