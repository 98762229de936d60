"""Query-based transformer decoders of Mask2Former (masked attention) and MaskFormer (plain attention).

``Q`` learnable queries attend to image features and each becomes a (class, mask) pair: class logits over
C + 1 classes (the last is "no object") and a mask = the dot product of the query's mask embedding with every pixel
of the pixel decoder's mask features (1/4 of the input).

Masked attention (Mask2Former): the cross-attention of a layer only sees the pixels where the *previous*
prediction of that query is foreground (sigmoid >= 0.5), the prediction resized to the layer's feature level and
detached; a query whose previous mask is empty at that level would have nothing to attend to, so its row is opened
entirely. Keras' ``MultiHeadAttention`` takes ``attention_mask`` with **True = attend** (PyTorch's
``attn_mask`` uses True = blocked); :func:`attend_mask_from_prediction` returns the Keras convention.

Layer order follows the official code: Mask2Former layers are cross-attention -> self-attention -> FFN, each with a
residual and a post-LayerNorm, the query position embedding added to queries and the sine position + level
embedding to keys. MaskFormer layers are DETR's: self-attention -> cross-attention -> FFN.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from lungkit.models.positions import sine_position_encoding


def embedding_initializer() -> keras.initializers.Initializer:
    """N(0, 1), as PyTorch's nn.Embedding draws (Keras' "random_normal" would be N(0, 0.05)): the official queries and
    level embeddings are nn.Embedding tables.

    A new initializer per table, made when the table is: one shared instance made at import had one seed, so the
    query features and the query positions (same shape) started identical, and its seed came from whatever Python
    random state the first import saw, so two seeded builds in one process differed."""
    return keras.initializers.RandomNormal(stddev=1.0)


def attend_mask_from_prediction(mask_logits, height: int, width: int):
    """Where each query may attend at a feature level, from its previous mask prediction.

    Args:
        mask_logits: (B, Q, h, w) mask logits of the previous prediction.
        height: rows of the feature level.
        width: columns of the feature level.

    Returns:
        bool (B, Q, height * width), True = attend (Keras' convention): resized bilinearly (half-pixel centres,
        PyTorch's ``align_corners=False``), attend where sigmoid >= 0.5, no gradient, fully blocked rows opened.
    """
    logits = ops.stop_gradient(ops.cast(mask_logits, "float32"))
    batch, queries = ops.shape(logits)[0], ops.shape(logits)[1]
    images = ops.transpose(logits, (0, 2, 3, 1))  # (B, h, w, Q) for the image resize
    resized = ops.image.resize(images, (height, width), interpolation="bilinear", antialias=False)
    resized = ops.reshape(ops.transpose(resized, (0, 3, 1, 2)), (batch, queries, height * width))
    attend = resized >= 0.0  # sigmoid(x) >= 0.5  <=>  x >= 0
    return unblock_empty_rows(attend)


def unblock_empty_rows(attend):
    """Open every row of a boolean attend-mask (True = attend) that attends to nothing.

    Args:
        attend: bool (..., queries, keys).

    Returns:
        The mask with all-False rows set to all-True (a softmax over no keys is undefined).
    """
    empty_row = ops.logical_not(ops.any(attend, axis=-1, keepdims=True))
    return ops.logical_or(attend, empty_row)


def _feedforward(hidden: int, ffn_dim: int, dropout: float, name: str):
    return keras.Sequential(
        [
            layers.Dense(ffn_dim, activation="relu", name="linear1"),
            layers.Dropout(dropout),
            layers.Dense(hidden, name="linear2"),
            layers.Dropout(dropout),
        ],
        name=name,
    )


@keras.saving.register_keras_serializable(package="lungkit")
class QueryDecoderLayer(layers.Layer):
    """One decoder layer: attention blocks with residuals and post-LayerNorms, then the FFN.

    Args:
        hidden: channels of queries and features.
        num_heads: attention heads.
        ffn_dim: hidden width of the FFN.
        dropout: dropout after attention and FFN (0 in Mask2Former).
        order: ``"cross_first"`` (Mask2Former) or ``"self_first"`` (MaskFormer / DETR).
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, hidden: int, num_heads: int, ffn_dim: int, dropout: float = 0.0, order="cross_first", **kwargs):
        super().__init__(**kwargs)
        if order not in ("cross_first", "self_first"):
            raise ValueError(f"order must be 'cross_first' or 'self_first', got {order!r}")
        self.hidden, self.num_heads, self.ffn_dim, self.dropout, self.order = hidden, num_heads, ffn_dim, dropout, order
        key_dim = hidden // num_heads
        self.cross_attention = layers.MultiHeadAttention(num_heads, key_dim, dropout=dropout, name="cross_attention")
        self.self_attention = layers.MultiHeadAttention(num_heads, key_dim, dropout=dropout, name="self_attention")
        self.cross_norm = layers.LayerNormalization(epsilon=1e-5, name="cross_norm")
        self.self_norm = layers.LayerNormalization(epsilon=1e-5, name="self_norm")
        self.ffn_norm = layers.LayerNormalization(epsilon=1e-5, name="ffn_norm")
        self.ffn = _feedforward(hidden, ffn_dim, dropout, name="ffn")
        self.residual_dropout = layers.Dropout(dropout)

    def build(self, query_shape, memory_shape=None):
        memory_shape = memory_shape or query_shape
        self.cross_attention.build(query_shape, memory_shape, memory_shape)
        self.self_attention.build(query_shape, query_shape, query_shape)
        for norm in (self.cross_norm, self.self_norm, self.ffn_norm):
            norm.build(query_shape)
        self.ffn.build(query_shape)

    def _cross(self, queries, query_pos, memory, memory_pos, attend, training):
        out = self.cross_attention(
            query=queries + query_pos, value=memory, key=memory + memory_pos, attention_mask=attend, training=training
        )
        return self.cross_norm(queries + self.residual_dropout(out, training=training))

    def _self(self, queries, query_pos, training):
        with_pos = queries + query_pos
        out = self.self_attention(query=with_pos, value=queries, key=with_pos, training=training)
        return self.self_norm(queries + self.residual_dropout(out, training=training))

    def call(self, queries, memory, query_pos, memory_pos, attend=None, training=None):
        """Args: queries, query_pos (B, Q, C); memory, memory_pos (B, L, C); attend bool (B, Q, L) or None.

        Returns: the updated queries (B, Q, C).
        """
        if self.order == "cross_first":
            queries = self._cross(queries, query_pos, memory, memory_pos, attend, training)
            queries = self._self(queries, query_pos, training)
        else:
            queries = self._self(queries, query_pos, training)
            queries = self._cross(queries, query_pos, memory, memory_pos, attend, training)
        return self.ffn_norm(queries + self.ffn(queries, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, num_heads=self.num_heads, ffn_dim=self.ffn_dim, dropout=self.dropout,
                      order=self.order)
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class QueryTransformerDecoder(layers.Layer):
    """Mask2Former's multi-scale masked transformer decoder (``masked=True``) or MaskFormer's (``masked=False``).

    Inputs (channels last): a list of feature maps coarse to fine (Mask2Former: 1/32, 1/16, 1/8; MaskFormer: one
    map, 1/32) and the mask features (B, H/4, W/4, mask_dim).

    Args:
        num_queries: Q (100).
        num_classes: C real classes (1, tumour).
        hidden: query and feature channels (256).
        num_heads: attention heads (8).
        ffn_dim: FFN width (2048).
        num_layers: decoder layers (Mask2Former 9 = 3 rounds over 3 levels; MaskFormer 6).
        mask_dim: channels of the mask features and the mask embedding (256).
        dropout: 0 in Mask2Former, 0.1 in MaskFormer.
        masked: masked attention cycling over the levels (Mask2Former) or plain attention on one map with zero
            initial queries (MaskFormer).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call returns:
        ``(class_logits, mask_logits)`` float32, stacked over the predictions: (S, B, Q, C + 1) and
        (S, B, Q, H/4, W/4), S = ``num_layers + 1`` for Mask2Former (one before the first layer) and ``num_layers``
        for MaskFormer (after each layer, its deep supervision); with ``return_attend=True`` also the list of the
        bool attend-masks each layer used (Mask2Former only).
    """

    def __init__(self, num_queries=100, num_classes=1, hidden=256, num_heads=8, ffn_dim=2048, num_layers=9,
                 mask_dim=256, dropout=0.0, masked=True, **kwargs):
        super().__init__(**kwargs)
        self.num_queries, self.num_classes, self.hidden = int(num_queries), int(num_classes), int(hidden)
        self.num_heads, self.ffn_dim, self.num_layers = int(num_heads), int(ffn_dim), int(num_layers)
        self.mask_dim, self.dropout, self.masked = int(mask_dim), float(dropout), bool(masked)
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden {hidden} must be divisible by num_heads {num_heads}")
        order = "cross_first" if self.masked else "self_first"
        self.decoder_layers = [
            QueryDecoderLayer(self.hidden, self.num_heads, self.ffn_dim, self.dropout, order=order, name=f"layer{i}")
            for i in range(self.num_layers)
        ]
        self.decoder_norm = layers.LayerNormalization(epsilon=1e-5, name="decoder_norm")
        self.class_head = layers.Dense(self.num_classes + 1, name="class_head")
        self.mask_embed = keras.Sequential(
            [layers.Dense(self.hidden, activation="relu"), layers.Dense(self.hidden, activation="relu"),
             layers.Dense(self.mask_dim)],
            name="mask_embed",
        )

    def build(self, features_shape, mask_features_shape):
        # Keras passes the shape of each call argument as <argument>_shape
        feature_shapes = features_shape
        self.num_levels = len(feature_shapes)
        self.input_projections = []
        for level, shape in enumerate(feature_shapes):
            if shape[-1] != self.hidden:
                projection = layers.Conv2D(self.hidden, 1, kernel_initializer="glorot_uniform", name=f"input_proj{level}")
                projection.build(shape)
            else:
                projection = None  # the official code skips the projection when the channels already match
            self.input_projections.append(projection)
        if self.masked:
            self.query_features = self.add_weight(
                shape=(self.num_queries, self.hidden), initializer=embedding_initializer(), name="query_features"
            )
            self.level_embedding = self.add_weight(
                shape=(self.num_levels, self.hidden), initializer=embedding_initializer(), name="level_embedding"
            )
        self.query_positions = self.add_weight(
            shape=(self.num_queries, self.hidden), initializer=embedding_initializer(), name="query_positions"
        )
        query_shape = (None, self.num_queries, self.hidden)
        for layer in self.decoder_layers:
            layer.build(query_shape, (None, None, self.hidden))
        self.decoder_norm.build(query_shape)
        self.class_head.build(query_shape)
        self.mask_embed.build(query_shape)

    def predict_heads(self, queries, mask_features):
        """Class logits (B, Q, C + 1) and mask logits (B, Q, h, w) of the current queries (both float32)."""
        normed = self.decoder_norm(queries)
        class_logits = ops.cast(self.class_head(normed), "float32")
        embedding = self.mask_embed(normed)
        mask_logits = ops.einsum("bqc,bhwc->bqhw", embedding, ops.cast(mask_features, embedding.dtype))
        return class_logits, ops.cast(mask_logits, "float32")

    def call(self, features, mask_features, training=None, return_attend=False):
        batch = ops.shape(mask_features)[0]
        memories, memory_positions, sizes = [], [], []
        for level, feature in enumerate(features):
            height, width = feature.shape[1], feature.shape[2]
            if height is None or width is None:
                raise ValueError("the query decoder needs feature maps of known size (a fixed model input shape)")
            if self.input_projections[level] is not None:
                feature = self.input_projections[level](feature)
            memory = ops.reshape(feature, (batch, height * width, self.hidden))
            if self.masked:
                memory = memory + ops.cast(self.level_embedding[level], memory.dtype)
            position = sine_position_encoding(height, width, self.hidden // 2).reshape(1, height * width, self.hidden)
            memories.append(memory)
            memory_positions.append(ops.cast(ops.convert_to_tensor(position), memory.dtype))
            sizes.append((height, width))
        dtype = memories[0].dtype
        query_pos = ops.broadcast_to(ops.cast(self.query_positions, dtype)[None], (batch, self.num_queries, self.hidden))
        if self.masked:
            queries = ops.broadcast_to(ops.cast(self.query_features, dtype)[None], ops.shape(query_pos))
        else:
            queries = ops.zeros_like(query_pos)  # DETR / MaskFormer start from zero queries

        class_outputs, mask_outputs, attend_masks = [], [], []
        if self.masked:
            class_logits, mask_logits = self.predict_heads(queries, mask_features)
            class_outputs.append(class_logits)
            mask_outputs.append(mask_logits)
        for index, layer in enumerate(self.decoder_layers):
            level = index % self.num_levels
            attend = None
            if self.masked:
                attend = attend_mask_from_prediction(mask_outputs[-1], *sizes[level])
                attend_masks.append(attend)
            queries = layer(queries, memories[level], query_pos, memory_positions[level], attend, training=training)
            class_logits, mask_logits = self.predict_heads(queries, mask_features)
            class_outputs.append(class_logits)
            mask_outputs.append(mask_logits)
        outputs = (ops.stack(class_outputs), ops.stack(mask_outputs))
        if return_attend:
            return outputs + (attend_masks,)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            num_queries=self.num_queries, num_classes=self.num_classes, hidden=self.hidden, num_heads=self.num_heads,
            ffn_dim=self.ffn_dim, num_layers=self.num_layers, mask_dim=self.mask_dim, dropout=self.dropout,
            masked=self.masked,
        )
        return config


def semantic_probabilities(class_logits, mask_logits, output_size):
    """Tumour probability map from the last prediction (official semantic inference).

    ``sum_q softmax(class_q)[tumour] x sigmoid(mask_q)``, the masks upsampled bilinearly to the input size before
    the sigmoid, then clipped to [0, 1] (overlapping queries can sum past 1; the official map is not a probability
    either, it is only arg-maxed over classes, which a single tumour class cannot do).

    Args:
        class_logits: (B, Q, C + 1).
        mask_logits: (B, Q, h, w).
        output_size: (H, W).

    Returns:
        float32 (B, H, W, 1) for class 0 (tumour).
    """
    class_probabilities = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[..., :-1]  # (B, Q, C)
    masks = ops.transpose(ops.cast(mask_logits, "float32"), (0, 2, 3, 1))  # (B, h, w, Q)
    masks = ops.sigmoid(ops.image.resize(masks, output_size, interpolation="bilinear", antialias=False))
    semantic = ops.einsum("bqc,bhwq->bhwc", class_probabilities, masks)
    return ops.clip(semantic[..., :1], 0.0, 1.0)


def instance_predictions(class_logits, mask_logits, output_size, top_k: int = 10, score_threshold: float = 0.0):
    """Instances from the last prediction (official instance inference), in NumPy.

    Top-k (query, class) pairs by class probability; mask = upsampled logit > 0; score = class probability x the
    mean mask probability inside the mask.

    Args:
        class_logits: (B, Q, C + 1) array or tensor.
        mask_logits: (B, Q, h, w).
        output_size: (H, W).
        top_k: instances kept per image (before the score threshold).
        score_threshold: instances scoring at or below it are dropped.

    Returns:
        One list per image of ``{"mask": bool (H, W), "score": float, "class": int, "query": int}``, best first;
        empty masks are dropped.
    """
    class_probabilities = ops.convert_to_numpy(ops.softmax(ops.cast(class_logits, "float32"), axis=-1))[..., :-1]
    masks = ops.transpose(ops.cast(mask_logits, "float32"), (0, 2, 3, 1))
    masks = ops.convert_to_numpy(ops.image.resize(masks, output_size, interpolation="bilinear", antialias=False))
    results = []
    num_classes = class_probabilities.shape[-1]
    for image in range(class_probabilities.shape[0]):
        flat = class_probabilities[image].reshape(-1)
        order = np.argsort(-flat, kind="stable")[:top_k]
        instances = []
        for pair in order:
            query, klass = divmod(int(pair), num_classes)
            logits = masks[image, :, :, query]
            binary = logits > 0
            if not binary.any():
                continue
            mask_score = float((1.0 / (1.0 + np.exp(-logits[binary]))).mean())
            score = float(flat[pair]) * mask_score
            if score > score_threshold:
                instances.append({"mask": binary, "score": score, "class": klass, "query": query})
        instances.sort(key=lambda item: -item["score"])
        results.append(instances)
    return results
