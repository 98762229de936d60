"""Mask2Former's default pixel decoder: multi-scale deformable attention (Zhu et al., Deformable DETR) + FPN.

Official ``MSDeformAttnPixelDecoder``: C3-C5 (1/8, 1/16, 1/32) are projected to 256 channels (1x1 conv +
GroupNorm), flattened into one token sequence (coarse level first) and refined by 6 encoder layers of multi-scale
deformable self-attention (8 heads, 4 points per level and head, FFN 1024, post-norm, dropout 0); an FPN step adds
C2 (lateral 1x1 + bilinear upsampling of the 1/8 output, 3x3 output conv) and a 1x1 conv makes the 1/4 mask
features. The three refined levels (1/32, 1/16, 1/8) feed the transformer decoder.

Deformable attention: each token (query) has a reference point (its own normalised position, the same on every
level) and predicts, per head, level and point, an offset (in pixels of that level) and a weight (softmax over the
levels x points of a head); the output is the weighted sum of the value map bilinearly sampled at reference +
offset. The official code samples with a CUDA kernel or ``grid_sample``; here sampling is
:func:`lungkit.models.point_sampling.point_sample` (a gather of the four neighbours, zero padding), so it runs on
any device without custom kernels.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from lungkit.models.point_sampling import point_sample
from lungkit.models.positions import sine_position_encoding


def sampling_offset_bias(num_heads: int, num_levels: int, num_points: int) -> np.ndarray:
    """The official initial offsets: head h looks in direction 2 pi h / heads, point i at distance i + 1 (pixels),
    on every level; flattened in the (heads, levels, points, 2) order of the offset projection."""
    thetas = np.arange(num_heads, dtype=np.float64) * (2.0 * math.pi / num_heads)
    grid = np.stack([np.cos(thetas), np.sin(thetas)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.tile(grid[:, None, None, :], (1, num_levels, num_points, 1))
    grid = grid * np.arange(1, num_points + 1)[None, None, :, None]
    return grid.reshape(-1).astype(np.float32)


def reference_points(level_shapes) -> np.ndarray:
    """(L, 2) normalised (x, y) pixel centres of all tokens, levels in order, row-major within a level."""
    points = []
    for height, width in level_shapes:
        ys, xs = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], -1))
    return np.concatenate(points).astype(np.float32)


@keras.saving.register_keras_serializable(package="lungkit")
class MultiScaleDeformableAttention(layers.Layer):
    """Multi-scale deformable attention over a flattened multi-level token sequence.

    Args:
        dim: channels (256).
        num_heads: heads (8).
        num_levels: feature levels (3).
        num_points: sampling points per head and level (4).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call args:
        query: (B, Lq, dim) queries (tokens + positions).
        value: (B, L, dim) tokens of all levels concatenated.
        reference: (Lq, 2) or (B, Lq, 2) normalised (x, y) reference points.
        level_shapes: the (H, W) of each level, in the order of ``value`` (static).

    Returns:
        (B, Lq, dim).
    """

    def __init__(self, dim=256, num_heads=8, num_levels=3, num_points=4, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.num_levels, self.num_points = dim, num_heads, num_levels, num_points
        self.head_dim = dim // num_heads
        self.sampling_offsets = layers.Dense(
            num_heads * num_levels * num_points * 2, kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(sampling_offset_bias(num_heads, num_levels, num_points)),
            name="sampling_offsets",
        )
        self.attention_weights = layers.Dense(
            num_heads * num_levels * num_points, kernel_initializer="zeros", bias_initializer="zeros",
            name="attention_weights",
        )
        self.value_proj = layers.Dense(dim, kernel_initializer="glorot_uniform", name="value_proj")
        self.output_proj = layers.Dense(dim, kernel_initializer="glorot_uniform", name="output_proj")

    def build(self, query_shape, value_shape=None, reference_shape=None):
        self.sampling_offsets.build(query_shape)
        self.attention_weights.build(query_shape)
        self.value_proj.build(value_shape or query_shape)
        self.output_proj.build(query_shape)

    def call(self, query, value, reference, level_shapes):
        batch = ops.shape(query)[0]
        num_queries = query.shape[1]
        heads, levels, points, head_dim = self.num_heads, self.num_levels, self.num_points, self.head_dim
        values = self.value_proj(value)  # (B, L, dim)
        offsets = ops.reshape(self.sampling_offsets(query), (batch, num_queries, heads, levels, points, 2))
        weights = ops.reshape(self.attention_weights(query), (batch, num_queries, heads, levels * points))
        weights = ops.reshape(ops.softmax(ops.cast(weights, "float32"), axis=-1), (batch, num_queries, heads, levels, points))
        reference = ops.cast(ops.convert_to_tensor(reference), "float32")
        if len(reference.shape) == 2:
            reference = reference[None]
        output = 0.0
        start = 0
        for level, (height, width) in enumerate(level_shapes):
            length = height * width
            level_values = values[:, start : start + length]  # (B, HW, dim)
            start += length
            # (B, HW, heads, head_dim) -> (B * heads, head_dim, H, W): one map stack per head
            maps = ops.reshape(level_values, (batch, height, width, heads, head_dim))
            maps = ops.reshape(ops.transpose(maps, (0, 3, 4, 1, 2)), (-1, head_dim, height, width))
            normaliser = ops.convert_to_tensor(np.array([width, height], np.float32))
            locations = reference[:, :, None, None, :] + ops.cast(offsets[:, :, :, level], "float32") / normaliser
            # (B, Lq, heads, points, 2) -> (B * heads, Lq * points, 2)
            locations = ops.reshape(ops.transpose(locations, (0, 2, 1, 3, 4)), (-1, num_queries * points, 2))
            sampled = point_sample(ops.cast(maps, "float32"), locations)  # (B * heads, head_dim, Lq * points)
            sampled = ops.reshape(sampled, (batch, heads, head_dim, num_queries, points))
            level_weights = ops.transpose(weights[:, :, :, level], (0, 2, 1, 3))  # (B, heads, Lq, points)
            output = output + ops.einsum("bhdqp,bhqp->bqhd", sampled, level_weights)
        output = ops.reshape(output, (batch, num_queries, self.dim))
        return self.output_proj(ops.cast(output, query.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, num_heads=self.num_heads, num_levels=self.num_levels, num_points=self.num_points)
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class DeformableEncoder(layers.Layer):
    """The 6-layer deformable encoder over projected C3-C5 maps (given coarse first), returning refined maps.

    Args:
        dim: channels (256).
        num_layers: encoder layers (6).
        num_heads: heads (8).
        num_points: points per head and level (4).
        ffn_dim: FFN width (1024).
        dropout: dropout (0 in Mask2Former).
        num_levels: levels (3).
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, dim=256, num_layers=6, num_heads=8, num_points=4, ffn_dim=1024, dropout=0.0, num_levels=3,
                 **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_layers, self.num_heads, self.num_points = dim, num_layers, num_heads, num_points
        self.ffn_dim, self.dropout, self.num_levels = ffn_dim, dropout, num_levels
        self.attentions = [
            MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points, name=f"layer{i}_attention")
            for i in range(num_layers)
        ]
        self.norms1 = [layers.LayerNormalization(epsilon=1e-5, name=f"layer{i}_norm1") for i in range(num_layers)]
        self.norms2 = [layers.LayerNormalization(epsilon=1e-5, name=f"layer{i}_norm2") for i in range(num_layers)]
        self.linear1 = [layers.Dense(ffn_dim, activation="relu", name=f"layer{i}_linear1") for i in range(num_layers)]
        self.linear2 = [layers.Dense(dim, name=f"layer{i}_linear2") for i in range(num_layers)]
        self.drop = layers.Dropout(dropout)

    def build(self, maps_shape):
        self.level_embedding = self.add_weight(
            shape=(self.num_levels, self.dim), initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="level_embedding",
        )
        token_shape = (None, None, self.dim)
        for i in range(self.num_layers):
            self.attentions[i].build(token_shape, token_shape)
            self.norms1[i].build(token_shape)
            self.norms2[i].build(token_shape)
            self.linear1[i].build(token_shape)
            self.linear2[i].build((None, None, self.ffn_dim))

    def call(self, maps, training=None):
        batch = ops.shape(maps[0])[0]
        shapes = [(m.shape[1], m.shape[2]) for m in maps]
        tokens = ops.concatenate([ops.reshape(m, (batch, h * w, self.dim)) for m, (h, w) in zip(maps, shapes)], 1)
        positions = np.concatenate([sine_position_encoding(h, w, self.dim // 2).reshape(h * w, self.dim)
                                    for h, w in shapes])
        level_of_token = np.concatenate([np.full(h * w, level) for level, (h, w) in enumerate(shapes)])
        # under mixed precision the embedding is read in the compute dtype: add in float32, then cast once
        level_embedding = ops.cast(ops.take(self.level_embedding, level_of_token, axis=0), "float32")
        position = ops.cast(ops.convert_to_tensor(positions) + level_embedding, tokens.dtype)[None]
        reference = reference_points(shapes)
        for i in range(self.num_layers):
            attended = self.attentions[i](tokens + position, tokens, reference=reference, level_shapes=shapes)
            tokens = self.norms1[i](tokens + self.drop(attended, training=training))
            feedforward = self.linear2[i](self.drop(self.linear1[i](tokens), training=training))
            tokens = self.norms2[i](tokens + self.drop(feedforward, training=training))
        outputs, start = [], 0
        for height, width in shapes:
            outputs.append(ops.reshape(tokens[:, start : start + height * width], (batch, height, width, self.dim)))
            start += height * width
        return outputs

    def compute_output_shape(self, maps_shape):
        return [tuple(shape[:-1]) + (self.dim,) for shape in maps_shape]

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, num_layers=self.num_layers, num_heads=self.num_heads, num_points=self.num_points,
                      ffn_dim=self.ffn_dim, dropout=self.dropout, num_levels=self.num_levels)
        return config


def msdeform_pixel_decoder(features, conv_dim: int, mask_dim: int, norm_groups: int, num_layers: int = 6,
                           num_heads: int = 8, num_points: int = 4, ffn_dim: int = 1024):
    """The official ``MSDeformAttnPixelDecoder`` on [C2, C3, C4, C5].

    Args:
        features: [C2 (1/4), C3 (1/8), C4 (1/16), C5 (1/32)].
        conv_dim: channels (256).
        mask_dim: mask-feature channels (256).
        norm_groups: GroupNorm groups (32).
        num_layers: deformable encoder layers (6).
        num_heads: heads (8).
        num_points: points per head and level (4).
        ffn_dim: encoder FFN width (1024).

    Returns:
        ``(multi_scale, mask_features)``: refined 1/32, 1/16, 1/8 maps and the 1/4 mask features.
    """
    projected = []
    for level in (3, 2, 1):  # C5, C4, C3: coarse first, as the official token order
        x = layers.Conv2D(conv_dim, 1, name=f"msdeform_input_proj{level}")(features[level])
        projected.append(layers.GroupNormalization(groups=norm_groups, epsilon=1e-5,
                                                   name=f"msdeform_input_proj{level}_norm")(x))
    refined = DeformableEncoder(conv_dim, num_layers, num_heads, num_points, ffn_dim, name="msdeform_encoder")(projected)
    lateral = layers.Conv2D(conv_dim, 1, use_bias=False, name="msdeform_lateral0")(features[0])
    lateral = layers.GroupNormalization(groups=norm_groups, epsilon=1e-5, name="msdeform_lateral0_norm")(lateral)
    upsampled = layers.Resizing(lateral.shape[1], lateral.shape[2], interpolation="bilinear",
                                name="msdeform_up0")(refined[-1])
    y = layers.Conv2D(conv_dim, 3, padding="same", use_bias=False, name="msdeform_output0")(lateral + upsampled)
    y = layers.GroupNormalization(groups=norm_groups, epsilon=1e-5, name="msdeform_output0_norm")(y)
    y = layers.ReLU(name="msdeform_output0_relu")(y)
    mask_features = layers.Conv2D(mask_dim, 1, name="mask_features")(y)
    return refined, mask_features
