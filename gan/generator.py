"""What every generator family shares: config (de)serialisation, attention swapping, the ``generate`` contract."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import torch
from torch import nn

from .attention import AttentionBackend, build_attention
from .layers import SelfAttention
from .sampling import latents_for


@dataclasses.dataclass(frozen=True)
class AttentionShape:
    """What one attention block sees per image: nq queries and nk keys of size d, values of size dv."""

    nq: int
    nk: int
    d: int
    dv: int

    @classmethod
    def of_block(cls, channels: int, side: int) -> AttentionShape:
        """BigGAN's block on a side x side map of ``channels``: theta full-size, phi and g 2x2 max-pooled."""
        return cls(side * side, (side // 2) * (side // 2), channels // 8, channels // 2)


def _plain(value: Any) -> Any:
    """Tuples (nested too) as lists, as JSON holds them."""
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


class GeneratorConfig:
    """Mixin for a family's config dataclass: ``from_dict`` that names the accepted fields, JSON round trip."""

    label: ClassVar[str] = "generator"  # the family's name in error messages

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown {cls.label} config field(s) {unknown}; accepted: {sorted(fields)}")
        try:
            return cls(**data)
        except TypeError as err:  # a value of the wrong type reached the dataclass
            raise ValueError(f"invalid {cls.label} config: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {name: _plain(value) for name, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.label} config is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{cls.label} config must be a JSON object of fields, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


class Generator(nn.Module):
    """Base of the BigGAN families. Subclasses set ``family``, ``resolution``, ``z_dim``,
    ``num_classes`` and implement ``forward(z, class_ids, truncation)``."""

    family: str = ""
    resolution: int
    z_dim: int
    num_classes: int

    def attention_blocks(self) -> list[SelfAttention]:
        return [m for m in self.modules() if isinstance(m, SelfAttention)]

    def attention_shapes(self) -> list[AttentionShape]:
        """The shape every attention block sees, from the config (no forward pass), in block order."""
        raise NotImplementedError

    def attention_shape(self) -> AttentionShape:
        """The shape of the (first) attention block: what backend parameters are checked against."""
        shapes = self.attention_shapes()
        if not shapes:
            raise ValueError(f"this {self.family} generator has no attention block")
        return shapes[0]

    def set_attention(self, attention: str | AttentionBackend, **kwargs) -> AttentionBackend:
        """Swap the attention backend of every attention block in place (no reload); returns it."""
        if isinstance(attention, AttentionBackend):
            if kwargs:
                raise ValueError("pass parameters either to build_attention or to set_attention, not both")
            backend = attention
        else:
            backend = build_attention(attention, **kwargs)
        for block in self.attention_blocks():
            block.attention = backend
        return backend

    @property
    def attention(self) -> AttentionBackend:
        return self.attention_blocks()[0].attention

    @torch.no_grad()
    def sample(
        self,
        indices,
        class_ids: torch.Tensor,
        truncation: float = 1.0,
        seed: int = 0,
        latent_mode: str = "per-image",
        total: int | None = None,
    ) -> torch.Tensor:
        """Images for global image ``indices`` (latents from ``gan.sampling.latents_for``), truncation given once:
        it scales the latents and selects BigGAN-deep's batch-norm statistics. -> (B,3,H,W) in [-1, 1]."""
        z = latents_for(indices, self.z_dim, truncation, seed, mode=latent_mode, total=total)
        return self.generate(z, class_ids, truncation)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, class_ids: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """z (B, z_dim) as the network consumes it (already truncated), class_ids (B,) int -> (B,3,H,W) in [-1,1].

        z and class ids move to the generator's device (z also to its dtype); ids are range-checked
        where they arrive, so CPU ids cost no device sync.
        """
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        if not (0.0 < float(truncation) <= 1.0):
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        class_ids = torch.as_tensor(class_ids).long().reshape(-1)
        if class_ids.shape[0] != z.shape[0]:
            raise ValueError(f"got {class_ids.shape[0]} class ids for {z.shape[0]} latents")
        outside = (class_ids < 0) | (class_ids >= self.num_classes)
        if outside.any():
            raise ValueError(f"class ids must be in [0, {self.num_classes - 1}], got {class_ids[outside][:5].tolist()}")
        weight = next(self.parameters())
        z = z.to(device=weight.device, dtype=weight.dtype)
        return self(z, class_ids.to(weight.device), float(truncation))
