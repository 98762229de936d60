"""CNN from scratch: the plain encoder-decoder baseline of paper 002.

Paper 002's schedule plans to "develop CNN baseline model from scratch" (line 139) beside the fine-tuned
MobileNetV2 U-Net, without describing it. lungkit's reading is the network a student writes first: a stack of
(conv-BN-ReLU x 2, max-pool) blocks that halves the resolution ``depth`` times, then as many (2x2 stride-2
transposed convolution, conv-BN-ReLU x 2) blocks back to the input resolution, and a 1x1 head. **No skip
connections** by default (``skip_connections=False``): that is what separates this baseline from a U-Net, and what
the comparison with the MobileNetV2 U-Net measures together with the pretrained encoder. Fine detail has to pass
through the bottleneck, so small nodules are expected to suffer; ``skip_connections=True`` turns it into a plain
U-Net for an ablation.

Widths: 32-64-128-256 at the paper scale (a 256 x 256 x 1 input, 1.74 M parameters), the widths of the classic
Keras "simple CNN" examples. The small scale halves the widths twice (8-16-32-64, 0.11 M) so that the quick
profile's 400 steps of batch 8 at 128 px fit a couple of CPU minutes: 0.4 s a step on 2 busy cores, against 1.1 s
at 16-128. Nothing here is tuned to a result. The head returns logits by default
(``output_activation=None``), its bias at the foreground prior, in float32.
"""

from __future__ import annotations

import keras
from keras import layers

from lungkit.models.blocks import (
    check_divisible_input,
    conv_block,
    resolve_config,
    segmentation_head,
    upsample,
)

MODEL_NAME = "cnn_from_scratch"

CONFIGS = {
    "tiny": {
        "input_shape": (32, 32, 1),
        "filters": (4, 8),
        "skip_connections": False,
        "output_activation": None,
    },
    "small": {
        "input_shape": (128, 128, 1),
        "filters": (8, 16, 32, 64),
        "skip_connections": False,
        "output_activation": None,
    },
    "paper": {
        "input_shape": (256, 256, 1),
        "filters": (32, 64, 128, 256),
        "skip_connections": False,
        "output_activation": None,
    },
}

# Measured with this builder at CONFIGS["paper"] (256 x 256 x 1 -> 1 channel), Keras' way of counting
# (BatchNorm moving statistics included); tests/test_cnn_from_scratch.py checks it against a hand count.
PAPER_PARAM_COUNT = 1_735_713


def build_cnn_from_scratch(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build the plain encoder-decoder baseline.

    Args:
        scale: ``tiny`` (tests), ``small`` (CPU runs) or ``paper``.
        input_shape: (height, width, channels), sides multiples of ``2**len(filters)``; the config's when None.
        **overrides: settings of ``CONFIGS[scale]``: ``filters`` (channels per level, fine to coarse; the last
            level is the bottleneck and is not pooled), ``skip_connections`` (False: plain encoder-decoder),
            ``output_activation`` (None / ``"linear"`` for logits, or ``"sigmoid"``).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, C) -> (N, H, W, 1), float32 output.

    Raises:
        ValueError: unknown scale or setting, fewer than two levels, or sides not divisible by the poolings.
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    filters = tuple(int(f) for f in config["filters"])
    if len(filters) < 2:
        raise ValueError(f"{MODEL_NAME}: filters needs at least two levels (one pooling), got {filters}")
    poolings = len(filters) - 1
    check_divisible_input(config["input_shape"], poolings, MODEL_NAME)

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x = inputs
    skips = []
    for level, level_filters in enumerate(filters[:-1], start=1):
        x = conv_block(x, level_filters, batch_norm=True, name=f"encoder_{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"encoder_{level}_pool")(x)
    x = conv_block(x, filters[-1], batch_norm=True, name="bottleneck")
    for level in range(poolings, 0, -1):
        level_filters = filters[level - 1]
        x = upsample(x, level_filters, name=f"decoder_{level}_up", mode="transpose")
        if config["skip_connections"]:
            x = layers.Concatenate(name=f"decoder_{level}_concat")([x, skips[level - 1]])
        x = conv_block(x, level_filters, batch_norm=True, name=f"decoder_{level}")
    outputs = segmentation_head(x, activation=config["output_activation"])
    return keras.Model(inputs, outputs, name=MODEL_NAME)
