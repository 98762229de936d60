"""Transformer pieces shared by the Swin-UNet and UNETR builders.

Keras 3 layers written with ``keras.ops`` only, each with ``get_config`` and registered as serializable, so a
``.keras`` checkpoint of either model reloads once ``lungkit.models`` is imported:

- :class:`MultiHeadSelfAttention`: q/k/v from one linear layer, scaled dot product, softmax, output projection.
  The Swin window attention subclasses it and adds its relative position bias and shift mask through
  :meth:`MultiHeadSelfAttention.adjust_scores`.
- :class:`TransformerMLP`: Linear -> GELU -> Dropout -> Linear -> Dropout.
- :class:`PatchEmbedding`: non-overlapping PxP patches -> linear embedding (a stride-P convolution), optional
  LayerNorm; returns the token *grid* (N, H/P, W/P, C) because both models need the 2-D layout again.
- :class:`PositionEmbedding`: learnable absolute position embedding added to a token sequence.
- :class:`TransformerEncoderBlock`: the pre-LN ViT block (LN -> MSA -> residual, LN -> MLP -> residual) of UNETR.
- :func:`stochastic_depth`: per-sample residual-branch dropout ("drop path").

Numerical conventions follow the PyTorch reference implementations (microsoft/Swin-Transformer, MONAI ViT) so
that parameter counts and behaviour match: LayerNorm epsilon 1e-5 (Keras' default is 1e-3), exact (erf) GELU
(``keras.ops.gelu`` defaults to the tanh approximation), linear weights drawn from a truncated normal with
std 0.02 and zero biases.
"""

from __future__ import annotations

import keras
from keras import layers, ops

# PyTorch's nn.LayerNorm default; both reference implementations use it.
LAYER_NORM_EPSILON = 1e-5

# Both references initialise every Linear layer with trunc_normal_(std=0.02) and zero bias.
LINEAR_INITIALIZER_STDDEV = 0.02


def linear_initializer():
    """A fresh truncated-normal initializer, std 0.02 (one instance per layer so that seeds differ)."""
    return keras.initializers.TruncatedNormal(stddev=LINEAR_INITIALIZER_STDDEV)


def layer_norm(name: str | None = None) -> layers.LayerNormalization:
    """LayerNormalization over the channel axis with PyTorch's epsilon."""
    return layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


def stochastic_depth(rate: float, rank: int, name: str | None = None) -> layers.Layer:
    """Stochastic depth ("drop path", Huang et al. 2016) for a residual branch.

    A whole sample's branch output is zeroed with probability ``rate`` during training and the survivors are
    scaled by ``1 / (1 - rate)``, exactly timm's ``DropPath``. This is Keras' own ``Dropout`` with a noise shape
    that is 1 everywhere except the batch axis, so no custom layer is needed.

    Args:
        rate: drop probability in [0, 1).
        rank: rank of the tensors it will see, batch axis included (4 for (N, H, W, C)).
        name: layer name.

    Returns:
        A ``keras.layers.Dropout`` (identity at inference), or an ``Identity`` layer when ``rate`` is 0.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return layers.Identity(name=name)
    return layers.Dropout(rate, noise_shape=(None,) + (1,) * (rank - 1), name=name)


@keras.saving.register_keras_serializable(package="lungkit")
class MultiHeadSelfAttention(layers.Layer):
    """Multi-head self-attention over a token sequence (N, L, C).

    ``qkv`` is one Dense(3C) as in both references (MONAI's ViT has no qkv bias by default, Swin has one);
    ``proj`` is Dense(C) with bias. Scores are ``(q / sqrt(C / heads)) . k^T``, then :meth:`adjust_scores`, then a
    softmax over the keys.

    Args:
        dim: channels C of the tokens (must be divisible by ``num_heads``).
        num_heads: number of heads.
        qkv_bias: give the qkv projection a bias.
        attention_dropout: dropout on the attention weights.
        projection_dropout: dropout after the output projection.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        projection_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if dim % num_heads != 0:
            raise ValueError(f"{self.name}: dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = self.dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv_bias = bool(qkv_bias)
        self.attention_dropout = float(attention_dropout)
        self.projection_dropout = float(projection_dropout)
        self.qkv = layers.Dense(
            3 * self.dim, use_bias=self.qkv_bias, kernel_initializer=linear_initializer(), name="qkv"
        )
        self.proj = layers.Dense(self.dim, kernel_initializer=linear_initializer(), name="proj")
        self.attention_drop = layers.Dropout(self.attention_dropout, name="attention_drop")
        self.projection_drop = layers.Dropout(self.projection_dropout, name="projection_drop")

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(f"{self.name}: expected {self.dim} input channels, got shape {input_shape}")
        self.qkv.build(input_shape)
        self.proj.build(tuple(input_shape[:-1]) + (self.dim,))

    def adjust_scores(self, scores):
        """Hook for subclasses: add biases or masks to the scores (N, heads, L, L) before the softmax."""
        return scores

    def call(self, x, training=None):
        length = x.shape[1] if x.shape[1] is not None else ops.shape(x)[1]
        qkv = self.qkv(x)
        # (N, L, 3, heads, head_dim) -> (3, N, heads, L, head_dim): the channel order of the references' reshape
        qkv = ops.reshape(qkv, (-1, length, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = ops.matmul(q * ops.cast(self.scale, q.dtype), ops.transpose(k, (0, 1, 3, 2)))
        scores = self.adjust_scores(scores)
        weights = ops.softmax(scores, axis=-1)
        weights = self.attention_drop(weights, training=training)
        out = ops.matmul(weights, v)  # (N, heads, L, head_dim)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, length, self.dim))
        return self.projection_drop(self.proj(out), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "num_heads": self.num_heads,
                "qkv_bias": self.qkv_bias,
                "attention_dropout": self.attention_dropout,
                "projection_dropout": self.projection_dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class TransformerMLP(layers.Layer):
    """The transformer feed-forward block: Dense(hidden) -> exact GELU -> Dropout -> Dense(C) -> Dropout.

    Args:
        hidden_units: width of the hidden layer (4C in Swin, 3072 in ViT-B / UNETR).
        dropout: dropout rate after each Dense.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(self, hidden_units: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = int(hidden_units)
        self.dropout = float(dropout)
        self.fc1 = layers.Dense(self.hidden_units, kernel_initializer=linear_initializer(), name="fc1")
        self.fc2 = None
        self.drop = layers.Dropout(self.dropout, name="drop")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2 = layers.Dense(input_shape[-1], kernel_initializer=linear_initializer(), name="fc2")
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_units,))

    def call(self, x, training=None):
        x = ops.gelu(self.fc1(x), approximate=False)
        x = self.drop(x, training=training)
        return self.drop(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_units": self.hidden_units, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class PatchEmbedding(layers.Layer):
    """Split an image into non-overlapping PxP patches and embed each linearly.

    A convolution with kernel = stride = P is exactly "flatten every patch, multiply by one shared matrix" (the
    "linear embedding" of ViT and Swin) and is how both references implement it.

    Args:
        embed_dim: channels C of the tokens.
        patch_size: side P of the patches; the input sides must be multiples of it.
        normalize: apply LayerNorm to the tokens (Swin's ``patch_norm=True``; MONAI's ViT has none).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call returns:
        The token grid (N, H/P, W/P, C).
    """

    def __init__(self, embed_dim: int, patch_size: int, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        self.normalize = bool(normalize)
        self.projection = layers.Conv2D(
            self.embed_dim, self.patch_size, strides=self.patch_size, padding="valid", name="projection"
        )
        self.norm = layer_norm(name="norm") if self.normalize else None

    def build(self, input_shape):
        for side_name, side in zip(("height", "width"), input_shape[1:3]):
            if side is not None and side % self.patch_size != 0:
                raise ValueError(f"{self.name}: input {side_name} {side} is not a multiple of patch {self.patch_size}")
        self.projection.build(input_shape)
        if self.norm is not None:
            self.norm.build(self.compute_output_shape(input_shape))

    def call(self, x):
        x = self.projection(x)
        return self.norm(x) if self.norm is not None else x

    def compute_output_shape(self, input_shape):
        sides = [None if s is None else s // self.patch_size for s in input_shape[1:3]]
        return (input_shape[0], *sides, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"embed_dim": self.embed_dim, "patch_size": self.patch_size, "normalize": self.normalize})
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class PositionEmbedding(layers.Layer):
    """Add a learnable absolute position embedding (1, L, C) to a token sequence (N, L, C).

    Initialised from a truncated normal with std 0.02, as MONAI's ViT does.
    """

    def build(self, input_shape):
        if input_shape[1] is None:
            raise ValueError(f"{self.name}: the sequence length must be known to size the position embedding")
        self.embedding = self.add_weight(
            name="embedding",
            shape=(1, input_shape[1], input_shape[2]),
            initializer=linear_initializer(),
            trainable=True,
        )

    def call(self, x):
        return x + ops.cast(self.embedding, x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="lungkit")
class TransformerEncoderBlock(layers.Layer):
    """Pre-LN transformer encoder block (ViT / UNETR): ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``.

    Args:
        num_heads: attention heads.
        mlp_units: hidden width of the MLP.
        qkv_bias: bias on the qkv projection (MONAI's UNETR default: False).
        dropout: dropout in the MLP and after the attention projection (MONAI's ``dropout_rate``).
        attention_dropout: dropout on the attention weights.
        **kwargs: ``keras.layers.Layer`` arguments.
    """

    def __init__(
        self,
        num_heads: int,
        mlp_units: int,
        qkv_bias: bool = False,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.mlp_units = int(mlp_units)
        self.qkv_bias = bool(qkv_bias)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.norm1 = layer_norm(name="norm1")
        self.norm2 = layer_norm(name="norm2")
        self.attention = None
        self.mlp = TransformerMLP(self.mlp_units, dropout=self.dropout, name="mlp")

    def build(self, input_shape):
        dim = input_shape[-1]
        self.attention = MultiHeadSelfAttention(
            dim,
            self.num_heads,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            projection_dropout=self.dropout,
            name="attention",
        )
        self.norm1.build(input_shape)
        self.attention.build(input_shape)
        self.norm2.build(input_shape)
        self.mlp.build(input_shape)

    def call(self, x, training=None):
        x = x + self.attention(self.norm1(x), training=training)
        return x + self.mlp(self.norm2(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_units": self.mlp_units,
                "qkv_bias": self.qkv_bias,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
            }
        )
        return config
