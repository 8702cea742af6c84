"""BigGAN generator in the layout of ajbrock's BigGAN-PyTorch (``G_ema.pth`` / ``G.pth``).

Inference only, with spectral norm already folded into the weights (``weights/formats/ajbrock.py``), so
every layer is a plain ``nn.Conv2d`` / ``nn.Linear``. Module names follow the checkpoint, so a
folded checkpoint is this module's ``state_dict`` minus the ``u0`` / ``sv0`` buffers:
``shared``, ``linear``, ``blocks.{i}.0`` (GBlock), ``blocks.{i}.1`` (self-attention, where
configured) and ``output_layer.{0,2}`` (batch norm, conv; index 1 is the ReLU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import AttentionBackend
from .generator import AttentionShape, Generator, GeneratorConfig
from .layers import SelfAttention, conditional_batch_norm

BOTTOM_WIDTH = 4  # the linear layer's output is a 4x4 map in every published configuration
OUTPUT_BN_EPS = 1e-5  # ajbrock's output batch norm is built with its default eps, whatever BN_eps says

# resolution -> channel multipliers of G_ch for each GBlock's input and output (ajbrock's G_arch)
CHANNEL_MULTIPLIERS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
    512: ((16, 16, 8, 8, 4, 2, 1), (16, 8, 8, 4, 2, 1, 1)),
}


@dataclass(frozen=True)
class BigGANConfig(GeneratorConfig):
    """Architecture of an ajbrock BigGAN generator; the defaults are the public ImageNet-128 "138k" model.

    ``hier``: z is split into one chunk for the linear layer and one per GBlock, each chunk
    concatenated to the shared class embedding to condition that block's batch norms.
    ``attention_resolutions``: output resolutions of the GBlocks followed by self-attention.
    """

    label: ClassVar[str] = "BigGAN"

    G_ch: int = 96
    dim_z: int = 120
    shared_dim: int = 128
    hier: bool = True
    resolution: int = 128
    attention_resolutions: tuple[int, ...] = (64,)
    num_classes: int = 1000
    sn_eps: float = 1e-6
    bn_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        for name in ("G_ch", "dim_z", "shared_dim", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BigGANConfig.{name} must be a positive int, got {value!r}")
        if self.resolution not in CHANNEL_MULTIPLIERS:
            raise ValueError(
                f"BigGANConfig.resolution must be one of {sorted(CHANNEL_MULTIPLIERS)}, got {self.resolution!r}"
            )
        unknown = sorted(set(self.attention_resolutions) - set(self.block_resolutions))
        if unknown:
            raise ValueError(
                f"attention resolutions {unknown} are not GBlock outputs at resolution {self.resolution}; "
                f"accepted: {list(self.block_resolutions)}"
            )
        for index in self.attention_blocks:
            if self.out_channels[index] % 8:
                raise ValueError(
                    f"attention needs a multiple of 8 channels, got {self.out_channels[index]} (G_ch={self.G_ch})"
                )
        if self.hier and self.dim_z % self.num_slots:
            raise ValueError(
                f"with hier=True, dim_z must be a multiple of {self.num_slots} (one chunk per GBlock + 1), "
                f"got {self.dim_z}"
            )
        if not (self.sn_eps > 0 and self.bn_eps > 0):
            raise ValueError(f"sn_eps and bn_eps must be > 0, got {self.sn_eps}, {self.bn_eps}")

    @property
    def in_channels(self) -> list[int]:
        return [self.G_ch * m for m in CHANNEL_MULTIPLIERS[self.resolution][0]]

    @property
    def out_channels(self) -> list[int]:
        return [self.G_ch * m for m in CHANNEL_MULTIPLIERS[self.resolution][1]]

    @property
    def block_resolutions(self) -> list[int]:
        """Output resolution of each GBlock (each doubles the map, starting from 4x4)."""
        return [BOTTOM_WIDTH * 2 ** (i + 1) for i in range(len(CHANNEL_MULTIPLIERS[self.resolution][0]))]

    @property
    def attention_blocks(self) -> list[int]:
        """Indices of the GBlocks followed by self-attention."""
        return [i for i, r in enumerate(self.block_resolutions) if r in self.attention_resolutions]

    @property
    def num_slots(self) -> int:
        """Number of z chunks: one for the linear layer and one per GBlock (1 without hier)."""
        return len(self.in_channels) + 1 if self.hier else 1

    @property
    def z_chunk(self) -> int:
        """Size of the z chunk each GBlock gets (0 without hier: blocks see only the class embedding)."""
        return self.dim_z // self.num_slots if self.hier else 0

    @property
    def cond_dim(self) -> int:
        """Input size of the conditional batch norms' gain/bias linears."""
        return self.shared_dim + self.z_chunk


class ConditionalBatchNorm(nn.Module):
    """ajbrock's ``ccbn`` at inference: ``bn(x; stored stats) * (1 + gain(y)) + bias(y)``, fused into one affine map."""

    def __init__(self, channels: int, cond_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.gain = nn.Linear(cond_dim, channels, bias=False)
        self.bias = nn.Linear(cond_dim, channels, bias=False)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B,C,H,W), y (B,cond_dim) -> (B,C,H,W)."""
        return conditional_batch_norm(x, self.stored_mean, self.stored_var, self.eps, 1 + self.gain(y), self.bias(y))


class StoredBatchNorm(nn.Module):
    """ajbrock's unconditional ``bn`` at inference: stored statistics, learned ``gain`` / ``bias``."""

    def __init__(self, channels: int, eps: float = OUTPUT_BN_EPS):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, False, 0.0, self.eps)


class GBlock(nn.Module):
    """Residual up-block: ``conv2(relu(bn2(conv1(up(relu(bn1(x)))))) + conv_sc(up(x)))``, nearest 2x upsampling."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, bn_eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_sc = nn.Conv2d(in_channels, out_channels, 1)
        self.bn1 = ConditionalBatchNorm(in_channels, cond_dim, bn_eps)
        self.bn2 = ConditionalBatchNorm(out_channels, cond_dim, bn_eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (B,Cin,H,W), y (B,cond_dim) -> (B,Cout,2H,2W)."""
        # each batch norm returns a fresh tensor, so the ReLUs can work in place
        h = F.interpolate(F.relu(self.bn1(x, y), inplace=True), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y), inplace=True))
        # a 1x1 conv commutes with nearest upsampling: convolve the small map, then upsample
        return h + F.interpolate(self.conv_sc(x), scale_factor=2, mode="nearest")


class BigGAN(Generator):
    """ajbrock's BigGAN generator (inference, spectral norm folded), family ``"biggan"``."""

    family = "biggan"

    def __init__(self, config: BigGANConfig | None = None, attention: AttentionBackend | None = None):
        super().__init__()
        self.config = config = config if config is not None else BigGANConfig()
        self.resolution = config.resolution
        self.z_dim = config.dim_z
        self.num_classes = config.num_classes
        self.shared = nn.Embedding(config.num_classes, config.shared_dim)
        self.linear = nn.Linear(config.dim_z // config.num_slots, config.in_channels[0] * BOTTOM_WIDTH**2)
        stages = []
        for index, (cin, cout) in enumerate(zip(config.in_channels, config.out_channels, strict=False)):
            stage: list[nn.Module] = [GBlock(cin, cout, config.cond_dim, config.bn_eps)]
            if index in config.attention_blocks:
                stage.append(SelfAttention(cout, attention))
            stages.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(stages)
        self.output_layer = nn.Sequential(
            StoredBatchNorm(config.out_channels[-1]), nn.ReLU(), nn.Conv2d(config.out_channels[-1], 3, 3, padding=1)
        )

    def attention_shapes(self) -> list[AttentionShape]:
        c = self.config
        return [AttentionShape.of_block(c.out_channels[i], c.block_resolutions[i]) for i in c.attention_blocks]

    def conditions(self, z: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z (B,dim_z), class_ids (B,) -> z for the linear layer (B,dim_z/slots) and one (B,cond_dim) per GBlock."""
        y = self.shared(class_ids)  # (B, shared_dim)
        if not self.config.hier:
            return z, [y] * len(self.blocks)
        z0, *chunks = torch.split(z, self.config.z_chunk, dim=1)
        return z0, [torch.cat([y, chunk], dim=1) for chunk in chunks]

    def forward(self, z: torch.Tensor, class_ids: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z (B,dim_z), already truncated; class_ids (B,) int -> (B,3,H,W) in [-1,1].

        ``truncation`` is accepted for the common generator contract and unused: this family's
        batch norms have one set of stored statistics and z arrives already truncated.
        """
        z0, ys = self.conditions(z, class_ids)
        h = rearrange(self.linear(z0), "b (c h w) -> b c h w", h=BOTTOM_WIDTH, w=BOTTOM_WIDTH)
        for (block, *extra), y in zip(self.blocks, ys, strict=False):
            h = block(h, y)
            for layer in extra:  # self-attention, where configured
                h = layer(h)
        return torch.tanh(self.output_layer(h))
