"""BigGAN-deep: parity with pytorch-pretrained-biggan on random checkpoints in the published layout."""
from __future__ import annotations

import pytest
import torch
from pytorch_pretrained_biggan import BigGAN, BigGANConfig
from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN128, BigGAN256, BigGAN512

from gan.biggan_deep import BigGANDeep, BigGANDeepConfig
from gan.sampling import one_hot, truncated_noise_sample
from weights import load_generator, write_random_checkpoint
from weights.formats.biggan_deep import hf_layout

PARITY_TOL = 1e-5  # binding: max abs difference of images in [-1, 1], fp32 CPU
# 1.0 and 0.4 hit stored statistics exactly; 0.55 and 0.33 fall halfway between two stored truncations
TRUNCATIONS = (1.0, 0.4, 0.55, 0.33)


def _reference_images(folder, z: torch.Tensor, class_ids: torch.Tensor, truncation: float) -> torch.Tensor:
    reference = BigGAN.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return reference(z, one_hot(class_ids, reference.config.num_classes), truncation)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_at_stored_and_interpolated_truncations(tmp_path, seed):
    folder = write_random_checkpoint(tmp_path / "deep", seed=seed, channel_width=8)
    ours = load_generator(folder, device="cpu")
    reference = BigGAN.from_pretrained(str(folder)).eval()
    class_ids = torch.tensor([0, 207, 999])
    for truncation in TRUNCATIONS:
        z = torch.from_numpy(truncated_noise_sample(3, 128, truncation, seed=seed))
        with torch.no_grad():
            expected = reference(z, one_hot(class_ids, 1000), truncation)
        got = ours.generate(z, class_ids, truncation)
        # fails if folding, BN interpolation, attention or the block wiring differ from the reference
        assert got.shape == (3, 3, 128, 128)
        assert (got - expected).abs().max().item() <= PARITY_TOL, f"seed {seed}, truncation {truncation}"
        # guards against a vacuous pass: saturated or constant images would match trivially
        assert 0.05 < expected.abs().mean().item() < 0.9


def test_256_layout_matches_reference(tmp_path):
    folder = write_random_checkpoint(tmp_path / "deep256", seed=3, output_dim=256, channel_width=4)
    z = torch.from_numpy(truncated_noise_sample(1, 128, 0.7, seed=3))
    class_ids = torch.tensor([42])
    got = load_generator(folder, device="cpu").generate(z, class_ids, 0.7)
    # fails if the 256 preset (12 blocks, attention position) differs from the published one
    assert got.shape == (1, 3, 256, 256)
    assert (got - _reference_images(folder, z, class_ids, 0.7)).abs().max().item() <= PARITY_TOL


@pytest.mark.parametrize("resolution, published", [(128, BigGAN128), (256, BigGAN256), (512, BigGAN512)])
def test_presets_equal_published_configs_and_layouts(resolution, published):
    ours = BigGANDeepConfig.preset(resolution)
    expected = published.to_dict()
    expected["layers"] = [list(layer) for layer in expected["layers"]]
    assert ours.to_dict() == expected  # exact: a wrong field changes the architecture
    small = BigGANDeepConfig.preset(resolution, channel_width=4)
    reference_state = BigGAN(BigGANConfig.from_dict(small.to_dict())).state_dict()
    layout = hf_layout(small)
    # the writer and the strict check use this layout: keys, order and shapes must be the reference's
    assert list(layout) == list(reference_state)
    assert all(layout[key] == tuple(value.shape) for key, value in reference_state.items())


def test_config_round_trips_through_json_and_dict():
    config = BigGANDeepConfig.preset(512, channel_width=16, n_stats=11, eps=1e-5)
    assert BigGANDeepConfig.from_json(config.to_json()) == config
    assert BigGANDeepConfig.from_dict(config.to_dict()) == config
    assert set(config.to_dict()) == {
        "output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "layers",
        "attention_layer_position", "eps", "n_stats",
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"colour": 3}, "unknown BigGAN-deep config field"),
        ({"attention_layer_position": 10}, "attention_layer_position"),
        ({"output_dim": 64}, "output_dim"),
        ({"n_stats": 1}, "n_stats"),
        ({"layers": [[False, 16]]}, "triples"),
        ({"layers": [[False, 16, 4]], "attention_layer_position": 0}, "half"),
    ],
)
def test_invalid_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        BigGANDeepConfig.from_dict({**BigGANDeepConfig().to_dict(), **overrides})


def test_generator_is_frozen_eval_and_cast(tiny_deep_dir):
    model = load_generator(tiny_deep_dir, device="cpu", dtype="bfloat16")
    assert isinstance(model, BigGANDeep) and model.family == "biggan-deep" and not model.training
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in model.parameters())
    z = torch.from_numpy(truncated_noise_sample(2, 128, 0.5, seed=0))
    low = model.generate(z, torch.tensor([1, 2]), 0.5).float()
    full = load_generator(tiny_deep_dir, device="cpu").generate(z, torch.tensor([1, 2]), 0.5)
    # bf16 keeps ~3 significant digits: measured mean error 0.0017 on images of mean |x| 0.23. 0.01 fails
    # on a wrong cast, e.g. BN statistics half-mixed with the next stored truncation (0.04-0.05) or of t=0.6 (0.09)
    assert (low - full).abs().mean().item() < 0.01


def test_generate_validates_inputs(tiny_deep_dir):
    model = load_generator(tiny_deep_dir, device="cpu")
    z = torch.zeros(2, 128)
    with pytest.raises(ValueError, match="truncation"):
        model.generate(z, torch.tensor([0, 1]), 0.0)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 999\], got \[1000\]"):
        model.generate(z, torch.tensor([0, 1000]), 0.5)  # only the offending id is listed
    with pytest.raises(ValueError, match="z must have shape"):
        model.generate(torch.zeros(2, 120), torch.tensor([0, 1]), 0.5)
