"""Shared set-prediction pieces: Hungarian matching, point sampling, sine positions, loss terms and masked attention,
each against an independent computation (brute force, hand-computed values or the attention restricted by hand)."""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest
from keras import ops

from lungkit.models import hungarian_matcher
from lungkit.models.point_sampling import point_sample, uncertain_point_coords
from lungkit.models.positions import sine_position_encoding
from lungkit.models.query_decoder import attend_mask_from_prediction, unblock_empty_rows
from lungkit.models.set_losses import (
    SetCriterion,
    dice_per_mask,
    instance_targets_numpy,
    sigmoid_bce_per_mask,
    sigmoid_focal_per_mask,
    weighted_class_loss,
)


# ---------------------------------------------------------------------------------------------------- matching


def brute_force_assignment_cost(cost: np.ndarray) -> float:
    """The minimum total cost over every injective map of the (fewer) targets to queries."""
    queries, targets = cost.shape
    return min(
        sum(cost[rows[t], t] for t in range(targets)) for rows in itertools.permutations(range(queries), targets)
    )


@pytest.mark.parametrize("seed", range(12))
def test_matcher_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    queries = int(rng.integers(1, 7))
    targets = int(rng.integers(1, queries + 1))
    cost = rng.normal(size=(queries, targets))
    rows, cols = hungarian_matcher.assign(cost)
    assert len(set(rows)) == len(rows) == targets and sorted(cols) == list(range(targets))
    assert cost[rows, cols].sum() == pytest.approx(brute_force_assignment_cost(cost))


def test_match_batch_skips_padded_slots_and_rejects_nan():
    cost = np.array([[[5.0, 0.0, 9.0], [0.0, 5.0, 9.0], [3.0, 3.0, -9.0]]])  # (1, Q=3, K=3)
    valid = np.array([[True, True, False]])
    matched = hungarian_matcher.match_batch(cost, valid)
    # slot 2 is padding: without it query 2 (cost -9) must not be taken; slot 0 -> query 1, slot 1 -> query 0
    np.testing.assert_array_equal(matched, [[1, 0, -1]])
    np.testing.assert_array_equal(hungarian_matcher.match_batch(cost, np.zeros((1, 3), bool)), [[-1, -1, -1]])
    with pytest.raises(ValueError, match="NaN"):
        hungarian_matcher.assign(np.array([[np.nan]]))


def test_cost_matrices_by_hand():
    logits = np.array([[[0.0, 2.0], [-1.0, 1.0]]], np.float32)  # (B=1, Q=2, P=2)
    targets = np.array([[[1.0, 0.0]]], np.float32)  # (B=1, K=1, P=2)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected_bce = [(softplus(-0.0) + softplus(2.0)) / 2, (softplus(1.0) + softplus(1.0)) / 2]
    bce = ops.convert_to_numpy(hungarian_matcher.bce_cost_matrix(logits, targets))[0, :, 0]
    np.testing.assert_allclose(bce, expected_bce, rtol=1e-6)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected_dice = [
        1 - (2 * sigmoid(0.0) + 1) / (sigmoid(0.0) + sigmoid(2.0) + 1 + 1),
        1 - (2 * sigmoid(-1.0) + 1) / (sigmoid(-1.0) + sigmoid(1.0) + 1 + 1),
    ]
    dice = ops.convert_to_numpy(hungarian_matcher.dice_cost_matrix(logits, targets))[0, :, 0]
    np.testing.assert_allclose(dice, expected_dice, rtol=1e-6)
    class_logits = np.log(np.array([[[0.7, 0.3], [0.2, 0.8]]], np.float32))
    cost = ops.convert_to_numpy(hungarian_matcher.class_cost_matrix(class_logits, np.array([[0]])))
    np.testing.assert_allclose(cost[0, :, 0], [-0.7, -0.2], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- point sampling


def bilinear_reference(image: np.ndarray, x: float, y: float) -> float:
    """grid_sample(align_corners=False, zero padding) at normalised (x, y), written independently."""
    height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    total = 0.0
    for row in (math.floor(py), math.floor(py) + 1):
        for col in (math.floor(px), math.floor(px) + 1):
            weight = (1 - abs(px - col)) * (1 - abs(py - row))
            if 0 <= row < height and 0 <= col < width:
                total += weight * image[row, col]
    return total


def test_point_sample_matches_bilinear_interpolation():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
    # pixel centres, midpoints between centres, the borders (zero padding) and random points
    points = np.array(
        [[(0.5 / 7, 0.5 / 5), (1.0 / 7, 0.5 / 5), (0.0, 0.0), (1.0, 1.0), (0.5, 0.5)], list(map(tuple, rng.uniform(size=(5, 2))))],
        np.float32,
    )
    sampled = ops.convert_to_numpy(point_sample(maps, points))
    assert sampled.shape == (2, 3, 5)
    for b in range(2):
        for m in range(3):
            for p in range(5):
                assert sampled[b, m, p] == pytest.approx(bilinear_reference(maps[b, m], *points[b, p]), abs=1e-5)
    # exact values: a pixel centre returns the pixel, the midpoint of two centres their mean
    assert sampled[0, 0, 0] == pytest.approx(maps[0, 0, 0, 0])
    assert sampled[0, 0, 1] == pytest.approx((maps[0, 0, 0, 0] + maps[0, 0, 0, 1]) / 2)
    assert sampled[0, 0, 2] == pytest.approx(maps[0, 0, 0, 0] / 4)  # corner: 3 of 4 neighbours are padding


def test_uncertain_points_prefer_the_mask_boundary():
    # logits far from zero everywhere except one column: importance sampling must put its points there
    logits = np.full((1, 1, 16, 16), 10.0, np.float32)
    logits[..., 8] = 0.0
    points = ops.convert_to_numpy(uncertain_point_coords(logits, num_points=64, oversample_ratio=8.0,
                                                         importance_sample_ratio=0.75, seed=0))
    assert points.shape == (1, 64, 2)
    sampled = ops.convert_to_numpy(point_sample(logits, points))[0, 0]
    assert np.sum(np.abs(sampled[:48]) < 10.0) == 48  # every importance point touches the uncertain column


# ---------------------------------------------------------------------------------------------------- positions


def test_sine_positions_by_hand():
    encoding = sine_position_encoding(2, 4, num_features=4)
    assert encoding.shape == (2, 4, 8)
    # row 2 of 2 -> y = 2/2 * 2 pi; column 1 of 4 -> x = 1/4 * 2 pi; d = 10000^(2 floor(k/2) / 4) = 1, 1, 100, 100
    y, x = 2 * math.pi, 0.5 * math.pi
    expected = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
                math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    np.testing.assert_allclose(encoding[1, 0], expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------- loss terms


def test_loss_terms_by_hand():
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    logits = np.array([[2.0, -1.0, 0.0]], np.float32)
    targets = np.array([[1.0, 0.0, 1.0]], np.float32)
    bce = (softplus(-2.0) + softplus(-1.0) + softplus(-0.0)) / 3
    assert float(sigmoid_bce_per_mask(logits, targets)[0]) == pytest.approx(bce, rel=1e-6)
    p = [sigmoid(2.0), sigmoid(-1.0), sigmoid(0.0)]
    dice = 1 - (2 * (p[0] + p[2]) + 1) / (sum(p) + 2 + 1)
    assert float(dice_per_mask(logits, targets)[0]) == pytest.approx(dice, rel=1e-6)
    focal = (0.25 * (1 - p[0]) ** 2 * softplus(-2.0) + 0.75 * p[1] ** 2 * softplus(-1.0)
             + 0.25 * (1 - p[2]) ** 2 * softplus(-0.0)) / 3
    assert float(sigmoid_focal_per_mask(logits, targets)[0]) == pytest.approx(focal, rel=1e-6)
    # class term: two queries, one tumour (class 0) and one no-object (class 1, weight 0.1)
    class_logits = np.log(np.array([[[0.6, 0.4], [0.3, 0.7]]], np.float32))
    expected = (1.0 * -math.log(0.6) + 0.1 * -math.log(0.7)) / 1.1
    value = float(weighted_class_loss(class_logits, np.array([[0, 1]]), np.array([1.0, 0.1], np.float32)))
    assert value == pytest.approx(expected, rel=1e-6)


def test_instance_targets_split_and_merge_tumours():
    mask = np.zeros((1, 12, 12), np.float32)
    mask[0, 0:2, 0:2] = 1  # area 4
    mask[0, 5:9, 5:9] = 1  # area 16
    mask[0, 11, 11] = 1  # area 1
    mask[0, 2, 2] = 1  # touches the first diagonally: joined (8-neighbourhood), area 5
    targets, valid = instance_targets_numpy(mask, max_instances=2)
    np.testing.assert_array_equal(valid, [[True, True]])
    assert targets[0, 0].sum() == 16  # the largest first
    assert targets[0, 1].sum() == 6  # the rest merged into the last slot: no tumour pixel becomes "no object"
    np.testing.assert_array_equal(targets.sum(axis=1)[0], mask[0])
    semantic, semantic_valid = instance_targets_numpy(mask, max_instances=3, mode="semantic")
    np.testing.assert_array_equal(semantic_valid, [[True, False, False]])
    np.testing.assert_array_equal(semantic[0, 0], mask[0])


def test_criterion_full_mask_loss_by_hand():
    """One image, one tumour, two queries, one prediction: every term computed independently with NumPy."""
    criterion = SetCriterion(num_points=None, max_instances=2)
    target = np.zeros((1, 4, 4, 1), np.float32)
    target[0, :2, :2, 0] = 1
    good = np.where(target[0, :, :, 0] > 0, 3.0, -3.0)
    mask_logits = np.stack([np.zeros((4, 4)), good])[None, None].astype(np.float32)  # (S=1, B=1, Q=2, 4, 4)
    class_logits = np.array([[[[0.0, 0.0], [1.0, -1.0]]]], np.float32)  # (S=1, B=1, Q=2, 2)
    total, terms = criterion(target, class_logits, mask_logits)
    # the matcher must pick query 1 (right mask, confident class)
    t = target[0, :, :, 0].ravel()
    x = good.ravel()
    bce = np.mean(t * np.log1p(np.exp(-x)) + (1 - t) * np.log1p(np.exp(x)))
    p = 1 / (1 + np.exp(-x))
    dice = 1 - (2 * np.sum(p * t) + 1) / (p.sum() + t.sum() + 1)
    log_softmax = class_logits[0, 0] - np.log(np.exp(class_logits[0, 0]).sum(-1, keepdims=True))
    ce = (1.0 * -log_softmax[1, 0] + 0.1 * -log_softmax[0, 1]) / 1.1
    assert float(terms["mask"]) == pytest.approx(bce, rel=1e-5)
    assert float(terms["dice"]) == pytest.approx(dice, rel=1e-5)
    assert float(terms["class"]) == pytest.approx(ce, rel=1e-5)
    assert float(total) == pytest.approx(2 * ce + 5 * bce + 5 * dice, rel=1e-5)


def test_unseeded_point_draws_are_fixed_when_the_criterion_is_made():
    """Point-sampled losses repeat after a seed however much Python randomness runs between building and training.

    The criterion used to draw its point seed at the first training step, from Keras' global generator: anything
    that consumed Python's random state in between (it differed between two runs of the same notebook) changed the
    points, and two seeded Mask2Former trainings diverged from the first epoch."""
    import random

    import tensorflow as tf

    from lungkit.training import seed_run

    rng = np.random.default_rng(0)
    target = (rng.random((2, 16, 16, 1)) > 0.7).astype(np.float32)
    class_logits = rng.normal(size=(1, 2, 4, 2)).astype(np.float32)
    mask_logits = rng.normal(size=(1, 2, 4, 16, 16)).astype(np.float32)

    def first_step_loss(python_draws_in_between: int) -> float:
        seed_run(0, deterministic=False)
        criterion = SetCriterion(num_points=32, max_instances=2)
        for _ in range(python_draws_in_between):
            random.random()
        return float(tf.function(lambda: criterion(target, class_logits, mask_logits)[0])())

    quiet = first_step_loss(0)
    assert first_step_loss(3) == quiet
    assert first_step_loss(0) == quiet
    # the points do move with the seed
    seed_run(1, deterministic=False)
    other = SetCriterion(num_points=32, max_instances=2)
    assert float(other(target, class_logits, mask_logits)[0]) != quiet


# ----------------------------------------------------------------------------------------------- masked attention


def test_attend_mask_from_prediction_and_unblocking():
    logits = np.full((1, 2, 4, 4), -5.0, np.float32)
    logits[0, 0, :2, :2] = 5.0  # query 0: foreground in the top-left quarter; query 1: nowhere
    attend = ops.convert_to_numpy(attend_mask_from_prediction(logits, 2, 2))
    np.testing.assert_array_equal(attend[0, 0], [True, False, False, False])
    np.testing.assert_array_equal(attend[0, 1], [True, True, True, True])  # fully blocked -> opened
    np.testing.assert_array_equal(
        ops.convert_to_numpy(unblock_empty_rows(np.array([[False, True], [False, False]]))),
        [[False, True], [True, True]],
    )


def test_keras_attention_mask_true_means_attend_and_blocked_keys_are_ignored():
    rng = np.random.default_rng(1)
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    query = rng.normal(size=(1, 3, 8)).astype(np.float32)
    memory = rng.normal(size=(1, 5, 8)).astype(np.float32)
    allowed = np.array([0, 2, 3])
    attend = np.zeros((1, 3, 5), bool)
    attend[..., allowed] = True
    masked = ops.convert_to_numpy(attention(query, memory, attention_mask=attend))
    # the same layer on only the allowed keys: identical output, so blocked keys had zero weight
    restricted = ops.convert_to_numpy(attention(query, memory[:, allowed]))
    np.testing.assert_allclose(masked, restricted, atol=1e-5)
    # an unblocked (fully open) row equals unmasked attention; a fully blocked row without unblocking does not
    # reproduce it in general, which is why the decoder opens such rows explicitly
    opened = ops.convert_to_numpy(attention(query, memory, attention_mask=unblock_empty_rows(np.zeros((1, 3, 5), bool))))
    np.testing.assert_allclose(opened, ops.convert_to_numpy(attention(query, memory)), atol=1e-5)


def test_semantic_and_instance_inference_by_hand():
    from lungkit.models.query_decoder import instance_predictions, semantic_probabilities

    # query 0: p(tumour) 0.8, mask logit +2 on the left half; query 1: p 0.6, mask everywhere negative (dropped)
    class_logits = np.log(np.array([[[0.8, 0.2], [0.6, 0.4]]], np.float32))
    mask_logits = np.full((1, 2, 4, 4), -2.0, np.float32)
    mask_logits[0, 0, :, :2] = 2.0
    instances = instance_predictions(class_logits, mask_logits, (4, 4), top_k=2)[0]
    assert len(instances) == 1 and instances[0]["query"] == 0 and instances[0]["class"] == 0
    np.testing.assert_array_equal(instances[0]["mask"][:, :2], True)
    np.testing.assert_array_equal(instances[0]["mask"][:, 2:], False)
    sigmoid = 1 / (1 + math.exp(-2.0))
    assert instances[0]["score"] == pytest.approx(0.8 * sigmoid, rel=1e-5)
    semantic = ops.convert_to_numpy(semantic_probabilities(class_logits, mask_logits, (4, 4)))
    # sum over queries of p(tumour) x sigmoid(mask): left half 0.8 s(2) + 0.6 s(-2), right half 0.8 s(-2) + 0.6 s(-2)
    np.testing.assert_allclose(semantic[0, 0, 0, 0], 0.8 * sigmoid + 0.6 * (1 - sigmoid), rtol=1e-5)
    np.testing.assert_allclose(semantic[0, 0, 3, 0], 1.4 * (1 - sigmoid), rtol=1e-5)
