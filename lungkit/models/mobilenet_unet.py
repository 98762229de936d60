"""MobileNetV2 U-Net: a light transposed-convolution decoder on a ``keras.applications.MobileNetV2`` encoder.

Paper 002 (project slides) plans "transfer learning" with a U-Net-derived network, naming MobileNetV2 (lines 74-75,
137) and citing Riaz et al. 2023 (Bioengineering 10(8):981: a MobileNetV2 U-Net, Dice 0.8793 on MSD Task06 Lung).
Neither prints the wiring, so lungkit takes TensorFlow's image-segmentation tutorial's (the usual Keras MobileNetV2
U-Net):

- encoder ``keras.applications.MobileNetV2(include_top=False)``, skips ``block_1_expand_relu`` (1/2),
  ``block_3_expand_relu`` (1/4), ``block_6_expand_relu`` (1/8), ``block_13_expand_relu`` (1/16), bridge
  ``block_16_project`` (1/32); at alpha 1.0 they carry 96, 144, 192, 576 and 320 channels;
- a light decoder: four steps of (3x3 stride-2 transposed convolution without bias -> BatchNorm -> ReLU, then
  concatenation with the skip of that resolution), 512/256/128/64 filters at the paper scale (the tutorial's
  ``pix2pix.upsample`` stack, without its dropout, which the tutorial leaves off for these four blocks too);
- a last 3x3 stride-2 transposed convolution to one channel at the input resolution (the tutorial's head). It
  returns **logits** by default (``output_activation=None``), its bias started at the foreground prior
  (:data:`lungkit.models.blocks.FOREGROUND_PRIOR`), computed in float32.

Input. A one-channel slice is copied to three channels inside the model (ImageNet filters take RGB), then mapped
from [0, 1] to [-1, 1] (``input_scaling="unit_to_symmetric"``), the range ``keras.applications.mobilenet_v2.
preprocess_input`` gives the ImageNet weights. The kit's ``hu_window_unit`` preprocessing yields [0, 1]; with
another preprocessing set ``input_scaling=None``.

Pretrained weights. ``weights=None`` (the default) trains the encoder from scratch. ``weights=<path>`` loads the
``keras.applications`` "no top" file for the configured width and input size
(``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_<alpha>_<rows>_no_top.h5``, see :func:`weights_file_name`), or a
folder holding it. lungkit never downloads: a missing file raises ``FileNotFoundError`` naming the file, its URL
and where to put it. :func:`encoder_weights_status` says what was loaded (path, sha256) for the result's protocol.

BatchNorm momentum. ``keras.applications.MobileNetV2`` uses 0.999, which makes the moving statistics lag a
thousand steps behind; the kit's quick profile trains 400. lungkit sets every BatchNorm layer to 0.9 (as for the
ResNet50-UNet, whose notes give the measurement). A frozen encoder (the first phase of the fine-tuning schedule)
runs its BatchNorm in inference mode, with the ImageNet statistics, whatever the momentum.

Parameter count. At the paper scale (256 x 256 x 3, alpha 1.0) the model has 6,501,345 weights in Keras' way of
counting (``PAPER_PARAM_COUNT``): the encoder cut at ``block_16_project`` has 1,841,984 (the 2,257,984 that
``keras.applications`` reports for the whole notop MobileNetV2 1.0, less ``block_16_project_BN`` 1,280 and the last
1x1 convolution ``Conv_1`` to 1,280 channels with its BatchNorm, 409,600 + 5,120) and the decoder 4,659,361.
``tests/test_mobilenet_unet.py`` checks the count against that independent sum. Neither the slides nor the tutorial
print a count to compare with.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from lungkit.models.blocks import BATCH_NORM_MOMENTUM, KERNEL_INITIALIZER, prior_bias_initializer, resolve_config
from lungkit.models.local_weights import (
    STATUS_ATTRIBUTE,
    file_digest,
    load_local_weights,
    resolve_local_weights,
    set_batch_norm_momentum,
    weights_status,
)

MODEL_NAME = "mobilenetv2_unet"

SKIP_LAYERS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")
BRIDGE_LAYER = "block_16_project"
#: Downsampling factor of each of SKIP_LAYERS + (BRIDGE_LAYER,).
SKIP_STRIDES = (2, 4, 8, 16, 32)

WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
#: Widths and input sides ImageNet weights exist for (``keras.applications.MobileNetV2``).
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_ROWS = (96, 128, 160, 192, 224)

INPUT_SCALINGS = (None, "unit_to_symmetric")

# BATCH_NORM_MOMENTUM (0.9, from lungkit.models.blocks): Keras' ``momentum`` for BatchNorm equivalent to PyTorch's
# default (see the module docstring and resnet_unet).

CONFIGS = {
    # For tests: the narrowest ImageNet width and a narrow decoder.
    "tiny": {
        "input_shape": (64, 64, 3),
        "alpha": 0.35,
        "decoder_filters": (32, 16, 16, 8),
        "weights": None,
        "input_scaling": "unit_to_symmetric",
        "batch_norm_momentum": BATCH_NORM_MOMENTUM,
        "output_activation": None,
    },
    # CPU runs (quick profile): 128 px patches, alpha 0.5, a quarter of the tutorial's decoder widths.
    "small": {
        "input_shape": (128, 128, 3),
        "alpha": 0.5,
        "decoder_filters": (128, 64, 32, 16),
        "weights": None,
        "input_scaling": "unit_to_symmetric",
        "batch_norm_momentum": BATCH_NORM_MOMENTUM,
        "output_activation": None,
    },
    # The tutorial's wiring at alpha 1.0 on the 256 px slices the kit's Lung-RADS recipes use.
    "paper": {
        "input_shape": (256, 256, 3),
        "alpha": 1.0,
        "decoder_filters": (512, 256, 128, 64),
        "weights": None,
        "input_scaling": "unit_to_symmetric",
        "batch_norm_momentum": BATCH_NORM_MOMENTUM,
        "output_activation": None,
    },
}

# Measured with this builder at CONFIGS["paper"] (256 x 256 x 3 -> 1 channel), Keras' way of counting.
PAPER_PARAM_COUNT = 6_501_345

ENCODER_NAME = "mobilenetv2_encoder"


def weights_file_name(alpha: float, input_side: int, model_name: str = MODEL_NAME) -> str:
    """The ``keras.applications`` ImageNet "no top" file for a MobileNetV2 of width ``alpha``.

    ``keras.applications`` keeps one file per width and training resolution; for an input side that is not one of
    :data:`IMAGENET_ROWS` it takes the 224 px file, and so does lungkit. The weights of a fully convolutional
    encoder fit any input size.

    Args:
        model_name: prefix of the error message (the model asking).

    Raises:
        ValueError: for a width ImageNet weights do not exist for.
    """
    if float(alpha) not in IMAGENET_ALPHAS:
        raise ValueError(f"{model_name}: no ImageNet weights exist for alpha={alpha}; widths: {IMAGENET_ALPHAS}")
    rows = int(input_side) if input_side in IMAGENET_ROWS else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def resolve_weights_path(weights, alpha: float, input_side: int, model_name: str = MODEL_NAME) -> Path:
    """Turn the ``weights`` setting into the path of an existing weights file.

    Args:
        weights: the path of the notop ``.h5`` file, or a folder holding :func:`weights_file_name`.
        alpha: the encoder's width (picks the file name).
        input_side: the encoder's input side (picks the file name).
        model_name: prefix of the messages (the model asking).

    Returns:
        The file's path.

    Raises:
        ValueError: for ``"imagenet"`` (lungkit never downloads) or a value that is not a path.
        FileNotFoundError: the file is not there; the message names it, its URL and where to put it.
    """
    file_name = weights_file_name(alpha, input_side, model_name)
    return resolve_local_weights(weights, model_name=model_name, network="MobileNetV2", file_name=file_name,
                                 url=WEIGHTS_BASE_URL + file_name)


def mobilenet_v2_backbone(input_shape: tuple, alpha: float, weights,
                          model_name: str = MODEL_NAME) -> tuple[keras.Model, dict]:
    """``keras.applications.MobileNetV2(include_top=False)`` with ImageNet weights from a local file when asked.

    Shared by the MobileNetV2 U-Net (which cuts it at its skips) and the MobileNetV2 crop classifier
    (:mod:`lungkit.models.mobilenet_classifier`, which pools its last feature map).

    Args:
        input_shape: (height, width, 3).
        alpha: width.
        weights: None (random init) or the local notop file / its folder (see :func:`resolve_weights_path`).
        model_name: prefix of the messages (the model asking).

    Returns:
        ``(mobilenet, status)``, status ``{"pretrained", "source", "sha256"}`` for the protocol.

    Raises:
        ValueError, FileNotFoundError: as :func:`resolve_weights_path`; ValueError for a file that does not fit.
    """
    # Resolve first, so that a missing file fails before the network is built.
    path = resolve_weights_path(weights, alpha, input_shape[0], model_name) if weights is not None else None
    mobilenet = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=input_shape, alpha=alpha
    )
    status = {"pretrained": False, "source": None, "sha256": None}
    if path is not None:
        load_local_weights(mobilenet, path, model_name=model_name,
                           target=f"keras.applications.MobileNetV2(include_top=False, alpha={alpha})",
                           expected=weights_file_name(alpha, input_shape[0], model_name))
        status = {"pretrained": True, "source": str(path.resolve()), "sha256": file_digest(path, "sha256")}
    return mobilenet, status


def _mobilenet_encoder(input_shape: tuple, alpha: float, weights) -> tuple[keras.Model, dict]:
    """MobileNetV2 cut at the four skips and the bridge, with weights loaded when asked."""
    mobilenet, status = mobilenet_v2_backbone(input_shape, alpha, weights)
    outputs = [mobilenet.get_layer(name).output for name in SKIP_LAYERS + (BRIDGE_LAYER,)]
    return keras.Model(mobilenet.input, outputs, name=ENCODER_NAME), status


def encoder_weights_status(model: keras.Model) -> dict:
    """What the encoder of a MobileNetV2 U-Net was initialised from, for a result's protocol.

    Args:
        model: a model returned by :func:`build_mobilenetv2_unet` in this Python session.

    Returns:
        ``{"pretrained": bool, "source": path or None, "sha256": hex or None}``; ``pretrained`` None when the
        model carries no record (e.g. after reloading from disk).
    """
    return weights_status(model, ("pretrained", "source", "sha256"))


def build_mobilenetv2_unet(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build a MobileNetV2 U-Net.

    Args:
        scale: ``tiny`` (tests: 64 px, alpha 0.35), ``small`` (128 px, alpha 0.5) or ``paper`` (256 px, alpha 1.0,
            the tutorial's 512-256-128-64 decoder).
        input_shape: (height, width, channels), sides multiples of 32 (at least 32), channels 1 (copied to 3
            inside) or 3; the config's when None.
        **overrides: settings of ``CONFIGS[scale]``: ``alpha`` (MobileNetV2 width), ``decoder_filters`` (four ints,
            coarse to fine), ``weights`` (None or the local notop file / its folder), ``input_scaling``
            (``"unit_to_symmetric"`` or None), ``batch_norm_momentum``, ``output_activation`` (None / ``"linear"``
            for logits, the default, or ``"sigmoid"``).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, C) -> (N, H, W, 1), float32 output; the encoder is the nested
        model named ``mobilenetv2_encoder`` (freeze it with ``model.get_layer("mobilenetv2_encoder").trainable``).

    Raises:
        ValueError: unknown scale or setting, bad input shape, or a weights file that does not fit.
        FileNotFoundError: ``weights`` names a file that does not exist (the message says what to download).
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    height, width, channels = config["input_shape"]
    for side_name, side in (("height", height), ("width", width)):
        if side is None or side % 32 or side < 32:
            raise ValueError(f"{MODEL_NAME}: input {side_name} {side} must be a multiple of 32 (MobileNetV2's stride)")
    if channels not in (1, 3):
        raise ValueError(f"{MODEL_NAME}: input must have 1 or 3 channels (ImageNet's MobileNetV2 takes 3), got {channels}")
    filters = tuple(config["decoder_filters"])
    if len(filters) != 4:
        raise ValueError(f"{MODEL_NAME}: decoder_filters needs 4 entries (1/16 ... 1/2 resolution), got {filters}")
    if config["input_scaling"] not in INPUT_SCALINGS:
        raise ValueError(f"{MODEL_NAME}: input_scaling must be one of {INPUT_SCALINGS}, got {config['input_scaling']!r}")

    encoder, status = _mobilenet_encoder((height, width, 3), float(config["alpha"]), config["weights"])

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x = inputs
    if channels == 1:
        x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    if config["input_scaling"] == "unit_to_symmetric":
        x = layers.Rescaling(2.0, offset=-1.0, name="unit_to_symmetric")(x)
    *skips, x = encoder(x)
    for step, (step_filters, skip) in enumerate(zip(filters, reversed(skips))):
        x = layers.Conv2DTranspose(
            step_filters, 3, strides=2, padding="same", use_bias=False, kernel_initializer=KERNEL_INITIALIZER,
            name=f"decoder{step}_up",
        )(x)
        x = layers.BatchNormalization(name=f"decoder{step}_bn")(x)
        x = layers.Activation("relu", name=f"decoder{step}_relu")(x)
        x = layers.Concatenate(name=f"decoder{step}_concat")([x, skip])

    activation = config["output_activation"]
    outputs = layers.Conv2DTranspose(
        1,
        3,
        strides=2,
        padding="same",
        bias_initializer=prior_bias_initializer(),
        activation=None if activation == "linear" else activation,
        dtype="float32",  # keep the output float32 under mixed precision
        name="segmentation_head",
    )(x)
    model = keras.Model(inputs, outputs, name=MODEL_NAME)
    set_batch_norm_momentum(model, float(config["batch_norm_momentum"]))
    setattr(model, STATUS_ATTRIBUTE, status)
    return model
