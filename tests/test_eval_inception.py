"""The FID Inception: parity with pytorch-fid's InceptionV3 on the same random weights, and loading."""
from __future__ import annotations

import pytest
import torch

from eval.inception import FIDInception, load_inception, random_inception_state


@pytest.fixture(scope="module")
def full_state() -> dict[str, torch.Tensor]:
    return random_inception_state(1.0, seed=0)


def test_features_and_logits_match_pytorch_fid(full_state, tmp_path, monkeypatch):
    # pytorch-fid builds its network from the checkpoint URL; hand it our random state instead.
    import pytorch_fid.inception as pf

    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: full_state)
    theirs = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    path = tmp_path / "pt_inception.pth"
    torch.save(full_state, path)
    ours, _ = load_inception(path)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1  # [-1, 1]
    with torch.no_grad():
        ref = theirs((images + 1) / 2)[0].flatten(1)  # pytorch-fid takes [0, 1]
        feats, logits = ours(images)
    # Same float32 ops in the same order except the [0,1] <-> [-1,1] affine map around the resize,
    # which moves values by ~1 ulp; through 20 conv layers that stays below 1e-4 relative.
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)
    # logits are fc WITHOUT the bias (the random bias is non-zero, so using it would fail this)
    assert full_state["fc.bias"].abs().max() > 0.01
    torch.testing.assert_close(logits, ref @ full_state["fc.weight"].T, rtol=1e-4, atol=1e-4)


def test_tiny_width_is_inferred_from_shapes(tmp_path):
    # 1/16 width: every channel count scaled; pool3 features have 2048/16 = 128 dimensions
    path = tmp_path / "tiny.pth"
    torch.save(random_inception_state(1 / 16, seed=0), path)
    net, weights_id = load_inception(path)
    assert net.feature_dim == 128 and weights_id.startswith("tiny.pth:")
    feats, logits = net(torch.zeros(1, 3, 16, 16))
    assert feats.shape == (1, 128) and logits.shape == (1, 1008)


def test_layout_mismatch_names_keys(tmp_path):
    state = random_inception_state(1 / 16)
    state.pop("Mixed_7c.branch_pool.conv.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): Mixed_7c.branch_pool.conv.weight; unexpected 1 key\(s\): extra.weight"):
        load_inception(tmp_path / "bad.pth")


def test_rejects_bad_width_and_shapes():
    with pytest.raises(ValueError, match="width"):
        FIDInception(width=2.0)
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        FIDInception(width=1 / 32)(torch.zeros(1, 1, 8, 8))
