"""ajbrock BigGAN-PyTorch generator: checkpoint layout, strict loading, SN folding, forward piece by piece.

There is no PyPI oracle for this format, so the reference here is a plain re-implementation of
ajbrock's ``BigGAN.py`` / ``layers.py`` in functional torch calls on the raw checkpoint tensors.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gan.attention import AttentionBackend
from gan.biggan import BigGAN, BigGANConfig
from weights.formats.ajbrock import (
    generator_from_ajbrock_state_dict,
    looks_like_ajbrock,
    random_ajbrock_state_dict,
    sidecar_path,
    write_random_ajbrock_checkpoint,
)
from weights.formats.openmmlab import generator_from_openmmlab, looks_like_openmmlab
from weights.spectral_norm import fold_ajbrock_spectral_norm, fold_torch_spectral_norm

SN_EPS = 1e-6  # the 138k model's --SN_eps
BN_EPS = 1e-5  # its --BN_eps, and the fixed eps of ajbrock's output-layer bn
TOL = 1e-5  # fp32 on CPU, one layer: fused BN, SDPA and conv-before-upsample reorder ops; a wrong op is off by >1e-2
TOL_FULL = 3e-5  # the whole network: rounding compounds over 5 blocks (measured max ~5e-6 over 3 seeds)
SMALL = dict(G_ch=8)  # 138k architecture at reduced width: attention at 64x64 on 16 channels


def published_layout(ch: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ajbrock's 128x128 G (G_shared, hier, dim_z 120, shared_dim 128, attention at 64),
    written out from a plain reading of BigGAN.py's G_arch and layers.py (SNConv2d / SNLinear / ccbn / bn)."""
    ins, outs = [16 * ch, 16 * ch, 8 * ch, 4 * ch, 2 * ch], [16 * ch, 8 * ch, 4 * ch, 2 * ch, ch]
    cond = 128 + 120 // 6  # shared embedding + one z chunk (6 slots: linear + 5 blocks)
    keys: dict[str, tuple[int, ...]] = {"shared.weight": (1000, 128)}

    def sn(name, shape, bias):
        keys[name + ".weight"] = shape
        if bias:
            keys[name + ".bias"] = (shape[0],)
        keys[name + ".u0"] = (1, shape[0])  # randn(1, num_outputs)
        keys[name + ".sv0"] = (1,)

    sn("linear", (ins[0] * 4 * 4, 20), True)
    for i in range(5):
        b = f"blocks.{i}.0."
        sn(b + "conv1", (outs[i], ins[i], 3, 3), True)
        sn(b + "conv2", (outs[i], outs[i], 3, 3), True)
        sn(b + "conv_sc", (outs[i], ins[i], 1, 1), True)  # learnable_sc: every block upsamples
        for bn, c in (("bn1", ins[i]), ("bn2", outs[i])):
            sn(b + bn + ".gain", (c, cond), False)
            sn(b + bn + ".bias", (c, cond), False)
            keys[b + bn + ".stored_mean"] = (c,)
            keys[b + bn + ".stored_var"] = (c,)
    c = outs[3]  # block 3 outputs 64x64: the attention block
    keys["blocks.3.1.gamma"] = ()
    for name, shape in (("theta", (c // 8, c)), ("phi", (c // 8, c)), ("g", (c // 2, c)), ("o", (c, c // 2))):
        sn(f"blocks.3.1.{name}", (*shape, 1, 1), False)
    for name in ("gain", "bias", "stored_mean", "stored_var"):
        keys[f"output_layer.0.{name}"] = (ch,)
    sn("output_layer.2", (3, ch, 3, 3), True)
    return keys


def ajbrock_sn_weight(weight: torch.Tensor, u0: torch.Tensor, eps: float = SN_EPS) -> torch.Tensor:
    """ajbrock's SN.W_() in eval mode, step by step: one power iteration from u0 (not stored), W / sv."""
    w = weight.view(weight.size(0), -1)
    v = torch.matmul(u0, w)
    v = v / torch.clamp(v.norm(dim=1, keepdim=True), min=eps)
    u = torch.matmul(v, w.t())
    u = u / torch.clamp(u.norm(dim=1, keepdim=True), min=eps)
    sv = torch.squeeze(torch.matmul(torch.matmul(v, w.t()), u.t()))
    return weight / sv


class Plain:
    """ajbrock's generator forward as functional calls on a raw checkpoint ``sd``."""

    def __init__(self, sd):
        self.sd = sd

    def w(self, name):
        return ajbrock_sn_weight(self.sd[name + ".weight"], self.sd[name + ".u0"])

    def ccbn(self, name, x, y):
        gain = (1 + y @ self.w(name + ".gain").t()).view(y.size(0), -1, 1, 1)
        bias = (y @ self.w(name + ".bias").t()).view(y.size(0), -1, 1, 1)
        out = F.batch_norm(
            x, self.sd[name + ".stored_mean"], self.sd[name + ".stored_var"], None, None, False, 0.1, BN_EPS
        )
        return out * gain + bias

    def gblock(self, i, x, y):
        b = f"blocks.{i}.0."
        h = F.relu(self.ccbn(b + "bn1", x, y))
        h, x = F.interpolate(h, scale_factor=2), F.interpolate(x, scale_factor=2)
        h = F.conv2d(h, self.w(b + "conv1"), self.sd[b + "conv1.bias"], padding=1)
        h = F.relu(self.ccbn(b + "bn2", h, y))
        h = F.conv2d(h, self.w(b + "conv2"), self.sd[b + "conv2.bias"], padding=1)
        return h + F.conv2d(x, self.w(b + "conv_sc"), self.sd[b + "conv_sc.bias"])

    def attention(self, i, x, attend=None):
        a, (n, ch, hh, ww) = f"blocks.{i}.1.", x.shape
        theta = F.conv2d(x, self.w(a + "theta")).view(n, ch // 8, hh * ww)
        phi = F.max_pool2d(F.conv2d(x, self.w(a + "phi")), [2, 2]).view(n, ch // 8, hh * ww // 4)
        g = F.max_pool2d(F.conv2d(x, self.w(a + "g")), [2, 2]).view(n, ch // 2, hh * ww // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1) if attend is None else attend(theta, phi)
        o = F.conv2d(torch.bmm(g, beta.transpose(1, 2)).view(n, ch // 2, hh, ww), self.w(a + "o"))
        return self.sd[a + "gamma"] * o + x

    def conditions(self, z, class_ids):
        y = self.sd["shared.weight"][class_ids]
        zs = torch.split(z, 20, 1)
        return zs[0], [torch.cat([y, item], 1) for item in zs[1:]]

    def output(self, h):
        o = "output_layer."
        mean, var, gain, bias = (self.sd[o + "0." + n] for n in ("stored_mean", "stored_var", "gain", "bias"))
        h = F.batch_norm(h, mean, var, gain, bias, False, 0.1, BN_EPS)
        return torch.tanh(F.conv2d(F.relu(h), self.w(o + "2"), self.sd[o + "2.bias"], padding=1))

    def forward(self, z, class_ids, attend=None):
        z0, ys = self.conditions(z, class_ids)
        h = F.linear(z0, self.w("linear"), self.sd["linear.bias"]).view(z.size(0), -1, 4, 4)
        for i, y in enumerate(ys):
            h = self.gblock(i, h, y)
            if i == 3:
                h = self.attention(i, h, attend)
        return self.output(h)


@pytest.fixture(scope="module")
def small():
    """A reduced-width 138k-layout checkpoint, its plain reference and our loaded generator."""
    sd = random_ajbrock_state_dict(BigGANConfig(**SMALL), seed=1)
    return sd, Plain(sd), generator_from_ajbrock_state_dict(sd, "<random G_ch=8>")


def latents(batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(batch, 120, generator=gen) * 0.5).clamp(-1, 1)
    return z, torch.randint(0, 1000, (batch,), generator=gen)


def test_138k_layout_keys_shapes_and_parameter_count():
    sd = random_ajbrock_state_dict(BigGANConfig(), seed=0)
    expected = published_layout(96)
    assert set(sd) == set(expected)  # fails if a key name is wrong, missing or extra
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert len(sd) == 166
    G = generator_from_ajbrock_state_dict(sd, "<random 138k>")
    assert G.config == BigGANConfig()  # config inferred from shapes is the 138k default
    # compare_gan's test of the same BigGAN-128 generator asserts 70,433,988 weights
    assert sum(p.numel() for p in G.parameters()) == 70_433_988
    assert G.family == "biggan" and G.resolution == 128 and G.z_dim == 120 and G.num_classes == 1000


def test_reduced_width_layout_matches_reading():
    sd = random_ajbrock_state_dict(BigGANConfig(**SMALL))
    assert {k: tuple(v.shape) for k, v in sd.items()} == published_layout(8)
    assert looks_like_ajbrock(sd) and not looks_like_ajbrock({"embeddings.weight": torch.zeros(1)})


def test_checkpoint_file_round_trip_and_sidecar(tmp_path):
    path = write_random_ajbrock_checkpoint(tmp_path / "G_ema.pth", seed=3, **SMALL)
    assert not sidecar_path(path).exists()  # every field but the epsilons is inferred from shapes
    sd = torch.load(path, weights_only=True)
    assert generator_from_ajbrock_state_dict(sd, str(path)).config == BigGANConfig(**SMALL)

    odd = write_random_ajbrock_checkpoint(tmp_path / "odd.pth", sn_eps=1e-4, bn_eps=1e-3, **SMALL)
    assert json.loads(sidecar_path(odd).read_text())["sn_eps"] == 1e-4
    G = generator_from_ajbrock_state_dict(torch.load(odd, weights_only=True), str(odd))
    assert (G.config.sn_eps, G.config.bn_eps) == (1e-4, 1e-3)
    assert G.blocks[0][0].bn1.eps == 1e-3


def test_config_json_round_trip_and_validation():
    config = BigGANConfig(G_ch=16, attention_resolutions=(32, 64), sn_eps=1e-8)
    assert BigGANConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown BigGAN config field"):
        BigGANConfig.from_dict({"G_ch": 8, "channel_width": 8})
    with pytest.raises(ValueError, match="invalid BigGAN config"):  # a JSON value of the wrong type
        BigGANConfig.from_dict({"attention_resolutions": 64})
    with pytest.raises(ValueError, match="attention resolutions"):
        BigGANConfig(attention_resolutions=(4,))
    with pytest.raises(ValueError, match="multiple of 6"):
        BigGANConfig(dim_z=128)
    with pytest.raises(ValueError, match="resolution"):
        BigGANConfig(resolution=100)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("blocks.2.0.conv1.u0"), r"missing 1 key\(s\): blocks\.2\.0\.conv1\.u0"),
        (
            lambda sd: sd.__setitem__("blocks.0.0.bn1.num_batches_tracked", torch.tensor(0)),
            r"unexpected 1 key\(s\): blocks\.0\.0\.bn1\.num_batches_tracked",
        ),
        (
            lambda sd: sd.__setitem__("blocks.1.0.conv2.bias", torch.zeros(5)),
            r"shape mismatch.*blocks\.1\.0\.conv2\.bias \(checkpoint \(5,\), expected \(64,\)\)",
        ),
    ],
)
def test_strict_loading_errors(edit, message):
    sd = random_ajbrock_state_dict(BigGANConfig(**SMALL))
    edit(sd)
    with pytest.raises(ValueError, match=message):
        generator_from_ajbrock_state_dict(sd, "G_ema.pth")


def test_not_an_ajbrock_checkpoint():
    with pytest.raises(ValueError, match="not an ajbrock"):
        generator_from_ajbrock_state_dict({"generator.gen_z.weight_orig": torch.zeros(2, 2)}, "x.bin")


def test_explicit_config_must_match_shapes():
    sd = random_ajbrock_state_dict(BigGANConfig(**SMALL))
    with pytest.raises(ValueError, match="shape mismatch"):
        generator_from_ajbrock_state_dict(sd, "G_ema.pth", config=BigGANConfig(G_ch=16))


def test_spectral_norm_folding_matches_ajbrock_eval_forward():
    gen = torch.Generator().manual_seed(0)
    for shape in [(64, 32, 3, 3), (24, 148), (3, 8, 3, 3)]:
        weight, u0 = torch.randn(shape, generator=gen), torch.randn(1, shape[0], generator=gen)
        torch.testing.assert_close(
            fold_ajbrock_spectral_norm(weight, u0, SN_EPS), ajbrock_sn_weight(weight, u0), rtol=1e-6, atol=1e-7
        )
    # starting from the exact top left singular vector, the one iteration lands on sigma_max: ||W/sv||_2 = 1
    weight = torch.randn(40, 30, generator=gen, dtype=torch.float64)
    u_top = torch.linalg.svd(weight).U[:, :1].t()
    assert abs(torch.linalg.matrix_norm(fold_ajbrock_spectral_norm(weight, u_top, SN_EPS), ord=2).item() - 1) < 1e-10


def test_folded_weights_in_model(small):
    sd, plain, G = small
    torch.testing.assert_close(G.blocks[3][1].theta.weight, plain.w("blocks.3.1.theta"), rtol=0, atol=0)
    torch.testing.assert_close(G.blocks[0][0].bn2.gain.weight, plain.w("blocks.0.0.bn2.gain"), rtol=0, atol=0)
    assert torch.equal(G.blocks[3][1].gamma, sd["blocks.3.1.gamma"])


def test_embedding_and_hierarchical_split(small):
    _, plain, G = small
    z, ids = latents()
    z0, ys = G.conditions(z, ids)
    ref_z0, ref_ys = plain.conditions(z, ids)
    assert torch.equal(z0, ref_z0) and len(ys) == 5  # pure indexing and slicing: exact
    for y, ref in zip(ys, ref_ys, strict=False):
        assert y.shape == (3, 148) and torch.equal(y, ref)


def test_conditional_batch_norm(small):
    _, plain, G = small
    z, ids = latents()
    _, ys = G.conditions(z, ids)
    x = torch.randn(3, 128, 8, 8, generator=torch.Generator().manual_seed(5))  # block 1 input: 16 * G_ch
    torch.testing.assert_close(G.blocks[1][0].bn1(x, ys[1]), plain.ccbn("blocks.1.0.bn1", x, ys[1]), rtol=0, atol=TOL)


def test_gblock(small):
    _, plain, G = small
    z, ids = latents()
    _, ys = G.conditions(z, ids)
    x = torch.randn(3, 128, 4, 4, generator=torch.Generator().manual_seed(6))
    out = G.blocks[0][0](x, ys[0])
    assert out.shape == (3, 128, 8, 8)
    torch.testing.assert_close(out, plain.gblock(0, x, ys[0]), rtol=0, atol=TOL)


def test_attention_block(small):
    _, plain, G = small
    x = torch.randn(2, 16, 64, 64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(G.blocks[3][1](x), plain.attention(3, x), rtol=0, atol=TOL)


def test_output_layer(small):
    _, plain, G = small
    h = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(torch.tanh(G.output_layer(h)), plain.output(h), rtol=0, atol=TOL)


def test_full_forward(small):
    _, plain, G = small
    z, ids = latents(batch=2)
    x = G.generate(z, ids, truncation=0.5)
    assert x.shape == (2, 3, 128, 128) and x.dtype == torch.float32
    assert x.abs().max() <= 1 and x.std() > 1e-3  # tanh range; not a constant image
    torch.testing.assert_close(x, plain.forward(z, ids), rtol=0, atol=TOL_FULL)
    # truncation is unused by this family (z is already truncated)
    assert torch.equal(G.generate(z, ids, truncation=1.0), x)


class UniformAttention(AttentionBackend):
    """Every query attends equally to every key: a backend whose effect is easy to reproduce."""

    name = "uniform-test"

    def attend(self, q, k, v, scale):
        return v.mean(dim=1, keepdim=True).expand(-1, q.shape[1], -1)

    def score_entries(self, nq, nk, d):
        return 0


def test_set_attention_swaps_in_place(small):
    _, plain, G = small
    z, ids = latents(batch=2)
    exact = G.generate(z, ids)
    try:
        backend = G.set_attention(UniformAttention())
        assert G.attention is backend and all(b.attention is backend for b in G.attention_blocks())
        uniform = G.generate(z, ids)

        def uniform_beta(theta, phi):  # (B, Nq, Nk) attention map with every weight 1/Nk
            return torch.full((theta.shape[0], theta.shape[2], phi.shape[2]), 1 / phi.shape[2])

        reference = plain.forward(z, ids, attend=uniform_beta)
        torch.testing.assert_close(uniform, reference, rtol=0, atol=TOL_FULL)
        assert (uniform - exact).abs().max() > 1e-3  # the swap changed the output
    finally:
        G.set_attention("exact")
    torch.testing.assert_close(G.generate(z, ids), exact, rtol=0, atol=0)


def openmmlab_state_dict(sd, sn_style: str) -> dict[str, torch.Tensor]:
    """The 128x128 ``sd`` under OpenMMLab BigGANGenerator names, written from mmgen's modules: GBlocks and the
    attention are consecutive ``conv_blocks`` entries; SNConvModule wraps its conv as ``.conv``; BigGANConditionBN
    keeps statistics in an affine-free ``.bn``; the output layer is ConvModule(norm ``bn``, act, ``conv``)."""
    stages = {
        "blocks.0.0": "conv_blocks.0",
        "blocks.1.0": "conv_blocks.1",
        "blocks.2.0": "conv_blocks.2",
        "blocks.3.0": "conv_blocks.3",
        "blocks.3.1": "conv_blocks.4",
        "blocks.4.0": "conv_blocks.5",
    }
    sn_layers = {"linear": "noise2feat", "output_layer.2": "output_layer.conv"}
    out = {"shared_embedding.weight": sd["shared.weight"], "conv_blocks.4.gamma": sd["blocks.3.1.gamma"]}
    for name, new in (
        ("gain", "weight"),
        ("bias", "bias"),
        ("stored_mean", "running_mean"),
        ("stored_var", "running_var"),
    ):
        out[f"output_layer.bn.{new}"] = sd[f"output_layer.0.{name}"]
    out["output_layer.bn.num_batches_tracked"] = torch.tensor(0)
    for old, new in stages.items():
        if old.endswith(".1"):
            sn_layers |= {f"{old}.{c}": f"{new}.{c}.conv" for c in ("theta", "phi", "g", "o")}
            continue
        sn_layers |= {f"{old}.conv1": f"{new}.conv1.conv", f"{old}.conv2": f"{new}.conv2.conv"}
        sn_layers[f"{old}.conv_sc"] = f"{new}.shortcut.conv"
        for bn in ("bn1", "bn2"):
            sn_layers |= {f"{old}.{bn}.gain": f"{new}.{bn}.gain", f"{old}.{bn}.bias": f"{new}.{bn}.bias"}
            out[f"{new}.{bn}.bn.running_mean"] = sd[f"{old}.{bn}.stored_mean"]
            out[f"{new}.{bn}.bn.running_var"] = sd[f"{old}.{bn}.stored_var"]
            out[f"{new}.{bn}.bn.num_batches_tracked"] = torch.tensor(0)
    for old, new in sn_layers.items():
        weight, u0 = sd[f"{old}.weight"], sd[f"{old}.u0"]
        if f"{old}.bias" in sd:
            out[f"{new}.bias"] = sd[f"{old}.bias"]
        if sn_style == "ajbrock":
            out |= {f"{new}.weight": weight, f"{new}.u0": u0, f"{new}.sv0": sd[f"{old}.sv0"]}
        else:  # torch's vectors after the same power-iteration step ajbrock's eval forward takes
            v = F.normalize(u0 @ weight.flatten(1), eps=SN_EPS)
            u = F.normalize(v @ weight.flatten(1).t(), eps=SN_EPS)
            out |= {f"{new}.weight_orig": weight, f"{new}.weight_u": u[0], f"{new}.weight_v": v[0]}
    return out


def test_torch_spectral_norm_folding_matches_torch():
    gen = torch.Generator().manual_seed(4)
    layer = torch.nn.utils.spectral_norm(torch.nn.Linear(30, 20)).eval()
    with torch.no_grad():
        for name in ("weight_orig", "weight_u", "weight_v"):
            getattr(layer, name).copy_(torch.randn(getattr(layer, name).shape, generator=gen))
        x = torch.randn(5, 30, generator=gen)
        expected = layer(x)  # eval mode: no power iteration, sigma from the stored u, v
    folded = fold_torch_spectral_norm(layer.weight_orig, layer.weight_u, layer.weight_v)
    torch.testing.assert_close(F.linear(x, folded, layer.bias), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sn_style", ["torch", "ajbrock"])
def test_openmmlab_conversion_loads_to_the_same_generator(small, sn_style):
    sd, _, G = small
    converted = openmmlab_state_dict(sd, sn_style)
    stale = {k: (v * 0 if k.endswith("gamma") else v) for k, v in converted.items()}  # non-EMA copy: must be ignored
    checkpoint = {
        "meta": {"mmgen_version": "0.3.0"},
        "state_dict": {
            **{f"generator.{k}": v for k, v in stale.items()},
            **{f"generator_ema.{k}": v for k, v in converted.items()},
            "discriminator.linear.weight": torch.zeros(1, 1),
        },
    }
    for source in (converted, checkpoint):
        assert looks_like_openmmlab(source) and not looks_like_ajbrock(source)
        G_mm = generator_from_openmmlab(source, "biggan_cvt_BigGAN-PyTorch_rgb.pth")
        assert G_mm.config == G.config
        z, ids = latents(batch=2)
        # same tensors, SN sigma by an algebraically equal formula: only rounding differs (compounded: TOL_FULL)
        torch.testing.assert_close(G_mm.generate(z, ids), G.generate(z, ids), rtol=0, atol=TOL_FULL)
    converted.pop("conv_blocks.5.conv2.conv.bias")
    with pytest.raises(ValueError, match=r"OpenMMLab.*missing 1 key\(s\): blocks\.4\.0\.conv2\.bias"):
        generator_from_openmmlab(converted, "cvt.pth")


def test_default_model_builds_without_checkpoint():
    G = BigGAN(BigGANConfig(**SMALL))
    assert len(G.attention_blocks()) == 1 and G.attention_blocks()[0].channels == 16
