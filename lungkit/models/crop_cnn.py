"""A small CNN classifier of tumour crops: paper 002's "classification network" on the segmented images.

Paper 002's slides plan "segmented images -> classification network -> benign / malignant" (lines 98-120) without
describing the network. lungkit's reading is a small plain CNN on crops of a few dozen pixels around the segmented
tumour: per level two conv-BN-ReLU and a 2x2 max-pool, then global average pooling, dropout and one sigmoid unit
(the probability of the positive class, e.g. "suspicious"). The input has one channel per crop view (image, mask,
or image x mask; see :mod:`lungkit.experiments.segment_classify`), or several stacked.
"""

from __future__ import annotations

import keras
from keras import layers

from lungkit.models.blocks import conv_block, resolve_config

MODEL_NAME = "crop_cnn_classifier"

CONFIGS = {
    "tiny": {"input_shape": (16, 16, 1), "filters": (4, 8), "dropout": 0.0, "output_activation": "sigmoid"},
    "small": {"input_shape": (32, 32, 1), "filters": (16, 32, 64), "dropout": 0.3, "output_activation": "sigmoid"},
    "paper": {"input_shape": (64, 64, 1), "filters": (32, 64, 128), "dropout": 0.3, "output_activation": "sigmoid"},
}


def build_crop_cnn_classifier(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build the crop classifier.

    Args:
        scale: ``tiny`` (tests), ``small`` (32 px crops) or ``paper`` (64 px crops).
        input_shape: (height, width, channels); sides multiples of ``2**len(filters)``.
        **overrides: ``filters`` (channels per level), ``dropout`` (before the last unit), ``output_activation``
            (``"sigmoid"``: a probability; None / ``"linear"``: a logit).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, C) -> (N, 1), float32 output.

    Raises:
        ValueError: unknown scale or setting, no level, or sides not divisible by the poolings.
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    filters = tuple(int(f) for f in config["filters"])
    if not filters:
        raise ValueError(f"{MODEL_NAME}: filters needs at least one level")
    height, width, _ = config["input_shape"]
    for side_name, side in (("height", height), ("width", width)):
        if side is None or side % 2 ** len(filters):
            raise ValueError(f"{MODEL_NAME}: input {side_name} {side} must be a multiple of {2 ** len(filters)}")
    inputs = keras.Input(shape=config["input_shape"], name="crop")
    x = inputs
    for level, level_filters in enumerate(filters, start=1):
        x = conv_block(x, level_filters, batch_norm=True, name=f"level_{level}")
        x = layers.MaxPooling2D(2, name=f"level_{level}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if config["dropout"]:
        x = layers.Dropout(float(config["dropout"]), name="dropout")(x)
    activation = config["output_activation"]
    outputs = layers.Dense(1, activation=None if activation == "linear" else activation, dtype="float32",
                           name="malignancy")(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)
