"""Multi-scale deformable attention in plain ops against a loop-by-loop NumPy version, its official initial
offsets, its parameter count, and the whole deformable pixel decoder's output shapes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from lungkit.models.deformable_pixel_decoder import (
    MultiScaleDeformableAttention,
    msdeform_pixel_decoder,
    reference_points,
    sampling_offset_bias,
)
from test_set_prediction import bilinear_reference


def test_deformable_attention_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    dim, heads, levels, points = 8, 2, 2, 3
    shapes = [(2, 3), (3, 4)]
    length = sum(h * w for h, w in shapes)
    layer = MultiScaleDeformableAttention(dim, heads, levels, points)
    query = rng.normal(size=(1, length, dim)).astype(np.float32)
    value = rng.normal(size=(1, length, dim)).astype(np.float32)
    reference = reference_points(shapes)
    layer.build(query.shape, value.shape)
    # random weights everywhere (the official init zeroes the offset kernel, which would hide mistakes)
    for weight in layer.weights:
        weight.assign(rng.normal(0, 0.5, weight.shape).astype(np.float32))
    result = ops.convert_to_numpy(layer(query, value, reference=reference, level_shapes=shapes))

    def dense(x, sub):
        kernel, bias = (ops.convert_to_numpy(w) for w in sub.weights)
        return x @ kernel + bias

    values = dense(value[0], layer.value_proj)
    offsets = dense(query[0], layer.sampling_offsets).reshape(length, heads, levels, points, 2)
    logits = dense(query[0], layer.attention_weights).reshape(length, heads, levels * points)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True)).reshape(length, heads, levels, points)
    head_dim = dim // heads
    expected = np.zeros((length, dim))
    for q in range(length):
        for h in range(heads):
            start = 0
            for level, (height, width) in enumerate(shapes):
                level_values = values[start : start + height * width].reshape(height, width, dim)
                start += height * width
                for p in range(points):
                    x = reference[q, 0] + offsets[q, h, level, p, 0] / width
                    y = reference[q, 1] + offsets[q, h, level, p, 1] / height
                    for c in range(head_dim):
                        channel = level_values[:, :, h * head_dim + c]
                        expected[q, h * head_dim + c] += weights[q, h, level, p] * bilinear_reference(channel, x, y)
    expected = dense(expected.astype(np.float32), layer.output_proj)
    np.testing.assert_allclose(result[0], expected, atol=1e-4)


def test_official_offset_initialisation_and_parameter_count():
    bias = sampling_offset_bias(8, 3, 4).reshape(8, 3, 4, 2)
    np.testing.assert_allclose(bias[0, 0, :, :], [[1, 0], [2, 0], [3, 0], [4, 0]], atol=1e-6)  # head 0: +x
    np.testing.assert_allclose(bias[1, 2, 0], [1, 1], atol=1e-6)  # head 1: 45 degrees, scaled to max 1
    np.testing.assert_allclose(bias[2, 1, 1], [0, 2], atol=1e-6)  # head 2: +y, point 2 at distance 2
    layer = MultiScaleDeformableAttention(256, 8, 3, 4)
    layer.build((None, None, 256), (None, None, 256))
    # offsets 256 x 192 + 192, weights 256 x 96 + 96, value and output projections 2 x (256 x 256 + 256)
    assert layer.count_params() == 205_600
    np.testing.assert_allclose(reference_points([(2, 2)]), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])


def test_pixel_decoder_shapes():
    inputs = [keras.Input((16 // 2**i, 16 // 2**i, 8 * 2**i)) for i in range(4)]  # C2..C5 of a 64 px image
    multi_scale, mask_features = msdeform_pixel_decoder(inputs, conv_dim=16, mask_dim=12, norm_groups=4,
                                                        num_layers=2, num_heads=2, num_points=2, ffn_dim=32)
    assert [tuple(m.shape) for m in multi_scale] == [(None, 2, 2, 16), (None, 4, 4, 16), (None, 8, 8, 16)]
    assert tuple(mask_features.shape) == (None, 16, 16, 12)


@pytest.mark.parametrize("points", [1, 2])
def test_reference_points_cover_every_token(points):
    shapes = [(1, 1)] * points
    assert reference_points(shapes).shape == (points, 2)
