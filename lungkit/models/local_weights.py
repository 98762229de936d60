"""Local ImageNet weights for ``keras.applications`` encoders: find the file, load it, record what was loaded.

Shared by the encoder-decoder models that take a ``keras.applications`` encoder (:mod:`lungkit.models.resnet_unet`,
:mod:`lungkit.models.mobilenet_unet`). lungkit never downloads: ``weights="imagenet"`` is refused and a missing file
raises ``FileNotFoundError`` naming the file, its URL and where to put it. Each model file keeps its own public
names (``resolve_weights_path``, ``encoder_weights_status``) and the wording of what it expects; this module holds
the logic they had in common.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
from keras import layers

#: Attribute a built model carries with the record of its encoder's initialisation (lost on saving/reloading).
STATUS_ATTRIBUTE = "_lungkit_encoder_weights"


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (``hashlib`` algorithm name), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_local_weights(weights, *, model_name: str, network: str, file_name: str, url: str,
                          md5: str | None = None) -> Path:
    """Turn a ``weights`` setting (a file, or a folder holding ``file_name``) into the path of an existing file.

    Args:
        weights: the setting (not None).
        model_name: prefix of the messages.
        network: the encoder's name in the messages (``ResNet50``, ``MobileNetV2``).
        file_name: the ``keras.applications`` "no top" file expected.
        url: where that file is downloaded from.
        md5: the official file's md5, named in the message when given.

    Raises:
        ValueError: for ``"imagenet"`` (lungkit never downloads) or a value that is not a path.
        FileNotFoundError: the file is not there; the message names it, its URL and where to put it.
    """
    if isinstance(weights, str) and weights.lower() == "imagenet":
        raise ValueError(
            f"{model_name}: weights='imagenet' would download from the internet, which lungkit never does. Download "
            f"{url} yourself and pass its local path (or the folder holding it) as weights=..."
        )
    if not isinstance(weights, (str, Path)):
        raise ValueError(f"{model_name}: weights must be None or a path to {file_name}, got {weights!r}")
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        checksum = f" (md5 {md5})" if md5 else ""
        raise FileNotFoundError(
            f"{model_name}: {network} ImageNet weights not found at {path}. lungkit does not download weights: on a "
            f"machine with internet access download {file_name} from {url}{checksum} and put it at {path}, or pass "
            "weights=None to train the encoder from scratch."
        )
    return path


def load_local_weights(encoder: keras.Model, path: Path, *, model_name: str, target: str, expected: str) -> None:
    """``encoder.load_weights(path)`` (by topology, as ``keras.applications`` loads its own files).

    Args:
        target: the network in the message (``keras.applications.ResNet50(include_top=False)``).
        expected: the file expected, in the message.

    Raises:
        ValueError: the file does not fit the encoder (h5py, shape and layer-count errors), with the reason.
    """
    try:
        encoder.load_weights(str(path))
    except Exception as error:  # h5py, shape and layer-count errors all mean "not this network's file"
        raise ValueError(
            f"{model_name}: {path} could not be loaded into {target}; expected {expected} or weights saved from that "
            f"model. Reason: {error}"
        ) from error


def weights_status(model: keras.Model, keys: tuple) -> dict:
    """The record a builder attached under :data:`STATUS_ATTRIBUTE` (a copy), or ``keys`` -> None without one."""
    status = getattr(model, STATUS_ATTRIBUTE, None)
    if status is None:
        return dict.fromkeys(keys)
    return dict(status)


def set_batch_norm_momentum(model: keras.Model, momentum: float) -> None:
    """Set ``momentum`` on every BatchNormalization layer, nested models (the encoder) included."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
        elif isinstance(layer, keras.Model):
            set_batch_norm_momentum(layer, momentum)
