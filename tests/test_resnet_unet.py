"""ResNet50-UNet: wiring, parameter count against segmentation_models_pytorch's inventory, local weight loading,
the missing-weights message, and an overfitting check at tiny size."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest
from keras import ops

from kit_fixtures import assert_overfits, disc_slices, save_legacy_h5_weights
from lungkit.models import build_model
from lungkit.models.resnet_unet import (
    PAPER_PARAM_COUNT,
    REFERENCE_PARAM_COUNT,
    WEIGHTS_FILE_NAME,
    WEIGHTS_URL,
    build_resnet50_unet,
    encoder_weights_status,
)


def torchvision_resnet50_notop_param_count():
    """torchvision ResNet50 without its fc layer: convs without bias, BatchNorm weight + bias."""
    total = 7 * 7 * 3 * 64 + 2 * 64  # stem conv + bn
    in_channels = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            total += in_channels * width + 2 * width  # 1x1 reduce
            total += 9 * width * width + 2 * width  # 3x3
            total += width * 4 * width + 2 * 4 * width  # 1x1 expand
            if block == 0:
                total += in_channels * 4 * width + 2 * 4 * width  # projection shortcut
            in_channels = 4 * width
    return total


def smp_unet_resnet50_param_count(filters=(256, 128, 64, 32, 16), classes=1):
    """``segmentation_models_pytorch.Unet("resnet50", classes=1)`` counted module by module."""
    total = torchvision_resnet50_notop_param_count()
    in_channels = 2048
    for out_channels, skip_channels in zip(filters, (1024, 512, 256, 64, 0)):
        total += 9 * (in_channels + skip_channels) * out_channels + 2 * out_channels  # conv (no bias) + BN
        total += 9 * out_channels * out_channels + 2 * out_channels
        in_channels = out_channels
    return total + 9 * filters[-1] * classes + classes  # 3x3 segmentation head with bias


@pytest.mark.slow
def test_paper_model_shape_and_parameter_count():
    model = build_resnet50_unet("paper")
    assert model.input_shape == (None, 256, 256, 3)
    assert model.output_shape == (None, 256, 256, 1)
    assert model.count_params() == PAPER_PARAM_COUNT
    # smp counts torch parameters: no conv biases (Keras' ResNet50 has them), no BN moving statistics.
    encoder = model.get_layer("resnet50_encoder")
    convs = [layer for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    conv_biases = sum(int(np.prod(layer.bias.shape)) for layer in convs)
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert trainable - conv_biases == REFERENCE_PARAM_COUNT == smp_unet_resnet50_param_count()
    assert torchvision_resnet50_notop_param_count() == 23_508_032  # torchvision's 25,557,032 minus fc 2,049,000
    # skips at 1/2 .. 1/16, bridge at 1/32
    assert [tuple(t.shape) for t in encoder.outputs] == [
        (None, 128, 128, 64),
        (None, 64, 64, 256),
        (None, 32, 32, 512),
        (None, 16, 16, 1024),
        (None, 8, 8, 2048),
    ]
    assert encoder_weights_status(model)["pretrained"] is False
    prediction = ops.convert_to_numpy(model(np.zeros((1, 256, 256, 3), "float32")))
    assert prediction.shape == (1, 256, 256, 1)


def test_missing_weights_file_says_what_to_download(tmp_path):
    missing = tmp_path / "weights" / WEIGHTS_FILE_NAME
    with pytest.raises(FileNotFoundError) as error:
        build_resnet50_unet("tiny", weights=missing)
    message = str(error.value)
    assert str(missing) in message and WEIGHTS_URL in message and "weights=None" in message
    # a folder without the file names the file it looked for
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE_NAME):
        build_resnet50_unet("tiny", weights=tmp_path)
    with pytest.raises(ValueError, match="never does"):
        build_resnet50_unet("tiny", weights="imagenet")


def test_loads_local_notop_weights_and_records_them(tmp_path):
    keras.utils.set_random_seed(7)
    source = keras.applications.ResNet50(include_top=False, weights=None)
    weights_file = tmp_path / WEIGHTS_FILE_NAME
    save_legacy_h5_weights(source, weights_file)

    model = build_resnet50_unet("tiny", input_shape=(64, 64, 1), weights=tmp_path)  # the folder is enough
    encoder = model.get_layer("resnet50_encoder")
    for name in ("conv1_conv", "conv3_block4_2_conv", "conv5_block3_3_bn"):
        for loaded, saved in zip(encoder.get_layer(name).weights, source.get_layer(name).weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(loaded), ops.convert_to_numpy(saved))
    status = encoder_weights_status(model)
    assert status["pretrained"] is True
    assert status["source"] == str(weights_file.resolve())
    assert status["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert status["official_imagenet_file"] is False
    # a grayscale slice is copied to the three channels the encoder expects
    assert model.input_shape == (None, 64, 64, 1) and model.get_layer("gray_to_rgb").output.shape[-1] == 3


def test_wrong_weights_file_is_rejected(tmp_path):
    wrong = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name="dense")])
    path = tmp_path / WEIGHTS_FILE_NAME
    save_legacy_h5_weights(wrong, path)
    with pytest.raises(ValueError, match="could not be loaded into keras.applications.ResNet50"):
        build_resnet50_unet("tiny", weights=path)


def test_tiny_model_overfits_four_slices():
    keras.utils.set_random_seed(0)
    model = build_model("resnet50_unet", scale="tiny")
    assert model.output_shape == (None, 64, 64, 1)
    images, masks = disc_slices(4, 64, channels=3)
    # The default head returns logits (paper 001 trains with BCEWithLogitsLoss). The losses are training-mode ones:
    # with batch 4 the BatchNorm moving statistics lag far behind after a few dozen steps, so the inference-mode
    # loss says little about the wiring this test checks.
    logits_loss = keras.losses.BinaryCrossentropy(from_logits=True)
    assert_overfits(model, images, masks, keras.optimizers.Adam(3e-3), steps=30, loss=logits_loss)
