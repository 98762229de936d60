"""Sliding-window inference of the query models: their blended probabilities and their own instances, merged
across windows."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kit_fixtures import disc_slices
from lungkit.inference import (
    is_query_model,
    merge_window_instances,
    sliding_window_predict,
    sliding_window_query_predict,
)
from lungkit.models import build_model


def box(row, col, height, width, size=32):
    mask = np.zeros((size, size), bool)
    mask[row : row + height, col : col + width] = True
    return mask


def test_a_tumour_cut_by_a_window_border_is_merged_into_its_whole_instance():
    whole = {"mask": box(10, 10, 8, 8), "score": 0.9}
    cut = {"mask": box(10, 14, 8, 4), "score": 0.95}  # the right half, from a window whose border cut it
    elsewhere = {"mask": box(24, 24, 4, 4), "score": 0.6}
    touching = {"mask": box(17, 10, 3, 8), "score": 0.7}  # shares 8 of its 24 pixels with the whole: a neighbour
    merged = merge_window_instances([whole, cut, elsewhere, touching])
    assert [item["score"] for item in merged] == [0.95, 0.7, 0.6]
    # the cut half scored best, so it is kept and the whole joins it: the union is the whole tumour
    assert np.array_equal(merged[0]["mask"], box(10, 10, 8, 8))
    assert np.array_equal(merged[1]["mask"], box(17, 10, 3, 8))
    assert not np.shares_memory(merged[0]["mask"], cut["mask"])  # the input instances are left as they were
    assert merge_window_instances([{"mask": np.zeros((4, 4), bool), "score": 1.0}]) == []
    # a union that grows onto an instance kept before it is merged with it too
    left = {"mask": box(0, 0, 10, 6), "score": 0.9}      # 60 px
    right = {"mask": box(0, 8, 10, 6), "score": 0.8}     # 60 px, apart from the left one
    bridge = {"mask": box(0, 3, 10, 8), "score": 0.7}    # 80 px, 30 shared with the left: half the smaller, joins it
    bridge_on_right = {"mask": box(0, 5, 10, 9), "score": 0.6}  # joins the grown left one (60 of its 90 px) ...
    merged = merge_window_instances([left, right, bridge_on_right, bridge])
    # ... which then covers the right one, kept in the first pass: the second pass merges the two
    assert len(merged) == 1 and np.array_equal(merged[0]["mask"], box(0, 0, 10, 14))
    with pytest.raises(ValueError, match="duplicate_fraction"):
        merge_window_instances([whole], duplicate_fraction=0.0)


def test_query_predict_blends_like_the_semantic_path_and_returns_slice_instances():
    keras.utils.set_random_seed(0)
    model = build_model("mask2former", scale="tiny", input_shape=(64, 64, 2))
    assert is_query_model(model) and not is_query_model(build_model("unet", scale="tiny"))
    images, _ = disc_slices(2, 96, channels=2, seed=1)  # 96 px slices, 64 px windows: four per slice
    probabilities, instances = sliding_window_query_predict(model, images, window=64, batch_size=3,
                                                            score_threshold=0.0)
    expected = sliding_window_predict(model, images, window=64, batch_size=3)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert probabilities.shape == (2, 96, 96) and len(instances) == 2
    found = [item for slice_instances in instances for item in slice_instances]
    assert found, "an untrained model with no score threshold still predicts some instance"
    for item in found:
        assert item["mask"].shape == (96, 96) and item["mask"].dtype == bool and item["mask"].any()
        assert 0.0 < item["score"] <= 1.0
    # every slice was merged (batches of 3 windows straddle the two slices): no two kept instances are duplicates
    for slice_instances in instances:
        for a in range(len(slice_instances)):
            for b in range(a + 1, len(slice_instances)):
                first, second = slice_instances[a]["mask"], slice_instances[b]["mask"]
                assert (first & second).sum() < 0.5 * min(first.sum(), second.sum())
    # a threshold above every score leaves no instance, and never changes the probabilities
    strict, none = sliding_window_query_predict(model, images, window=64, score_threshold=1.0)
    np.testing.assert_allclose(strict, expected, atol=1e-5)
    assert none == [[], []]
