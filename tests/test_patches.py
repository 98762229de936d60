"""Patch training and whole-slice inference: lungkit.pipeline.PatchSampler / make_patch_dataset and
lungkit.inference.sliding_window_predict."""

from __future__ import annotations

import numpy as np
import pytest

from lungkit.inference import gaussian_importance, sliding_window_predict, window_starts
from lungkit.pipeline import PatchSampler, make_patch_dataset


def _slices(n=6, side=48, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, side, side, 1)).astype(np.float32)
    masks = np.zeros((n, side, side), np.float32)
    masks[1, 30:34, 5:9] = 1  # one small tumour, on one slice only
    masks[4, 2:5, 40:44] = 1
    return images, masks


def test_the_same_seed_draws_the_same_patches():
    images, masks = _slices()
    first = PatchSampler(images, masks, 16, seed=3).plan(50)
    again = PatchSampler(images, masks, 16, seed=3).plan(50)
    other = PatchSampler(images, masks, 16, seed=4).plan(50)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not all(np.array_equal(first[k], other[k]) for k in first)


def test_a_third_of_the_patches_hold_tumour_although_it_is_rare():
    images, masks = _slices()
    sampler = PatchSampler(images, masks, 16, seed=0)
    with_tumour = np.mean([sampler.sample()[1].any() for _ in range(600)])
    # 1/3 forced onto tumour (always inside the patch) plus the few random patches that happen to hit it
    assert 0.30 <= with_tumour <= 0.45, with_tumour
    plan = PatchSampler(images, masks, 16, seed=0).plan(300)
    assert (plan["y0"] >= 0).all() and (plan["y0"] <= 48 - 16).all()
    assert set(np.unique(plan["turns"])) == {0, 1, 2, 3} and set(np.unique(plan["flip"])) == {0, 1}


def test_the_tf_data_cutter_gives_the_numpy_patches_of_the_same_plan():
    images, masks = _slices()
    expected = PatchSampler(images, masks, 16, seed=5)
    pairs = [expected.sample() for _ in range(8)]
    batch_images, batch_masks = next(iter(make_patch_dataset(PatchSampler(images, masks, 16, seed=5), 8, 1)))
    np.testing.assert_array_equal(batch_images.numpy(), np.stack([p for p, _ in pairs]))
    np.testing.assert_array_equal(batch_masks.numpy(), np.stack([m for _, m in pairs]))


def test_the_planned_dataset_repeats_instead_of_running_dry():
    images, masks = _slices()
    batches = list(make_patch_dataset(PatchSampler(images, masks, 16, seed=1), 4, 2).take(4))
    assert len(batches) == 4
    np.testing.assert_array_equal(batches[0][0].numpy(), batches[2][0].numpy())


def test_validation_patches_are_fixed_and_start_on_the_tumour():
    images, masks = _slices()
    patches, patch_masks = PatchSampler(images, masks, 16, flips_and_turns=False, seed=0).fixed_set(per_slice=2)
    assert patches.shape == (12, 16, 16, 1) and patch_masks.shape == (12, 16, 16, 1)
    assert patch_masks[2].any() and patch_masks[8].any()  # slices 1 and 4: their first patch holds the tumour
    again, _ = PatchSampler(images, masks, 16, flips_and_turns=False, seed=0).fixed_set(per_slice=2)
    np.testing.assert_array_equal(patches, again)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"patch_size": 64}, "patch_size 64"), ({"foreground_fraction": 1.5}, "foreground_fraction")],
)
def test_bad_sampler_arguments_are_refused(kwargs, message):
    images, masks = _slices()
    with pytest.raises(ValueError, match=message):
        PatchSampler(images, masks, **{"patch_size": 16, **kwargs})


def test_windows_cover_the_slice_and_end_flush_with_the_border():
    assert window_starts(256, 128, 0.5) == [0, 64, 128]
    assert window_starts(100, 48, 0.0) == [0, 26, 52]
    assert window_starts(48, 48) == [0]
    with pytest.raises(ValueError, match="larger than the slice side"):
        window_starts(32, 48)
    weights = gaussian_importance(16)
    assert weights.max() == 1.0 and weights.min() > 0 and weights[8, 8] > weights[0, 0]


class _Echo:
    """A stand-in model with a fixed input side that returns its input's first channel as the probability."""

    input_shape = (None, 16, 16, 1)

    def predict_on_batch(self, batch):
        return batch[..., :1]


def test_sliding_window_reassembles_a_slice_the_model_sees_in_pieces():
    rng = np.random.default_rng(0)
    images = rng.random((2, 40, 56, 1)).astype(np.float32)
    # each pixel is a weighted mean of identical window outputs, so the slice comes back unchanged
    for overlap in (0.0, 0.5):
        out = sliding_window_predict(_Echo(), images, overlap=overlap, batch_size=5)
        assert out.shape == (2, 40, 56)
        np.testing.assert_allclose(out, images[..., 0], rtol=1e-5, atol=1e-6)
