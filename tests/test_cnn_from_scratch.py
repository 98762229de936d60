"""CNN from scratch (paper 002's baseline): no skip connections unless asked, the paper-scale parameter count
against a hand count, and an overfitting check at tiny size."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kit_fixtures import assert_overfits, disc_slices
from lungkit.models import available_models, build_model
from lungkit.models.cnn_from_scratch import PAPER_PARAM_COUNT, build_cnn_from_scratch


def hand_count(filters, in_channels=1, skips=False):
    """conv-BN-ReLU x 2 per level (convs without bias, BatchNorm with 4 weights a channel), 2x2 transposed convs
    with bias, a 1x1 head with bias."""

    def block(cin, cout):
        return 9 * cin * cout + 4 * cout + 9 * cout * cout + 4 * cout

    total, channels = 0, in_channels
    for level_filters in filters:
        total += block(channels, level_filters)
        channels = level_filters
    for level_filters in reversed(filters[:-1]):
        total += 4 * channels * level_filters + level_filters
        total += block(2 * level_filters if skips else level_filters, level_filters)
        channels = level_filters
    return total + channels + 1


def test_registered_and_plain_by_default():
    assert "cnn_from_scratch" in available_models()
    model = build_model("cnn_from_scratch", scale="tiny")
    assert model.output_shape == (None, 32, 32, 1)
    assert not any(isinstance(layer, keras.layers.Concatenate) for layer in model.layers)
    with_skips = build_cnn_from_scratch("tiny", skip_connections=True)
    assert sum(isinstance(layer, keras.layers.Concatenate) for layer in with_skips.layers) == 1
    assert with_skips.count_params() == hand_count((4, 8), skips=True)
    with pytest.raises(ValueError, match="multiple of"):
        build_cnn_from_scratch("tiny", input_shape=(33, 33, 1))


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_parameter_count_matches_hand_count(scale):
    from lungkit.models.cnn_from_scratch import CONFIGS

    assert build_cnn_from_scratch(scale).count_params() == hand_count(CONFIGS[scale]["filters"])


def test_paper_scale_shape_and_parameter_count():
    model = build_cnn_from_scratch("paper")
    assert model.input_shape == (None, 256, 256, 1) and model.output_shape == (None, 256, 256, 1)
    assert model.count_params() == PAPER_PARAM_COUNT == hand_count((32, 64, 128, 256))


def test_tiny_model_learns_a_disc():
    keras.utils.set_random_seed(0)
    model = build_model("cnn_from_scratch", scale="tiny")
    images, masks = disc_slices(4, 32)
    assert_overfits(model, images.astype(np.float32), masks, keras.optimizers.Adam(1e-2), steps=40,
                    loss=keras.losses.BinaryCrossentropy(from_logits=True))
