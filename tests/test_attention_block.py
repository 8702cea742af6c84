"""The self-attention block: exact backend vs naive softmax(theta^T phi) g and the reference layer; swapping."""
from __future__ import annotations

import torch
from pytorch_pretrained_biggan.model import SelfAttn
from torch.nn.utils import remove_spectral_norm

from gan.attention import AttentionBackend
from gan.layers import SelfAttention
from gan.sampling import truncated_noise_sample
from weights import load_generator

TOL = 1e-5  # fp32: SDPA and bmm-softmax differ only in summation order


def _block(channels: int = 32, seed: int = 0) -> SelfAttention:
    torch.manual_seed(seed)
    block = SelfAttention(channels).eval()
    with torch.no_grad():
        block.gamma.fill_(0.7)  # zero gamma (the init) would hide the attention path
    return block


def test_exact_block_equals_naive_softmax_attention():
    block = _block()
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        b, c, h, w = x.shape
        theta = block.theta(x).reshape(b, c // 8, h * w)  # (B, d, N)
        phi = torch.nn.functional.max_pool2d(block.phi(x), 2).reshape(b, c // 8, h * w // 4)  # (B, d, N/4)
        g = torch.nn.functional.max_pool2d(block.g(x), 2).reshape(b, c // 2, h * w // 4)  # (B, dv, N/4)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (B, N, N/4), unscaled
        naive = x + block.gamma * block.o((g @ attn.transpose(1, 2)).reshape(b, c // 2, h, w))
        got = block(x)
    # fails on a 1/sqrt(d) scale, swapped q/k, missing max-pool or wrong reshapes
    assert (got - naive).abs().max().item() <= TOL


def test_block_equals_reference_selfattn_layer():
    block = _block(seed=1)
    reference = SelfAttn(32).eval()
    for name in ("snconv1x1_theta", "snconv1x1_phi", "snconv1x1_g", "snconv1x1_o_conv"):
        remove_spectral_norm(getattr(reference, name))
    with torch.no_grad():
        for ours, theirs in [("theta", "theta"), ("phi", "phi"), ("g", "g"), ("o", "o_conv")]:
            getattr(reference, f"snconv1x1_{theirs}").weight.copy_(getattr(block, ours).weight)
        reference.gamma.fill_(block.gamma.item())
        x = torch.randn(2, 32, 8, 8)
        # fails if our token order (h w) or pooling differs from pytorch-pretrained-biggan's layer
        assert (block(x) - reference(x)).abs().max().item() <= TOL


class ZeroAttention(AttentionBackend):
    """Attends to nothing: the block then reduces to its residual input."""

    name = "zero-test"

    def attend(self, q, k, v, scale):
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[2])

    def score_entries(self, nq, nk, d):
        return 0


def test_set_attention_swaps_in_place_without_reload(tiny_deep_dir):
    model = load_generator(tiny_deep_dir, device="cpu")
    z = torch.from_numpy(truncated_noise_sample(2, 128, 0.5, seed=0))
    class_ids = torch.tensor([3, 4])
    storage = {name: p.data_ptr() for name, p in model.named_parameters()}
    exact = model.generate(z, class_ids, 0.5)

    model.set_attention(ZeroAttention())
    zeroed = model.generate(z, class_ids, 0.5)
    block = model.attention_blocks()[0]
    with torch.no_grad():
        gamma = block.gamma.clone()
        block.gamma.zero_()
        no_attention = model.generate(z, class_ids, 0.5)
        block.gamma.copy_(gamma)
    # the swapped backend is the one called: zero attention output == the block switched off
    assert torch.equal(zeroed, no_attention) and not torch.allclose(zeroed, exact, atol=1e-3)

    backend = model.set_attention("exact")
    assert model.attention is backend and all(b.attention is backend for b in model.attention_blocks())
    # same weights, same tensors: swapping back to exact restores the output bit for bit
    assert torch.equal(model.generate(z, class_ids, 0.5), exact)
    assert storage == {name: p.data_ptr() for name, p in model.named_parameters()}


class RecordingAttention(AttentionBackend):
    """Exact attention that records the shapes and the scale the block calls it with."""

    name = "recording-test"

    def __init__(self):
        super().__init__()
        self.calls = []

    def attend(self, q, k, v, scale):
        self.calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), scale))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    def score_entries(self, nq, nk, d):
        return nq * nk


def test_block_calls_backend_with_biggan_shapes_and_unit_scale(tiny_deep_dir):
    recorder = RecordingAttention()
    model = load_generator(tiny_deep_dir, device="cpu", attention=recorder)
    seen = []

    def probe(backend, q, k, v):
        seen.append((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return backend(q, k, v, scale=1.0)

    model.generate(torch.zeros(1, 128), torch.tensor([0]), 1.0)
    # 64x64 map at channel_width 8: 16 channels -> N=4096 queries, N/4=1024 keys, d=2, dv=8; BigGAN
    # attention is unscaled: fails if the block passed 1/sqrt(d) (or anything but 1.0) to the backend
    assert recorder.calls == [((1, 4096, 2), (1, 1024, 2), (1, 1024, 8), 1.0)]
    model.attention_blocks()[0].probe = probe
    model.generate(torch.zeros(1, 128), torch.tensor([0]), 1.0)
    assert seen == [((1, 4096, 2), (1, 1024, 2), (1, 1024, 8))]  # the probe gets the same q, k, v
