"""Attention U-Net (paper 004's proposed model; Oktay et al., 2018, "Attention U-Net: Learning Where to Look for
the Pancreas").

The U-Net of ``unet.py`` with an additive attention gate on every skip connection (paper 004, eq. 6:
alpha_i = sigmoid(W_x^T x_i + W_g^T g_i + b)). At decoder level ``l`` the gate (:class:`AttentionGate`) takes the
encoder features ``x`` of that level and, as gating signal ``g``, the decoder's features one level coarser (the
bottleneck for the deepest level), as in Oktay et al.'s 2-D reference code; the gate strides its 2x2 theta
convolution by 2 to meet ``g`` at the coarse grid and upsamples the one-channel coefficient map bilinearly back to
the skip's resolution. Intermediate channels are half the skip's channels. The reference code's extra gating conv
on the bottleneck and its output 1x1 conv + BN ("W") are left out; the guide's and the paper's equations have
neither.

Paper 004's title says "Residual U-Net" but its method section describes plain two-conv ReLU blocks; the blocks
are plain here (``residual=False``) and ``residual=True`` is available as an override.

Gate layers are named ``attention_gate_1`` (finest level, full input resolution) to ``attention_gate_{depth}``
(coarsest); each returns ``[gated_skip, coefficients]``. :func:`attention_maps_model` turns a built (or loaded)
model into one that returns the coefficient maps, for the figure of attention maps over CT slices.
"""

from __future__ import annotations

import re

import keras

from lungkit.models import unet
from lungkit.models.blocks import (
    AttentionGate,
    check_divisible_input,
    conv_block,
    resolve_config,
    segmentation_head,
    unet_encoder,
    upsample,
)

#: The U-Net's configurations (``lungkit.models.unet.CONFIGS``), so that the two compare like for like at every
#: scale: the gates are the only difference.
CONFIGS = unet.CONFIGS

GATE_NAME_PATTERN = re.compile(r"^attention_gate_(\d+)$")


def build_attention_unet(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build the Attention U-Net.

    Args:
        scale: ``tiny``, ``small`` or ``paper`` (see ``CONFIGS``).
        input_shape: (height, width, channels); height and width must be multiples of ``2**depth`` (or None).
        **overrides: single settings: ``base_filters``, ``depth``, ``batch_norm``, ``residual``,
            ``up_activation``, ``output_activation`` ("sigmoid" -> probabilities; None or "linear" -> logits).

    Returns:
        An uncompiled ``keras.Model`` named ``attention_unet`` mapping (N, H, W, C) to (N, H, W, 1), with gate
        layers ``attention_gate_1`` .. ``attention_gate_{depth}``.

    Raises:
        ValueError: unknown scale or setting, or an input size not divisible by ``2**depth``.
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, "attention_unet")
    depth, base = int(config["depth"]), int(config["base_filters"])
    check_divisible_input(config["input_shape"], depth, "attention_unet")
    conv_kwargs = {"batch_norm": config["batch_norm"], "residual": config["residual"]}

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x, skips = unet_encoder(inputs, depth, base, **conv_kwargs)
    for level in range(depth, 0, -1):
        filters = base * 2 ** (level - 1)
        # gate the skip with the coarser decoder features *before* they are upsampled (Oktay et al.)
        gated_skip, _coefficients = AttentionGate(inter_channels=max(1, filters // 2), name=f"attention_gate_{level}")(
            [skips[level - 1], x]
        )
        x = upsample(x, filters, name=f"decoder_{level}_up", activation=config["up_activation"])
        x = keras.layers.Concatenate(axis=-1, name=f"decoder_{level}_concat")([x, gated_skip])
        x = conv_block(x, filters, name=f"decoder_{level}", **conv_kwargs)
    outputs = segmentation_head(x, activation=config["output_activation"])
    return keras.Model(inputs, outputs, name="attention_unet")


def attention_gate_layers(model: keras.Model) -> list:
    """The model's attention gates, finest level first.

    Raises:
        ValueError: when the model has no layer named ``attention_gate_<n>``.
    """
    found = []
    for layer in model.layers:
        match = GATE_NAME_PATTERN.match(layer.name)
        if match:
            found.append((int(match.group(1)), layer))
    if not found:
        raise ValueError(
            f"model {model.name!r} has no layers named 'attention_gate_<n>'; build it with build_attention_unet"
        )
    return [layer for _, layer in sorted(found, key=lambda pair: pair[0])]


def attention_maps_model(model: keras.Model) -> keras.Model:
    """A model sharing ``model``'s weights that returns the attention coefficient maps.

    Args:
        model: a model from :func:`build_attention_unet` (trained, or loaded from a ``.keras`` checkpoint).

    Returns:
        ``keras.Model`` with the same input whose output is a dict ``{"attention_gate_1": (N, H, W, 1), ...,
        "attention_gate_{depth}": (N, H / 2**(depth-1), W / 2**(depth-1), 1)}`` of coefficients in [0, 1];
        gate ``l`` is at the resolution of encoder level ``l`` (``attention_gate_1`` at the input resolution).

    Raises:
        ValueError: when the model has no attention gates.
    """
    gates = attention_gate_layers(model)
    # each gate has a single call site; output[1] is its coefficient map
    outputs = {gate.name: gate.output[1] for gate in gates}
    return keras.Model(model.inputs, outputs, name=f"{model.name}_attention_maps")
