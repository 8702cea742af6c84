"""Generator.attention_shapes() read from the config equals what the attention block really sees."""
from __future__ import annotations

import pytest
import torch

from gan.biggan import BigGAN, BigGANConfig
from gan.biggan_deep import BigGANDeep, BigGANDeepConfig
from gan.generator import AttentionShape
from gan.sampling import per_image_latents


def seen_shapes(G) -> list[AttentionShape]:
    """Run one image and record (Nq, Nk, d, dv) at every attention block."""
    shapes = []

    def record(block, inputs, output):
        q, k, v = block.qkv(inputs[0])
        shapes.append(AttentionShape(q.shape[1], k.shape[1], q.shape[2], v.shape[2]))

    hooks = [block.register_forward_hook(record) for block in G.attention_blocks()]
    G.generate(torch.zeros(1, G.z_dim), torch.zeros(1, dtype=torch.long), 1.0)
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize("resolution", [128, 256])
def test_biggan_deep_attention_shape_from_config(resolution):
    G = BigGANDeep(BigGANDeepConfig.preset(resolution, channel_width=8, num_classes=10)).eval()
    assert G.attention_shapes() == seen_shapes(G)
    assert G.attention_shape().nq == 4 * G.attention_shape().nk


def test_biggan_deep_128_published_shape():
    # the published config: 64x64 map, C = 256 -> 4096 queries, 1024 keys, d = 32, dv = 128
    config = BigGANDeepConfig.preset(128)
    assert BigGANDeep.attention_shapes(type("G", (), {"config": config})()) == [AttentionShape(4096, 1024, 32, 128)]


def test_biggan_attention_shapes_from_config():
    G = BigGAN(BigGANConfig(resolution=128, G_ch=8, dim_z=120, num_classes=10, attention_resolutions=(32, 64))).eval()
    assert G.attention_shapes() == seen_shapes(G)
    assert len(G.attention_shapes()) == 2


def test_sample_draws_latents_with_the_same_truncation():
    G = BigGANDeep(BigGANDeepConfig.preset(128, channel_width=8, num_classes=10)).eval()
    y = torch.tensor([1, 2])
    z = per_image_latents([4, 9], G.z_dim, truncation=0.4, seed=7)
    torch.testing.assert_close(G.sample([4, 9], y, truncation=0.4, seed=7), G.generate(z, y, truncation=0.4))
