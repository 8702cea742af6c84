"""BigGAN-PyTorch checkpoint variants, each built in its exact key layout from a plain reading of ajbrock's code.

- TFHub/converter.py (``convert_from_v1``: the ``hub2me`` map and its tensor reshapes; ``get_config``:
  ``BN_eps = SN_eps = 1e-4``; ``G.load_state_dict(state_dict, strict=False)  # Ignore missing sv0 entries``;
  biggan_v1.py's attention ``gamma = nn.Parameter(torch.zeros(1))``).
- layers.py ``ccbn`` / ``bn``: with ``mybn`` a ``myBN`` submodule ``bn`` holds ``stored_mean``, ``stored_var``,
  ``accumulation_counter``; with ``cross_replica`` a ``SyncBN2d(affine=False)`` submodule ``bn`` holds
  ``running_mean``, ``running_var``, ``num_batches_tracked``.
- BigGANdeep.py: ``G_depth`` GBlocks per resolution, each its own ``blocks.{k}`` entry with ``conv1..conv4`` and
  ``bn1..bn4``, attention appended to the last one of its resolution; ``linear`` takes ``dim_z + shared_dim``.
"""
from __future__ import annotations

import json

import pytest
import torch

from gan.biggan import BigGANConfig
from weights import load_generator
from weights.formats.ajbrock import random_ajbrock_state_dict

SMALL = dict(G_ch=8)
Z = (torch.randn(2, 120, generator=torch.Generator().manual_seed(0)) * 0.5).clamp(-1, 1)
CLASSES = torch.tensor([3, 900])


def converter_keys(blocks: int, attention_block: int) -> set[str]:
    """The keys ``convert_from_v1`` writes (the values of ``hub2me``) for a generator with ``blocks`` GBlocks."""
    keys = {"shared.weight", "linear.weight", "linear.bias", "linear.u0",
            "output_layer.0.gain", "output_layer.0.bias", "output_layer.0.stored_mean", "output_layer.0.stored_var",
            "output_layer.2.weight", "output_layer.2.bias", "output_layer.2.u0",
            f"blocks.{attention_block}.1.gamma"}
    keys |= {f"blocks.{attention_block}.1.{c}.{w}" for c in ("theta", "phi", "g", "o") for w in ("u0", "weight")}
    for i in range(blocks):
        keys |= {f"blocks.{i}.0.{c}.{w}" for c in ("conv1", "conv2", "conv_sc") for w in ("weight", "bias", "u0")}
        keys |= {f"blocks.{i}.0.bn{n}.{gb}.{w}" for n in (1, 2) for gb in ("gain", "bias") for w in ("weight", "u0")}
        keys |= {f"blocks.{i}.0.bn{n}.stored_{s}" for n in (1, 2) for s in ("mean", "var")}
    return keys


def converter_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(a trained-format G_ema state dict, the same tensors as TFHub/converter.py would have written them)."""
    full = random_ajbrock_state_dict(BigGANConfig(**SMALL), seed)
    converted = {k: v for k, v in full.items() if not k.endswith(".sv0")}
    converted["blocks.3.1.gamma"] = converted["blocks.3.1.gamma"].reshape(1)  # TF's gamma, shape (1,)
    return full, converted


def test_converter_layout_is_the_trained_layout_without_sv0():
    _, converted = converter_state()
    assert set(converted) == converter_keys(blocks=5, attention_block=3)  # 128x128: attention at block 3
    assert converted["blocks.3.1.gamma"].shape == (1,) and converted["linear.u0"].shape == (1, 8 * 16 * 16)


def test_converter_output_without_sidecar_or_eps_is_refused(tmp_path):
    _, converted = converter_state()
    path = tmp_path / "biggan-128.pth"
    torch.save(converted, path)
    with pytest.raises(ValueError) as err:
        load_generator(path, device="cpu")
    message = str(err.value)
    assert "no sv0 buffers" in message and "TFHub/converter.py" in message and "\n" not in message
    assert "biggan-128.pth.json" in message and '"sn_eps": 0.0001' in message and "--eps 0.0001" in message


@pytest.mark.parametrize("how", ["eps", "sidecar"])
def test_converter_output_loads_with_its_eps(tmp_path, how):
    full, converted = converter_state(seed=1)
    path = tmp_path / "biggan-128.pth"
    torch.save(converted, path)
    if how == "sidecar":
        path.with_name(path.name + ".json").write_text(json.dumps({"sn_eps": 1e-4, "bn_eps": 1e-4}))
    G = load_generator(path, device="cpu", eps=1e-4 if how == "eps" else None)
    assert (G.config.sn_eps, G.config.bn_eps) == (1e-4, 1e-4) and G.blocks[0][0].bn1.eps == 1e-4
    assert G.config == BigGANConfig(**SMALL, sn_eps=1e-4, bn_eps=1e-4)  # shapes inferred, epsilons given
    # the same tensors with their sv0 logs, told the same eps: sv0 is unused, so the output is identical
    reference_path = tmp_path / "G_ema.pth"
    torch.save(full, reference_path)
    reference = load_generator(reference_path, device="cpu", eps=1e-4)
    assert torch.equal(G.generate(Z, CLASSES), reference.generate(Z, CLASSES))


def test_eps_changes_a_trained_checkpoint_and_is_validated(tmp_path):
    full, _ = converter_state(seed=2)
    path = tmp_path / "G_ema.pth"
    torch.save(full, path)
    default = load_generator(path, device="cpu")
    assert (default.config.sn_eps, default.config.bn_eps) == (1e-6, 1e-5)  # the 138k model's flags
    override = load_generator(path, device="cpu", eps=1e-1)
    assert override.blocks[2][0].bn2.eps == 1e-1
    assert (override.generate(Z, CLASSES) - default.generate(Z, CLASSES)).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"eps must be a number in \(0, 1\)"):
        load_generator(path, device="cpu", eps=0)


def test_eps_is_refused_for_biggan_deep(tiny_deep_dir):
    with pytest.raises(ValueError, match="eps applies to BigGAN-PyTorch checkpoints"):
        load_generator(tiny_deep_dir, device="cpu", eps=1e-4)


def test_sv0_is_all_or_nothing(tmp_path):
    full, _ = converter_state()
    del full["blocks.1.0.conv2.sv0"]
    torch.save(full, tmp_path / "G_ema.pth")
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): blocks\.1\.0\.conv2\.sv0"):
        load_generator(tmp_path / "G_ema.pth", device="cpu")


def test_sidecar_fields_override_the_inferred_config(tmp_path):
    full, _ = converter_state()
    path = tmp_path / "G_ema.pth"
    torch.save(full, path)
    sidecar = path.with_name("G_ema.pth.json")
    sidecar.write_text(json.dumps({"bn_eps": 1e-3}))
    assert load_generator(path, device="cpu").config == BigGANConfig(**SMALL, bn_eps=1e-3)
    sidecar.write_text(json.dumps({"bn_epsilon": 1e-3}))
    with pytest.raises(ValueError, match=r"G_ema.pth.json: unknown BigGAN config field\(s\) \['bn_epsilon'\]"):
        load_generator(path, device="cpu")


def _bn_in_submodule(state: dict[str, torch.Tensor], names: tuple[str, str], extra: str, extra_value) -> dict:
    """Move every ``<bn>.stored_mean / stored_var`` into ``<bn>.bn.<names>`` and add ``<bn>.bn.<extra>``."""
    out = {}
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        if name in ("stored_mean", "stored_var"):
            out[f"{prefix}.bn.{names[name == 'stored_var']}"] = value
            if name == "stored_mean":
                out[f"{prefix}.bn.{extra}"] = extra_value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    "names, extra, value, flag",
    [
        (("stored_mean", "stored_var"), "accumulation_counter", torch.zeros(1), "--mybn"),
        (("running_mean", "running_var"), "num_batches_tracked", torch.tensor(0), "--cross_replica"),
    ],
)
def test_mybn_and_cross_replica_checkpoints_are_named(tmp_path, names, extra, value, flag):
    full, _ = converter_state()
    state = _bn_in_submodule(full, names, extra, value)
    assert f"blocks.0.0.bn1.bn.{names[0]}" in state and f"output_layer.0.bn.{names[1]}" in state
    torch.save(state, tmp_path / "G.pth")
    with pytest.raises(ValueError) as err:
        load_generator(tmp_path / "G.pth", device="cpu")
    message = str(err.value)
    assert f"was trained with {flag}" in message and "not supported" in message and "\n" not in message
    assert "generator blocks" not in message and "missing" not in message


def biggan_deep_ajbrock_state(ch: int = 4, depth: int = 2, dim_z: int = 128, shared: int = 128) -> dict:
    """Random tensors in BigGANdeep.py's Generator layout at 128x128 (attention at 64), SN layers with u0/sv0."""
    gen = torch.Generator().manual_seed(0)
    ins, outs = [16 * ch, 16 * ch, 8 * ch, 4 * ch, 2 * ch], [16 * ch, 8 * ch, 4 * ch, 2 * ch, ch]
    state: dict[str, torch.Tensor] = {"shared.weight": torch.randn(1000, shared, generator=gen)}

    def sn(name, shape, bias=True):
        state[f"{name}.weight"] = torch.randn(shape, generator=gen)
        if bias:
            state[f"{name}.bias"] = torch.zeros(shape[0])
        state[f"{name}.u0"], state[f"{name}.sv0"] = torch.randn(1, shape[0], generator=gen), torch.ones(1)

    def ccbn(name, channels):
        sn(f"{name}.gain", (channels, shared + dim_z), bias=False)
        sn(f"{name}.bias", (channels, shared + dim_z), bias=False)
        state[f"{name}.stored_mean"], state[f"{name}.stored_var"] = torch.zeros(channels), torch.ones(channels)

    sn("linear", (ins[0] * 16, dim_z + shared))
    k = 0
    for index, (cin, cout) in enumerate(zip(ins, outs, strict=False)):
        for g_index in range(depth):
            out = cin if g_index == 0 else cout
            hidden = cin // 4
            block = f"blocks.{k}.0"
            sn(f"{block}.conv1", (hidden, cin, 1, 1))
            sn(f"{block}.conv2", (hidden, hidden, 3, 3))
            sn(f"{block}.conv3", (hidden, hidden, 3, 3))
            sn(f"{block}.conv4", (out, hidden, 1, 1))
            for n, channels in ((1, cin), (2, hidden), (3, hidden), (4, hidden)):
                ccbn(f"{block}.bn{n}", channels)
            if index == 3 and g_index == depth - 1:  # attention at 64x64, appended to the last block
                state[f"blocks.{k}.1.gamma"] = torch.tensor(0.5)
                for c, shape in (("theta", (cout // 8, cout)), ("phi", (cout // 8, cout)), ("g", (cout // 2, cout)),
                                 ("o", (cout, cout // 2))):
                    sn(f"blocks.{k}.1.{c}", (*shape, 1, 1), bias=False)
            k += 1
    for name in ("gain", "bias", "stored_mean", "stored_var"):
        state[f"output_layer.0.{name}"] = torch.ones(ch)
    sn("output_layer.2", (3, ch, 3, 3))
    return state


def test_ajbrock_biggan_deep_layout_is_named(tmp_path):
    state = biggan_deep_ajbrock_state()
    assert len({k.split(".")[1] for k in state if k.startswith("blocks.")}) == 10  # 2 per resolution
    torch.save(state, tmp_path / "G_ema.pth")
    with pytest.raises(ValueError) as err:
        load_generator(tmp_path, device="cpu")
    message = str(err.value)
    assert "BigGAN-deep generator in BigGAN-PyTorch's layout (BigGANdeep.py" in message and "\n" not in message
    assert "has 10 generator blocks" not in message and "Hugging Face port" in message
