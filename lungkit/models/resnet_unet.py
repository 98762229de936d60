"""ResNet50-UNet: a U-Net decoder on a ResNet50 encoder, in Keras 3.

Paper 001 builds it with ``segmentation_models_pytorch`` (``smp.Unet("resnet50", encoder_weights="imagenet",
in_channels=3, classes=1)``), trains with BCEWithLogitsLoss and Adam (lr 1e-4) for 100 epochs. lungkit rebuilds
that network from ``keras.applications.ResNet50`` (``include_top=False``) rather than the Keras
``segmentation-models`` package: that package is not installed, targets tf.keras 2 and adds a dependency for what
is an encoder lookup plus five decoder blocks, while ``keras.applications`` ships with Keras 3 and uses the
standard ImageNet weight file.

Wiring (smp's ``Unet`` with ``decoder_channels=(256, 128, 64, 32, 16)``):

- encoder skips ``conv1_relu`` (1/2, 64 ch), ``conv2_block3_out`` (1/4, 256), ``conv3_block4_out`` (1/8, 512),
  ``conv4_block6_out`` (1/16, 1024); bridge ``conv5_block3_out`` (1/32, 2048);
- five decoder blocks, each nearest-neighbour x2 upsampling, concatenation with the skip of that resolution (none
  for the last, full-resolution block), and 2 x (conv3x3 without bias -> BatchNorm -> ReLU), with 256, 128, 64,
  32, 16 filters;
- a 3x3 convolution to one channel (smp's segmentation head). ``output_activation`` defaults to None, so the model
  returns **logits**, matching paper 001's BCEWithLogitsLoss (the recipe sets ``from_logits=True``).

Input. The encoder sees three channels, as ImageNet weights require. A one-channel input (a CT slice) is copied to
three channels inside the model, so both the kit's grayscale pipeline and a three-channel pipeline work. Note that
the kit's preprocessing (HU window, z-score or min-max) is not the ImageNet normalisation the pretrained filters
were fitted to; paper 001 does not say which normalisation it used with smp.

Pretrained weights. ``weights=None`` (the default) trains from scratch. ``weights=<path>`` loads
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` (the file ``keras.applications`` itself downloads;
a folder holding it also works) into the encoder the same way ``keras.applications.ResNet50(weights=path)``
does. lungkit never downloads: a missing file raises ``FileNotFoundError`` naming the file, its URL and where to
put it. :func:`encoder_weights_status` reports what was loaded (path, sha256, whether it is the official
ImageNet file) for the result's protocol, because paper 001 used ImageNet weights and a from-scratch run is a
different experiment.

Parameter count. smp's ResNet50 U-Net with this decoder has 32,521,105 parameters in PyTorch's way of counting
(torchvision ResNet50 without fc 23,508,032 + decoder 9,012,928 + head 145). Keras counts differently:
``keras.applications.ResNet50`` convolutions carry biases (+26,560) and Keras counts BatchNorm moving mean and
variance as (non-trainable) weights (+53,120 in the encoder, +1,984 in the decoder). The lungkit model at 256x256x3
has 32,602,769 weights (``PAPER_PARAM_COUNT``), of which 32,547,665 are trainable = 32,521,105 (smp) + 26,560
(encoder conv biases) exactly. ``tests/test_resnet_unet.py`` checks both identities and the smp count against an
independent count of smp's module inventory. (A 32.56M figure in our design notes could not be traced to any
configuration; the inventory gives 32.52M.)
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from lungkit.models.blocks import BATCH_NORM_MOMENTUM, conv_block, prior_bias_initializer, resolve_config
from lungkit.models.local_weights import (
    STATUS_ATTRIBUTE,
    file_digest,
    load_local_weights,
    resolve_local_weights,
    set_batch_norm_momentum,
    weights_status,
)

MODEL_NAME = "resnet50_unet"

SKIP_LAYERS = ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out")
BRIDGE_LAYER = "conv5_block3_out"

WEIGHTS_FILE_NAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{WEIGHTS_FILE_NAME}"
# md5 of the official file, from keras.applications.resnet.WEIGHTS_HASHES["resnet50"][1].
WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"

#: Keras' ``momentum`` equivalent to PyTorch's default BatchNorm ``momentum=0.1`` (running = 0.9 running + 0.1
#: batch). Paper 001 trained smp's model in PyTorch; Keras' default 0.99 makes the moving statistics lag ten times
#: longer, and in our quick CPU runs (400 steps from scratch) the inference-mode model then predicted nothing while
#: the training-mode one was learning (validation Dice 0.00 vs 0.18 with 0.9 after 160 steps). The kit's conv
#: blocks use the same value for the same reason (``blocks.BATCH_NORM_MOMENTUM``).
PYTORCH_BATCH_NORM_MOMENTUM = BATCH_NORM_MOMENTUM

CONFIGS = {
    # For tests: ResNet50 stays ResNet50 (23.6M encoder weights); only the decoder and the input are small.
    "tiny": {
        "input_shape": (64, 64, 3),
        "decoder_filters": (32, 16, 16, 8, 8),
        "weights": None,
        "batch_norm_momentum": PYTORCH_BATCH_NORM_MOMENTUM,
        "output_activation": None,
    },
    "small": {
        "input_shape": (128, 128, 3),
        "decoder_filters": (256, 128, 64, 32, 16),
        "weights": None,
        "batch_norm_momentum": PYTORCH_BATCH_NORM_MOMENTUM,
        "output_activation": None,
    },
    # Paper 001: smp Unet(resnet50), 3-channel input, one output channel, logits (BCEWithLogitsLoss); 256 px data.
    "paper": {
        "input_shape": (256, 256, 3),
        "decoder_filters": (256, 128, 64, 32, 16),
        "weights": None,
        "batch_norm_momentum": PYTORCH_BATCH_NORM_MOMENTUM,
        "output_activation": None,
    },
}

# Measured with this builder at CONFIGS["paper"] (256x256x3 -> 1 channel), Keras' way of counting.
PAPER_PARAM_COUNT = 32_602_769
# smp.Unet("resnet50", classes=1) counted the PyTorch way (sum of p.numel() over parameters), derived from the
# module inventory: torchvision ResNet50 without fc 23,508,032 + decoder convs 9,010,944 + decoder BN affine 1,984
# + 3x3 head 145.
REFERENCE_PARAM_COUNT = 32_521_105
REFERENCE_PARAM_SOURCE = "segmentation_models_pytorch Unet('resnet50', classes=1), decoder 256-128-64-32-16"
#: The difference between PAPER_PARAM_COUNT and REFERENCE_PARAM_COUNT, in words.
PARAM_GAP = (
    "+26,560 conv biases of keras.applications' ResNet50 (torchvision has none) and +55,104 BatchNorm moving "
    "statistics, which Keras counts as weights and PyTorch as buffers"
)

def resolve_weights_path(weights) -> Path:
    """Turn the ``weights`` setting into the path of an existing weights file.

    Args:
        weights: a path to the ``.h5`` notop file (or a Keras 3 ``.weights.h5`` saved from
            ``keras.applications.ResNet50(include_top=False)``), or a folder that holds
            ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``.

    Returns:
        The file's path.

    Raises:
        ValueError: for ``"imagenet"`` (lungkit never downloads) or a value that is not a path.
        FileNotFoundError: when the file is not there, saying which file to download from where and where to put it.
    """
    return resolve_local_weights(weights, model_name=MODEL_NAME, network="ResNet50", file_name=WEIGHTS_FILE_NAME,
                                 url=WEIGHTS_URL, md5=WEIGHTS_MD5)


def _load_encoder_weights(resnet: keras.Model, path: Path) -> None:
    # The .h5 notop file is loaded exactly as keras.applications.ResNet50(weights=path) loads it: by topology.
    load_local_weights(resnet, path, model_name=MODEL_NAME, target="keras.applications.ResNet50(include_top=False)",
                       expected=f"{WEIGHTS_FILE_NAME} (from {WEIGHTS_URL})")


def _resnet50_encoder(input_shape: tuple, weights) -> tuple[keras.Model, dict]:
    """ResNet50 cut at the four skips and the bridge, with weights loaded when asked."""
    # Resolve the path first so that a missing file fails before ResNet50 is built.
    path = resolve_weights_path(weights) if weights is not None else None
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    status = {"pretrained": False, "source": None, "sha256": None, "official_imagenet_file": False}
    if path is not None:
        _load_encoder_weights(resnet, path)
        status = {
            "pretrained": True,
            "source": str(path.resolve()),
            "sha256": file_digest(path, "sha256"),
            "official_imagenet_file": file_digest(path, "md5") == WEIGHTS_MD5,
        }
    outputs = [resnet.get_layer(name).output for name in SKIP_LAYERS + (BRIDGE_LAYER,)]
    return keras.Model(resnet.input, outputs, name="resnet50_encoder"), status


def encoder_weights_status(model: keras.Model) -> dict:
    """What the encoder of a ResNet50-UNet was initialised from, for a result's protocol.

    Args:
        model: a model returned by :func:`build_resnet50_unet` in this Python session (the record does not
            survive saving and reloading the model).

    Returns:
        ``{"pretrained": bool, "source": path or None, "sha256": hex or None, "official_imagenet_file": bool}``;
        ``{"pretrained": None, ...}`` when the model carries no record.
    """
    return weights_status(model, ("pretrained", "source", "sha256", "official_imagenet_file"))


def build_resnet50_unet(scale: str = "paper", input_shape=None, **overrides) -> keras.Model:
    """Build a ResNet50-UNet.

    Args:
        scale: ``tiny`` (tests: 64 px, narrow decoder), ``small`` (128 px) or ``paper`` (256 px, paper 001's smp
            configuration).
        input_shape: (height, width, channels), sides multiples of 32, channels 1 (copied to 3 inside) or 3;
            the config's when None.
        **overrides: settings of ``CONFIGS[scale]``: ``decoder_filters`` (five ints, coarse to fine), ``weights``
            (None, or the local path of the ImageNet notop ``.h5`` file or of its folder), ``batch_norm_momentum``
            (every BatchNorm layer, encoder and decoder; default PyTorch's equivalent 0.9), ``output_activation``
            (None / ``"linear"`` for logits, the default, or ``"sigmoid"``).

    Returns:
        An uncompiled ``keras.Model`` (N, H, W, C) -> (N, H, W, 1), float32 output. Query the encoder's
        initialisation with :func:`encoder_weights_status`.

    Raises:
        ValueError: unknown scale or setting, sides not multiples of 32, unsupported channel count, or a weights
            file that does not fit ResNet50.
        FileNotFoundError: ``weights`` names a file that does not exist (the message says what to download).
    """
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    height, width, channels = config["input_shape"]
    for side_name, side in (("height", height), ("width", width)):
        if side is None or side % 32:
            raise ValueError(f"{MODEL_NAME}: input {side_name} {side} must be a multiple of 32 (ResNet50's stride)")
    if channels not in (1, 3):
        raise ValueError(f"{MODEL_NAME}: input must have 1 or 3 channels (ImageNet's ResNet50 takes 3), got {channels}")
    filters = tuple(config["decoder_filters"])
    if len(filters) != 5:
        raise ValueError(f"{MODEL_NAME}: decoder_filters needs 5 entries (1/16 ... full resolution), got {filters}")

    encoder, status = _resnet50_encoder((height, width, 3), config["weights"])

    inputs = keras.Input(shape=config["input_shape"], name="image")
    x = inputs
    if channels == 1:
        x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    *skips, x = encoder(x)
    for step, step_filters in enumerate(filters):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"decoder{step}_up")(x)
        skip_index = len(skips) - 1 - step
        if skip_index >= 0:
            x = layers.Concatenate(name=f"decoder{step}_concat")([x, skips[skip_index]])
        x = conv_block(x, step_filters, num_convs=2, batch_norm=True, name=f"decoder{step}")

    activation = config["output_activation"]
    outputs = layers.Conv2D(
        1,
        3,
        padding="same",
        # smp's head starts near zero (p = 0.5 everywhere); lungkit starts it at the foreground prior (see
        # blocks.FOREGROUND_PRIOR), an initialisation that spares Adam 1e-4 hundreds of steps of learning the base
        # rate (recorded in the protocol).
        bias_initializer=prior_bias_initializer(),
        activation=None if activation == "linear" else activation,
        dtype="float32",  # keep the output float32 under mixed precision
        name="segmentation_head",
    )(x)
    model = keras.Model(inputs, outputs, name=MODEL_NAME)
    set_batch_norm_momentum(model, float(config["batch_norm_momentum"]))
    setattr(model, STATUS_ATTRIBUTE, status)
    return model
