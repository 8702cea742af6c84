"""The FID Inception: parity with pytorch-fid's and torch-fidelity's networks on the same random weights, loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import eval.inception as inc
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


def test_tf_input_equals_torch_fidelity(full_state, tmp_path):
    # torch-fidelity's FeatureExtractorInceptionV3 (TF1 bilinear resize of the uint8 image, (x - 128) / 128)
    # built from the same random weights in its layout: our tf path gives the same features and unbiased
    # logits for 128, 256 and 512 inputs (our three resized inputs go through the network as one batch)
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from eval.inception_input import inception_input

    path = tmp_path / "inception.pth"
    torch.save(full_state, path)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(path))
    ours, _ = load_inception(path, input_mode="tf")
    gen = torch.Generator().manual_seed(0)
    levels = [torch.randint(0, 256, (1, 3, s, s), generator=gen, dtype=torch.uint8) for s in (128, 256, 512)]
    with torch.no_grad():
        ref = [theirs(x) for x in levels]
        feats, logits = ours.from_input(torch.cat([inception_input(x.float() / 127.5 - 1, "tf") for x in levels]))
    torch.testing.assert_close(feats, torch.cat([f for f, _ in ref]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, torch.cat([lg for _, lg in ref]), rtol=1e-5, atol=1e-5)
    single, _ = ours(levels[0].float() / 127.5 - 1)  # forward() is inception_input + from_input
    torch.testing.assert_close(single, feats[:1], rtol=1e-5, atol=1e-6)


def test_input_protocols_differ_as_documented():
    # tf: TF1 bilinear (no half-pixel offset) and (x - 128) / 128; pytorch-fid: torch bilinear of the [-1, 1]
    # image; clean: PIL bicubic per float channel. A 2x2 image resized to 299 shows all three differences.
    from PIL import Image
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from eval.inception_input import inception_input

    levels = torch.tensor([[0.0, 255.0], [128.0, 64.0]]).expand(1, 3, 2, 2)
    images = levels / 127.5 - 1
    tf = inception_input(images, "tf")
    expected_tf = (interpolate_bilinear_2d_like_tensorflow1x(levels, size=(299, 299), align_corners=False) - 128) / 128
    torch.testing.assert_close(tf, expected_tf, rtol=0, atol=0)
    assert tf[0, 0, 0, 0] == -1.0  # TF1 samples the first pixel itself: (0 - 128) / 128
    pf = inception_input(images, "pytorch-fid")
    torch.testing.assert_close(pf, torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear"))
    clean = inception_input(images, "clean")
    plane = np.asarray(Image.fromarray(levels[0, 0].numpy()).resize((299, 299), resample=Image.BICUBIC))
    torch.testing.assert_close(clean[0, 0], (torch.from_numpy(plane.clip(0, 255)) - 128) / 128)
    assert (tf - pf).abs().max() > 0.01 and (tf - clean).abs().max() > 0.01


def test_weights_id_hashes_the_whole_file(tmp_path):
    # two files of one size that agree on their first MiB (the old key) but differ at the end: different ids
    head = bytes(range(256)) * 4096 * 2  # 2 MiB
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "w.pth", tmp_path / "b" / "w.pth"
    first.write_bytes(head + b"one")
    second.write_bytes(head + b"two")
    assert inc.weights_id(first) != inc.weights_id(second)
    assert inc.weights_id(first) == inc.weights_id(first)


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
    pattern = r"missing 1 key\(s\): Mixed_7c.branch_pool.conv.weight; unexpected 1 key\(s\): extra.weight"
    with pytest.raises(ValueError, match=pattern):
        load_inception(tmp_path / "bad.pth")


def test_rejects_bad_width_and_shapes():
    with pytest.raises(ValueError, match="width"):
        FIDInception(width=2.0)
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        FIDInception(width=1 / 32)(torch.zeros(1, 1, 8, 8))
