"""Model registry: a name -> the builder that makes it.

Adding a model is one new file in this folder plus one line in ``_BUILDERS``. Builders are imported lazily so
that ``import lungkit.models`` stays cheap and a model with an optional dependency fails only when asked for.

Every builder has the signature ``build(scale="paper", input_shape=None, **overrides) -> keras.Model``:
``scale`` picks one of the model file's ``CONFIGS`` (``tiny`` for tests, ``small`` for CPU runs, ``paper`` for the
published configuration), ``overrides`` change single settings of that config.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas

# name -> "module:function" inside lungkit.models
_BUILDERS = {
    "unet": "unet:build_unet",
    "attention_unet": "attention_unet:build_attention_unet",
    "swin_unet": "swin_unet:build_swin_unet",
    "unetr": "unetr:build_unetr",
    "resnet50_unet": "resnet_unet:build_resnet50_unet",
    "densenet121_classifier": "densenet_cls:build_densenet121_classifier",
    "sam": "sam:build_sam",
    "mobilenetv2_unet": "mobilenet_unet:build_mobilenetv2_unet",
    "cnn_from_scratch": "cnn_from_scratch:build_cnn_from_scratch",
    "crop_cnn_classifier": "crop_cnn:build_crop_cnn_classifier",
    "mobilenetv2_classifier": "mobilenet_classifier:build_mobilenetv2_classifier",
    "mask2former": "mask2former:build_mask2former",
    "maskformer": "maskformer:build_maskformer",
    "vit_segmenter": "vit_segmenter:build_vit_segmenter",
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_BUILDERS)


def get_builder(name: str):
    """Return the builder function registered under ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        target = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {available_models()}") from None
    module_name, function_name = target.split(":")
    module = importlib.import_module(f"lungkit.models.{module_name}")
    return getattr(module, function_name)


def parameter_counts(names) -> "pandas.DataFrame":
    """The paper configuration's parameter count beside the published one of the reference implementation.

    Read from each model file's constants (``PAPER_PARAM_COUNT``, ``REFERENCE_PARAM_COUNT``,
    ``REFERENCE_PARAM_SOURCE``, ``PARAM_GAP``), which the model tests check against a build and an independent
    count of the reference's modules; nothing is built here (the paper models take minutes on a CPU).

    Args:
        names: registry names.

    Returns:
        One row per model: ``lungkit (paper config)``, ``published``, ``published for``, ``gap explained``.

    Raises:
        ValueError: a name that is unknown or whose file records no counts.
    """
    import pandas as pd

    rows = []
    for name in names:
        module = importlib.import_module(get_builder(name).__module__)
        if not hasattr(module, "REFERENCE_PARAM_COUNT"):
            raise ValueError(f"model {name!r} records no published parameter count")
        rows.append({
            "model": name,
            "lungkit (paper config)": f"{module.PAPER_PARAM_COUNT:,}",
            "published": f"{module.REFERENCE_PARAM_COUNT:,}",
            "published for": module.REFERENCE_PARAM_SOURCE,
            "gap explained": module.PARAM_GAP,
        })
    return pd.DataFrame(rows).set_index("model")


def build_model(name: str, scale: str = "paper", input_shape=None, **overrides):
    """Build a registered model.

    Args:
        name: registry name, see :func:`available_models`.
        scale: ``tiny``, ``small`` or ``paper``.
        input_shape: (height, width, channels); the config's default when None.
        **overrides: single settings of the chosen config to change.

    Returns:
        An uncompiled ``keras.Model``.
    """
    return get_builder(name)(scale=scale, input_shape=input_shape, **overrides)


def encoder_weights_status(name: str, model) -> dict | None:
    """What the pretrainable encoder of a built registry model started from, for a result's protocol.

    Models with a ``keras.applications`` encoder (ResNet50-UNet, MobileNetV2 U-Net and classifier) report it through
    their file's ``encoder_weights_status``; when it trains from scratch this says so once on stdout, as the
    protocol will.

    Returns:
        The model file's status dict (``pretrained``, ``source``, ...), or None for a model without such an encoder.
    """
    module = importlib.import_module(get_builder(name).__module__)
    if not hasattr(module, "encoder_weights_status"):
        return None
    status = module.encoder_weights_status(model)
    if not status.get("pretrained"):
        print(f"No local ImageNet weights given: the {name} encoder trains from scratch (recorded in the protocol).")
    return status
