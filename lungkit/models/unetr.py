"""UNETR (Hatamizadeh et al., WACV 2022) for 2-D slices, in Keras 3.

UNETR is a ViT encoder with a convolutional decoder. This is the 2-D form of MONAI's ``UNETR``
(``monai/networks/nets/unetr.py`` with ``spatial_dims=2``), layer for layer:

- **Encoder**: 16x16 patches embedded by a stride-16 convolution, a learnable position embedding, 12 pre-LN
  transformer blocks (hidden 768, 12 heads, MLP 3072, exact GELU, no qkv bias: MONAI's default), a final LayerNorm.
- **Skips from four depths**: the transformer outputs z3, z6, z9 and the (normalised) final output z12 are
  reshaped to the 16x16 token grid.
- **Decoder** (feature size F = 16): z9 -> one stride-2 transposed conv (x2, 8F); z6 -> transposed conv, then one
  [transposed conv + residual block] (x4, 4F); z3 -> transposed conv, then two [transposed conv + residual block]
  (x8, 2F); the raw image -> a residual block (F). Then four steps "transposed conv x2, concatenate the skip,
  residual block" from z12 back to full resolution (8F, 4F, 2F, F) and a 1x1 convolution to the output channel.
  Residual blocks are MONAI's ``UnetResBlock``: conv3x3 -> InstanceNorm -> LeakyReLU(0.01) -> conv3x3 ->
  InstanceNorm, plus the input (1x1 conv + InstanceNorm when the channels change), LeakyReLU. Convolutions have
  no bias (MONAI's ``conv_only`` layers), the instance norms no affine parameters (``torch.nn.InstanceNorm2d``
  defaults); only the 1x1 output convolution has a bias.

Which transformer depths feed the skips. The UNETR paper (its Fig. 2 and text) takes z3, z6, z9, z12, i.e. the
outputs of blocks 3, 6 and 9 counted from 1. MONAI's implementation takes ``hidden_states_out[3]``, ``[6]``,
``[9]`` of a 0-based list, i.e. the outputs of blocks 4, 7 and 10. lungkit follows the paper (paper 001 cites the
UNETR paper and quotes its description): ``skip_layers=(3, 6, 9)``, 1-based. Pass ``skip_layers=(4, 7, 10)`` to
get MONAI's wiring; the parameter count is the same either way.

Input size. Paper 001 does not print UNETR's input size; its data are resized to 256x256 and its Swin-UNet input
(224) is stated separately, so the paper config uses 256x256x1: patches of 16 (the UNETR figure's "N = 16")
give a 16x16 token grid. Training in paper 001: SGD, lr 0.1, batch 8, 100 epochs, ReduceLROnPlateau (min 1e-7),
early stopping patience 20 (recipe data live in ``lungkit.papers``).

Parameter count. Hatamizadeh et al. report 92.58M for the 3-D UNETR (MONAI defaults, 96^3 input, 14 BTCV
classes). In 2-D every patch and decoder kernel loses one spatial factor (patch embedding 16x16 instead of 16^3
weights per channel pair, 3x3 instead of 3x3x3 decoder kernels, 2x2 instead of 2x2x2 transposed kernels) and the
position embedding covers 256 instead of 216 tokens; the 12 transformer blocks (85,026,816) do not change. The
2-D model at 256x256x1 -> 1 has 87,315,377 parameters (``PAPER_PARAM_COUNT``): 85,422,336 in the ViT (patch
embedding 197,376, position embedding 196,608, blocks 85,026,816, final LayerNorm 1,536) and 1,893,041 in the
convolutional decoder and head. ``tests/test_unetr.py`` checks it against an independent count of MONAI's 2-D
module inventory. The same inventory in 3-D gives 92,784,046, 0.2% above the published 92.58M; that gap
(probably a difference between the paper's code and today's MONAI) is not explained here.
"""

from __future__ import annotations

import keras
from keras import layers

from lungkit.models.blocks import resolve_config
from lungkit.models.vit_blocks import PatchEmbedding, PositionEmbedding, TransformerEncoderBlock, layer_norm

MODEL_NAME = "unetr"

# UNETR's decoder climbs from the 1/16 token grid to full resolution in four x2 steps.
PATCH_SIZE = 16

CONFIGS = {
    # For tests: 32x32 input -> a 2x2 token grid, 4 narrow blocks, skips from blocks 1, 2, 3.
    "tiny": {
        "input_shape": (32, 32, 1),
        "hidden_size": 32,
        "num_layers": 4,
        "num_heads": 2,
        "mlp_dim": 64,
        "skip_layers": (1, 2, 3),
        "feature_size": 4,
        "qkv_bias": False,
        "dropout": 0.0,
        "norm": "instance",
        "output_activation": "sigmoid",
    },
    # CPU-trainable at 128 px (8x8 tokens): a ViT-Tiny-width encoder, 6 blocks, skips from 2, 4, 6 (the paper's
    # "every quarter of the depth" rule).
    "small": {
        "input_shape": (128, 128, 1),
        "hidden_size": 192,
        "num_layers": 6,
        "num_heads": 3,
        "mlp_dim": 768,
        "skip_layers": (2, 4, 6),
        "feature_size": 16,
        "qkv_bias": False,
        "dropout": 0.0,
        "norm": "instance",
        "output_activation": "sigmoid",
    },
    # Hatamizadeh et al. / MONAI defaults in 2-D, at paper 001's 256x256 data size.
    "paper": {
        "input_shape": (256, 256, 1),
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "mlp_dim": 3072,
        "skip_layers": (3, 6, 9),
        "feature_size": 16,
        "qkv_bias": False,
        "dropout": 0.0,
        "norm": "instance",
        "output_activation": "sigmoid",
    },
}

# Measured with this builder at CONFIGS["paper"] (256x256x1 -> 1 channel).
PAPER_PARAM_COUNT = 87_315_377
# MONAI UNETR 3-D (Hatamizadeh et al., Table: 92.58M; MONAI defaults, 96^3 input). No published 2-D count exists;
# the 2-D figure above is checked against MONAI's module inventory in the test.
REFERENCE_PARAM_COUNT = 92_580_000
REFERENCE_PARAM_SOURCE = "Hatamizadeh et al. 2022, UNETR 3-D: 92.58M params (MONAI defaults, 96^3 input, 14 classes)"
#: The difference between PAPER_PARAM_COUNT and REFERENCE_PARAM_COUNT, in words.
PARAM_GAP = (
    "2-D instead of 3-D: patch embedding and decoder kernels lose one spatial factor; the 12 transformer blocks "
    "(85,026,816) are the same. MONAI's 3-D inventory gives 92,784,046, 0.2% above the published figure (not explained)"
)

NORMS = ("instance", "batch")


def _normalization(norm: str, name: str) -> layers.Layer:
    if norm == "instance":
        # torch.nn.InstanceNorm2d defaults: no learned scale or shift.
        return layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5, name=name)
    return layers.BatchNormalization(epsilon=1e-5, name=name)


def residual_block(x, filters: int, norm: str, name: str):
    """MONAI's ``UnetResBlock`` in 2-D (stride 1, kernel 3).

    Args:
        x: input (N, H, W, C).
        filters: output channels.
        norm: ``"instance"`` (MONAI's UNETR default) or ``"batch"``.
        name: layer-name prefix.

    Returns:
        Tensor (N, H, W, filters).
    """
    shortcut = x
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = _normalization(norm, f"{name}_norm1")(x)
    x = layers.LeakyReLU(0.01, name=f"{name}_act1")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = _normalization(norm, f"{name}_norm2")(x)
    if shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv3")(shortcut)
        shortcut = _normalization(norm, f"{name}_norm3")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.LeakyReLU(0.01, name=f"{name}_act2")(x)


def _transposed_up(x, filters: int, name: str):
    # MONAI: kernel 2, stride 2, conv_only -> no bias, no norm, no activation.
    return layers.Conv2DTranspose(filters, 2, strides=2, use_bias=False, name=name)(x)


def projection_upsampling(x, filters: int, num_layers: int, norm: str, name: str):
    """MONAI's ``UnetrPrUpBlock``: transposed conv, then ``num_layers`` x [transposed conv + residual block].

    Upsamples by ``2 ** (num_layers + 1)``.
    """
    x = _transposed_up(x, filters, f"{name}_up0")
    for index in range(1, num_layers + 1):
        x = _transposed_up(x, filters, f"{name}_up{index}")
        x = residual_block(x, filters, norm, name=f"{name}_res{index}")
    return x


def upsampling_step(x, skip, filters: int, norm: str, name: str):
    """MONAI's ``UnetrUpBlock``: transposed conv x2, concatenate the skip, residual block."""
    x = _transposed_up(x, filters, f"{name}_up")
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return residual_block(x, filters, norm, name=f"{name}_res")


def _check_config(config: dict) -> None:
    height, width, _ = config["input_shape"]
    for side_name, side in (("height", height), ("width", width)):
        if side is None or side % PATCH_SIZE:
            raise ValueError(
                f"{MODEL_NAME}: input {side_name} {side} must be a multiple of the patch size {PATCH_SIZE}"
            )
    if config["hidden_size"] % config["num_heads"]:
        raise ValueError(
            f"{MODEL_NAME}: hidden_size {config['hidden_size']} not divisible by {config['num_heads']} heads"
        )
    skips = tuple(config["skip_layers"])
    if len(skips) != 3 or not all(1 <= s <= config["num_layers"] for s in skips):
        raise ValueError(
            f"{MODEL_NAME}: skip_layers must be three block numbers in 1..num_layers={config['num_layers']} "
            f"(1-based, shallow to deep), got {skips}"
        )
    if config["norm"] not in NORMS:
        raise ValueError(f"{MODEL_NAME}: norm must be one of {NORMS}, got {config['norm']!r}")


def build_unetr(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build a 2-D UNETR.

    Args:
        scale: ``tiny`` (tests), ``small`` (CPU runs at 128 px) or ``paper`` (ViT-B/16 encoder at 256 px).
        input_shape: (height, width, channels), sides multiples of 16; the config's when None.
        **overrides: settings of ``CONFIGS[scale]``: ``hidden_size``, ``num_layers``, ``num_heads``, ``mlp_dim``,
            ``skip_layers`` (three 1-based block numbers, shallow to deep; the paper's (3, 6, 9) or MONAI's
            (4, 7, 10)), ``feature_size``, ``qkv_bias``, ``dropout``, ``norm`` (``"instance"`` | ``"batch"``),
            ``output_activation`` (``"sigmoid"``, or None / ``"linear"`` for logits).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, channels) -> (N, H, W, 1), float32 output.

    Raises:
        ValueError: for an unknown scale or setting, or an input side that is not a multiple of 16.
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    _check_config(config)
    height, width, _ = config["input_shape"]
    grid = (height // PATCH_SIZE, width // PATCH_SIZE)
    hidden = config["hidden_size"]
    features = config["feature_size"]
    norm = config["norm"]

    inputs = keras.Input(shape=config["input_shape"], name="image")
    tokens = PatchEmbedding(hidden, PATCH_SIZE, normalize=False, name="patch_embedding")(inputs)
    tokens = layers.Reshape((grid[0] * grid[1], hidden), name="tokens")(tokens)
    tokens = PositionEmbedding(name="position_embedding")(tokens)
    tokens = layers.Dropout(config["dropout"], name="embedding_dropout")(tokens)

    block_outputs = []
    for index in range(1, config["num_layers"] + 1):
        tokens = TransformerEncoderBlock(
            num_heads=config["num_heads"],
            mlp_units=config["mlp_dim"],
            qkv_bias=config["qkv_bias"],
            dropout=config["dropout"],
            name=f"transformer_block{index}",
        )(tokens)
        block_outputs.append(tokens)
    final = layer_norm(name="encoder_norm")(tokens)

    def to_grid(sequence, name):
        return layers.Reshape((grid[0], grid[1], hidden), name=name)(sequence)

    shallow, middle, deep = (block_outputs[s - 1] for s in config["skip_layers"])
    skip_full = residual_block(inputs, features, norm, name="encoder1")
    skip_half = projection_upsampling(to_grid(shallow, "z_shallow_grid"), 2 * features, 2, norm, name="encoder2")
    skip_quarter = projection_upsampling(to_grid(middle, "z_middle_grid"), 4 * features, 1, norm, name="encoder3")
    skip_eighth = projection_upsampling(to_grid(deep, "z_deep_grid"), 8 * features, 0, norm, name="encoder4")

    x = to_grid(final, "z_final_grid")
    x = upsampling_step(x, skip_eighth, 8 * features, norm, name="decoder5")
    x = upsampling_step(x, skip_quarter, 4 * features, norm, name="decoder4")
    x = upsampling_step(x, skip_half, 2 * features, norm, name="decoder3")
    x = upsampling_step(x, skip_full, features, norm, name="decoder2")

    activation = config["output_activation"]
    outputs = layers.Conv2D(
        1,
        1,
        activation=None if activation == "linear" else activation,
        dtype="float32",  # keep the output float32 under mixed precision
        name="segmentation_head",
    )(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)
