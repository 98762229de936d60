"""Section 5: what a training step of patch training costs, and what op determinism adds.

The quick profile trains every segmentation model on 128 px patches (:class:`lungkit.pipeline.PatchSampler`) with
TensorFlow op determinism on (:func:`lungkit.training.make_deterministic`), so that a seed reruns bit-identically.
This section measures paper 004's U-Net at the ``small`` scale (batch 8, 128 px patches of 256 px slices) fed
through ``model.fit`` by

- ``planned``: the kit's feed (:func:`lungkit.pipeline.make_patch_dataset`: the draw planned in numpy, the patches
  cut by tf.data), with op determinism on and off;
- ``generator``: the same patches from a Python generator (``tf.data.Dataset.from_generator``), the feed the kit
  used before, with op determinism on.

Each configuration runs in its own child process (op determinism is process-wide): a warm-up ``fit`` of a few steps
(tracing), then several timed ``fit`` calls of ``steps`` steps; the figure is seconds per optimizer step.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import child_main, configure_tensorflow_threads, run_child, summarise

CONFIGS = (
    {"name": "planned, op determinism on", "feed": "planned", "deterministic": True},
    {"name": "planned, op determinism off", "feed": "planned", "deterministic": False},
    {"name": "generator, op determinism on", "feed": "generator", "deterministic": True},
)
SLICES, SLICE_SIDE, PATCH = 64, 256, 128


def _child(spec: dict) -> dict:
    configure_tensorflow_threads(spec["threads"])
    import keras
    import numpy as np
    import tensorflow as tf

    from lungkit import papers
    from lungkit.pipeline import PatchSampler, make_patch_dataset
    from lungkit.profiles import get_profile
    from lungkit.training import Recipe, build_for_training, make_deterministic

    if spec["deterministic"]:
        make_deterministic(0)
    else:
        keras.utils.set_random_seed(0)
    recipe = Recipe.from_dict(papers.get_recipe("paper004", "unet"), source="benchmark").for_profile(
        get_profile("quick"))
    steps, batch = int(spec["steps"]), int(recipe.batch_size)
    model = build_for_training(recipe, steps_per_epoch=steps)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(SLICES, SLICE_SIDE, SLICE_SIDE, 1)).astype(np.float32)
    masks = np.zeros((SLICES, SLICE_SIDE, SLICE_SIDE), np.float32)
    masks[:, 100:110, 120:132] = 1.0
    sampler = PatchSampler(images, masks, PATCH, seed=0)
    total = (spec["repeats"] + 1) * steps + spec["warmup_steps"]
    if spec["feed"] == "planned":
        dataset = make_patch_dataset(sampler, batch, total)
    else:
        signature = (tf.TensorSpec((None, PATCH, PATCH, 1), tf.float32),) * 2
        dataset = tf.data.Dataset.from_generator(lambda: sampler.batches(batch), output_signature=signature)
        dataset = dataset.prefetch(2)
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=spec["warmup_steps"], epochs=1, verbose=0)
    first = time.perf_counter() - started
    seconds = []
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        seconds.append((time.perf_counter() - started) / steps)
    return {"parameters": int(model.count_params()), "first_fit_s": first, "step_s": summarise(seconds),
            "batch_size": batch}


def run(quick: bool, threads: int, scratch_dir: Path) -> dict:
    """Time every configuration of :data:`CONFIGS` in its own child process."""
    entries = []
    for config in CONFIGS:
        spec = {**config, "threads": threads, "steps": 10 if quick else 20, "repeats": 2 if quick else 3,
                "warmup_steps": 3}
        entries.append({**config, **run_child("benchmarks.training_feed", spec, timeout_s=900, threads=threads,
                                              scratch_dir=scratch_dir)})
    return {"model": "paper004 unet, small scale", "patch": PATCH, "slice_side": SLICE_SIDE, "entries": entries}


def markdown(result: dict) -> str:
    lines = ["## Patch training: the feed and op determinism", "",
             f"{result['model']}, batch 8 of {result['patch']} px patches cut from {result['slice_side']} px slices, "
             "trained with `model.fit`; seconds per optimizer step, median [min - max] over timed fits after a "
             "warm-up fit.", "", "| feed | step s | first fit (trace) s |", "| --- | ---: | ---: |"]
    by_name = {}
    for entry in result.get("entries", []):
        if "error" in entry:
            lines.append(f"| {entry['name']} | failed: `{str(entry['error'])[:200]}` | |")
            continue
        step = entry["step_s"]
        by_name[entry["name"]] = step["median"]
        lines.append(f"| {entry['name']} | {step['median']:.3f} [{step['min']:.3f} - {step['max']:.3f}] | "
                     f"{entry['first_fit_s']:.1f} |")
    on, off = by_name.get(CONFIGS[0]["name"]), by_name.get(CONFIGS[1]["name"])
    generator = by_name.get(CONFIGS[2]["name"])
    if on and off:
        lines += ["", f"**Op determinism costs {100 * (on / off - 1):+.0f}%** per step here (on {on:.3f} s, off "
                  f"{off:.3f} s): the quick and smoke profiles keep it on."]
    if on and generator:
        lines += ["", f"The planned tf.data feed takes {100 * (1 - on / generator):.0f}% less time per step than "
                  "the Python generator."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main(_child)
