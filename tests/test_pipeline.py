"""tf.data pipeline: shapes, values against an independent numpy path, determinism, split rules."""

from __future__ import annotations

import numpy as np
import pytest
from kit_fixtures import read_binary, read_hu, write_kit_dataset

from lungkit import pipeline
from lungkit import preprocess as pp


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_kit_dataset(tmp_path_factory.mktemp("kit"), counts={"train": 7, "val": 2, "test": 3}, size=64)


def batches(dataset) -> list:
    return [tuple(np.asarray(part) for part in batch) for batch in dataset.as_numpy_iterator()]


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for batch_a, batch_b in zip(first, second):
        for part_a, part_b in zip(batch_a, batch_b):
            np.testing.assert_array_equal(part_a, part_b)


@pytest.mark.parametrize("preprocessing", ["hu_window_zscore", "hu_window_unit", "minmax", "lung_masked_hu"])
def test_shapes_dtypes_and_ranges(dataset_dir, preprocessing):
    dataset = pipeline.make_dataset(dataset_dir, "train", preprocessing=preprocessing, image_size=32, batch_size=4)
    got = batches(dataset)
    assert [len(b[0]) for b in got] == [4, 3]
    for image, mask in got:
        assert image.dtype == np.float32 and image.shape[1:] == (32, 32, 1)
        assert mask.dtype == np.float32 and mask.shape[1:] == (32, 32, 1)
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.max() == 1.0
        if preprocessing == "hu_window_zscore":
            np.testing.assert_allclose(image.mean(axis=(1, 2, 3)), 0, atol=1e-4)
            np.testing.assert_allclose(image.std(axis=(1, 2, 3)), 1, atol=1e-3)
        else:
            assert image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize("preprocessing", ["hu_window_zscore", "lung_masked_hu"])
def test_values_match_an_independent_numpy_path(dataset_dir, preprocessing):
    images, masks, manifest = pipeline.load_split_arrays(dataset_dir, "test", preprocessing, image_size=40)
    assert images.shape == (3, 40, 40, 1) and masks.shape == (3, 40, 40, 1)
    fn = pp.get_preprocessing(preprocessing)
    for index, row in enumerate(manifest.itertuples()):
        hu = pp.resize_image(read_hu(row.image_path), 40)  # decoded with OpenCV, not tf.io
        lung = pp.resize_mask(read_binary(row.lung_path), 40)
        expected = fn(hu, lung) if pp.needs_lung_mask(preprocessing) else fn(hu)
        np.testing.assert_allclose(images[index, ..., 0], expected, atol=1e-5)
        np.testing.assert_array_equal(masks[index, ..., 0], pp.resize_mask(read_binary(row.mask_path), 40))


def test_channels_three_repeat_the_grey_channel(dataset_dir):
    image, _ = next(iter(pipeline.make_dataset(dataset_dir, "val", image_size=32, channels=3, batch_size=2)))
    image = image.numpy()
    assert image.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


@pytest.mark.parametrize("options", [{}, {"augment": True}, {"augment": True, "cache": True}])
def test_seeded_pipeline_gives_identical_batches_when_built_twice(dataset_dir, options):
    def build(seed):
        return pipeline.make_dataset(
            dataset_dir, "train", image_size=32, batch_size=3, seed=seed, include_ids=True, **options
        )

    first_build, second_build = build(4), build(4)
    epoch_one = batches(first_build)
    assert_same_batches(epoch_one, batches(second_build))
    ids = [i.decode() for batch in epoch_one for i in batch[2]]
    assert sorted(ids) == [f"train_{i:03d}" for i in range(7)]
    # Later epochs of one dataset are reshuffled, and the second epoch is reproducible too.
    epoch_two = batches(first_build)
    assert_same_batches(epoch_two, batches(second_build))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epoch_one, epoch_two))
    # Another seed, another order.
    other = [i.decode() for batch in batches(build(5)) for i in batch[2]]
    assert other != ids


def test_cache_does_not_change_the_data(dataset_dir):
    plain = batches(pipeline.make_dataset(dataset_dir, "train", image_size=32, batch_size=4, seed=1))
    cached = batches(pipeline.make_dataset(dataset_dir, "train", image_size=32, batch_size=4, seed=1, cache=True))
    assert_same_batches(plain, cached)


def test_augmented_examples_keep_mask_binary_and_differ_from_plain(dataset_dir):
    plain = batches(pipeline.make_dataset(dataset_dir, "train", image_size=32, batch_size=7, seed=0))
    augmented = batches(pipeline.make_dataset(dataset_dir, "train", image_size=32, batch_size=7, seed=0, augment=True))
    image, mask = augmented[0]
    assert image.shape == (7, 32, 32, 1) and set(np.unique(mask)) <= {0.0, 1.0}
    assert not np.array_equal(image, plain[0][0])


def test_augmentation_outside_train_raises(dataset_dir):
    for split in ("val", "test"):
        with pytest.raises(ValueError, match="train split only"):
            pipeline.make_dataset(dataset_dir, split, augment=True)


def test_bad_arguments_raise(dataset_dir):
    with pytest.raises(ValueError, match="channels"):
        pipeline.make_dataset(dataset_dir, "train", channels=4)
    with pytest.raises(ValueError, match="no PET channel"):  # CT + PET needs a CT + PET kit dataset
        pipeline.make_dataset(dataset_dir, "train", channels=2)
    with pytest.raises(ValueError, match="unknown preprocessing"):
        pipeline.make_dataset(dataset_dir, "train", preprocessing="clahe")
    with pytest.raises(ValueError, match="unknown split"):
        pipeline.make_dataset(dataset_dir, "holdout")


def test_repeat_and_steps_per_epoch(dataset_dir):
    dataset = pipeline.make_dataset(dataset_dir, "train", image_size=16, batch_size=4, repeat=True)
    assert len(list(dataset.take(5).as_numpy_iterator())) == 5
    assert pipeline.steps_per_epoch(7, 4) == 2 and pipeline.steps_per_epoch(8, 4) == 2
    assert pipeline.steps_per_epoch(1, 8) == 1
    with pytest.raises(ValueError):
        pipeline.steps_per_epoch(0, 4)


def test_stored_size_when_image_size_is_none(dataset_dir):
    image, mask = next(iter(pipeline.make_dataset(dataset_dir, "test", image_size=None, batch_size=3)))
    assert image.shape == (3, 64, 64, 1) and mask.shape == (3, 64, 64, 1)
