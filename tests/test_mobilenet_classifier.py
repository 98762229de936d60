"""MobileNetV2 crop classifier (paper 002's transfer model): shapes and the in-model upsampling at tiny scale, the
paper-scale parameter count against keras.applications' documented one, local weight loading, the missing-weights
message, and a tiny version that learns a separable toy task (as the crop CNN's test)."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest
from keras import ops

from kit_fixtures import assert_refuses_missing_mobilenet_weights, save_legacy_h5_weights
from lungkit.models import available_models, build_model
from lungkit.models.mobilenet_classifier import (
    CONFIGS,
    ENCODER_NAME,
    PAPER_PARAM_COUNT,
    build_mobilenetv2_classifier,
    encoder_weights_status,
)
from lungkit.models.mobilenet_unet import WEIGHTS_BASE_URL, weights_file_name


def test_tiny_shapes_and_the_crop_upsampled_to_the_encoder():
    assert "mobilenetv2_classifier" in available_models()
    model = build_model("mobilenetv2_classifier", scale="tiny")
    assert model.input_shape == (None, 16, 16, 1) and model.output_shape == (None, 1)
    encoder = model.get_layer(ENCODER_NAME)
    assert encoder.input_shape == (None, 32, 32, 3)  # MobileNetV2's minimum side
    # a constant crop stays constant through the copy to RGB, the upsampling and the map to [-1, 1]
    probe = keras.Model(model.input, model.get_layer("unit_to_symmetric").output)
    out = ops.convert_to_numpy(probe(np.stack([np.zeros((16, 16, 1)), np.ones((16, 16, 1))]).astype("float32")))
    assert out.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(out[0], -1.0)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)
    assert encoder_weights_status(model) == {"pretrained": False, "source": None, "sha256": None}
    probabilities = ops.convert_to_numpy(model(np.random.default_rng(0).random((3, 16, 16, 1), "float32")))
    assert probabilities.shape == (3, 1) and ((probabilities > 0) & (probabilities < 1)).all()
    with pytest.raises(ValueError, match="below MobileNetV2's minimum"):
        build_mobilenetv2_classifier("tiny", encoder_side=16)
    assert CONFIGS["small"]["encoder_side"] == 64 and CONFIGS["paper"]["encoder_side"] == 96


@pytest.mark.slow
def test_paper_scale_parameter_count():
    model = build_mobilenetv2_classifier("paper")
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 1)
    assert model.get_layer(ENCODER_NAME).input_shape == (None, 96, 96, 3)
    # keras.applications' documented notop MobileNetV2 1.0 count, plus the sigmoid unit on its 1,280 channels
    assert model.count_params() == PAPER_PARAM_COUNT == 2_257_984 + 1_280 + 1


def test_missing_weights_file_says_what_to_download(tmp_path):
    name = weights_file_name(0.35, 32)
    assert name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"  # 32 px has no own file
    assert weights_file_name(1.0, 96).endswith("_1.0_96_no_top.h5")  # the paper config's own file
    message = assert_refuses_missing_mobilenet_weights(build_mobilenetv2_classifier, tmp_path, name,
                                                       WEIGHTS_BASE_URL + name)
    assert message.startswith("mobilenetv2_classifier:")  # the messages name the model asking
    with pytest.raises(ValueError, match="mobilenetv2_classifier: no ImageNet weights"):
        build_mobilenetv2_classifier("tiny", alpha=0.6, weights=tmp_path)


def test_loads_local_notop_weights_and_records_them(tmp_path):
    keras.utils.set_random_seed(3)
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35)
    weights_file = tmp_path / weights_file_name(0.35, 32)
    save_legacy_h5_weights(source, weights_file)

    model = build_mobilenetv2_classifier("tiny", weights=tmp_path)
    encoder = model.get_layer(ENCODER_NAME)
    for name in ("Conv1", "block_3_depthwise", "block_16_project", "Conv_1_bn"):
        for loaded, saved in zip(encoder.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(loaded), ops.convert_to_numpy(saved))
    assert encoder_weights_status(model) == {"pretrained": True, "source": str(weights_file.resolve()),
                                             "sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest()}


def test_tiny_classifier_learns_a_separable_toy_task():
    # the crop CNN's toy task (tests/test_segment_classify.py): small discs are class 0, large discs class 1
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:16, :16]
    radii = np.r_[rng.uniform(1.5, 3.0, 16), rng.uniform(5.0, 7.0, 16)]
    x = np.stack([((rows - 7.5) ** 2 + (cols - 7.5) ** 2 <= r**2).astype("float32") for r in radii])[..., None]
    x = np.clip(x + rng.normal(0, 0.1, x.shape).astype("float32"), 0.0, 1.0)  # the model expects [0, 1]
    y = np.r_[np.zeros(16), np.ones(16)].astype("float32")
    model = build_model("mobilenetv2_classifier", scale="tiny")
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", jit_compile=False)
    # batches of 16 mixing both classes; after 120 steps the BatchNorm moving statistics (momentum 0.9) have
    # settled, so inference mode (measured: 0.5 after 40 steps, 0.94 after 80, 0.97 after 120) is checked too
    losses = [float(model.train_on_batch(x[half::2], y[half::2])) for _ in range(60) for half in (0, 1)]
    assert losses[-1] < 0.4 * losses[0], losses
    probabilities = ops.convert_to_numpy(model.predict(x, verbose=0))[:, 0]
    assert ((probabilities >= 0.5) == y).mean() >= 0.9, probabilities
