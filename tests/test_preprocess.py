"""Preprocessing profiles: hand-computed values, numpy == TF paths, resizing against OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tensorflow as tf

from lungkit import preprocess as pp

HU = np.array([[-2048.0, -1000.0, -400.0], [0.0, 400.0, 1500.0]], dtype=np.float32)


def test_hu_window_clips_to_the_lung_window():
    expected = np.array([[-1000, -1000, -400], [0, 400, 400]], dtype=np.float32)
    np.testing.assert_array_equal(pp.hu_window(HU), expected)
    np.testing.assert_array_equal(pp.hu_window(HU, low=-500, high=100), [[-500, -500, -400], [0, 100, 100]])


def test_hu_window_unit_maps_window_to_unit_range():
    expected = np.array([[0, 0, 600 / 1400], [1000 / 1400, 1, 1]], dtype=np.float32)
    np.testing.assert_allclose(pp.hu_window_unit(HU), expected, rtol=1e-6)


def test_zscore_has_mean_zero_and_unit_std():
    x = np.random.default_rng(0).normal(37.0, 250.0, (40, 30)).astype(np.float32)
    z = pp.zscore(x)
    assert z.dtype == np.float32
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(z, (x64 - x64.mean()) / x64.std(), atol=1e-4)


def test_zscore_hand_computed():
    # mean 2, population std sqrt(2)
    np.testing.assert_allclose(pp.zscore(np.array([0.0, 1.0, 3.0, 4.0])), np.array([-2, -1, 1, 2]) / np.sqrt(2.5))


def test_minmax_hand_computed_and_constant_image():
    np.testing.assert_allclose(pp.minmax(np.array([[0.0, 5.0], [10.0, 20.0]])), [[0, 0.25], [0.5, 1]])
    np.testing.assert_array_equal(pp.minmax(np.full((4, 4), -1000.0)), np.zeros((4, 4)))
    np.testing.assert_array_equal(pp.zscore(np.full((4, 4), 7.0)), np.zeros((4, 4)))
    np.testing.assert_array_equal(pp.hu_window_zscore(np.full((4, 4), 900.0)), np.zeros((4, 4)))


def test_hu_window_zscore_is_clip_then_standardise():
    clipped = np.clip(HU.astype(np.float64), -1000, 400)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(pp.hu_window_zscore(HU), expected, atol=1e-5)


def test_lung_masked_hu_sets_outside_to_air_then_windows():
    lung = np.array([[1, 0, 1], [1, 1, 0]], dtype=np.uint8)
    expected = np.array([[0, 0, 600 / 1400], [1000 / 1400, 1, 0]], dtype=np.float32)
    np.testing.assert_allclose(pp.lung_masked_hu(HU, lung), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="lung mask"):
        pp.lung_masked_hu(HU, None)


@pytest.mark.parametrize("name", sorted(pp.PREPROCESSING))
def test_nan_input_raises_naming_the_problem(name):
    bad = HU.copy()
    bad[0, 1] = np.nan
    args = (bad, np.ones_like(bad)) if pp.needs_lung_mask(name) else (bad,)
    with pytest.raises(ValueError, match="NaN"):
        pp.get_preprocessing(name)(*args)


@pytest.mark.parametrize("name", sorted(pp.PREPROCESSING))
def test_tensor_path_inside_tf_data_equals_numpy_path(name):
    rng = np.random.default_rng(1)
    hu = rng.uniform(-1500, 1200, (2, 16, 16)).astype(np.float32)
    lung = (rng.random((2, 16, 16)) > 0.4).astype(np.uint8)
    fn = pp.get_preprocessing(name)
    with_lung = pp.needs_lung_mask(name)
    dataset = tf.data.Dataset.from_tensor_slices((hu, lung)).map(lambda h, m: fn(h, m) if with_lung else fn(h))
    for index, from_graph in enumerate(dataset.as_numpy_iterator()):
        from_numpy = fn(hu[index], lung[index]) if with_lung else fn(hu[index])
        assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
        np.testing.assert_allclose(from_graph, from_numpy, rtol=1e-6, atol=1e-6)


def test_registry_names_and_unknown_name():
    assert {"hu_window_zscore", "minmax", "lung_masked_hu", "hu_window_unit"} <= set(pp.PREPROCESSING)
    assert pp.get_preprocessing("minmax") is pp.minmax
    assert pp.needs_lung_mask("lung_masked_hu") and not pp.needs_lung_mask("hu_window_zscore")
    with pytest.raises(ValueError, match="hu_window_zscore"):
        pp.get_preprocessing("clahe")


@pytest.mark.parametrize("source, target", [((64, 64), 32), ((50, 70), (37, 23)), ((20, 20), 48), ((512, 512), 224)])
def test_resize_matches_reference_and_mask_stays_binary(source, target):
    rng = np.random.default_rng(2)
    image = rng.normal(-300, 400, source).astype(np.float32)
    mask = (rng.random(source) > 0.8).astype(np.uint8)
    height, width = (target, target) if isinstance(target, int) else target
    resized = pp.resize_image(image, target)
    assert resized.shape == (height, width) and resized.dtype == np.float32
    opencv = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(resized, opencv, atol=1e-4 * np.abs(image).max())
    resized_mask = pp.resize_mask(mask, target)
    assert resized_mask.dtype == np.uint8 and set(np.unique(resized_mask)) <= {0, 1}
    # Nearest neighbour with half-pixel centres, written out: source index floor((i + 0.5) * in / out).
    rows = np.minimum(np.floor((np.arange(height) + 0.5) * source[0] / height).astype(int), source[0] - 1)
    cols = np.minimum(np.floor((np.arange(width) + 0.5) * source[1] / width).astype(int), source[1] - 1)
    np.testing.assert_array_equal(resized_mask, mask[np.ix_(rows, cols)])
    assert pp.resize_mask(mask.astype(bool), target).dtype == bool
    assert pp.resize_image(image[..., None], target).shape == (height, width, 1)


def test_resize_mask_tensor_path_keeps_dtype_and_values():
    mask = tf.constant((np.random.default_rng(3).random((30, 30, 2)) > 0.5).astype(np.uint8))
    resized = pp.resize_mask(mask, 17)
    assert resized.dtype == tf.uint8 and resized.shape == (17, 17, 2)
    assert set(np.unique(resized.numpy())) <= {0, 1}
