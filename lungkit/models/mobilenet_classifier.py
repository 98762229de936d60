"""MobileNetV2 crop classifier: paper 002's "transfer model" for the segmented tumours.

Paper 002's slides plan a classification network on the segmented images (lines 98-120) and, for the whole project,
"transfer learning" with MobileNetV2 (lines 74-75, 137); issue 16 asks for a small CNN
(:mod:`lungkit.models.crop_cnn`) and a transfer model. Nothing is printed about either, so this is lungkit's reading,
the usual Keras transfer-learning classifier:

- the crop (one channel per view: image, mask or image x mask, in [0, 1]) is copied to three channels and
  **upsampled inside the model** (bilinear) to ``encoder_side``, then mapped to [-1, 1], the range
  ``keras.applications.mobilenet_v2.preprocess_input`` gives the ImageNet weights;
- ``keras.applications.MobileNetV2(include_top=False)`` (the nested model ``mobilenetv2_encoder``), global
  average pooling, dropout and one sigmoid unit (the probability of the positive class).

Why upsample. MobileNetV2 takes at least 32 px and halves the side five times: a 32 px crop would leave a 1 x 1 map
after the last stride, one position for the whole tumour. ``paper`` upsamples to 96 px, the smallest resolution
``keras.applications`` ships ImageNet weights for (a 32 px crop times exactly 3; a 3 x 3 last map);
``small`` to 64 px (times 2; a 2 x 2 map), 43 ms a training step at batch 8 on the 2-core CI machine against 79 ms
at 96 px (measured at ``nice 19`` beside other jobs, alpha 0.35), so that the quick profile's 200 steps stay cheap;
``tiny`` (tests) to 32 px. The encoder sees the tumour larger, not sharper: upsampling adds no detail.

Pretrained weights. As for the MobileNetV2 U-Net (:func:`lungkit.models.mobilenet_unet.mobilenet_v2_backbone`,
:mod:`lungkit.models.local_weights`): ``weights=None`` (the default) trains from scratch; ``weights=<path>`` loads
the ``keras.applications`` notop file for the width and ``encoder_side``
(:func:`lungkit.models.mobilenet_unet.weights_file_name`; 64 and 32 px have no own file and take the 224 px one,
as ``keras.applications`` does), or a folder holding it. lungkit never downloads: a missing file raises
``FileNotFoundError`` naming the file, its URL and where to put it. :func:`encoder_weights_status` says what was
loaded, for the protocol. Every BatchNorm gets momentum 0.9 (the U-Net's reason: 0.999 lags a 200-step budget).

Parameter count. At ``paper`` (alpha 1.0) 2,259,265 weights (``PAPER_PARAM_COUNT``): the notop MobileNetV2's
2,257,984 (``keras.applications``' documented count, any input size) plus the 1,280 + 1 of the sigmoid unit.
"""

from __future__ import annotations

import keras
from keras import layers

from lungkit.models.blocks import resolve_config
from lungkit.models.local_weights import STATUS_ATTRIBUTE, set_batch_norm_momentum, weights_status
from lungkit.models.mobilenet_unet import BATCH_NORM_MOMENTUM, ENCODER_NAME, mobilenet_v2_backbone

MODEL_NAME = "mobilenetv2_classifier"

#: MobileNetV2's smallest input side (``keras.applications`` refuses less).
MIN_ENCODER_SIDE = 32

CONFIGS = {
    # For tests: the narrowest ImageNet width at MobileNetV2's smallest input.
    "tiny": {"input_shape": (16, 16, 1), "encoder_side": 32, "alpha": 0.35, "pooling": "avg", "dropout": 0.0,
             "weights": None, "batch_norm_momentum": BATCH_NORM_MOMENTUM, "output_activation": "sigmoid"},
    # CPU runs (quick profile): 32 px crops upsampled x2, alpha 0.35.
    "small": {"input_shape": (32, 32, 1), "encoder_side": 64, "alpha": 0.35, "pooling": "avg", "dropout": 0.2,
              "weights": None, "batch_norm_momentum": BATCH_NORM_MOMENTUM, "output_activation": "sigmoid"},
    # MobileNetV2 1.0 at its smallest ImageNet resolution: 32 px crops upsampled x3.
    "paper": {"input_shape": (32, 32, 1), "encoder_side": 96, "alpha": 1.0, "pooling": "avg", "dropout": 0.2,
              "weights": None, "batch_norm_momentum": BATCH_NORM_MOMENTUM, "output_activation": "sigmoid"},
}

# Measured with this builder at CONFIGS["paper"], Keras' way of counting (see the module docstring).
PAPER_PARAM_COUNT = 2_259_265

POOLINGS = ("avg", "max")


def encoder_weights_status(model: keras.Model) -> dict:
    """What the encoder of a MobileNetV2 classifier was initialised from, for a result's protocol.

    Returns:
        ``{"pretrained": bool, "source": path or None, "sha256": hex or None}``; ``pretrained`` None when the
        model carries no record (e.g. after reloading from disk).
    """
    return weights_status(model, ("pretrained", "source", "sha256"))


def build_mobilenetv2_classifier(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build the MobileNetV2 crop classifier.

    Args:
        scale: ``tiny`` (tests: 32 px encoder, alpha 0.35), ``small`` (64 px, alpha 0.35) or ``paper`` (96 px,
            alpha 1.0).
        input_shape: (height, width, channels) of the crops, channels 1 (copied to 3 inside) or 3; the config's
            when None. Any side: the crop is resized to ``encoder_side`` inside the model.
        **overrides: settings of ``CONFIGS[scale]``: ``encoder_side`` (at least 32), ``alpha``, ``pooling``
            (``avg`` or ``max``), ``dropout``, ``weights`` (None or the local notop file / its folder),
            ``batch_norm_momentum``, ``output_activation`` (``"sigmoid"``, the default, or None / ``"linear"``).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, C) -> (N, 1), float32 output; the encoder is the nested model
        named ``mobilenetv2_encoder`` (the recipe's ``fine_tuning.frozen_layer``).

    Raises:
        ValueError: unknown scale or setting, bad channels, an encoder side below 32, or a weights file that does
            not fit.
        FileNotFoundError: ``weights`` names a file that does not exist (the message says what to download).
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    height, width, channels = config["input_shape"]
    side = int(config["encoder_side"])
    if side < MIN_ENCODER_SIDE:
        raise ValueError(f"{MODEL_NAME}: encoder_side {side} is below MobileNetV2's minimum {MIN_ENCODER_SIDE}")
    if channels not in (1, 3):
        raise ValueError(f"{MODEL_NAME}: input must have 1 or 3 channels (ImageNet's MobileNetV2 takes 3), got {channels}")
    if config["pooling"] not in POOLINGS:
        raise ValueError(f"{MODEL_NAME}: pooling must be one of {POOLINGS}, got {config['pooling']!r}")

    mobilenet, status = mobilenet_v2_backbone((side, side, 3), float(config["alpha"]), config["weights"],
                                              model_name=MODEL_NAME)
    encoder = keras.Model(mobilenet.input, mobilenet.output, name=ENCODER_NAME)

    inputs = keras.Input(shape=config["input_shape"], name="crop")
    x = inputs
    if channels == 1:
        x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    if (height, width) != (side, side):
        x = layers.Resizing(side, side, interpolation="bilinear", name="upsample_to_encoder")(x)
    x = layers.Rescaling(2.0, offset=-1.0, name="unit_to_symmetric")(x)
    x = encoder(x)
    pool = layers.GlobalAveragePooling2D if config["pooling"] == "avg" else layers.GlobalMaxPooling2D
    x = pool(name="pool")(x)
    if config["dropout"]:
        x = layers.Dropout(float(config["dropout"]), name="dropout")(x)
    activation = config["output_activation"]
    outputs = layers.Dense(1, activation=None if activation == "linear" else activation, dtype="float32",
                           name="malignancy")(x)
    model = keras.Model(inputs, outputs, name=MODEL_NAME)
    set_batch_norm_momentum(model, float(config["batch_norm_momentum"]))
    setattr(model, STATUS_ATTRIBUTE, status)
    return model
