"""``lungkit export``: a trained model (``model.keras`` + ``model_card.json``) as a TensorFlow SavedModel or a TFLite
file for serving, checked against Keras before it is handed over.

The export is made in a staging folder; the exported model is run on a fixed input (seeded normal values of the
card's input shape, two images: model-ready inputs, i.e. already preprocessed) beside the Keras model, and the
largest absolute difference of the probabilities must stay within the format's tolerance (:data:`TOLERANCES`:
1e-5 for a SavedModel, the same graph; 1e-4 for TFLite, whose kernels fuse and reorder float32 arithmetic). Only
then is the folder renamed into place, with a copy of the card that records the export and the measured difference.

The exported model takes the model's inputs (``(batch, side, side, channels)``, side = the card's window or slice
size) and returns what the Keras model returns: probabilities, or logits where the card says ``from_logits``. The
card's preprocessing and sliding window stay the caller's job; ``lungkit predict`` does them for Keras models.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

#: Formats and the largest |probability difference| from Keras each must stay within.
TOLERANCES = {"savedmodel": 1e-5, "tflite": 1e-4}
#: Seed and batch of the check input.
CHECK_SEED = 0
CHECK_BATCH = 2


class ExportError(RuntimeError):
    """An export that could not be made or did not reproduce the Keras model's probabilities."""


def _probabilities(outputs, from_logits: bool) -> np.ndarray:
    outputs = np.asarray(outputs, np.float64)
    return 1.0 / (1.0 + np.exp(-outputs)) if from_logits else outputs


def check_input(card: dict) -> np.ndarray:
    """The fixed check input for a card's model: ``(2, side, side, channels)`` float32, seeded normal values."""
    side = card["input"]["window"] or card["input"]["slice_size"]
    shape = (CHECK_BATCH, side, side, card["input"]["channels"])
    return np.random.default_rng(CHECK_SEED).normal(size=shape).astype(np.float32)


def _export_savedmodel(model, folder: Path, inputs: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    model.export(str(folder), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(folder))
    return np.asarray(loaded.serve(tf.constant(inputs)))


def _export_tflite(model, folder: Path, inputs: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    saved = folder.parent / f".{folder.name}.savedmodel"
    try:
        model.export(str(saved), format="tf_saved_model", verbose=False)
        try:
            content = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
        except Exception as error:  # the converter raises ConverterError and others; the message is what counts
            raise ExportError(
                f"TFLite conversion failed ({type(error).__name__}: {str(error).strip()[:500]}); the conversion runs "
                "offline with TensorFlow's own converter, so this is an operation TFLite does not support, not a "
                "missing download; the SavedModel export (--format savedmodel) does not need the converter"
            ) from error
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    folder.mkdir()
    (folder / "model.tflite").write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice in favour of ai_edge_litert
        interpreter = tf.lite.Interpreter(model_content=content)
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], inputs)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def export_model(model_dir: str | Path, format: str, out: str | Path | None = None,
                 overwrite: bool = False) -> dict:
    """Export a carded model and check it against Keras.

    Args:
        model_dir: folder with ``model.keras`` and ``model_card.json``.
        format: ``savedmodel`` or ``tflite``.
        out: the export folder; default ``<model_dir>/export_<format>``.
        overwrite: replace an existing export folder.

    Returns:
        The card's ``export`` block: format, files, tolerance, measured largest difference, check input.

    Raises:
        ValueError: for an unknown format.
        FileExistsError: when ``out`` exists and ``overwrite`` is False.
        lungkit.model_card.ModelCardError: for a model folder without a usable card.
        ExportError: when the conversion fails or the exported model's probabilities differ from Keras' by more
            than the tolerance (nothing is left behind).
    """
    from lungkit.model_card import CARD_FILE, load_model_with_card

    if format not in TOLERANCES:
        raise ValueError(f"format must be one of {sorted(TOLERANCES)}, got {format!r}")
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir / f"export_{format}"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: export folder exists; choose another --out or pass --overwrite")
    model, card = load_model_with_card(model_dir)
    inputs = check_input(card)
    expected = _probabilities(model.predict(inputs, verbose=0), card["input"]["from_logits"])
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        if format == "savedmodel":
            outputs = _export_savedmodel(model, staging, inputs)
        else:
            outputs = _export_tflite(model, staging, inputs)
        difference = float(np.abs(_probabilities(outputs, card["input"]["from_logits"]) - expected).max())
        tolerance = TOLERANCES[format]
        if not difference <= tolerance:  # NaN fails too
            raise ExportError(
                f"{model_dir}: the {format} export's probabilities differ from Keras' by up to {difference:.3g} on "
                f"the check input (tolerance {tolerance:g}); not exported"
            )
        block = {
            "format": format,
            "files": sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file()),
            "tolerance": tolerance,
            "max_abs_difference": difference,
            "check_input": f"seeded normal values (numpy default_rng({CHECK_SEED})), shape {list(inputs.shape)}, "
                           "model-ready (already preprocessed)",
            "outputs": "logits (apply a sigmoid)" if card["input"]["from_logits"] else "probabilities",
        }
        exported_card = dict(card, export=block)
        (staging / CARD_FILE).write_text(json.dumps(exported_card, indent=2) + "\n")
        if out.exists():
            trash = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dict(block, path=str(out))


__all__ = ["CHECK_BATCH", "CHECK_SEED", "ExportError", "TOLERANCES", "check_input", "export_model"]
