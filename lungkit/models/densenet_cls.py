"""DenseNet-121 benign / malignant nodule classifier (paper 003).

Paper 003: DenseNet-121, "the final classification layer was modified to contain only two neurons", cross
entropy, SGD (Table 1; the text also names Adam), learning rate 0.001 with a scheduler, batch 32, 100 epochs,
"finetuned" (so ImageNet-initialised). Labels from LIDC malignancy: > 3 malignant, < 3 benign
(:func:`lungkit.data.luna16.malignancy_to_label`).

Not stated in the paper, chosen here (and said so in every protocol): the input size (224 x 224 x 3 for
``paper``, DenseNet's ImageNet size, as ``lungkit.papers.paper003`` chooses; nodule crops are resized to it), the
dropout before the head (0.2) and the input scaling.

Model: ``keras.applications.DenseNet121(include_top=False)`` -> global average pooling -> dropout ->
``Dense(2, softmax)`` (the paper's two neurons; ``num_classes=1`` gives one sigmoid unit instead, the same model
for binary cross entropy). Inputs are expected in [0, 1] (the kit's ``minmax`` preprocessing, paper 003 Eq. 5 divided
by 255); a parameter-free ``Rescaling`` layer applies ImageNet's mean / std as ``keras.applications.densenet``'s
``preprocess_input`` does, so ImageNet weights see what they were trained on. One-channel inputs are repeated to
three channels inside the model.

``small`` and ``tiny`` are DenseNet-style networks built from the same blocks (:func:`dense_block`,
:func:`transition_block`: BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k) layers concatenated, BN-ReLU-Conv1x1(0.5)-AvgPool
transitions) with fewer layers and a smaller growth rate; they are not DenseNet-121. With
``blocks=(6, 12, 24, 16)``, growth 32 and a 64-filter stem, :func:`build_dense_net` has exactly
DenseNet-121's 7,037,504 weights (checked in the tests).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Parameters of keras.applications.DenseNet121(include_top=False) (any input size).
DENSENET121_NOTOP_PARAMS = 7_037_504

CONFIGS = {
    "tiny": {
        "input_shape": (32, 32, 1),
        "blocks": (2, 2, 2),
        "growth_rate": 8,
        "stem_filters": 16,
        "dropout": 0.0,
        "num_classes": 2,
        "weights": None,
    },
    "small": {
        "input_shape": (64, 64, 3),
        "blocks": (3, 6, 8, 4),
        "growth_rate": 16,
        "stem_filters": 32,
        "dropout": 0.2,
        "num_classes": 2,
        "weights": None,
    },
    "paper": {
        "input_shape": (224, 224, 3),
        "blocks": (6, 12, 24, 16),  # DenseNet-121; built with keras.applications.DenseNet121
        "growth_rate": 32,
        "stem_filters": 64,
        "dropout": 0.2,
        "num_classes": 2,
        # None = random init (lungkit downloads nothing). A local path to the Keras DenseNet-121 "notop" ImageNet
        # weights file gives the paper's fine-tuning start; see DENSENET_WEIGHTS_HELP.
        "weights": None,
    },
}

DENSENET_WEIGHTS_HELP = (
    "lungkit never downloads weights. On a machine with network access, download the Keras DenseNet-121 ImageNet "
    "weights without the top ('notop'): https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
    "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 (about 29 MB; or run "
    "`keras.applications.DenseNet121(include_top=False)` once there and copy "
    "~/.keras/models/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5). Put the file on this machine and "
    "pass its path as weights=... (notebooks: the `densenet_weights` parameter)."
)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def dense_block(x, num_layers: int, growth_rate: int, name: str):
    """``num_layers`` DenseNet-BC layers, each concatenating ``growth_rate`` new feature maps to its input."""
    from keras import layers

    for index in range(num_layers):
        prefix = f"{name}_layer{index + 1}"
        y = layers.BatchNormalization(epsilon=1.001e-5, name=f"{prefix}_bn1")(x)
        y = layers.Activation("relu", name=f"{prefix}_relu1")(y)
        y = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{prefix}_conv1")(y)  # bottleneck
        y = layers.BatchNormalization(epsilon=1.001e-5, name=f"{prefix}_bn2")(y)
        y = layers.Activation("relu", name=f"{prefix}_relu2")(y)
        y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{prefix}_conv2")(y)
        x = layers.Concatenate(name=f"{prefix}_concat")([x, y])
    return x


def transition_block(x, reduction: float, name: str):
    """Compress channels by ``reduction`` with a 1x1 conv and halve the resolution with average pooling."""
    from keras import layers

    channels = int(x.shape[-1] * reduction)
    x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def build_dense_net(inputs, blocks, growth_rate: int, stem_filters: int):
    """DenseNet-BC feature extractor (no head): stem conv 7x7/2 + max-pool 3x3/2, dense blocks with transitions.

    Args:
        inputs: a Keras tensor ``(batch, height, width, channels)``.
        blocks: layers per dense block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
        growth_rate: feature maps each layer adds.
        stem_filters: filters of the stem convolution.

    Returns:
        The final feature map (after the last BN-ReLU), as DenseNet's ``include_top=False`` output.
    """
    from keras import layers

    x = layers.ZeroPadding2D(3, name="stem_pad")(inputs)
    x = layers.Conv2D(stem_filters, 7, strides=2, use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for index, num_layers in enumerate(blocks):
        x = dense_block(x, num_layers, growth_rate, name=f"dense{index + 1}")
        if index < len(blocks) - 1:
            x = transition_block(x, 0.5, name=f"transition{index + 1}")
    x = layers.BatchNormalization(epsilon=1.001e-5, name="final_bn")(x)
    return layers.Activation("relu", name="final_relu")(x)


def _checked_weights(weights):
    if weights is None:
        return None
    if weights == "imagenet":
        raise ValueError(f"weights='imagenet' would download; pass a local file instead. {DENSENET_WEIGHTS_HELP}")
    path = Path(os.fspath(weights)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DenseNet-121 weights file not found. {DENSENET_WEIGHTS_HELP}")
    return str(path)


def build_densenet121_classifier(scale: str = "paper", input_shape=None, **overrides):
    """Build the two-class nodule classifier.

    Args:
        scale: ``"paper"`` (DenseNet-121 from ``keras.applications``), ``"small"`` or ``"tiny"`` (DenseNet-style,
            same blocks, fewer layers; see the module docstring).
        input_shape: ``(height, width, channels)``; channels 1 or 3. The config's when None.
        **overrides: keys of ``CONFIGS[scale]`` (``dropout``, ``num_classes``, ``weights`` = local file path,
            ``blocks``, ``growth_rate``, ``stem_filters``).

    Returns:
        Uncompiled ``keras.Model`` mapping crops in [0, 1] to probabilities ``(batch, num_classes)``: softmax for
        ``num_classes >= 2``, one sigmoid unit for ``num_classes = 1``.

    Raises:
        ValueError: for an unknown scale or override, or ``weights="imagenet"`` (no downloads).
        FileNotFoundError: if ``weights`` names a missing file (the message says where to get it).
    """
    import keras
    from keras import layers

    if scale not in CONFIGS:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(CONFIGS)}")
    config = dict(CONFIGS[scale])
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for densenet121_classifier; known: {sorted(config)}")
    config.update(overrides)
    input_shape = tuple(input_shape or config["input_shape"])
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(f"input_shape must be (height, width, 1 or 3), got {input_shape}")
    weights = _checked_weights(config["weights"])

    inputs = keras.Input(shape=input_shape, name="crops")
    x = inputs
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    # [0, 1] -> ImageNet-normalised (x - mean) / std, as densenet.preprocess_input does for 0-255 input / 255.
    x = layers.Rescaling(
        scale=[1.0 / s for s in _IMAGENET_STD],
        offset=[-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD)],
        name="imagenet_normalise",
    )(x)
    if scale == "paper" and tuple(config["blocks"]) == (6, 12, 24, 16) and config["growth_rate"] == 32:
        encoder = keras.applications.DenseNet121(
            include_top=False, weights=weights, input_shape=input_shape[:2] + (3,)
        )
        features = encoder(x)
    else:
        if weights is not None:
            raise ValueError("weights can only be loaded into the paper-size DenseNet-121 (scale='paper')")
        features = build_dense_net(x, config["blocks"], config["growth_rate"], config["stem_filters"])
    x = layers.GlobalAveragePooling2D(name="gap")(features)
    if config["dropout"]:
        x = layers.Dropout(config["dropout"], name="dropout")(x)
    if config["num_classes"] < 1:
        raise ValueError(f"num_classes must be >= 1, got {config['num_classes']}")
    activation = "sigmoid" if config["num_classes"] == 1 else "softmax"
    outputs = layers.Dense(config["num_classes"], activation=activation, name="malignancy")(x)
    return keras.Model(inputs, outputs, name=f"densenet121_classifier_{scale}")
