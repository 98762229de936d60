"""Model registry: a name -> the builder that makes it.

Adding a model is one new file in this folder plus one line in ``_BUILDERS``. Builders are imported lazily so
that ``import lungkit.models`` stays cheap and a model with an optional dependency fails only when asked for.

Every builder has the signature ``build(scale="paper", input_shape=None, **overrides) -> keras.Model``:
``scale`` picks one of the model file's ``CONFIGS`` (``tiny`` for tests, ``small`` for CPU runs, ``paper`` for the
published configuration), ``overrides`` change single settings of that config.
"""

from __future__ import annotations

import importlib

# name -> "module:function" inside lungkit.models
_BUILDERS = {
    "unet": "unet:build_unet",
    "attention_unet": "attention_unet:build_attention_unet",
    "swin_unet": "swin_unet:build_swin_unet",
    "unetr": "unetr:build_unetr",
    "resnet50_unet": "resnet_unet:build_resnet50_unet",
    "densenet121_classifier": "densenet_cls:build_densenet121_classifier",
    "sam": "sam:build_sam",
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
