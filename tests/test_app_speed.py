"""The app's speed numbers (attention's share, attention-only and end-to-end speed-ups against exact), checked
against a backend made slow by a known sleep per call: it computes exact attention, so the sleep is all it adds."""
from __future__ import annotations

import re
import time

import pytest
import torch
import torch.nn.functional as F

from app.compare import compare_backends
from gan.attention import available_attentions, backend_class
from weights import load_generator

SLEEP_S = 0.3  # per attention call; well above the tiny generator's whole forward pass for one image
SLOW = available_attentions(published=True)[1]  # any registered non-exact name: its attend is replaced


@pytest.fixture(scope="module")
def generator(tiny_deep_dir):
    return load_generator(str(tiny_deep_dir), attention="exact", device="cpu").eval()


@pytest.fixture
def slow_backend(monkeypatch):
    """SLOW's attention becomes exact attention after ``SLEEP_S`` of sleep; returns its name."""

    def slow_exact(self, q, k, v, scale):
        time.sleep(SLEEP_S)
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    monkeypatch.setattr(backend_class(SLOW), "attend", slow_exact)
    return SLOW


def test_a_backend_slowed_by_a_known_sleep_is_reported_slower_than_exact(generator, slow_backend):
    exact, slow = compare_backends(generator, range(1), torch.tensor([1]), 0.5, 0, [(slow_backend, {})])
    calls = len(generator.attention_blocks())  # one forward pass timed: one call per attention block
    assert exact.attn_calls == slow.attn_calls == calls  # the warm-up image ran off the probe
    # exact attention again (up to float rounding): the sleep is the only difference
    assert slow.pixel_diff < 1e-5 and slow.attn_rel_error < 1e-5
    # The sleep is timed inside the forward pass, once: at least SLEEP_S per call; under 2 x if the warm-up's
    # sleep stayed off the clock (the rest of a one-image tiny forward pass takes well under SLEEP_S).
    assert calls * SLEEP_S <= slow.attn_seconds < 2 * calls * SLEEP_S, slow.attn_seconds
    assert slow.attn_seconds <= slow.gen_seconds < 2 * calls * SLEEP_S, slow.gen_seconds
    # exact is the reference: its own speed-ups are exactly 1, attention is part of its generation time
    assert exact.attn_speedup == 1.0 and exact.gen_speedup == 1.0 and 0 < exact.attn_share <= 1
    # eval/metrics.py's definitions, written out: against exact's run in this same comparison
    assert slow.attn_speedup == pytest.approx((exact.attn_seconds / calls) / (slow.attn_seconds / calls), rel=1e-12)
    assert slow.gen_speedup == pytest.approx(exact.gen_seconds / slow.gen_seconds, rel=1e-12)  # one image each
    assert slow.attn_share == pytest.approx(slow.attn_seconds / slow.gen_seconds, rel=1e-12)
    # the sleep bounds them: exact's time over at least SLEEP_S per call
    assert slow.attn_speedup <= exact.attn_seconds / (calls * SLEEP_S) < 1, slow.attn_speedup
    assert slow.gen_speedup <= exact.gen_seconds / (calls * SLEEP_S) < 1, slow.gen_speedup
    # the same non-attention work plus SLEEP_S of attention: a larger share than exact's
    assert exact.attn_share < slow.attn_share <= 1, (exact.attn_share, slow.attn_share)
    numbers = slow.numbers()
    assert re.fullmatch(r"attn x 0\.\d\d", numbers["attn_speedup"]) and re.fullmatch(r"gen x 0\.\d\d",
                                                                                      numbers["gen_speedup"])
    assert numbers["attn_share"] == f"attn share {slow.attn_share:.3f}"


def test_row_labels_carry_every_speed_number_with_its_definition(generator):
    from app.ui import _run_state, rows_html

    runs = compare_backends(generator, range(1), torch.tensor([2]), 0.5, 1, [(SLOW, {"budget": 0.25})])
    html = rows_html([_run_state(run, "1/4") for run in runs], show_diff=False)
    # each number's hover text says what it is: a share of generation time, or a ratio against exact
    for key, label, word in (("attn_share", "attn share", "share"), ("attn_speedup", "attn x", "exact"),
                             ("gen_speedup", "gen x", "exact")):
        tips = re.findall(rf"<span class='bg-num' data-key='{key}' title='([^']+)'>{label} [0-9.]+</span>", html)
        assert len(tips) == len(runs) and all(word in tip for tip in tips), (key, tips)  # one per row
    assert "&gt; 1: faster than exact" in html  # the legend above the rows
