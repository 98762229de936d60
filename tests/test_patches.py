"""Patch training and whole-slice inference: lungkit.pipeline.PatchSampler / make_patch_dataset and
lungkit.inference.sliding_window_predict."""

from __future__ import annotations

import numpy as np
import pytest

from lungkit.inference import gaussian_importance, sliding_window_predict, window_starts
from lungkit.pipeline import NNUNET_AUGMENTATION, PatchSampler, make_patch_dataset


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


def test_the_extra_augmentation_has_its_own_stream_and_nnunets_probabilities():
    images, masks = _slices()
    plain = PatchSampler(images, masks, 16, seed=2).plan(2000)
    extra = PatchSampler(images, masks, 16, rotations_zooms_intensity=True, seed=2).plan(2000)
    # switching the extras on leaves the windows, turns and flips as they were
    for name in ("index", "y0", "x0", "turns", "flip"):
        np.testing.assert_array_equal(plain[name], extra[name])
    identity = {"rotation_degrees": 0.0, "zoom": 1.0, "brightness": 1.0, "contrast": 1.0, "gamma": 1.0,
                "noise_fraction": 0.0}
    for name, value in identity.items():
        assert (plain[name] == value).all(), name
        probability, (low, high) = NNUNET_AUGMENTATION[name]
        applied = extra[name] != value
        assert abs(applied.mean() - probability) < 0.04, (name, applied.mean())
        assert (extra[name][applied] >= low).all() and (extra[name][applied] <= high).all(), name


def _one_row(images, masks, **values):
    """The first row of a plain plan with some augmentation values set, as tf.data's cutter sees a row."""
    row = {name: column[:1] for name, column in PatchSampler(images, masks, 16, seed=0).plan(1).items()}
    row.update({"turns": np.zeros(1, np.int32), "flip": np.zeros(1, np.int32)})
    row.update({name: np.full(1, value, np.float32) for name, value in values.items()})
    return row


def _cut(images, masks, row):
    import tensorflow as tf

    from lungkit import pipeline

    sampler = PatchSampler(images, masks, 16, seed=0)
    sampler.plan = lambda count: row
    patch, mask = next(iter(pipeline.make_patch_dataset(sampler, 1, 1)))
    assert isinstance(patch, tf.Tensor)
    return patch.numpy()[0], mask.numpy()[0], row["index"][0], row["y0"][0], row["x0"][0]


def test_rotations_and_zooms_are_cut_from_the_whole_slice_and_keep_masks_binary():
    images, masks = _slices(side=64)
    masks[1] = 0
    masks[1, 20:40, 20:40] = 1
    rotated = _one_row(images, masks, rotation_degrees=90.0)
    rotated.update(index=np.ones(1, np.int32), y0=np.full(1, 22, np.int32), x0=np.full(1, 22, np.int32))
    patch, mask, i, y, x = _cut(images, masks, rotated)
    window = images[i, y : y + 16, x : x + 16, 0]
    # a quarter turn about the window's centre is exactly a rot90 of the window (either sense)
    assert np.allclose(patch[..., 0], np.rot90(window, 1), atol=1e-4) or np.allclose(
        patch[..., 0], np.rot90(window, -1), atol=1e-4)
    zoomed = dict(rotated, rotation_degrees=np.zeros(1, np.float32), zoom=np.full(1, 2.0, np.float32),
                  y0=np.full(1, 14, np.int32), x0=np.full(1, 14, np.int32))
    patch, mask, *_ = _cut(images, masks, zoomed)
    # zoom 2 shows the window's central 8 x 8 pixels (rows / columns 17.75 to 25.25 of the slice, half a pixel apart):
    # the tumour square starts at 20, so output rows and columns from 4 on hold it (interpolated mask >= 0.5)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert mask[4:, 4:].all() and not mask[:4].any() and not mask[:, :4].any()


def test_intensity_transforms_act_only_when_drawn():
    images, masks = _slices()
    plain_patch, *_ = _cut(images, masks, _one_row(images, masks))
    bright_patch, *_ = _cut(images, masks, _one_row(images, masks, brightness=1.2))
    np.testing.assert_allclose(bright_patch, plain_patch * 1.2, rtol=1e-6)
    noisy = _one_row(images, masks, noise_fraction=0.1)
    noisy["noise_seed"] = np.full(1, 7, np.int32)
    noisy_patch, *_ = _cut(images, masks, noisy)
    again, *_ = _cut(images, masks, noisy)
    np.testing.assert_array_equal(noisy_patch, again)  # seeded noise: the same plan gives the same patch
    assert 0.05 < np.std(noisy_patch - plain_patch) / np.std(plain_patch) < 0.15
    gamma_patch, *_ = _cut(images, masks, _one_row(images, masks, gamma=1.5))
    assert np.isclose(gamma_patch.min(), plain_patch.min()) and np.isclose(gamma_patch.max(), plain_patch.max())
    assert not np.allclose(gamma_patch, plain_patch)


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


def test_paper_001s_augmented_slices_keep_the_recipes_pixel_scale_under_patch_training(monkeypatch):
    """The augmented set is cut into patches like any slice: only the slice cap may shrink it, not the patch side."""
    import dataclasses

    from lungkit import profiles
    from lungkit.data.prepare import AUGMENTED_IMAGE_SIZE, augmented_image_size

    quick = profiles.get_profile("quick")
    assert quick.patch_training and quick.max_image_size == 128 and quick.max_slice_size is None
    assert augmented_image_size("quick") == AUGMENTED_IMAGE_SIZE == 256  # not the 128 px patch side
    assert augmented_image_size("smoke") == profiles.get_profile("smoke").max_slice_size == 128
    assert augmented_image_size("paper") == 256
    # a profile that resizes whole slices feeds the model its max_image_size, so the set is written at that size
    whole_slices = dataclasses.replace(quick, patch_training=False)
    monkeypatch.setitem(profiles.PROFILES, "quick", whole_slices)
    assert augmented_image_size("quick") == 128
