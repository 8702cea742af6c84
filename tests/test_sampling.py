"""Latents and class ids: batch-independence, distribution, reference parity, name lookup."""

import math

import numpy as np
import pytest
import torch
from pytorch_pretrained_biggan import truncated_noise_sample as reference_noise
from scipy.stats import truncnorm

from gan.sampling import (
    balanced_class_ids,
    class_ids_from,
    imagenet_class_names,
    latents_for,
    one_hot,
    per_image_latents,
    repeated_class_ids,
    truncated_noise_sample,
)


def test_truncated_noise_matches_reference_bit_for_bit():
    for seed, t in [(0, 1.0), (3, 0.4)]:
        ours = truncated_noise_sample(4, 128, truncation=t, seed=seed)
        ref = reference_noise(batch_size=4, dim_z=128, truncation=t, seed=seed)
        np.testing.assert_array_equal(ours, ref)


def test_per_image_latents_do_not_depend_on_batching():
    everything = per_image_latents(range(23), 128, truncation=0.7, seed=5)
    pieces = torch.cat([per_image_latents(range(i, min(i + 7, 23)), 128, 0.7, seed=5) for i in range(0, 23, 7)])
    reversed_order = per_image_latents(list(range(22, -1, -1)), 128, 0.7, seed=5).flip(0)
    assert torch.equal(everything, pieces)
    assert torch.equal(everything, reversed_order)


def test_per_image_latents_differ_by_seed_and_index():
    a = per_image_latents([0, 1], 64, seed=0)
    b = per_image_latents([0, 1], 64, seed=1)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, b)


def test_per_image_latents_follow_truncated_normal():
    z = per_image_latents(range(4000), 128, truncation=1.0, seed=11).double()  # 512k draws
    n = z.numel()
    expected_std = truncnorm.std(-2, 2)
    # 5 standard errors: fails only if the sampler is biased, not by chance
    assert abs(z.mean().item()) < 5 * expected_std / math.sqrt(n)
    assert abs(z.std().item() - expected_std) < 0.005
    assert z.min() >= -2 and z.max() <= 2
    # tail mass beyond |1.5| matches the truncated normal within 1% absolute
    expected_tail = 2 * (truncnorm.sf(1.5, -2, 2))
    assert abs((z.abs() > 1.5).double().mean().item() - expected_tail) < 0.01
    # scaling by truncation is exact
    assert torch.allclose(per_image_latents(range(3), 16, 0.25, 2), 0.25 * per_image_latents(range(3), 16, 1.0, 2))


def test_balanced_class_ids_cycle_through_classes():
    ids = balanced_class_ids(range(10), [3, 5])
    assert ids.tolist() == [3, 5] * 5
    assert balanced_class_ids([7], [3, 5]).tolist() == [5]
    with pytest.raises(ValueError, match="at least one class"):
        balanced_class_ids(range(3), [])


def test_class_ids_from_names_ids_and_all():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[1] == "goldfish"
    assert class_ids_from("goldfish, 207,Tench") == [1, 207, 0]
    assert class_ids_from([5, "goldfish"]) == [5, 1]
    assert class_ids_from("all", num_classes=10) == list(range(10))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("not-a-class", "unknown ImageNet class name"),
        ("1000", "out of range"),
        ("-1", "out of range"),
        ("", "no classes"),
    ],
)
def test_class_ids_from_rejects_bad_input(spec, message):
    with pytest.raises(ValueError, match=message):
        class_ids_from(spec)


def test_ambiguous_class_name_asks_for_id():
    with pytest.raises(ValueError, match="ambiguous"):
        class_ids_from("cardigan")  # a corgi (264) and a sweater (474)


def test_one_hot():
    out = one_hot(torch.tensor([2, 0]), 4)
    assert out.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]] and out.dtype == torch.float32


def test_reference_latent_mode_is_rows_of_one_reference_draw():
    # the published BigGAN attention scripts: truncated_noise_sample(truncation=0.4, batch_size=N, seed=123)
    whole = torch.from_numpy(reference_noise(truncation=0.4, batch_size=50, seed=123))
    rows = latents_for([3, 0, 49], 128, truncation=0.4, seed=123, mode="reference", total=50)
    torch.testing.assert_close(rows, whole[[3, 0, 49]], rtol=0, atol=0)


def test_per_image_latent_mode_is_per_image_latents():
    torch.testing.assert_close(latents_for([5, 7], 16, 0.5, seed=2), per_image_latents([5, 7], 16, 0.5, seed=2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "bogus"}, "latent mode must be one of"),
        ({"mode": "reference"}, "total number of images"),
        ({"mode": "reference", "total": 3}, r"indices must be in \[0, 2\]"),
    ],
)
def test_latents_for_rejects_bad_modes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        latents_for([0, 5], 8, **kwargs)


def test_repeated_class_ids_match_numpy_repeat():
    expected = np.repeat(np.arange(1000), 5)
    indices = [0, 4, 5, 4999, 1234]
    assert repeated_class_ids(indices, list(range(1000)), 5).tolist() == expected[indices].tolist()
    with pytest.raises(ValueError, match="indices must be in"):
        repeated_class_ids([10], [0, 1], 5)
