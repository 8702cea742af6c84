"""OpenMMLab BigGAN checkpoints: mmagic / mmengine training checkpoints (``generator_ema.module.*``).

The key listing below is a plain reading of mmagic's ``BigGANGenerator`` (biggan_generator.py: ``noise2feat``,
``shared_embedding``, ``conv_blocks`` with ``SelfAttentionBlock`` appended after the GBlock at 64x64,
``output_layer`` = ConvModule(norm ``bn``, act, ``conv``)), biggan_modules.py (``BigGANGenResBlock``: SNConvModule
``conv1`` / ``conv2`` / ``shortcut`` wrapping ``.conv``; ``BigGANConditionBN``: SNLinear ``gain`` / ``bias`` and an
affine-free BatchNorm2d ``bn``), ajbrock-style SN (``u0`` / ``sv0``) and mmengine's ``BaseAveragedModel``
(``module`` + buffer ``steps``), as saved under ``generator_ema.`` by mmagic's ``BaseGAN``.
"""
from __future__ import annotations

import pytest
import torch

from weights import load_generator, write_random_checkpoint
from weights.formats.openmmlab import looks_like_openmmlab

SMALL = dict(G_ch=8)
# Loading: tests/test_weights_openmmlab_layout.py builds mmagic checkpoints from the published names itself.


def mmagic_generator_keys(ch: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of mmagic's BigGANGenerator(output_scale=128, base_channels=ch, noise_size=120,
    shared_dim=128, num_classes=1000, sn_style='ajbrock')."""
    ins, outs = [16 * ch, 16 * ch, 8 * ch, 4 * ch, 2 * ch], [16 * ch, 8 * ch, 4 * ch, 2 * ch, ch]
    cond = 128 + 120 // 6
    keys: dict[str, tuple[int, ...]] = {"shared_embedding.weight": (1000, 128)}

    def sn(name, shape, bias):
        keys[f"{name}.weight"] = shape
        if bias:
            keys[f"{name}.bias"] = (shape[0],)
        keys[f"{name}.u0"], keys[f"{name}.sv0"] = (1, shape[0]), (1,)

    sn("noise2feat", (ins[0] * 16, 120 // 6), bias=True)
    j = 0
    for i, (cin, cout) in enumerate(zip(ins, outs, strict=False)):
        block = f"conv_blocks.{j}"
        sn(f"{block}.conv1.conv", (cout, cin, 3, 3), bias=True)
        sn(f"{block}.conv2.conv", (cout, cout, 3, 3), bias=True)
        sn(f"{block}.shortcut.conv", (cout, cin, 1, 1), bias=True)
        for bn, channels in (("bn1", cin), ("bn2", cout)):
            sn(f"{block}.{bn}.gain", (channels, cond), bias=False)
            sn(f"{block}.{bn}.bias", (channels, cond), bias=False)
            keys[f"{block}.{bn}.bn.running_mean"] = keys[f"{block}.{bn}.bn.running_var"] = (channels,)
            keys[f"{block}.{bn}.bn.num_batches_tracked"] = ()
        j += 1
        if i == 3:  # 64x64
            attn = f"conv_blocks.{j}"
            keys[f"{attn}.gamma"] = ()
            for name, shape in (("theta", (cout // 8, cout)), ("phi", (cout // 8, cout)), ("g", (cout // 2, cout)),
                                ("o", (cout, cout // 2))):
                sn(f"{attn}.{name}.conv", (*shape, 1, 1), bias=False)
            j += 1
    for name in ("weight", "bias", "running_mean", "running_var"):
        keys[f"output_layer.bn.{name}"] = (ch,)
    keys["output_layer.bn.num_batches_tracked"] = ()
    sn("output_layer.conv", (3, ch, 3, 3), bias=True)
    return keys


def test_random_mmagic_checkpoint_has_the_published_layout(tmp_path):
    path = write_random_checkpoint(tmp_path / "biggan_mmagic.pth", fmt="openmmlab-biggan", seed=4, **SMALL)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    expected = mmagic_generator_keys(8)
    def under(prefix):
        return {k[len(prefix):]: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}

    ema, raw = under("generator_ema.module."), under("generator.")
    assert ema == expected and raw == expected
    assert set(state) == {f"generator_ema.module.{k}" for k in expected} | {f"generator.{k}" for k in expected} | {
        "generator_ema.steps"}
    assert looks_like_openmmlab(checkpoint)


def test_mmagic_checkpoint_errors_name_ajbrock_keys(tmp_path):
    path = write_random_checkpoint(tmp_path / "biggan_mmagic.pth", fmt="openmmlab-biggan", seed=0, **SMALL)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["generator_ema.module.conv_blocks.4.theta.conv.u0"]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError) as err:
        load_generator(path, device="cpu")
    assert "OpenMMLab BigGANGenerator" in str(err.value) and "missing 1 key(s): blocks.3.1.theta.u0" in str(err.value)
