"""Swin-UNet (Cao et al., ECCV-W 2022): a U-shaped pure transformer, in Keras 3.

Paper 001 trains it at 224x224 with patch 4 and embedding 96 (Adam, lr 0.005, BCE). The architecture follows
the authors' code (HuCaoFighting/Swin-Unet, ``swin_transformer_unet_skip_expand_decoder_sys.py``), re-written
with ``keras.layers`` / ``keras.ops`` (the tf.keras Swin ports do not run under Keras 3):

- patch partition + linear embedding: a 4x4 stride-4 convolution to C = 96 channels, LayerNorm;
- encoder stages at token grids 56, 28, 14, 7 (224 input), each ``depth`` Swin blocks that alternate window
  attention (W-MSA) and shifted-window attention (SW-MSA, cyclic shift by window // 2 with ``keras.ops.roll`` and
  the mask that keeps wrapped-around regions apart), every attention with a learned relative position bias
  (a (2W-1)^2 x heads table indexed by :func:`relative_position_index`); patch merging (2x2 neighbours
  concatenated -> LayerNorm -> linear 4C -> 2C) between stages; LayerNorm after the bottleneck;
- the symmetric decoder: patch expanding (linear C -> 2C, 2x2 pixel shuffle -> C/2, LayerNorm), skip connection
  (concatenate, linear 2C -> C), Swin blocks; LayerNorm; a final x4 patch expanding (linear C -> 16C, 4x4 pixel
  shuffle -> C, LayerNorm) and a 1x1 convolution without bias to the output channels.

Where a stage's grid is not larger than the window (7x7 at 224 input), the window shrinks to the grid and the
block does not shift, exactly as the reference does.

Two details of the reference code that its paper figure does not show, both kept here:

- **Skips are stage inputs.** ``forward_features`` stores each stage's *input* (the patch embedding for the
  56x56 skip, the patch-merging outputs for 28 and 14), not the stage's output after its Swin blocks.
- **Decoder depths.** The reference yaml lists ``DECODER_DEPTHS: [2, 2, 2, 1]``, but ``SwinTransformerSys``
  never reads that list: its decoder stages at 14, 28 and 56 use the *encoder* depths (2, 2, 2) and the encoder's
  drop-path rates. The published 27.17M parameters are this effective configuration (see below), so lungkit's
  ``decoder_depths`` (one entry per decoder stage, in decoding order 14 -> 28 -> 56) defaults to (2, 2, 2).

Parameter count. Cao et al. report 27.17M for Swin-UNet (Synapse: 3 input channels, 9 classes). This builder
with ``input_shape=(224, 224, 3), num_classes=9`` gives 27,168,900 = 27.17M, parameter for parameter the reference
inventory (``tests/test_swin_unet.py`` checks it against an independent count). The lungkit paper configuration
has one input channel (CT), one output channel and a bias on the head: 27,165,061 (``PAPER_PARAM_COUNT``); the
3,840 fewer are the patch-embedding kernel (2 x 16 x 96) and the head (8 x 96), the one more is the head's bias.
The relative position index and the shift masks are constants, not weights, as the reference's buffers are.

Head bias (``head_bias=True``, one parameter the reference does not have). The reference's bias-free 1x1 head was
made for 9-class softmax on Synapse. With one sigmoid channel and BCE on slices where the tumour is ~0.15% of the
pixels, a bias-free head has to push the base rate (logit ~ -6.6) through the LayerNorm-ed features themselves. In
our quick CPU runs the bias-free model sat at the base-rate loss (an empty prediction) for all 400 steps; the
bias, started at the foreground prior (``blocks.FOREGROUND_PRIOR``), spares the features from encoding the base
rate. It was not enough on its own: at the paper's Adam lr 0.005 the small model still learned nothing, which is
why the quick profile departs to lr 5e-4 (paper 001's recipe notes give the measurements).
``head_bias=False`` rebuilds the reference exactly.

Drop path 0.2 follows the reference config (linearly increasing over the encoder blocks, re-used by the
mirrored decoder stages).

Pretrained start (``weights``: a local keras-hub Swin Transformer preset folder, e.g. ``swin_tiny_patch4_window7_224``).
Cao et al. train from ImageNet Swin-T weights: their ``load_from`` copies the checkpoint's encoder into the encoder
and mirrors each encoder stage into the decoder stage at the same resolution (``layers.k`` -> ``layers_up.(3-k)``),
skipping every tensor whose name or shape has no counterpart (Swin-T's blocks 2-5 of stage 3, the patch merging
weights against the decoder's patch expanding). :func:`load_swin_preset` does the same from the keras-hub port of
those weights: patch embedding (its 3-channel kernel summed over the channels for a CT slice, which is what the
reference's ``x.repeat(1, 3, 1, 1)`` of a grey input computes), every encoder block, patch merging and the encoder
norm, then the decoder blocks from the encoder stage they mirror. Nothing else is touched: the skip linears,
patch expanding, the decoder norm and the head keep their fresh initialisation, as in the reference. A window size
other than the preset's gets its relative position bias tables resized bicubically (as Swin's own code does when
it fine-tunes at another window). lungkit never downloads the preset (:data:`SWIN_PRESET_HELP`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from lungkit.models.blocks import prior_bias_initializer, resolve_config
from lungkit.models.local_weights import STATUS_ATTRIBUTE, file_digest, weights_status
from lungkit.models.vit_blocks import (
    MultiHeadSelfAttention,
    PatchEmbedding,
    TransformerMLP,
    layer_norm,
    linear_initializer,
    stochastic_depth,
)

MODEL_NAME = "swin_unet"

CONFIGS = {
    # For tests: three stages on a 32x32 input (token grids 8, 4, 2); window 4 so the first encoder and the last
    # decoder stage run shifted windows with a real mask, the others exercise "window >= grid".
    "tiny": {
        "input_shape": (32, 32, 1),
        "patch_size": 4,
        "embed_dim": 16,
        "depths": (2, 2, 2),
        "decoder_depths": (2, 2),
        "num_heads": (1, 2, 4),
        "window_size": 4,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "num_classes": 1,
        "head_bias": True,
        "output_activation": "sigmoid",
        "weights": None,
    },
    # CPU-trainable: the paper's layout at half width on 128x128 (grids 32, 16, 8, 4). Window 4 keeps 8x8
    # windows on the first grid, as window 7 does on the paper's 56x56 grid.
    "small": {
        "input_shape": (128, 128, 1),
        "patch_size": 4,
        "embed_dim": 48,
        "depths": (2, 2, 2, 2),
        "decoder_depths": (2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 4,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "drop_path_rate": 0.1,
        "num_classes": 1,
        "head_bias": True,
        "output_activation": "sigmoid",
        "weights": None,
    },
    # Paper 001 / Cao et al.: 224 input, patch 4, C = 96, window 7, depths 2-2-2-2, heads 3-6-12-24, drop path 0.2.
    "paper": {
        "input_shape": (224, 224, 1),
        "patch_size": 4,
        "embed_dim": 96,
        "depths": (2, 2, 2, 2),
        "decoder_depths": (2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "drop_path_rate": 0.2,
        "num_classes": 1,
        "head_bias": True,
        "output_activation": "sigmoid",
        "weights": None,
    },
}

# Measured with this builder at CONFIGS["paper"] (224x224x1 -> 1 channel, with the head's one bias).
PAPER_PARAM_COUNT = 27_165_061
# Cao et al. (Swin-Unet, Table 1 / README): 27.17M, for 3 input channels and 9 Synapse classes; this builder
# reproduces it exactly with input_shape=(224, 224, 3), num_classes=9, head_bias=False.
REFERENCE_PARAM_COUNT = 27_168_900
REFERENCE_PARAM_SOURCE = "Cao et al. 2022, Swin-Unet: 27.17M params (224x224x3 input, 9 classes)"
#: The difference between PAPER_PARAM_COUNT and REFERENCE_PARAM_COUNT, in words.
PARAM_GAP = (
    "-3,840 for one input channel instead of 3 (patch embedding) and one class instead of 9 (head); +1 for the head's "
    "bias (absent in the reference; head_bias=False rebuilds it: 27,168,900 = 27.17M exactly)"
)

# The reference fills masked attention scores with -100 rather than -inf: exp(-100) is 0 in float32 and the
# softmax never sees a row that is entirely -inf.
MASK_VALUE = -100.0


def window_partition(x, window_size: int):
    """Cut a feature grid into non-overlapping square windows.

    Args:
        x: tensor or array (N, H, W, C); H and W must be multiples of ``window_size``.
        window_size: window side W.

    Returns:
        Tensor (N * H/W * W/W, W, W, C), windows in row-major order per image, images one after another.
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    x = ops.reshape(x, (-1, height // window_size, window_size, width // window_size, window_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, window_size, window_size, channels))


def window_reverse(windows, window_size: int, height: int, width: int):
    """Inverse of :func:`window_partition`.

    Args:
        windows: tensor or array (N * nW, W, W, C).
        window_size: window side W.
        height: H of the grid the windows came from.
        width: W of the grid the windows came from.

    Returns:
        Tensor (N, H, W, C).
    """
    channels = windows.shape[-1]
    x = ops.reshape(windows, (-1, height // window_size, width // window_size, window_size, window_size, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height, width, channels))


def relative_position_index(window_size: int) -> np.ndarray:
    """Index into the (2W-1)^2 relative position bias table for every pair of tokens in a window.

    For tokens i, j at (row, col) positions p_i, p_j of a W x W window, the offset d = p_i - p_j has both
    components in [-(W-1), W-1]; shifted to [0, 2W-2] it addresses row-major cell
    ``(d_row + W - 1) * (2W - 1) + (d_col + W - 1)`` of the table. Pairs with the same offset share a bias.

    Args:
        window_size: window side W.

    Returns:
        int64 array (W*W, W*W).
    """
    rows, cols = np.meshgrid(np.arange(window_size), np.arange(window_size), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()])  # (2, W*W)
    offsets = coords[:, :, None] - coords[:, None, :]  # (2, W*W, W*W)
    offsets = offsets + (window_size - 1)
    return (offsets[0] * (2 * window_size - 1) + offsets[1]).astype(np.int64)


def shifted_window_attention_mask(height: int, width: int, window_size: int, shift_size: int) -> np.ndarray:
    """Additive attention mask for shifted-window attention on an H x W grid.

    After the grid is rolled by ``-shift_size`` along both axes, the last window row and column hold tokens that
    were far apart before the roll (the wrapped-around border next to the grid's interior). The grid is cut into
    three bands per axis, [0, H-W), [H-W, H-shift), [H-shift, H); tokens of one window may attend to each other
    only when they lie in the same band along both axes.

    Args:
        height: grid height H (a multiple of ``window_size``).
        width: grid width W (a multiple of ``window_size``).
        window_size: window side.
        shift_size: cyclic shift, 0 < shift < window (0 returns an all-zero mask).

    Returns:
        float32 array (nW, W*W, W*W): 0 where attention is allowed, -100 where it is blocked.
    """
    if height % window_size or width % window_size:
        raise ValueError(f"grid {height}x{width} is not a multiple of window {window_size}")
    if not 0 <= shift_size < window_size:
        raise ValueError(f"shift {shift_size} must be in [0, window {window_size})")
    region = np.zeros((1, height, width, 1), dtype=np.float32)
    if shift_size > 0:
        bands = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
        label = 0
        for row_band in bands:
            for col_band in bands:
                region[:, row_band, col_band, :] = label
                label += 1
    region_windows = ops.convert_to_numpy(window_partition(region, window_size)).reshape(-1, window_size**2)
    different = region_windows[:, None, :] != region_windows[:, :, None]
    return np.where(different, MASK_VALUE, 0.0).astype(np.float32)


def effective_window(height: int, width: int, window_size: int, shift_size: int) -> tuple[int, int]:
    """The reference's rule for small grids: a window not smaller than the grid becomes the grid, unshifted.

    Returns:
        ``(window_size, shift_size)`` actually used on an H x W grid.
    """
    if min(height, width) <= window_size:
        return min(height, width), 0
    return window_size, shift_size


def pixel_shuffle(x, scale: int):
    """Rearrange channels into space: (N, H, W, s*s*c) -> (N, s*H, s*W, c).

    Channel order (p1, p2, c) as einops ``'b h w (p1 p2 c) -> b (h p1) (w p2) c'`` in the reference, which is
    also TensorFlow's ``depth_to_space``.
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_channels = channels // (scale * scale)
    x = ops.reshape(x, (-1, height, width, scale, scale, out_channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height * scale, width * scale, out_channels))


@keras.saving.register_keras_serializable(package="lungkit")
class WindowAttention(MultiHeadSelfAttention):
    """Window multi-head self-attention with relative position bias (and the shift mask for SW-MSA).

    Input: the windows of one or more images, (N * nW, W*W, C), in :func:`window_partition` order.

    Args:
        dim: channels C.
        num_heads: heads.
        window_size: window side W.
        grid_size: (H, W) of the grid the windows come from (sizes the shift mask).
        shift_size: the cyclic shift applied before partitioning; > 0 adds the mask.
        **kwargs: :class:`MultiHeadSelfAttention` arguments (``qkv_bias``, dropouts, ``name``).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, grid_size, shift_size: int = 0, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self.window_size = int(window_size)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.shift_size = int(shift_size)
        self.num_windows = (self.grid_size[0] // self.window_size) * (self.grid_size[1] // self.window_size)
        # Constants, like the reference's registered buffers: not weights, not counted as parameters.
        self._position_index = relative_position_index(self.window_size).reshape(-1)
        self._mask = (
            shifted_window_attention_mask(*self.grid_size, self.window_size, self.shift_size)
            if self.shift_size > 0
            else None
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table",
            shape=((2 * self.window_size - 1) ** 2, self.num_heads),
            initializer=linear_initializer(),
            trainable=True,
        )

    def relative_position_bias(self):
        """The bias added to every window's scores, (heads, W*W, W*W)."""
        tokens = self.window_size**2
        bias = ops.take(self.relative_position_bias_table, self._position_index, axis=0)
        return ops.transpose(ops.reshape(bias, (tokens, tokens, self.num_heads)), (2, 0, 1))

    def adjust_scores(self, scores):
        scores = scores + ops.cast(self.relative_position_bias(), scores.dtype)[None]
        if self._mask is None:
            return scores
        tokens = self.window_size**2
        scores = ops.reshape(scores, (-1, self.num_windows, self.num_heads, tokens, tokens))
        scores = scores + ops.cast(self._mask, scores.dtype)[None, :, None]
        return ops.reshape(scores, (-1, self.num_heads, tokens, tokens))

    def get_config(self):
        config = super().get_config()
        config.update({"window_size": self.window_size, "grid_size": self.grid_size, "shift_size": self.shift_size})
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class SwinTransformerBlock(layers.Layer):
    """One Swin transformer block on a token grid (N, H, W, C).

    ``x + DropPath(SW-MSA(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``; the attention works inside W x W windows
    of the grid rolled by ``-shift_size`` (no roll for W-MSA). On a grid not larger than the window, the window
    becomes the grid and the shift is dropped (:func:`effective_window`).

    Args:
        num_heads: heads.
        window_size: requested window side.
        shift_size: requested cyclic shift (window // 2 for the odd blocks of a stage, 0 otherwise).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias on the qkv projection.
        dropout: dropout after the attention projection and in the MLP.
        attention_dropout: dropout on the attention weights.
        drop_path: stochastic depth rate of both residual branches.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(
        self,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.window_size = int(window_size)
        self.shift_size = int(shift_size)
        self.mlp_ratio = float(mlp_ratio)
        self.qkv_bias = bool(qkv_bias)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.drop_path = float(drop_path)
        self.norm1 = layer_norm(name="norm1")
        self.norm2 = layer_norm(name="norm2")
        self.drop_path_attention = stochastic_depth(self.drop_path, rank=4, name="drop_path_attention")
        self.drop_path_mlp = stochastic_depth(self.drop_path, rank=4, name="drop_path_mlp")
        self.attention = None
        self.mlp = None

    def build(self, input_shape):
        height, width, dim = input_shape[1], input_shape[2], input_shape[3]
        if height is None or width is None:
            raise ValueError(f"{self.name}: Swin blocks need a known grid size, got {input_shape}")
        self.active_window, self.active_shift = effective_window(height, width, self.window_size, self.shift_size)
        if height % self.active_window or width % self.active_window:
            raise ValueError(
                f"{self.name}: token grid {height}x{width} is not a multiple of window {self.active_window}; "
                "choose an input size whose token grids divide by the window (e.g. 224 with window 7, 128 with 4)"
            )
        if not 0 <= self.active_shift < self.active_window:
            raise ValueError(f"{self.name}: shift {self.active_shift} must be in [0, window {self.active_window})")
        self.grid_size = (height, width)
        self.attention = WindowAttention(
            dim,
            self.num_heads,
            self.active_window,
            grid_size=self.grid_size,
            shift_size=self.active_shift,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.dropout,
            name="attention",
        )
        self.mlp = TransformerMLP(int(dim * self.mlp_ratio), dropout=self.dropout, name="mlp")
        tokens_shape = (None, self.active_window**2, dim)
        self.norm1.build(input_shape)
        self.attention.build(tokens_shape)
        self.norm2.build(input_shape)
        self.mlp.build(input_shape)

    def shifted_window_attention(self, x, training=None):
        """The attention branch without norm or residual: roll, partition, attend, reverse, roll back.

        Args:
            x: token grid (N, H, W, C) (already layer-normalised in :meth:`call`).

        Returns:
            Tensor (N, H, W, C).
        """
        height, width = self.grid_size
        window, shift = self.active_window, self.active_shift
        channels = x.shape[-1]
        if shift > 0:
            x = ops.roll(x, shift=(-shift, -shift), axis=(1, 2))
        windows = ops.reshape(window_partition(x, window), (-1, window * window, channels))
        windows = self.attention(windows, training=training)
        x = window_reverse(ops.reshape(windows, (-1, window, window, channels)), window, height, width)
        if shift > 0:
            x = ops.roll(x, shift=(shift, shift), axis=(1, 2))
        return x

    def call(self, x, training=None):
        attended = self.shifted_window_attention(self.norm1(x), training=training)
        x = x + self.drop_path_attention(attended, training=training)
        return x + self.drop_path_mlp(self.mlp(self.norm2(x), training=training), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "window_size": self.window_size,
                "shift_size": self.shift_size,
                "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "drop_path": self.drop_path,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class PatchMerging(layers.Layer):
    """Halve the grid and double the channels: 2x2 neighbours concatenated -> LayerNorm(4C) -> linear 4C -> 2C.

    The concatenation order is the reference's: (even row, even col), (odd, even), (even, odd), (odd, odd).
    """

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        if height % 2 or width % 2:
            raise ValueError(f"{self.name}: patch merging needs an even grid, got {height}x{width}")
        self.norm = layer_norm(name="norm")
        self.norm.build((None, height // 2, width // 2, 4 * channels))
        self.reduction = layers.Dense(
            2 * channels, use_bias=False, kernel_initializer=linear_initializer(), name="reduction"
        )
        self.reduction.build((None, height // 2, width // 2, 4 * channels))

    def call(self, x):
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        # (N, H/2, row parity, W/2, col parity, C) -> (N, H/2, W/2, col parity, row parity, C): flattening the last
        # three axes gives [x(0,0), x(1,0), x(0,1), x(1,1)] with (row parity, col parity), the reference's order.
        x = ops.reshape(x, (-1, height // 2, 2, width // 2, 2, channels))
        x = ops.transpose(x, (0, 1, 3, 4, 2, 5))
        x = ops.reshape(x, (-1, height // 2, width // 2, 4 * channels))
        return self.reduction(self.norm(x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] // 2, input_shape[2] // 2, 2 * input_shape[3])


@keras.saving.register_keras_serializable(package="lungkit")
class PatchExpanding(layers.Layer):
    """Grow the grid ``scale`` times: linear C -> scale^2 * out, pixel shuffle -> out channels, LayerNorm(out).

    ``scale=2, output_dim=C/2`` is the decoder's patch expanding (linear C -> 2C); ``scale=4, output_dim=C`` is the
    final x4 expanding (linear C -> 16C) of the reference.

    Args:
        scale: upsampling factor.
        output_dim: channels after the shuffle.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, scale: int, output_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.scale = int(scale)
        self.output_dim = int(output_dim)
        self.expand = layers.Dense(
            self.scale * self.scale * self.output_dim,
            use_bias=False,
            kernel_initializer=linear_initializer(),
            name="expand",
        )
        self.norm = layer_norm(name="norm")

    def build(self, input_shape):
        self.expand.build(input_shape)
        self.norm.build(self.compute_output_shape(input_shape))

    def call(self, x):
        return self.norm(pixel_shuffle(self.expand(x), self.scale))

    def compute_output_shape(self, input_shape):
        sides = [None if s is None else s * self.scale for s in input_shape[1:3]]
        return (input_shape[0], *sides, self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "output_dim": self.output_dim})
        return config


# --------------------------------------------------------------------------------------------- pretrained start
#: How to obtain ImageNet Swin weights (printed when the preset folder is missing or is not a Swin preset).
SWIN_PRESET_HELP = (
    "lungkit never downloads weights. On a machine with network access, download the keras-hub Swin Transformer "
    "preset Cao et al.'s Swin-UNet starts from (Kaggle model 'keras/swin-transformer', framework Keras, variation "
    "'swin_tiny_patch4_window7_224', ImageNet-1k): from "
    "https://www.kaggle.com/models/keras/swin-transformer/keras/swin_tiny_patch4_window7_224 (Download -> unpack the "
    "archive), or with Python: `import kagglehub; "
    "kagglehub.model_download('keras/swin-transformer/keras/swin_tiny_patch4_window7_224')`, which prints the folder "
    "it wrote. Copy that folder (config.json, model.weights.h5, metadata.json) to this machine and pass its path: "
    "`experiment.build_model(**lungkit.models.swin_unet.preset_settings(path))` builds at the preset's widths "
    "(embedding 96, heads 3-6-12-24 for Swin-T); in notebook 20 set the `swin_preset_dir` parameter."
)


def _check_preset_folder(preset_dir) -> tuple[Path, dict]:
    """The preset folder as a Path and its ``config.json`` (read once, at most 1 MiB), refusing a missing folder or
    one that is not a keras-hub Swin backbone."""
    if not isinstance(preset_dir, (str, Path)) or str(preset_dir).lower() in ("imagenet", ""):
        raise ValueError(
            f"{MODEL_NAME}: weights must be None or the path of a local keras-hub Swin preset folder, got "
            f"{preset_dir!r}. {SWIN_PRESET_HELP}"
        )
    folder = Path(preset_dir).expanduser()
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        what = "folder not found" if not folder.is_dir() else "no config.json in this folder"
        raise FileNotFoundError(f"{folder}: Swin preset {what}. {SWIN_PRESET_HELP}")
    try:
        # a preset's config.json is small; a hostile one larger than 1 MiB is not a preset
        with open(config_file, "rb") as handle:
            text = handle.read((1 << 20) + 1)
        document = json.loads(text) if len(text) <= (1 << 20) else {}
        registered = document.get("registered_name", "")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(
            f"{config_file}: not a readable keras-hub preset config ({error}). {SWIN_PRESET_HELP}") from None
    if "SwinTransformerBackbone" not in str(registered):
        raise ValueError(
            f"{config_file}: this preset holds {registered or 'an unnamed model'!s}, not a keras-hub "
            f"SwinTransformerBackbone. {SWIN_PRESET_HELP}"
        )
    return folder, document


def resize_relative_position_table(table: np.ndarray, window_size: int) -> np.ndarray:
    """A (2W'-1)^2 x heads relative position bias table resized to another window W, bicubic per head.

    Swin's own fine-tuning code does this when a checkpoint's window differs from the model's: the table is a
    (2W'-1) x (2W'-1) map of offsets per head, so it is resized as an image.
    """
    source_side = int(round(np.sqrt(table.shape[0])))
    if source_side * source_side != table.shape[0]:
        raise ValueError(f"relative position table of {table.shape[0]} rows is not a square map of offsets")
    target_side = 2 * window_size - 1
    if target_side == source_side:
        return table
    grid = np.asarray(table, np.float32).reshape(1, source_side, source_side, table.shape[1])
    resized = ops.convert_to_numpy(ops.image.resize(grid, (target_side, target_side), interpolation="bicubic"))
    return resized.reshape(target_side * target_side, table.shape[1])


def _copy_block(target: SwinTransformerBlock, source) -> None:
    """One keras-hub ``SwinTransformerBlock``'s weights into a lungkit block (same layout, see the module notes)."""
    target.norm1.set_weights(source.norm1.get_weights())
    target.norm2.set_weights(source.norm2.get_weights())
    target.attention.qkv.set_weights(source.attn.qkv.get_weights())
    target.attention.proj.set_weights(source.attn.proj.get_weights())
    table = ops.convert_to_numpy(source.attn.relative_position_bias_table)
    target.attention.relative_position_bias_table.assign(
        resize_relative_position_table(table, target.attention.window_size))
    target.mlp.fc1.set_weights(source.mlp.fc1.get_weights())
    target.mlp.fc2.set_weights(source.mlp.fc2.get_weights())


def load_swin_preset(model: keras.Model, preset_dir, config: dict) -> dict:
    """Initialise a Swin-UNet's encoder (and mirrored decoder blocks) from a local keras-hub Swin preset.

    Args:
        model: a model just built by :func:`build_swin_unet` with ``config``.
        preset_dir: folder of a keras-hub ``SwinTransformerBackbone`` preset (``config.json``, ``model.weights.h5``).
        config: the model's resolved settings.

    Returns:
        The status recorded for the protocol: ``pretrained``, ``source``, ``sha256`` (of ``model.weights.h5``),
        ``preset_config`` (the backbone's widths, depths, heads, window), ``loaded`` (what was copied) and
        ``window_resized`` (whether the bias tables were resized).

    Raises:
        FileNotFoundError: the folder or its ``config.json`` is missing (the message says what to download).
        ValueError: not a Swin preset, or widths / heads / stages / patch size / input channels that do not fit.
    """
    folder, _ = _check_preset_folder(preset_dir)
    import keras_hub

    try:
        with warnings.catch_warnings():
            # keras-hub's own layers warn while it rebuilds the backbone (a mask it drops); nothing of ours
            warnings.filterwarnings("ignore", message=".*was passed an input with a mask attached.*")
            backbone = keras_hub.models.SwinTransformerBackbone.from_preset(str(folder))
    except Exception as error:  # keras-hub's own errors for a truncated or foreign weights file
        raise ValueError(f"{folder}: the Swin preset could not be loaded ({error}). {SWIN_PRESET_HELP}") from error
    depths = tuple(config["depths"])
    preset = {
        "embed_dim": int(backbone.embed_dim),
        "depths": tuple(int(d) for d in backbone.depths),
        "num_heads": tuple(int(h) for h in backbone.num_heads),
        "window_size": int(backbone.window_size),
        "patch_size": int(backbone.patch_size),
    }
    mismatches = [
        f"{name} {config[name]!r} (preset {preset[name]!r})"
        for name in ("embed_dim", "num_heads", "patch_size")
        if tuple(np.atleast_1d(config[name])) != tuple(np.atleast_1d(preset[name]))
    ]
    if len(depths) != len(preset["depths"]) or any(d > p for d, p in zip(depths, preset["depths"])):
        mismatches.append(f"depths {depths} (preset {preset['depths']}: as many stages, none deeper)")
    if mismatches:
        raise ValueError(
            f"{MODEL_NAME}: the preset at {folder} does not fit this build: {'; '.join(mismatches)}. Build with the "
            "preset's widths (the paper scale matches Swin-T: embedding 96, heads 3-6-12-24, patch 4)."
        )
    kernel, bias = backbone.patch_embedding.proj.get_weights()
    channels = int(config["input_shape"][2])
    if channels == 1:
        kernel = kernel.sum(axis=2, keepdims=True)  # = the reference's grey slice repeated to 3 channels
    elif channels != kernel.shape[2]:
        raise ValueError(f"{MODEL_NAME}: the preset embeds {kernel.shape[2]} channels; this build takes {channels} "
                         "(1 is summed from the preset's 3)")
    embedding = model.get_layer("patch_embedding")
    embedding.projection.set_weights([kernel, bias])
    embedding.norm.set_weights(backbone.patch_embedding.norm.get_weights())
    blocks = 0
    for stage, depth in enumerate(depths):
        for block in range(depth):
            _copy_block(model.get_layer(f"encoder_stage{stage}_block{block}"), backbone.stages[stage].blocks[block])
            blocks += 1
        if stage < len(depths) - 1:
            merging = model.get_layer(f"patch_merging{stage}")
            merging.norm.set_weights(backbone.stages[stage].downsample.norm.get_weights())
            merging.reduction.set_weights(backbone.stages[stage].downsample.reduction.get_weights())
    model.get_layer("encoder_norm").set_weights(backbone.norm.get_weights())
    mirrored = 0
    # Cao et al.'s load_from: decoder stage s <- encoder stage s, block by block, where the preset has the block
    for step, stage in enumerate(range(len(depths) - 2, -1, -1)):
        for block in range(min(int(config["decoder_depths"][step]), preset["depths"][stage])):
            _copy_block(model.get_layer(f"decoder_stage{stage}_block{block}"), backbone.stages[stage].blocks[block])
            mirrored += 1
    weights_file = folder / "model.weights.h5"
    return {
        "pretrained": True,
        "source": str(folder.resolve()),
        "sha256": file_digest(weights_file, "sha256") if weights_file.is_file() else None,
        "preset_config": preset,
        "loaded": (f"patch embedding, {blocks} encoder Swin blocks, patch merging and encoder norm; {mirrored} decoder "
                   "Swin blocks mirrored from the encoder (Cao et al.'s load_from); skip linears, patch expanding, "
                   "decoder norm and head from scratch"),
        "window_resized": preset["window_size"] != int(config["window_size"]),
    }


def preset_settings(preset_dir) -> dict:
    """The build settings that start a Swin-UNet from a local keras-hub Swin preset at the preset's widths.

    ``{}`` for None or "" (from scratch), else ``{"weights": folder, "embed_dim": ..., "num_heads": ...}`` read from
    the preset's ``config.json``: pass them to the builder (``experiment.build_model(**preset_settings(folder))``).
    The other settings stay the scale's (a smaller window gets the bias tables resized); the experiment records
    all of them in the protocol.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_swin_preset`, for a missing folder or a foreign preset.
    """
    if preset_dir is None or str(preset_dir) == "":
        return {}
    folder, document = _check_preset_folder(preset_dir)
    try:
        backbone_config = document["config"]
        return {"weights": str(folder), "embed_dim": int(backbone_config["embed_dim"]),
                "num_heads": tuple(int(h) for h in backbone_config["num_heads"])}
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{folder / 'config.json'}: no usable embed_dim / num_heads in the backbone's config "
                         f"({error!r}). {SWIN_PRESET_HELP}") from None


def encoder_weights_status(model: keras.Model) -> dict:
    """What a Swin-UNet's encoder started from, for a result's protocol (the record of :func:`build_swin_unet`).

    Returns:
        ``{"pretrained": bool, "source": folder or None, "sha256": ..., ...}`` (see :func:`load_swin_preset`);
        ``{"pretrained": None, ...}`` for a model without the record (e.g. one reloaded from disk).
    """
    return weights_status(model, ("pretrained", "source", "sha256"))


def _check_config(config: dict) -> None:
    depths, heads = tuple(config["depths"]), tuple(config["num_heads"])
    num_stages = len(depths)
    if num_stages < 2 or len(heads) != num_stages:
        raise ValueError(f"{MODEL_NAME}: depths {depths} and num_heads {heads} need the same length >= 2")
    if len(tuple(config["decoder_depths"])) != num_stages - 1:
        raise ValueError(
            f"{MODEL_NAME}: decoder_depths needs {num_stages - 1} entries (decoder stages in decoding order), got "
            f"{tuple(config['decoder_depths'])}; the reference's yaml DECODER_DEPTHS [2,2,2,1] is unused by its code"
        )
    height, width = config["input_shape"][:2]
    factor = config["patch_size"] * 2 ** (num_stages - 1)
    for side_name, side in (("height", height), ("width", width)):
        if side is None or side % factor:
            raise ValueError(
                f"{MODEL_NAME}: input {side_name} {side} must be a multiple of patch_size * 2**(stages-1) = {factor}"
            )
    for stage in range(num_stages):
        grid = (height // config["patch_size"] // 2**stage, width // config["patch_size"] // 2**stage)
        window, _ = effective_window(*grid, config["window_size"], 0)
        if grid[0] % window or grid[1] % window:
            raise ValueError(
                f"{MODEL_NAME}: stage {stage} token grid {grid[0]}x{grid[1]} is not a multiple of window "
                f"{config['window_size']}; e.g. use 224 input with window 7, or 128 / 256 with window 4"
            )
        stage_dim = config["embed_dim"] * 2**stage
        if stage_dim % heads[stage]:
            raise ValueError(f"{MODEL_NAME}: stage {stage} dim {stage_dim} is not divisible by {heads[stage]} heads")


def _swin_stage(x, depth: int, num_heads: int, config: dict, drop_path_rates, name: str):
    """``depth`` Swin blocks alternating W-MSA (even blocks) and SW-MSA (odd blocks, shift = window // 2)."""
    for block in range(depth):
        x = SwinTransformerBlock(
            num_heads=num_heads,
            window_size=config["window_size"],
            shift_size=0 if block % 2 == 0 else config["window_size"] // 2,
            mlp_ratio=config["mlp_ratio"],
            qkv_bias=config["qkv_bias"],
            dropout=config["dropout"],
            attention_dropout=config["attention_dropout"],
            drop_path=float(drop_path_rates[block]),
            name=f"{name}_block{block}",
        )(x)
    return x


def build_swin_unet(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build a Swin-UNet.

    Args:
        scale: ``tiny`` (tests), ``small`` (CPU runs at 128 px) or ``paper`` (Cao et al. / paper 001 at 224 px).
        input_shape: (height, width, channels); the config's when None. Height and width must be multiples of
            ``patch_size * 2**(stages - 1)`` and every stage's token grid a multiple of the window.
        **overrides: settings of ``CONFIGS[scale]`` to change: ``patch_size``, ``embed_dim``, ``depths``,
            ``decoder_depths`` (decoding order, one per decoder stage), ``num_heads``, ``window_size``,
            ``mlp_ratio``, ``qkv_bias``, ``dropout``, ``attention_dropout``, ``drop_path_rate``, ``num_classes``,
            ``head_bias`` (a bias on the 1x1 head, started at the foreground prior; False as in the reference),
            ``output_activation`` (``"sigmoid"``, or None / ``"linear"`` for logits), ``weights`` (None: from
            scratch; or a local keras-hub Swin preset folder, :func:`load_swin_preset`).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, channels) -> (N, H, W, num_classes), float32 output, carrying what
        its encoder started from (:func:`encoder_weights_status`).

    Raises:
        ValueError: for an unknown scale or setting, or sizes that do not fit the windows; a preset that does not
            fit the build.
        FileNotFoundError: ``weights`` names a missing folder (the message says what to download).
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    _check_config(config)
    if config["weights"] is not None:
        _check_preset_folder(config["weights"])  # a missing folder fails before the model is built
    depths = tuple(config["depths"])
    decoder_depths = tuple(config["decoder_depths"])
    heads = tuple(config["num_heads"])
    embed_dim = config["embed_dim"]
    num_stages = len(depths)
    # Stochastic depth grows linearly over the encoder blocks; a decoder stage re-uses the rates of the encoder
    # stage it mirrors (the reference passes the same slice), repeating the last one if it is deeper.
    rates = np.linspace(0.0, config["drop_path_rate"], sum(depths))
    stage_rates = [rates[sum(depths[:stage]) : sum(depths[: stage + 1])] for stage in range(num_stages)]

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x = PatchEmbedding(embed_dim, config["patch_size"], normalize=True, name="patch_embedding")(inputs)
    x = layers.Dropout(config["dropout"], name="embedding_dropout")(x)

    skips = []
    for stage in range(num_stages):
        skips.append(x)  # the stage *input*, as in the reference's forward_features
        x = _swin_stage(x, depths[stage], heads[stage], config, stage_rates[stage], name=f"encoder_stage{stage}")
        if stage < num_stages - 1:
            x = PatchMerging(name=f"patch_merging{stage}")(x)
    x = layer_norm(name="encoder_norm")(x)

    bottleneck_dim = embed_dim * 2 ** (num_stages - 1)
    x = PatchExpanding(2, bottleneck_dim // 2, name="patch_expanding_bottleneck")(x)
    for step, stage in enumerate(range(num_stages - 2, -1, -1)):
        dim = embed_dim * 2**stage
        x = layers.Concatenate(name=f"skip_concat{stage}")([x, skips[stage]])
        x = layers.Dense(dim, kernel_initializer=linear_initializer(), name=f"skip_linear{stage}")(x)
        depth = decoder_depths[step]
        mirrored = stage_rates[stage]
        decoder_rates = [mirrored[min(block, len(mirrored) - 1)] for block in range(depth)]
        x = _swin_stage(x, depth, heads[stage], config, decoder_rates, name=f"decoder_stage{stage}")
        if stage > 0:
            x = PatchExpanding(2, dim // 2, name=f"patch_expanding{stage}")(x)
    x = layer_norm(name="decoder_norm")(x)
    x = PatchExpanding(config["patch_size"], embed_dim, name="final_patch_expanding")(x)

    activation = config["output_activation"]
    head_bias = bool(config["head_bias"])
    outputs = layers.Conv2D(
        config["num_classes"],
        1,
        use_bias=head_bias,
        bias_initializer=prior_bias_initializer() if head_bias else "zeros",
        activation=None if activation == "linear" else activation,
        dtype="float32",  # keep the output float32 under mixed precision
        name="segmentation_head",
    )(x)
    model = keras.Model(inputs, outputs, name=MODEL_NAME)
    status = {"pretrained": False, "source": None, "sha256": None}
    if config["weights"] is not None:
        status = load_swin_preset(model, config["weights"], config)
    setattr(model, STATUS_ATTRIBUTE, status)
    return model
