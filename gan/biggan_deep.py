"""BigGAN-deep generator in the layout of the Hugging Face port (pytorch-pretrained-biggan).

Module names mirror the published ``pytorch_model.bin`` keys (``embeddings``,
``generator.gen_z``, ``generator.layers.{i}.bn_{0..3}/conv_{0..3}``, ``generator.bn``,
``generator.conv_to_rgb``) so loading is a rename plus spectral-norm folding (``weights/formats/biggan_deep.py``).
Two deliberate differences from the published modules, both exact at inference:

- spectral norm is folded into plain weights at load, so convolutions and linears are ordinary ones;
- ``conv_to_rgb`` keeps only the 3 output channels the reference slices out after the convolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import AttentionBackend
from .generator import AttentionShape, Generator, GeneratorConfig
from .layers import SelfAttention, conditional_batch_norm
from .sampling import one_hot

Layer = tuple[bool, int, int]  # (upsample?, input channels, output channels) in units of channel_width

_LAYERS_128: list[Layer] = [
    (False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8),
    (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1),
]
_LAYERS_256: list[Layer] = [
    (False, 16, 16), (True, 16, 16), (False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 8),
    (False, 8, 8), (True, 8, 4), (False, 4, 4), (True, 4, 2), (False, 2, 2), (True, 2, 1),
]
_LAYERS_512: list[Layer] = _LAYERS_256 + [(False, 1, 1), (True, 1, 1)]


@dataclass
class BigGANDeepConfig(GeneratorConfig):
    """The fields of the published ``config.json`` (defaults: biggan-deep-128)."""

    label: ClassVar[str] = "BigGAN-deep"

    output_dim: int = 128
    z_dim: int = 128
    class_embed_dim: int = 128
    channel_width: int = 128
    num_classes: int = 1000
    layers: list[Layer] = field(default_factory=lambda: list(_LAYERS_128))
    attention_layer_position: int = 8
    eps: float = 1e-4
    n_stats: int = 51

    def __post_init__(self) -> None:
        try:
            self.layers = [(bool(up), int(cin), int(cout)) for up, cin, cout in self.layers]
        except (TypeError, ValueError):
            raise ValueError(
                f"config.layers must be a list of [upsample, in, out] triples, got {self.layers!r}"
            ) from None
        self.validate()

    def validate(self) -> None:
        """Raise ValueError unless the network this config describes can be built."""
        if not self.layers:
            raise ValueError("config.layers must list at least one (upsample, in, out) block")
        if not 0 <= self.attention_layer_position < len(self.layers):
            raise ValueError(
                f"attention_layer_position must be in [0, {len(self.layers) - 1}], got {self.attention_layer_position}"
            )
        if self.n_stats < 2:
            raise ValueError(f"n_stats must be >= 2 (stored truncations on [0, 1]), got {self.n_stats}")
        ch = self.channel_width
        if min(ch, self.z_dim, self.num_classes, self.output_dim) < 1:
            raise ValueError("channel_width, z_dim, num_classes and output_dim must be positive")
        if self.layers[0][1] != 16:
            raise ValueError(
                f"the first layer must take 16 * channel_width channels (gen_z output), got {self.layers[0][1]}"
            )
        for i, (_, cin, cout) in enumerate(self.layers):
            if (ch * cin) % 4:
                raise ValueError(f"layer {i}: input channels {ch * cin} must be a multiple of 4 (bottleneck)")
            if cout not in (cin, cin / 2):
                raise ValueError(f"layer {i}: output width {cout} must equal the input width {cin} or half of it")
            if i and cin != self.layers[i - 1][2]:
                raise ValueError(f"layer {i} takes {cin} but layer {i - 1} gives {self.layers[i - 1][2]}")
        if ch * self.layers[-1][2] < 3:
            raise ValueError("the last layer must give at least 3 channels (RGB)")
        if (ch * self.layers[self.attention_layer_position][1]) % 8:
            raise ValueError("attention channels (channel_width * layer input width) must be a multiple of 8")
        if 4 * 2 ** sum(up for up, _, _ in self.layers) != self.output_dim:
            side = 4 * 2 ** sum(up for up, _, _ in self.layers)
            raise ValueError(f"layers upsample 4x4 to {side}, not output_dim {self.output_dim}")

    @classmethod
    def preset(cls, resolution: int, **overrides: Any) -> BigGANDeepConfig:
        """The published biggan-deep-{128,256,512} config, with ``overrides`` applied."""
        layers = {128: _LAYERS_128, 256: _LAYERS_256, 512: _LAYERS_512}
        if resolution not in layers:
            raise ValueError(f"BigGAN-deep is published at 128, 256 and 512, not {resolution}")
        return cls.from_dict({"output_dim": resolution, "layers": list(layers[resolution]), **overrides})


class TruncationBatchNorm(nn.Module):
    """Batch norm with stored statistics for ``n_stats`` truncations evenly spaced on [0, 1].

    Statistics for a truncation are looked up, or mixed between two stored ones, exactly as the
    reference does (including its weighting: ``coef * stats[i] + (1 - coef) * stats[i + 1]``).
    """

    def __init__(self, channels: int, n_stats: int, eps: float):
        super().__init__()
        self.eps = eps
        self.step_size = 1.0 / (n_stats - 1)
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))

    def statistics(self, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (C,), var (C,)) for this truncation."""
        coef, start = math.modf(truncation / self.step_size)  # same float arithmetic as the reference
        start = int(start)
        if coef == 0.0 or start + 1 >= self.running_means.shape[0]:
            return self.running_means[start], self.running_vars[start]
        mean = self.running_means[start] * coef + self.running_means[start + 1] * (1 - coef)
        var = self.running_vars[start] * coef + self.running_vars[start + 1] * (1 - coef)
        return mean, var


class ConditionalBatchNorm(TruncationBatchNorm):
    """Class/latent-conditional BN: ``(x - mean) / sqrt(var + eps) * (1 + scale(c)) + offset(c)``."""

    def __init__(self, channels: int, cond_dim: int, n_stats: int, eps: float):
        super().__init__(channels, n_stats, eps)
        self.scale = nn.Linear(cond_dim, channels, bias=False)
        self.offset = nn.Linear(cond_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        mean, var = self.statistics(truncation)
        return conditional_batch_norm(x, mean, var, self.eps, 1 + self.scale(cond), self.offset(cond))


class AffineTruncationBatchNorm(TruncationBatchNorm):
    """The final, unconditional BN with a learned per-channel weight and bias."""

    def __init__(self, channels: int, n_stats: int, eps: float):
        super().__init__(channels, n_stats, eps)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, truncation: float) -> torch.Tensor:
        mean, var = self.statistics(truncation)
        return F.batch_norm(x, mean, var, self.weight, self.bias, training=False, momentum=0.0, eps=self.eps)


class GenBlock(nn.Module):
    """Bottleneck residual block: BN-ReLU-1x1, BN-ReLU-(up)-3x3, BN-ReLU-3x3, BN-ReLU-1x1, plus the skip.

    The skip keeps the first half of the channels when the block halves them, and is upsampled
    (nearest) with the main path.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, upsample: bool, n_stats: int, eps: float):
        super().__init__()
        mid = in_channels // 4
        self.upsample = upsample
        self.out_channels = out_channels
        self.bn_0 = ConditionalBatchNorm(in_channels, cond_dim, n_stats, eps)
        self.conv_0 = nn.Conv2d(in_channels, mid, 1)
        self.bn_1 = ConditionalBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_1 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn_2 = ConditionalBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_2 = nn.Conv2d(mid, mid, 3, padding=1)
        self.bn_3 = ConditionalBatchNorm(mid, cond_dim, n_stats, eps)
        self.conv_3 = nn.Conv2d(mid, out_channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        # each batch norm returns a fresh tensor, so the ReLUs can work in place
        h = self.conv_0(F.relu(self.bn_0(x, cond, truncation), inplace=True))
        h = F.relu(self.bn_1(h, cond, truncation), inplace=True)
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, cond, truncation), inplace=True))
        h = self.conv_3(F.relu(self.bn_3(h, cond, truncation), inplace=True))
        skip = x[:, : self.out_channels]
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class DeepGenerator(nn.Module):
    """cond (B, 2 z_dim) -> image (B, 3, H, W): gen_z linear to 4x4, GenBlocks with attention, BN-ReLU-conv-tanh."""

    def __init__(self, config: BigGANDeepConfig, attention: AttentionBackend | None = None):
        super().__init__()
        ch = config.channel_width
        cond_dim = 2 * config.z_dim
        self.channel_width = ch
        self.gen_z = nn.Linear(cond_dim, 4 * 4 * 16 * ch)
        layers: list[nn.Module] = []
        for i, (upsample, cin, cout) in enumerate(config.layers):
            if i == config.attention_layer_position:
                layers.append(SelfAttention(ch * cin, attention))
            layers.append(GenBlock(ch * cin, ch * cout, cond_dim, upsample, config.n_stats, config.eps))
        self.layers = nn.ModuleList(layers)
        out_channels = ch * config.layers[-1][2]
        self.bn = AffineTruncationBatchNorm(out_channels, config.n_stats, config.eps)
        self.conv_to_rgb = nn.Conv2d(out_channels, 3, 3, padding=1)

    def forward(self, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        # gen_z's output is laid out (h, w, c) as in the TensorFlow original
        h = rearrange(self.gen_z(cond), "b (h w c) -> b c h w", h=4, w=4)
        for layer in self.layers:
            h = layer(h) if isinstance(layer, SelfAttention) else layer(h, cond, truncation)
        h = F.relu(self.bn(h, truncation), inplace=True)
        return torch.tanh(self.conv_to_rgb(h))


class BigGANDeep(Generator):
    """BigGAN-deep: class ids -> one-hot -> ``embeddings`` (a bias-free linear), concatenated with z."""

    family = "biggan-deep"

    def __init__(self, config: BigGANDeepConfig, attention: AttentionBackend | None = None):
        super().__init__()
        self.config = config
        self.resolution = config.output_dim
        self.z_dim = config.z_dim
        self.num_classes = config.num_classes
        # the reference embeds classes into z_dim (not class_embed_dim); the published configs have them equal
        self.embeddings = nn.Linear(config.num_classes, config.z_dim, bias=False)
        self.generator = DeepGenerator(config, attention)

    def attention_shapes(self) -> list[AttentionShape]:
        c = self.config
        side = 4 * 2 ** sum(up for up, _, _ in c.layers[: c.attention_layer_position])  # 4x4 doubled per upsample
        return [AttentionShape.of_block(c.channel_width * c.layers[c.attention_layer_position][1], side)]

    def forward(self, z: torch.Tensor, class_ids: torch.Tensor, truncation: float) -> torch.Tensor:
        """z (B, z_dim), class_ids (B,) int, truncation in (0, 1] -> (B, 3, H, W) in [-1, 1]."""
        embed = self.embeddings(one_hot(class_ids, self.num_classes, dtype=z.dtype))  # (B, z_dim)
        return self.generator(torch.cat([z, embed], dim=1), truncation)
