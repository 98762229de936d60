"""DenseNet-121 nodule classifier (paper 003): size, head, DenseNet-style small configs, a learnable toy task."""

from __future__ import annotations

import numpy as np
import pytest

from lungkit.models import build_model
from lungkit.models.densenet_cls import (
    CONFIGS,
    DENSENET121_NOTOP_PARAMS,
    build_densenet121_classifier,
)


def dense_net_parameter_count(in_channels, blocks, growth_rate, stem_filters, num_classes=None):
    """Weights of a DenseNet-BC counted by hand (BatchNorm: 4 per channel; convolutions without bias)."""
    count = 7 * 7 * in_channels * stem_filters + 4 * stem_filters
    channels = stem_filters
    for index, layers in enumerate(blocks):
        for _ in range(layers):
            bottleneck = 4 * growth_rate
            count += 4 * channels + channels * bottleneck + 4 * bottleneck + 9 * bottleneck * growth_rate
            channels += growth_rate
        if index < len(blocks) - 1:
            count += 4 * channels + channels * (channels // 2)
            channels //= 2
    count += 4 * channels  # final BatchNorm
    if num_classes:
        count += channels * num_classes + num_classes
    return count, channels


def test_hand_count_agrees_with_keras_densenet121():
    count, channels = dense_net_parameter_count(3, (6, 12, 24, 16), 32, 64)
    assert (count, channels) == (DENSENET121_NOTOP_PARAMS, 1024)


@pytest.fixture(scope="module")
def paper_model():
    return build_densenet121_classifier("paper")  # the only DenseNet-121 built in this file


def test_paper_size(paper_model):
    assert paper_model.input_shape == (None,) + CONFIGS["paper"]["input_shape"]
    assert paper_model.output_shape == (None, 2)
    # DenseNet-121 without top (7,037,504) + Dense(1024 -> 2)
    assert paper_model.count_params() == DENSENET121_NOTOP_PARAMS + 1024 * 2 + 2 == 7_039_554
    assert paper_model.input_shape == (None, 224, 224, 3)
    probabilities = paper_model.predict(np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_dense_style_configs_match_the_hand_count(scale):
    config = CONFIGS[scale]
    model = build_model("densenet121_classifier", scale=scale)
    # One-channel crops are repeated to RGB inside the model, so the stem always sees 3 channels.
    expected, _ = dense_net_parameter_count(3, config["blocks"], config["growth_rate"], config["stem_filters"], 2)
    assert model.count_params() == expected
    assert model.output_shape == (None, 2)


def test_single_sigmoid_head():
    model = build_densenet121_classifier("tiny", num_classes=1)
    assert model.output_shape == (None, 1)
    assert model.get_layer("malignancy").activation.__name__ == "sigmoid"
    out = model.predict(np.zeros((2, 32, 32, 1), np.float32), verbose=0)
    assert np.all((out > 0) & (out < 1))


def test_bad_settings_and_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="unknown settings"):
        build_densenet121_classifier("tiny", depth=3)
    with pytest.raises(ValueError, match="unknown scale"):
        build_densenet121_classifier("huge")
    with pytest.raises(FileNotFoundError, match=r"missing\.h5.*densenet121_weights_tf_dim_ordering_tf_kernels_notop"):
        build_densenet121_classifier("paper", weights=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="would download"):
        build_densenet121_classifier("paper", weights="imagenet")


def test_tiny_classifier_learns_bright_versus_dark():
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    def crops(n):
        labels = rng.integers(0, 2, n)
        images = rng.normal(0.3, 0.05, size=(n, 32, 32, 1)) + 0.4 * labels[:, None, None, None]
        return np.clip(images, 0, 1).astype(np.float32), labels

    train_x, train_y = crops(64)
    test_x, test_y = crops(32)
    model = build_densenet121_classifier("tiny")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_x, train_y, epochs=4, batch_size=16, verbose=0)
    predicted = model.predict(test_x, verbose=0).argmax(axis=1)
    assert (predicted == test_y).mean() >= 0.95
