"""Small Keras 3 building blocks shared by the segmentation models.

The U-Net family (``unet.py``, ``attention_unet.py``) is assembled from these, and the decoders of later models
(ResNet50-UNet, UNETR) can reuse :func:`conv_block` and :func:`decoder_step`. Everything uses ``keras.layers`` and
``keras.ops`` only, so the blocks run on any Keras backend; layer names are derived from a ``name`` prefix so that
a figure or a test can find a layer with ``model.get_layer(...)``.

Also here: :func:`resolve_config`, the one place where a model file's ``CONFIGS`` entry, an ``input_shape`` and
the builder's ``**overrides`` are merged and checked, so every builder rejects a misspelt setting the same way.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

# ReLU networks keep their activations' variance with He initialisation (Ronneberger et al. draw the U-Net weights
# from a Gaussian with std sqrt(2/N), which is exactly he_normal).
KERNEL_INITIALIZER = "he_normal"

OUTPUT_ACTIVATIONS = ("sigmoid", None, "linear")

#: BatchNorm momentum of the blocks: PyTorch's default (running = 0.9 running + 0.1 batch), not Keras' 0.99. The
#: kit's small profiles train a few hundred steps; with 0.99 the moving statistics still carry the first steps'
#: weights at the end, so the inference-mode model swings between checkpoints. Measured on the quick phantom (small
#: U-Net, 200 steps, seed 0): validation Dice per 40-step epoch 0.02, 0.02, 0.02, 0.34, 0.14 with 0.99 against
#: 0.17, 0.25, 0.23, 0.32, 0.36 with 0.9. The U-Net papers' blocks have no BatchNorm at all (``batch_norm=False``).
BATCH_NORM_MOMENTUM = 0.9


def resolve_config(configs: dict, scale: str, input_shape, overrides: dict, model_name: str) -> dict:
    """Merge a model file's ``CONFIGS[scale]`` with ``input_shape`` and single-setting overrides.

    Args:
        configs: the model file's ``CONFIGS`` (``tiny`` / ``small`` / ``paper`` -> settings dict).
        scale: which entry to start from.
        input_shape: (height, width, channels) or None to keep the entry's ``input_shape``.
        overrides: settings to change; every key must already exist in the entry.
        model_name: used in error messages.

    Returns:
        A new dict with the merged settings; ``input_shape`` is a tuple.

    Raises:
        ValueError: unknown scale, unknown override key, or an input shape that is not (height, width, channels).
    """
    if scale not in configs:
        raise ValueError(f"{model_name}: unknown scale {scale!r}; expected one of {sorted(configs)}")
    config = dict(configs[scale])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"{model_name}: unknown setting(s) {unknown}; settings of this model: {sorted(config)}")
    config.update(overrides)
    if input_shape is not None:
        config["input_shape"] = input_shape
    shape = tuple(config["input_shape"])
    if len(shape) != 3 or not isinstance(shape[2], int) or shape[2] < 1:
        raise ValueError(
            f"{model_name}: input_shape must be (height, width, channels) with a positive channel count, got {shape}"
        )
    config["input_shape"] = shape
    if config.get("output_activation", "sigmoid") not in OUTPUT_ACTIVATIONS:
        raise ValueError(
            f"{model_name}: output_activation must be one of {OUTPUT_ACTIVATIONS} "
            f"(None or 'linear' = logits), got {config['output_activation']!r}"
        )
    return config


def check_divisible_input(input_shape: tuple, depth: int, model_name: str) -> None:
    """Check that height and width survive ``depth`` 2x2 poolings without rounding.

    Skip concatenation needs the decoder's upsampled map and the encoder's map to have the same size, which holds
    only when each known spatial side is a multiple of ``2**depth``. ``None`` sides (any size) are not checked.

    Raises:
        ValueError: naming the side and the multiple expected.
    """
    factor = 2**depth
    for side_name, side in zip(("height", "width"), input_shape[:2]):
        if side is not None and side % factor != 0:
            raise ValueError(
                f"{model_name}: input {side_name} {side} must be a multiple of 2**depth = {factor} (depth={depth})"
            )


def conv_block(
    x,
    filters: int,
    num_convs: int = 2,
    batch_norm: bool = False,
    residual: bool = False,
    kernel_size: int = 3,
    name: str = "conv_block",
):
    """``num_convs`` x (Conv ``kernel_size`` 'same' [+ BatchNorm] + ReLU).

    Args:
        x: input tensor (N, H, W, C).
        filters: output channels of every convolution.
        num_convs: number of conv layers (the U-Net uses two).
        batch_norm: add BatchNormalization (momentum :data:`BATCH_NORM_MOMENTUM`) after each convolution (the
            convolution then has no bias, which BN would cancel anyway).
        residual: add a shortcut from the block input to the last convolution's output before its ReLU (a 1x1
            projection when the channel count changes), as in residual U-Nets.
        kernel_size: spatial size of the kernels.
        name: prefix of the layer names (``{name}_conv1``, ``{name}_bn1``, ``{name}_relu1``, ...).

    Returns:
        The block's output tensor (N, H, W, filters).
    """
    block_input = x
    for index in range(1, num_convs + 1):
        x = layers.Conv2D(
            filters,
            kernel_size,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer=KERNEL_INITIALIZER,
            name=f"{name}_conv{index}",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn{index}")(x)
        if residual and index == num_convs:
            shortcut = block_input
            if block_input.shape[-1] != filters:
                shortcut = layers.Conv2D(
                    filters, 1, use_bias=not batch_norm, kernel_initializer=KERNEL_INITIALIZER, name=f"{name}_proj"
                )(block_input)
                if batch_norm:
                    shortcut = layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([x, shortcut])
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def encoder_step(x, filters: int, name: str, **conv_kwargs):
    """One contracting step: a conv block, then a 2x2 max-pool.

    Args:
        x: input tensor (N, H, W, C).
        filters: channels of the conv block.
        name: layer-name prefix (``{name}_conv1`` ..., ``{name}_pool``).
        **conv_kwargs: passed to :func:`conv_block` (``batch_norm``, ``residual``, ``num_convs``).

    Returns:
        ``(skip, pooled)``: the conv block output (N, H, W, filters), kept for the skip connection, and its
        pooled version (N, H/2, W/2, filters) for the next step.
    """
    skip = conv_block(x, filters, name=name, **conv_kwargs)
    pooled = layers.MaxPooling2D(pool_size=2, name=f"{name}_pool")(skip)
    return skip, pooled


def upsample(x, filters: int, name: str, mode: str = "transpose", activation=None):
    """Double the spatial size.

    Args:
        x: input tensor (N, H, W, C).
        filters: output channels (``transpose`` mode; ``bilinear`` keeps C).
        name: layer name.
        mode: ``"transpose"``: a learned 2x2 stride-2 transposed convolution (the U-Net's "up-convolution");
            ``"bilinear"``: parameter-free bilinear upsampling (ResNet-UNet style decoders).
        activation: activation of the transposed convolution (paper 004 writes ReLU after it, its eq. 3).

    Returns:
        Tensor (N, 2H, 2W, filters or C).

    Raises:
        ValueError: for an unknown mode.
    """
    if mode == "transpose":
        return layers.Conv2DTranspose(
            filters,
            kernel_size=2,
            strides=2,
            padding="valid",
            activation=activation,
            kernel_initializer=KERNEL_INITIALIZER,
            name=name,
        )(x)
    if mode == "bilinear":
        return layers.UpSampling2D(size=2, interpolation="bilinear", name=name)(x)
    raise ValueError(f"upsample mode must be 'transpose' or 'bilinear', got {mode!r}")


def decoder_step(
    x,
    skip,
    filters: int,
    name: str,
    upsampling: str = "transpose",
    up_activation=None,
    **conv_kwargs,
):
    """One expanding step: upsample x2, concatenate the skip (if any), conv block.

    Args:
        x: coarse input tensor (N, H, W, C).
        skip: encoder tensor at the doubled resolution (N, 2H, 2W, Cs), or None for a step without skip.
        filters: channels of the up-convolution and of the conv block.
        name: layer-name prefix (``{name}_up``, ``{name}_concat``, ``{name}_conv1`` ...).
        upsampling: ``"transpose"`` or ``"bilinear"``, see :func:`upsample`.
        up_activation: activation of the transposed convolution.
        **conv_kwargs: passed to :func:`conv_block`.

    Returns:
        Tensor (N, 2H, 2W, filters).
    """
    x = upsample(x, filters, name=f"{name}_up", mode=upsampling, activation=up_activation)
    if skip is not None:
        x = layers.Concatenate(axis=-1, name=f"{name}_concat")([x, skip])
    return conv_block(x, filters, name=name, **conv_kwargs)


def unet_encoder(x, depth: int, base_filters: int, **conv_kwargs):
    """U-Net contracting path plus bottleneck: ``depth`` encoder steps (filters doubling from ``base_filters``),
    then a conv block with ``base_filters * 2**depth`` filters.

    Args:
        x: input tensor (N, H, W, C), H and W divisible by ``2**depth``.
        depth: number of poolings.
        base_filters: filters of the first level.
        **conv_kwargs: passed to every :func:`conv_block` (``batch_norm``, ``residual``).

    Returns:
        ``(bottleneck, skips)``; ``skips[l - 1]`` is level ``l``'s features before pooling (finest first), named
        ``encoder_<l>``.
    """
    skips = []
    for level in range(1, depth + 1):
        skip, x = encoder_step(x, base_filters * 2 ** (level - 1), name=f"encoder_{level}", **conv_kwargs)
        skips.append(skip)
    return conv_block(x, base_filters * 2**depth, name="bottleneck", **conv_kwargs), skips


#: Initial foreground probability of every pixel (the head's bias), as the focal-loss paper (Lin et al. 2017,
#: section 4.1, "prior probability" pi = 0.01) prescribes for rare foreground. Tumours cover ~0.1-2% of a slice;
#: starting at p = 0.5 everywhere leaves Dice-type losses with almost no gradient (sum(p) dwarfs the tumour) and
#: let an Attention U-Net with the hybrid loss settle on an empty prediction in our CPU runs. Used by the paper 004
#: models (Dice / hybrid losses); paper 001's BCE-trained models keep their reference implementations' zero bias.
FOREGROUND_PRIOR = 0.01


def prior_bias_initializer(prior: float = FOREGROUND_PRIOR):
    """Bias initializer giving ``sigmoid(bias) = prior`` (the output starts as "almost surely background")."""
    return keras.initializers.Constant(float(np.log(prior / (1.0 - prior))))


def segmentation_head(x, activation="sigmoid", num_classes: int = 1, name: str = "segmentation_head"):
    """1x1 convolution to ``num_classes`` channels, its bias set to the foreground prior (:data:`FOREGROUND_PRIOR`).

    The head always computes in float32: under a ``mixed_float16`` policy a float16 sigmoid saturates and a
    float16 logit loses the precision the loss needs.

    Args:
        x: decoder output (N, H, W, C).
        activation: ``"sigmoid"`` for probabilities, None or ``"linear"`` for logits.
        num_classes: output channels (1 for binary tumour masks).
        name: layer name.

    Returns:
        Tensor (N, H, W, num_classes), float32.
    """
    if activation == "linear":
        activation = None
    return layers.Conv2D(
        num_classes, 1, activation=activation, bias_initializer=prior_bias_initializer(), dtype="float32", name=name
    )(x)


@keras.saving.register_keras_serializable(package="lungkit")
class AttentionGate(layers.Layer):
    """Additive attention gate of Attention U-Net (Oktay et al., 2018), for 2-D feature maps.

    For skip features ``x`` (N, H, W, Fx) and a gating signal ``g`` (N, H/2, W/2, Fg) taken from the next coarser
    level::

        q     = relu(theta(x) + phi(g))        theta: 2x2 conv, stride 2, no bias  -> (N, H/2, W/2, F_int)
                                               phi:   1x1 conv with bias            -> (N, H/2, W/2, F_int)
        alpha = sigmoid(psi(q))                psi:   1x1 conv with bias            -> (N, H/2, W/2, 1)
        alpha = bilinear_upsample_x2(alpha)                                         -> (N, H, W, 1)
        out   = x * alpha

    Following the reference implementation (ozan-oktay/Attention-Gated-Networks, ``GridAttentionBlock2D`` with
    ``sub_sample_factor=2``) the resolution gap is closed by striding theta, so the gate computes at the coarse
    grid and only the one-channel coefficient map is upsampled. The reference additionally passes the gated
    features through a 1x1 conv + BatchNorm ("W"); the lungkit gate returns ``x * alpha`` directly, as in the
    equation of paper 004 (eq. 6) and the design guide.

    Args:
        inter_channels: F_int, the channels of theta/phi (Oktay et al. and the guide use Fx // 2).
        **kwargs: ``keras.layers.Layer`` arguments (``name`` ...).

    Call arguments:
        inputs: ``[x, g]`` as above; g's spatial size must be half of x's.

    Returns:
        ``[gated_x, alpha]``: the gated skip features (N, H, W, Fx) and the attention coefficients (N, H, W, 1)
        in [0, 1] (always float32), the map drawn over CT slices (see ``attention_unet.attention_maps_model``).
    """

    def __init__(self, inter_channels: int, **kwargs):
        super().__init__(**kwargs)
        if int(inter_channels) < 1:
            raise ValueError(f"AttentionGate: inter_channels must be >= 1, got {inter_channels}")
        self.inter_channels = int(inter_channels)
        self.theta = layers.Conv2D(
            self.inter_channels,
            kernel_size=2,
            strides=2,
            padding="valid",
            use_bias=False,
            kernel_initializer=KERNEL_INITIALIZER,
            name="theta",
        )
        self.phi = layers.Conv2D(self.inter_channels, 1, use_bias=True, kernel_initializer=KERNEL_INITIALIZER, name="phi")
        self.psi = layers.Conv2D(1, 1, use_bias=True, name="psi")
        # the one-channel coefficient map is computed in float32 under any policy: TF's bilinear resize and its
        # gradient work in float32, and XLA refuses a float16 sigmoid feeding them (mixed_float16 on GPU)
        self.upsample = layers.UpSampling2D(size=2, interpolation="bilinear", dtype="float32", name="upsample")

    def build(self, input_shape):
        x_shape, g_shape = input_shape
        for side_name, x_side, g_side in zip(("height", "width"), x_shape[1:3], g_shape[1:3]):
            if x_side is not None and g_side is not None and x_side != 2 * g_side:
                raise ValueError(
                    f"{self.name}: the gating signal must be at half the skip resolution; skip {side_name} "
                    f"{x_side}, gating {side_name} {g_side}"
                )
        self.theta.build(x_shape)
        self.phi.build(g_shape)
        coarse_shape = (x_shape[0], g_shape[1], g_shape[2], self.inter_channels)
        self.psi.build(coarse_shape)
        self.upsample.build((x_shape[0], g_shape[1], g_shape[2], 1))

    def call(self, inputs):
        x, g = inputs
        q = ops.relu(self.theta(x) + self.phi(g))
        alpha = ops.sigmoid(ops.cast(self.psi(q), "float32"))
        alpha = self.upsample(alpha)
        return [x * ops.cast(alpha, x.dtype), alpha]

    def compute_output_shape(self, input_shape):
        x_shape, _ = input_shape
        return [tuple(x_shape), tuple(x_shape[:-1]) + (1,)]

    def get_config(self):
        config = super().get_config()
        config.update({"inter_channels": self.inter_channels})
        return config
