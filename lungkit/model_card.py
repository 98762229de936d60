"""A trained model and the card that says how to use it: ``model.keras`` + ``model_card.json`` in one folder.

A model file alone cannot be applied to a new scan: the slice size it was trained at, the preprocessing (and so the
HU window), whether it outputs logits, whether it was trained on patches (and so predicts by sliding window), the
threshold and the post-processing all live outside it. The card keeps them beside the model, together with what
the model's numbers mean: the training data's fingerprint and split, the result's protocol line and its test
metrics, and the lungkit, Keras and TensorFlow versions that wrote it.

:func:`save_model_with_card` writes both (atomically, card last, so a folder with a card always has its model);
:func:`load_model_card` / :func:`load_model_with_card` refuse a folder without a card, a card of another
:data:`CARD_VERSION` and a card missing a field, each with a message naming the file. ``lungkit predict`` and
``lungkit export`` read models only this way.

Card fields (``card_version`` 1)::

    card_version, lungkit_version, keras_version, tensorflow_version, created
    model:          {architecture, scale, parameters}
    input:          {slice_size, window, channels, preprocessing, hu_window, from_logits}
    threshold:      probability at or above which a pixel is tumour
    postprocessing: {used, paper, lung_restriction}
    training_data:  {source, fingerprint, split}
    result:         {paper, result_key, protocol_line, test_metrics}
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lungkit.preprocess import HU_WINDOW_HIGH, HU_WINDOW_LOW

#: File names inside a model folder.
MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
#: The card schema this kit writes and reads; a card of another version is refused (fields may mean other things).
CARD_VERSION = 1
#: Fields every card must have (nested ones checked by :func:`validate_card`).
REQUIRED_FIELDS = {
    "card_version": None,
    "lungkit_version": None,
    "keras_version": None,
    "model": ("architecture", "scale"),
    "input": ("slice_size", "window", "channels", "preprocessing", "hu_window", "from_logits"),
    "threshold": None,
    "postprocessing": ("used",),
    "training_data": ("source", "fingerprint", "split"),
    "result": ("protocol_line", "test_metrics"),
}
#: The HU window each preprocessing profile applies (None: it uses no fixed window).
PREPROCESSING_HU_WINDOWS = {
    "hu": None,
    "minmax": None,
    "hu_window_zscore": (HU_WINDOW_LOW, HU_WINDOW_HIGH),
    "hu_window_unit": (HU_WINDOW_LOW, HU_WINDOW_HIGH),
    "lung_masked_hu": (HU_WINDOW_LOW, HU_WINDOW_HIGH),
}


class ModelCardError(ValueError):
    """A model folder cannot be used: no card, an incompatible or incomplete card, or no model file."""


def _versions() -> dict:
    import keras
    import tensorflow as tf

    import lungkit

    return {"lungkit_version": lungkit.__version__, "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__}


def make_card(
    *,
    architecture: str,
    scale: str,
    slice_size: int,
    channels: int,
    preprocessing: str,
    window: int | None = None,
    from_logits: bool = False,
    threshold: float = 0.5,
    postprocessing: str = "none",
    postprocessing_paper: str | None = None,
    lung_restriction: str = "none",
    data_source: str = "unknown",
    data_fingerprint: str | None = None,
    split: str = "",
    protocol_line: str = "",
    test_metrics: dict | None = None,
    paper: str | None = None,
    result_key: str | None = None,
    parameters: int | None = None,
) -> dict:
    """A card dict of :data:`CARD_VERSION` (versions and creation time filled in).

    Args:
        architecture: registry name of the model.
        scale: ``tiny`` / ``small`` / ``paper``.
        slice_size: side the training slices were resized to.
        channels: input channels.
        preprocessing: name in :data:`lungkit.preprocess.PREPROCESSING`.
        window: patch side under patch training (sliding-window inference), else None.
        from_logits: the model outputs logits.
        threshold: probability threshold of the scored masks.
        postprocessing: the post-processing that ran when the test metrics were measured.
        postprocessing_paper: what the paper prescribes.
        lung_restriction: the lung restriction of the scored predictions (``none`` or its description).
        data_source: where the training data came from.
        data_fingerprint: the kit dataset's manifest fingerprint.
        split: the split line.
        protocol_line: the result's one-line protocol (:func:`lungkit.reports.protocol_line`).
        test_metrics: ``{metric: mean}`` on the test split.
        paper: paper id of the result, if any.
        result_key: the result's key, if any.
        parameters: the model's parameter count.

    Returns:
        The card dict.

    Raises:
        ModelCardError: for an unknown preprocessing or a threshold outside (0, 1).
    """
    if preprocessing not in PREPROCESSING_HU_WINDOWS:
        raise ModelCardError(f"preprocessing {preprocessing!r} unknown; expected one of {sorted(PREPROCESSING_HU_WINDOWS)}")
    if not 0.0 < float(threshold) < 1.0:
        raise ModelCardError(f"threshold must be in (0, 1), got {threshold}")
    hu_window = PREPROCESSING_HU_WINDOWS[preprocessing]
    return {
        "card_version": CARD_VERSION,
        **_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"architecture": architecture, "scale": scale, "parameters": parameters},
        "input": {
            "slice_size": int(slice_size),
            "window": None if window is None else int(window),
            "channels": int(channels),
            "preprocessing": preprocessing,
            "hu_window": None if hu_window is None else list(hu_window),
            "from_logits": bool(from_logits),
        },
        "threshold": float(threshold),
        "postprocessing": {"used": postprocessing, "paper": postprocessing_paper, "lung_restriction": lung_restriction},
        "training_data": {"source": data_source, "fingerprint": data_fingerprint, "split": split},
        "result": {"paper": paper, "result_key": result_key, "protocol_line": protocol_line,
                   "test_metrics": dict(test_metrics or {})},
    }


def validate_card(card, source: str | Path = CARD_FILE) -> dict:
    """Check a card's version and fields.

    Args:
        card: the parsed JSON.
        source: the card's path, for messages.

    Returns:
        The card.

    Raises:
        ModelCardError: naming the file, for a card of another version or a missing field.
    """
    if not isinstance(card, dict):
        raise ModelCardError(f"{source}: a model card must be a JSON object, found {type(card).__name__}")
    version = card.get("card_version")
    if version != CARD_VERSION:
        written_by = card.get("lungkit_version", "an unknown lungkit version")
        raise ModelCardError(
            f"{source}: model card version {version!r} (written by lungkit {written_by}) is not the version this kit "
            f"reads ({CARD_VERSION}); use the lungkit version that trained the model, or retrain it with this one"
        )
    missing = []
    for key, nested in REQUIRED_FIELDS.items():
        if key not in card:
            missing.append(key)
        elif nested:
            if not isinstance(card[key], dict):
                missing.append(f"{key} (an object)")
            else:
                missing.extend(f"{key}.{field}" for field in nested if field not in card[key])
    if missing:
        raise ModelCardError(f"{source}: model card lacks {missing}")
    window = card["input"]["window"]
    if card["input"]["channels"] not in (1, 2, 3) or (window is not None and window > card["input"]["slice_size"]):
        raise ModelCardError(f"{source}: input {card['input']} is inconsistent (channels 1, 2 (CT + PET) or 3, "
                             "window <= slice_size)")
    return card


def load_model_card(model_dir: str | Path) -> dict:
    """Read and check the card of a model folder.

    Args:
        model_dir: the folder holding ``model.keras`` and ``model_card.json``.

    Returns:
        The card dict.

    Raises:
        ModelCardError: when the folder, its card or its model file is missing, or the card is unreadable,
            of another version or incomplete.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelCardError(f"{model_dir}: no such model folder; expected a folder with {MODEL_FILE} and {CARD_FILE}")
    card_path = model_dir / CARD_FILE
    if not card_path.is_file():
        found = sorted(path.name for path in model_dir.iterdir())[:8]
        raise ModelCardError(
            f"{card_path}: missing: a model without its card cannot be applied (slice size, preprocessing, window "
            f"and threshold are on the card); the folder holds {found}. Models trained by this kit's experiments "
            "get a card when they are evaluated"
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelCardError(f"{card_path}: unreadable model card ({error})") from error
    validate_card(card, card_path)
    if not (model_dir / MODEL_FILE).is_file():
        raise ModelCardError(f"{model_dir / MODEL_FILE}: missing (the card {card_path} has no model beside it)")
    return card


def _import_architecture(architecture: str) -> None:
    """Import the model's module so its custom layers are registered with Keras before loading."""
    from lungkit.models import get_builder

    try:
        get_builder(architecture)
    except ValueError as error:
        raise ModelCardError(f"model card names an architecture this kit does not have: {error}") from error


def load_model_with_card(model_dir: str | Path):
    """Load a model folder: the checked card, then the Keras model (uncompiled: it is for inference).

    Args:
        model_dir: the folder holding ``model.keras`` and ``model_card.json``.

    Returns:
        ``(model, card)``.

    Raises:
        ModelCardError: see :func:`load_model_card`; also when Keras cannot load the model file, or the model's
            input does not match the card.
    """
    import keras

    model_dir = Path(model_dir)
    card = load_model_card(model_dir)
    _import_architecture(card["model"]["architecture"])
    path = model_dir / MODEL_FILE
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds for a bad archive; the message is what matters
        raise ModelCardError(f"{path}: Keras could not load the model ({type(error).__name__}: {error})") from error
    input_shape = tuple(model.input_shape)
    expected_side = card["input"]["window"] or card["input"]["slice_size"]
    if input_shape[-1] != card["input"]["channels"] or (input_shape[1] is not None and input_shape[1] != expected_side):
        raise ModelCardError(
            f"{path}: model input {input_shape} does not match its card ({model_dir / CARD_FILE}: side "
            f"{expected_side}, {card['input']['channels']} channel(s))"
        )
    return model, card


def save_model_with_card(model, model_dir: str | Path, card: dict) -> Path:
    """Write ``model.keras`` and ``model_card.json`` into ``model_dir`` (model first, each atomically).

    Args:
        model: the Keras model the card describes (the one whose test metrics the card carries).
        model_dir: destination folder (created if needed).
        card: from :func:`make_card`.

    Returns:
        The card's path.

    Raises:
        ModelCardError: for an invalid card.
    """
    model_dir = Path(model_dir)
    validate_card(card)
    model_dir.mkdir(parents=True, exist_ok=True)
    card = json.loads(json.dumps(card, default=_json_default))
    if card["model"].get("parameters") is None:
        card["model"]["parameters"] = int(model.count_params())
    temporary = model_dir / f".{MODEL_FILE}.{os.getpid()}.tmp.keras"
    try:
        model.save(temporary)
        os.replace(temporary, model_dir / MODEL_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    from lungkit.data.export import write_text_atomic

    card_path = model_dir / CARD_FILE
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    return card_path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def inference_settings(card: dict, flips: bool = False):
    """The :class:`lungkit.inference.InferenceSettings` a card describes."""
    from lungkit.inference import InferenceSettings

    spec = card["input"]
    if int(spec["channels"]) == 2:
        # the card is valid (it describes the model), but prediction reads CT only
        raise ModelCardError("a CT + PET model (2 input channels): lungkit predict reads CT only; evaluate it with "
                             "its experiment (lungkit.experiments.segmentation) on a CT + PET kit dataset")
    return InferenceSettings(slice_size=int(spec["slice_size"]), channels=int(spec["channels"]),
                             preprocessing=spec["preprocessing"], window=spec["window"],
                             from_logits=bool(spec["from_logits"]), flips=flips)


__all__ = [
    "CARD_FILE",
    "CARD_VERSION",
    "MODEL_FILE",
    "ModelCardError",
    "inference_settings",
    "load_model_card",
    "load_model_with_card",
    "make_card",
    "save_model_with_card",
    "validate_card",
]
