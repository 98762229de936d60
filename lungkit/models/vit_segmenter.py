"""ViT segmenter for paper 000's "ViT" baseline: SETR-naive (Zheng et al., CVPR 2021) in Keras 3.

Paper 000 compares Mask2Former with "Vision Transformer (ViT)" without saying how a ViT segments. lungkit builds
SETR-naive rather than Segmenter because it is the plainest ViT segmentation model (a ViT, a two-layer 1x1 head,
bilinear upsampling): it isolates what the transformer encoder alone achieves, it predicts one probability per
pixel so it trains with the kit's ordinary losses and metrics, and its only decoder idea, query-based mask
classification, is what the MaskFormer row already covers (Segmenter's mask transformer is that idea again).

- **Encoder**: ViT-B/16 from the kit's blocks (:mod:`lungkit.models.vit_blocks`, as UNETR): 16x16 patches by a
  stride-16 conv, learnable position embedding (no class token: SETR drops it), 12 pre-LN blocks (hidden 768,
  12 heads, MLP 3072, exact GELU, qkv bias as the original ViT), final LayerNorm.
- **Head (SETR-naive)**: the token grid (1/16) -> 1x1 conv (256, BatchNorm, ReLU) -> 1x1 conv to one channel ->
  bilinear x16 upsampling. SETR's auxiliary heads (deep supervision on intermediate blocks) are left out: the kit's
  training layer fits one output.
- **Weights**: from scratch (ImageNet-21k ViT weights would come from keras-hub presets, which lungkit does not
  download); recorded in the protocol like the other from-scratch encoders.
- Inputs: 1 (CT) or 2 (CT + PET) channels, sides multiples of 16.
"""

from __future__ import annotations

import keras
from keras import layers

from lungkit.models.blocks import prior_bias_initializer, resolve_config
from lungkit.models.vit_blocks import PatchEmbedding, PositionEmbedding, TransformerEncoderBlock, layer_norm

MODEL_NAME = "vit_segmenter"
PATCH_SIZE = 16

CONFIGS = {
    "tiny": {
        "input_shape": (64, 64, 2),
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_dim": 64,
        "head_channels": 16,
        "qkv_bias": True,
        "dropout": 0.0,
        "output_activation": "sigmoid",
    },
    "small": {
        "input_shape": (128, 128, 2),
        "hidden_size": 192,
        "num_layers": 6,
        "num_heads": 3,
        "mlp_dim": 768,
        "head_channels": 256,
        "qkv_bias": True,
        "dropout": 0.0,
        "output_activation": "sigmoid",
    },
    # ViT-B/16 at paper 000's 512 px (a 32 x 32 token grid).
    "paper": {
        "input_shape": (512, 512, 2),
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "mlp_dim": 3072,
        "head_channels": 256,
        "qkv_bias": True,
        "dropout": 0.0,
        "output_activation": "sigmoid",
    },
}

# Measured with this builder at CONFIGS["paper"] (512 x 512 x 2 -> 1 channel); tests/test_vit_segmenter.py checks
# it against a module inventory: ViT-B/16 blocks 85,054,464 (ViT-B/16's "86M" less its class token, 224-px position
# table and classifier), patch embedding 393,984 (2 input channels), 1,024-token position table 786,432, final
# LayerNorm 1,536, SETR-naive head 197,889 (+512 BatchNorm moving statistics that Keras counts as weights).
PAPER_PARAM_COUNT = 86_434_305


def build_vit_segmenter(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build a SETR-naive ViT segmenter.

    Args:
        scale: ``tiny`` (tests), ``small`` (ViT-Tiny width, 6 blocks, 128 px) or ``paper`` (ViT-B/16, 512 px).
        input_shape: (height, width, channels), sides multiples of 16.
        **overrides: settings of ``CONFIGS[scale]``: ``hidden_size``, ``num_layers``, ``num_heads``, ``mlp_dim``,
            ``head_channels``, ``qkv_bias``, ``dropout``, ``output_activation`` (``"sigmoid"``, or None /
            ``"linear"`` for logits).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, C) -> (N, H, W, 1), float32 output.

    Raises:
        ValueError: unknown scale or setting, sides not multiples of 16, hidden size not divisible by the heads.
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    height, width, _ = config["input_shape"]
    for side_name, side in (("height", height), ("width", width)):
        if side is None or side % PATCH_SIZE:
            raise ValueError(f"{MODEL_NAME}: input {side_name} {side} must be a multiple of the patch size {PATCH_SIZE}")
    hidden = config["hidden_size"]
    if hidden % config["num_heads"]:
        raise ValueError(f"{MODEL_NAME}: hidden_size {hidden} not divisible by {config['num_heads']} heads")
    grid = (height // PATCH_SIZE, width // PATCH_SIZE)

    inputs = keras.Input(shape=config["input_shape"], name="image")
    tokens = PatchEmbedding(hidden, PATCH_SIZE, normalize=False, name="patch_embedding")(inputs)
    tokens = layers.Reshape((grid[0] * grid[1], hidden), name="tokens")(tokens)
    tokens = PositionEmbedding(name="position_embedding")(tokens)
    tokens = layers.Dropout(config["dropout"], name="embedding_dropout")(tokens)
    for index in range(1, config["num_layers"] + 1):
        tokens = TransformerEncoderBlock(
            num_heads=config["num_heads"], mlp_units=config["mlp_dim"], qkv_bias=config["qkv_bias"],
            dropout=config["dropout"], name=f"transformer_block{index}",
        )(tokens)
    tokens = layer_norm(name="encoder_norm")(tokens)
    x = layers.Reshape((grid[0], grid[1], hidden), name="token_grid")(tokens)
    x = layers.Conv2D(config["head_channels"], 1, use_bias=False, name="head_conv1")(x)
    x = layers.ReLU(name="head_relu")(layers.BatchNormalization(name="head_norm")(x))
    activation = config["output_activation"]
    x = layers.Conv2D(1, 1, bias_initializer=prior_bias_initializer(), name="head_conv2")(x)
    # upsample the logits, then the activation (bilinear interpolation of probabilities would blur the threshold)
    x = layers.Resizing(height, width, interpolation="bilinear", name="upsample_x16")(x)
    outputs = layers.Activation(
        "linear" if activation in (None, "linear") else activation, dtype="float32", name="segmentation_head"
    )(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)
