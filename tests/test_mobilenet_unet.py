"""MobileNetV2 U-Net: the tutorial's skip names and resolutions, the paper-scale parameter count against an
independent sum, local weight loading, the missing-weights message, and an overfitting check at tiny size."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest
from keras import ops

from kit_fixtures import (
    assert_overfits,
    assert_refuses_missing_mobilenet_weights,
    disc_slices,
    save_legacy_h5_weights,
)
from lungkit.models import available_models, build_model
from lungkit.models.mobilenet_unet import (
    BRIDGE_LAYER,
    ENCODER_NAME,
    PAPER_PARAM_COUNT,
    SKIP_LAYERS,
    WEIGHTS_BASE_URL,
    build_mobilenetv2_unet,
    encoder_weights_status,
    weights_file_name,
)


def tutorial_decoder_param_count(skip_channels, bridge_channels, filters):
    """The decoder counted by hand: per step a 3x3 transposed conv without bias + BatchNorm (4 weights per channel:
    gamma, beta, moving mean and variance), then concatenation; a 3x3 transposed-conv head with bias."""
    total, channels = 0, bridge_channels
    for step_filters, skip in zip(filters, reversed(skip_channels)):
        total += 9 * channels * step_filters + 4 * step_filters
        channels = step_filters + skip
    return total + 9 * channels + 1


def test_registered():
    assert "mobilenetv2_unet" in available_models()


def test_skips_have_the_stated_names_and_resolutions():
    assert SKIP_LAYERS == ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                           "block_13_expand_relu")
    assert BRIDGE_LAYER == "block_16_project"
    model = build_mobilenetv2_unet("tiny", input_shape=(64, 64, 1))
    encoder = model.get_layer(ENCODER_NAME)
    # resolutions 1/2 .. 1/32 of the 64 px input
    shapes = [tuple(t.shape[1:3]) for t in encoder.outputs]
    assert shapes == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    for name, output in zip(SKIP_LAYERS + (BRIDGE_LAYER,), encoder.outputs):
        assert encoder.get_layer(name).output is output
    assert model.output_shape == (None, 64, 64, 1)


@pytest.mark.slow
def test_paper_scale_shapes_and_parameter_count():
    model = build_mobilenetv2_unet("paper")
    assert model.input_shape == (None, 256, 256, 3) and model.output_shape == (None, 256, 256, 1)
    encoder = model.get_layer(ENCODER_NAME)
    # GUIDE section 5 at 512 px: 256/128/64/32/16 px with 96/144/192/576/320 channels; at 256 px half the sides
    assert [tuple(t.shape[1:]) for t in encoder.outputs] == [
        (128, 128, 96), (64, 64, 144), (32, 32, 192), (16, 16, 576), (8, 8, 320)]
    assert model.count_params() == PAPER_PARAM_COUNT
    full = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(256, 256, 3))
    assert full.count_params() == 2_257_984  # keras.applications' documented notop count at alpha 1.0
    # cut at block_16_project: without block_16_project_BN (4 x 320) and Conv_1 (320 x 1280) + Conv_1_bn (4 x 1280)
    assert encoder.count_params() == 2_257_984 - 4 * 320 - 320 * 1280 - 4 * 1280
    decoder = tutorial_decoder_param_count((96, 144, 192, 576), 320, (512, 256, 128, 64))
    assert PAPER_PARAM_COUNT == encoder.count_params() + decoder
    assert encoder_weights_status(model)["pretrained"] is False


def test_missing_weights_file_says_what_to_download(tmp_path):
    name = weights_file_name(0.35, 64)
    assert name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"  # 64 px has no own file
    assert weights_file_name(1.0, 128).endswith("_1.0_128_no_top.h5")
    assert_refuses_missing_mobilenet_weights(build_mobilenetv2_unet, tmp_path, name, WEIGHTS_BASE_URL + name)


def test_loads_local_notop_weights_and_records_them(tmp_path):
    keras.utils.set_random_seed(3)
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3), alpha=0.35)
    weights_file = tmp_path / weights_file_name(0.35, 64)
    save_legacy_h5_weights(source, weights_file)

    model = build_mobilenetv2_unet("tiny", input_shape=(64, 64, 1), weights=tmp_path)
    encoder = model.get_layer(ENCODER_NAME)
    for name in ("Conv1", "block_3_depthwise", "block_13_expand_BN", "block_16_project"):
        for loaded, saved in zip(encoder.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(loaded), ops.convert_to_numpy(saved))
    status = encoder_weights_status(model)
    assert status == {"pretrained": True, "source": str(weights_file.resolve()),
                      "sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest()}


def test_wrong_weights_file_is_rejected(tmp_path):
    wrong = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="dense")])
    path = tmp_path / weights_file_name(0.35, 64)
    save_legacy_h5_weights(wrong, path)
    with pytest.raises(ValueError, match="could not be loaded into keras.applications.MobileNetV2"):
        build_mobilenetv2_unet("tiny", weights=path)


def test_input_is_copied_to_rgb_and_mapped_to_minus_one_one():
    model = build_mobilenetv2_unet("tiny", input_shape=(64, 64, 1))
    probe = keras.Model(model.input, model.get_layer("unit_to_symmetric").output)
    out = ops.convert_to_numpy(probe(np.stack([np.zeros((64, 64, 1)), np.ones((64, 64, 1))]).astype("float32")))
    assert out.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(out[0], -1.0)
    np.testing.assert_allclose(out[1], 1.0)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_mobilenetv2_unet("tiny", input_shape=(48, 48, 1))


def test_tiny_model_learns_a_disc():
    keras.utils.set_random_seed(0)
    model = build_model("mobilenetv2_unet", scale="tiny", input_shape=(64, 64, 1))
    images, masks = disc_slices(4, 64, channels=1)
    images = np.clip(images, 0.0, 1.0)  # the model expects [0, 1] inputs
    # training-mode losses (train_on_batch): with batch 4 the moving BatchNorm statistics say little after 40 steps
    assert_overfits(model, images, masks, keras.optimizers.Adam(3e-3), steps=40,
                    loss=keras.losses.BinaryCrossentropy(from_logits=True))
