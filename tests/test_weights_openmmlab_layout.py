"""OpenMMLab BigGAN checkpoints built HERE from the published key correspondence, not through the project's writer
or its name table: an ajbrock (BigGAN-PyTorch) checkpoint renamed key by key to mmagic's names, saved as an mmagic
training checkpoint, must load to the very generator the ajbrock file loads to.

The correspondence, read from mmagic's ``BigGANGenerator`` (biggan_generator.py, biggan_modules.py) against
BigGAN-PyTorch's ``Generator`` (BigGAN.py, layers.py), for the 128x128 layout (attention after the 64x64 GBlock):

  shared.weight                        shared_embedding.weight
  linear.*                             noise2feat.*
  blocks.{i}.0.conv1.* / conv2.*       conv_blocks.{j}.conv1.conv.* / conv2.conv.*     (SNConvModule wraps .conv)
  blocks.{i}.0.conv_sc.*               conv_blocks.{j}.shortcut.conv.*
  blocks.{i}.0.bn{1,2}.gain.*          conv_blocks.{j}.bn{1,2}.gain.*                  (BigGANConditionBN's SNLinear)
  blocks.{i}.0.bn{1,2}.bias.*          conv_blocks.{j}.bn{1,2}.bias.*
  blocks.{i}.0.bn{1,2}.stored_mean     conv_blocks.{j}.bn{1,2}.bn.running_mean          (affine-free BatchNorm2d)
  blocks.{i}.0.bn{1,2}.stored_var      conv_blocks.{j}.bn{1,2}.bn.running_var           (+ num_batches_tracked)
  blocks.3.1.{theta,phi,g,o}.*         conv_blocks.4.{theta,phi,g,o}.conv.*             (SelfAttentionBlock)
  blocks.3.1.gamma                     conv_blocks.4.gamma
  output_layer.0.gain / .bias          output_layer.bn.weight / .bias                   (ConvModule's norm)
  output_layer.0.stored_mean / _var    output_layer.bn.running_mean / running_var       (+ num_batches_tracked)
  output_layer.2.*                     output_layer.conv.*

with j = i for GBlocks 0-3, j = 5 for GBlock 4 (the attention takes entry 4). mmengine's ``BaseAveragedModel``
saves the EMA generator under ``generator_ema.module.`` with a ``generator_ema.steps`` buffer; mmgeneration's
older checkpoints use ``generator_ema.``; a bare generator state dict has no prefix.
"""

from __future__ import annotations

import re

import pytest
import torch

from weights import load_generator, write_random_checkpoint

SMALL = {"G_ch": 8}
Z = (torch.randn(2, 120, generator=torch.Generator().manual_seed(1)) * 0.5).clamp(-1, 1)
CLASSES = torch.tensor([10, 500])
ATTENTION_AFTER = 3  # the GBlock at 64x64 in the 128x128 layout


def mmagic_name(key: str) -> str:
    """The mmagic name of one BigGAN-PyTorch generator key, by the table in the module docstring."""
    fixed = {
        "shared.weight": "shared_embedding.weight",
        "output_layer.0.gain": "output_layer.bn.weight",
        "output_layer.0.bias": "output_layer.bn.bias",
        "output_layer.0.stored_mean": "output_layer.bn.running_mean",
        "output_layer.0.stored_var": "output_layer.bn.running_var",
    }
    if key in fixed:
        return fixed[key]
    if key.startswith("linear."):
        return "noise2feat." + key[len("linear."):]
    if key.startswith("output_layer.2."):
        return "output_layer.conv." + key[len("output_layer.2."):]
    block, part, rest = re.fullmatch(r"blocks\.(\d+)\.([01])\.(.+)", key).groups()
    i = int(block)
    if part == "1":  # the attention after GBlock 3
        assert i == ATTENTION_AFTER
        j = ATTENTION_AFTER + 1
        if rest == "gamma":
            return f"conv_blocks.{j}.gamma"
        return f"conv_blocks.{j}." + re.sub(r"^(\w+)\.", r"\1.conv.", rest)
    j = i if i <= ATTENTION_AFTER else i + 1
    if m := re.fullmatch(r"(bn[12])\.stored_(mean|var)", rest):
        return f"conv_blocks.{j}.{m.group(1)}.bn.running_{m.group(2)}"
    if rest.startswith(("bn1.", "bn2.")):
        return f"conv_blocks.{j}.{rest}"
    if rest.startswith("conv_sc."):
        return f"conv_blocks.{j}.shortcut.conv." + rest[len("conv_sc."):]
    conv, leaf = rest.split(".", 1)
    assert conv in ("conv1", "conv2"), key
    return f"conv_blocks.{j}.{conv}.conv.{leaf}"


def mmagic_state(ajbrock: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {mmagic_name(k): v.clone() for k, v in ajbrock.items()}
    for key in [k for k in state if k.endswith(".bn.running_mean")]:
        state[key.replace("running_mean", "num_batches_tracked")] = torch.tensor(1000)
    return state


def ajbrock_checkpoint(tmp_path, seed):
    path = write_random_checkpoint(tmp_path / f"G_ema_{seed}.pth", fmt="biggan", seed=seed, **SMALL)
    return path, torch.load(path, weights_only=True)


def test_published_names_load_to_the_same_generator(tmp_path):
    ema_path, ema = ajbrock_checkpoint(tmp_path, 4)
    _, raw = ajbrock_checkpoint(tmp_path, 5)
    state = {f"generator_ema.module.{k}": v for k, v in mmagic_state(ema).items()}
    state |= {f"generator.{k}": v for k, v in mmagic_state(raw).items()}
    state["generator_ema.steps"] = torch.tensor(1000)
    path = tmp_path / "biggan_mmagic.pth"
    torch.save({"meta": {"note": "built by the test"}, "state_dict": state}, path)
    G = load_generator(path, device="cpu")
    reference = load_generator(ema_path, device="cpu")
    assert G.family == "biggan" and G.config == reference.config
    expected = reference.generate(Z, CLASSES)
    out = G.generate(Z, CLASSES)
    assert torch.equal(out, expected)  # the same tensors under other names: bit-identical
    raw_out = load_generator(tmp_path / "G_ema_5.pth", device="cpu").generate(Z, CLASSES)
    assert (out - raw_out).abs().max() > 1e-3  # the EMA copy, not the raw generator


@pytest.mark.parametrize("prefix", ["generator_ema.", ""])
def test_older_prefixes_and_bare_state_dicts(tmp_path, prefix):
    ema_path, ema = ajbrock_checkpoint(tmp_path, 4)
    state = {prefix + k: v for k, v in mmagic_state(ema).items()}
    path = tmp_path / "mm.pth"
    torch.save({"state_dict": state} if prefix else state, path)
    assert torch.equal(load_generator(path, device="cpu").generate(Z, CLASSES),
                       load_generator(ema_path, device="cpu").generate(Z, CLASSES))


def test_every_published_parameter_matters(tmp_path):
    # Control that the comparison above can fail: swapping the output batch norm's weight and bias (or a block's
    # gain and bias linears) under the published names gives another image.
    ema_path, ema = ajbrock_checkpoint(tmp_path, 4)
    expected = load_generator(ema_path, device="cpu").generate(Z, CLASSES)
    for first, second in (("output_layer.bn.weight", "output_layer.bn.bias"),
                          ("conv_blocks.2.bn1.gain.weight", "conv_blocks.2.bn1.bias.weight")):
        state = mmagic_state(ema)
        state[first], state[second] = state[second], state[first]
        path = tmp_path / "swapped.pth"
        torch.save(state, path)
        assert (load_generator(path, device="cpu").generate(Z, CLASSES) - expected).abs().max() > 1e-3, first
