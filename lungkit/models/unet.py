"""U-Net as paper 004 describes it (the "Traditional U-Net" baseline of its Tables 2-4).

Paper 004, "U-Net Architecture": each encoder block is two 3x3 convolutions, each followed by a ReLU, and a 2x2
max-pool (its eq. 2); the decoder uses transposed convolutions ("up-convolutions", followed by a ReLU in its eq. 3)
and concatenates the encoder features; the output is one channel at the input resolution. The paper gives no
widths, so ``paper`` scale uses the classic Ronneberger et al. widths (64 ... 1024, four poolings) at the paper's
256x256 single-channel input: about 31.0 M parameters.

Output: ``output_activation="sigmoid"`` (default) makes the model return tumour probabilities in [0, 1], to be
trained with a loss built with ``from_logits=False``; ``output_activation=None`` returns logits, for recipes
with ``from_logits=True`` (numerically safer with BCE / focal losses). Either way the head computes in float32.
"""

from __future__ import annotations

import keras

from lungkit.models.blocks import (
    check_divisible_input,
    decoder_step,
    resolve_config,
    segmentation_head,
    unet_encoder,
)

CONFIGS = {
    # a few thousand parameters: for unit tests only
    "tiny": {
        "input_shape": (32, 32, 1),
        "base_filters": 4,
        "depth": 2,
        "batch_norm": False,
        "residual": False,
        "up_activation": "relu",
        "output_activation": "sigmoid",
    },
    # ~1.9 M parameters, trains in minutes on a CPU at 128 px. BatchNorm is added (the paper's blocks have none)
    # because it makes the few CPU epochs of the quick profile converge reliably; the protocol records the scale.
    "small": {
        "input_shape": (128, 128, 1),
        "base_filters": 16,
        "depth": 4,
        "batch_norm": True,
        "residual": False,
        "up_activation": "relu",
        "output_activation": "sigmoid",
    },
    # the paper's description with the classic widths: 64-128-256-512, bottleneck 1024, 256x256x1 input
    "paper": {
        "input_shape": (256, 256, 1),
        "base_filters": 64,
        "depth": 4,
        "batch_norm": False,
        "residual": False,
        "up_activation": "relu",
        "output_activation": "sigmoid",
    },
}


def build_unet(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build paper 004's U-Net.

    Args:
        scale: ``tiny``, ``small`` or ``paper`` (see ``CONFIGS``).
        input_shape: (height, width, channels); height and width must be multiples of ``2**depth`` (or None).
        **overrides: single settings of the config:
            ``base_filters`` (channels of the first level, doubled at each pooling),
            ``depth`` (number of poolings), ``batch_norm``, ``residual`` (residual conv blocks),
            ``up_activation`` (activation of the transposed convolutions; paper: "relu"),
            ``output_activation`` ("sigmoid" -> probabilities; None or "linear" -> logits).

    Returns:
        An uncompiled ``keras.Model`` named ``unet`` mapping (N, H, W, C) to (N, H, W, 1).

    Raises:
        ValueError: unknown scale or setting, or an input size not divisible by ``2**depth``.
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, "unet")
    depth, base = int(config["depth"]), int(config["base_filters"])
    check_divisible_input(config["input_shape"], depth, "unet")
    conv_kwargs = {"batch_norm": config["batch_norm"], "residual": config["residual"]}

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x, skips = unet_encoder(inputs, depth, base, **conv_kwargs)
    for level in range(depth, 0, -1):
        x = decoder_step(
            x,
            skips[level - 1],
            base * 2 ** (level - 1),
            name=f"decoder_{level}",
            up_activation=config["up_activation"],
            **conv_kwargs,
        )
    outputs = segmentation_head(x, activation=config["output_activation"])
    return keras.Model(inputs, outputs, name="unet")
