"""The attention probe on a real SelfAttention block: error against exact, time, CPU memory count."""
from __future__ import annotations

import torch

from eval.attention_probe import AttentionProbe
from gan.attention.base import AttentionBackend
from gan.layers import SelfAttention


class _Scaled(AttentionBackend):
    """Exact attention times 1.1: relative error exactly 0.1 per image (a known answer)."""

    name = "scaled-test"

    def attend(self, q, k, v, scale):
        return 1.1 * torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    def score_entries(self, nq, nk, d):
        return 7 * nq


def _block() -> tuple[SelfAttention, torch.Tensor]:
    torch.manual_seed(0)
    block = SelfAttention(16)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    return block, torch.randn(3, 16, 8, 8)  # 64 queries, 16 keys, d = 2, dv = 8


def test_probe_measures_known_error_and_counts_bytes():
    block, x = _block()
    block.attention = _Scaled()
    probe = AttentionProbe(measure_error=True)
    block.probe = probe
    with torch.no_grad():
        block(x)
    errors = probe.take_errors(3)
    # ||1.1 e - e|| / ||e|| = 0.1 exactly in exact arithmetic; float32 rounding stays below 1e-6
    torch.testing.assert_close(errors, torch.full((3,), 0.1, dtype=torch.float64), rtol=0, atol=1e-6)
    assert probe.calls == 1 and probe.shape == (64, 16, 2) and probe.seconds > 0
    assert probe.peak_bytes == 7 * 64 * 3 * 4  # score_entries * batch * float32 bytes


def test_probe_is_transparent_and_exact_has_zero_error():
    # the probe returns the backend's output unchanged, so the block output is bit-identical
    block, x = _block()
    with torch.no_grad():
        plain = block(x)
        probe = AttentionProbe(measure_error=True)
        block.probe = probe
        probed = block(x)
    assert torch.equal(plain, probed)
    assert probe.take_errors(3).max() < 1e-6  # exact vs the probe's own float32 SDPA: same op, same inputs
    assert probe.peak_bytes == 64 * 16 * 3 * 4  # exact holds the dense 64 x 16 scores per image


def test_no_reference_without_error_measurement():
    block, x = _block()
    probe = AttentionProbe(measure_error=False)
    block.probe = probe
    with torch.no_grad():
        block(x)
    assert probe.take_errors(3).eq(0).all() and probe.reference_seconds == 0.0
