"""Section 6: slices per second of ``lungkit predict`` for every segmentation model, at small and paper scale.

What a user waits for: :func:`lungkit.predict.predict` end to end on a 512 x 512 CT volume (NRRD, int16 HU) -
reading, the card's resize and preprocessing, the forward passes, thresholding, writing the mask, ``tumours.csv``
and the overlays into a staged folder. Each (model, scale) runs in its own child process: the model is built from
the registry with random weights (speed does not depend on them), saved with a card whose slice size is the model's
input side (one pass per slice; a patch-trained model's sliding window costs ``windows per slice`` times more), a
first ``predict`` (graph tracing) is timed apart, then several timed ``predict`` calls into fresh folders.

Sizes: ``small`` is the registry's small scale at 128 px (the ``quick`` profile), ``paper`` the paper scale at the
model's paper input (:data:`benchmarks.models.PAPER_INPUTS`); batch 8. ``--quick`` measures the small scale only.
Two figures, median [min - max]: slices per second of the prediction stage (resize, preprocessing, forward
passes, resize back, threshold: what grows with the scan) and the seconds of the whole command (plus loading the
model from disk, reading the volume and writing every output). Random weights mark arbitrary pixels as tumour, so
the writing part (overlays, components) is closer to an upper bound than to a typical scan.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks import child_main, configure_tensorflow_threads, run_child, summarise

#: The segmentation models ``lungkit predict`` applies (the classifier and SAM are not slice segmenters).
MODELS = ("unet", "attention_unet", "swin_unet", "unetr", "resnet50_unet")
SLICE_SIDE = 512
BATCH = 8


def _child(spec: dict) -> dict:
    configure_tensorflow_threads(spec["threads"])
    import keras
    import numpy as np

    from benchmarks.models import PAPER_INPUTS, SMALL_CHANNELS, SMALL_SIZE
    from lungkit.data.volumes import Volume, write_volume
    from lungkit.model_card import make_card, save_model_with_card
    from lungkit.models import build_model
    from lungkit.predict import predict

    keras.utils.set_random_seed(0)
    name, scale = spec["model"], spec["scale"]
    if scale == "paper":
        input_shape = PAPER_INPUTS[name]
    else:
        input_shape = (SMALL_SIZE, SMALL_SIZE, SMALL_CHANNELS.get(name, 1))
    model = build_model(name, scale=scale, input_shape=input_shape)
    from_logits = getattr(model.layers[-1], "activation", None) is keras.activations.linear
    work = Path(spec["work_dir"])
    card = make_card(architecture=name, scale=scale, slice_size=input_shape[0], channels=input_shape[-1],
                     preprocessing="hu_window_zscore", from_logits=from_logits, data_source="benchmark (random weights)")
    save_model_with_card(model, work / "model", card)
    del model
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 400, size=(spec["slices"], SLICE_SIDE, SLICE_SIDE)).astype(np.int16)
    scan = write_volume(Volume(volume, spacing=(0.7, 0.7, 2.5), origin=(0.0, 0.0, 0.0)), work / "scan.nrrd")

    def once(index: int) -> tuple[float, float]:
        """(seconds of the whole command, seconds of its prediction stage) of one ``predict`` call."""
        out = work / f"out{index}"
        started = time.perf_counter()
        predict(work / "model", [scan], out, batch_size=BATCH, progress=False, device="cpu" if spec["cpu"] else "auto")
        seconds = time.perf_counter() - started
        stage = json.loads((out / "prediction.json").read_text())["cases"][0]["prediction_seconds"]
        shutil.rmtree(out)
        return seconds, stage

    first, _ = once(0)
    timings = [once(index + 1) for index in range(spec["repeats"])]
    return {"input_shape": list(input_shape), "slices": spec["slices"], "first_call_s": first,
            "slices_per_s": summarise([spec["slices"] / stage for _, stage in timings]),
            "command_s": summarise([seconds for seconds, _ in timings])}


def run(quick: bool, threads: int, scratch_dir: Path) -> dict:
    """Time ``predict`` for every model of :data:`MODELS` at each scale, each in its own child process."""
    entries = []
    for scale in (("small",) if quick else ("small", "paper")):
        for name in MODELS:
            work = Path(scratch_dir) / f"predict-{name}-{scale}"
            spec = {"model": name, "scale": scale, "threads": threads, "slices": 8 if scale == "paper" else 16,
                    "repeats": 2 if quick or scale == "paper" else 3, "work_dir": str(work), "cpu": True}
            result = run_child("benchmarks.predict", spec, timeout_s=1800, threads=threads, scratch_dir=scratch_dir)
            shutil.rmtree(work, ignore_errors=True)
            entries.append({"model": name, "scale": scale, **result})
    return {"slice_side": SLICE_SIDE, "batch_size": BATCH, "device": "cpu", "entries": entries}


def markdown(result: dict) -> str:
    lines = ["## `lungkit predict`: slices per second", "",
             f"`lungkit.predict.predict` end to end on a {result['slice_side']} x {result['slice_side']} int16 NRRD "
             f"volume (read, resize to the model's input, preprocess, forward passes in batches of "
             f"{result['batch_size']}, threshold, write the mask, `tumours.csv` and overlays), on the "
             f"{result['device'].upper()}, one pass per slice, random weights. Slices/s of the prediction stage and "
             "seconds of the whole command (model load and file writing included), median [min - max] over timed "
             "calls after a first call that includes graph tracing.", "",
             "| model | scale | model input | slices | prediction slices/s | command s | first call s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for entry in result.get("entries", []):
        if "error" in entry:
            lines.append(f"| {entry['model']} | {entry['scale']} | | | failed: `{str(entry['error'])[-200:]}` | | |")
            continue
        rate, command = entry["slices_per_s"], entry["command_s"]
        side = "x".join(str(v) for v in entry["input_shape"])
        lines.append(f"| {entry['model']} | {entry['scale']} | {side} | {entry['slices']} | {rate['median']:.1f} "
                     f"[{rate['min']:.1f} - {rate['max']:.1f}] | {command['median']:.1f} | "
                     f"{entry['first_call_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main(_child)
