"""Section 3: training-step and inference throughput, graph tracing time and peak memory of every registry model.

Each (model, size) runs in its own child process: build, then inference (first call = trace + one step, then
timed stretches of steps), then compile with the kit's training layer and training steps (same pattern). Random
inputs of a fixed shape, so the input pipeline is not part of the figure (section 2 measures it). Peak memory is
the child's ``ru_maxrss`` after inference and after training (the peak only grows, so the training figure includes
everything); "baseline" is the resident memory after importing TensorFlow and lungkit, before the model exists.
On a GPU the device's peak allocation is reported as well.

Sizes:

- ``small``: scale ``small`` at 128 x 128 with batch 8 (the ``quick`` profile's model input and batch);
  SAM's registry ``small`` is a pretrained preset that lungkit never downloads, so its row is the random-init
  miniature (scale ``tiny``) at a 128 px frame.
- ``paper``: scale ``paper`` at the model's paper input size with batch 2 (few steps: this is a 2-core CPU). SAM is
  a random-initialised SAM ViT-B built with the ``sam_base_sa1b`` preset's architecture (same compute as the real
  model) at its 1024 px frame, batch 1, inference only (keras-hub SAM cannot be trained).

Training compiles through :func:`lungkit.training.compile_model` (Adam, BCE - with logits for the models that
return logits -, the kit's Dice and pooled-IoU metrics), so a step costs what it costs in the notebooks. The DenseNet
classifier gets Adam + sparse categorical cross-entropy, paper 002's crop classifiers BCE on one label per crop, at
their crop sizes. Precision and XLA come from
:func:`lungkit.training.configure_precision`: float32 without XLA on a CPU, ``mixed_float16`` + XLA on a GPU.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import (
    child_main,
    configure_tensorflow_threads,
    current_rss_mib,
    peak_rss_mib,
    run_child,
    summarise,
    time_repeats,
)

SMALL_SIZE = 128
SMALL_BATCH = 8
PAPER_BATCH = 2

#: (registry name, paper input shape). SAM's is its 1024 px frame.
PAPER_INPUTS = {
    "unet": (256, 256, 1),
    "attention_unet": (256, 256, 1),
    "swin_unet": (224, 224, 1),
    "unetr": (256, 256, 1),
    "resnet50_unet": (256, 256, 3),
    "densenet121_classifier": (224, 224, 3),
    "sam": (1024, 1024, 3),
    # paper 000: CT + PET at 512 px
    "mask2former": (512, 512, 2),
    "maskformer": (512, 512, 2),
    "vit_segmenter": (512, 512, 2),
    # paper 002 (the slides print no size): the kit's recipes, 256 px slices and crops of the paper scale
    "mobilenetv2_unet": (256, 256, 1),
    "cnn_from_scratch": (256, 256, 1),
    "crop_cnn_classifier": (64, 64, 1),
    "mobilenetv2_classifier": (32, 32, 1),
}
#: Small-size inputs that are not SMALL_SIZE px: the crop classifiers train on 32 px crops at every profile.
SMALL_INPUTS = {"crop_cnn_classifier": (32, 32, 1), "mobilenetv2_classifier": (32, 32, 1)}
#: Binary classifiers of crops: one label per image, (N, 1) probabilities.
CROP_CLASSIFIERS = {"crop_cnn_classifier", "mobilenetv2_classifier"}
#: Segmenters that return logits (the others end in a sigmoid).
LOGIT_OUTPUTS = {"resnet50_unet", "mobilenetv2_unet", "cnn_from_scratch"}
#: Channels of the small-size input (3 for the ImageNet-style encoders and SAM).
SMALL_CHANNELS = {"resnet50_unet": 3, "densenet121_classifier": 3, "sam": 3,
                  # paper 000's models take CT + PET, as the quick main job feeds them
                  "mask2former": 2, "maskformer": 2, "vit_segmenter": 2}
INFERENCE_ONLY = {"sam"}
#: Child timeout of a paper-size row (s). Paper 000's models at 512 px trace for minutes on 2 cores (Mask2Former's
#: first call took longer than 420 s): they get longer.
PAPER_TIMEOUT_S = {"mask2former": 1800, "maskformer": 1200, "vit_segmenter": 1200}
DEFAULT_PAPER_TIMEOUT_S = 420
#: Query models train with their set-prediction loss (Hungarian matching in SciPy, so never with XLA).
SET_PREDICTION = {"mask2former", "maskformer"}


def _sam_inputs(model, batch: int, side: int):
    """One box prompt per image, as :func:`lungkit.models.sam.segment_with_boxes` builds them."""
    import numpy as np

    embedding = model.backbone.prompt_encoder.image_embedding_size
    rng = np.random.default_rng(0)
    return {
        "images": rng.uniform(0, 1, (batch, side, side, 3)).astype(np.float32),
        "points": np.zeros((batch, 0, 2), np.float32),
        "labels": np.zeros((batch, 0), np.float32),
        "boxes": np.tile(np.array([[[[side * 0.4, side * 0.4], [side * 0.6, side * 0.6]]]], np.float32), (batch, 1, 1, 1)),
        "masks": np.zeros((batch, 0, 4 * embedding[0], 4 * embedding[1], 1), np.float32),
    }


def _gpu_peak_mib(tf) -> float | None:
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def _reset_gpu_peak(tf) -> None:
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def _timed_steps(step, steps: int, repeats: int, batch: int) -> dict:
    """First call (trace + one step), one warm-up call, then ``repeats`` stretches of ``steps`` calls."""
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    stretches = time_repeats(lambda: [step() for _ in range(steps)], repeats=repeats, warmup=1)
    step_seconds = [s / steps for s in stretches]
    median_step = summarise(step_seconds)["median"]
    return {
        "first_call_s": first,
        "trace_s": max(first - median_step, 0.0),
        "step_s": summarise(step_seconds),
        "images_per_s": summarise([batch / s for s in step_seconds]),
    }


def _child(spec: dict) -> dict:
    """Child process: build one model, time inference then training, report memory."""
    configure_tensorflow_threads(spec["threads"])
    import keras
    import numpy as np
    import tensorflow as tf

    from lungkit.models import build_model
    from lungkit.models.sam import build_random_sam
    from lungkit.training import Recipe, compile_model, configure_precision, gpu_present

    precision = configure_precision()
    baseline = current_rss_mib()
    keras.utils.set_random_seed(0)
    name, scale = spec["model"], spec["scale"]
    shape = tuple(spec["input_shape"])
    batch = int(spec["batch_size"])
    started = time.perf_counter()
    if name == "sam" and scale == "paper":
        model = build_random_sam("base", shape[0])
    elif name == "sam":
        model = build_model("sam", scale="tiny", input_shape=shape)
    else:
        model = build_model(name, scale=scale, input_shape=shape)
    build_s = time.perf_counter() - started
    result = {
        "precision": precision.as_dict(),
        "gpu": gpu_present(),
        "parameters": int(model.count_params()),
        "build_s": build_s,
        "baseline_rss_mib": baseline,
    }

    rng = np.random.default_rng(0)
    if name == "sam":
        inputs = {k: tf.constant(v) for k, v in _sam_inputs(model, batch, shape[0]).items()}
        # the kit (segment_with_boxes) calls the model eagerly; a tf.function shows what tracing would buy
        graph_call = tf.function(lambda x: model(x, training=False), jit_compile=precision.jit_compile)
        _reset_gpu_peak(tf)
        result["inference"] = _timed_steps(lambda: graph_call(inputs), spec["steps"], spec["repeats"], batch)
        if spec.get("eager_too", True):
            eager = _timed_steps(lambda: model(inputs, training=False), spec["steps"], spec["repeats"], batch)
            result["inference_eager"] = eager
        result["peak_rss_after_inference_mib"] = peak_rss_mib()
        result["gpu_peak_inference_mib"] = _gpu_peak_mib(tf)
        return result

    images = tf.constant(rng.normal(size=(batch, *shape)).astype(np.float32))
    if name == "densenet121_classifier":
        targets = tf.constant(rng.integers(0, 2, size=(batch,)).astype(np.int32))
    elif name in CROP_CLASSIFIERS:
        targets = tf.constant(rng.integers(0, 2, size=(batch, 1)).astype(np.float32))
    else:
        # sparse blobs like tumours: a few percent foreground
        targets = tf.constant((rng.uniform(size=(batch, shape[0], shape[1], 1)) > 0.97).astype(np.float32))

    _reset_gpu_peak(tf)
    result["inference"] = _timed_steps(lambda: model.predict_on_batch(images), spec["steps"], spec["repeats"], batch)
    result["peak_rss_after_inference_mib"] = peak_rss_mib()
    result["gpu_peak_inference_mib"] = _gpu_peak_mib(tf)

    if name == "densenet121_classifier":
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss="sparse_categorical_crossentropy",
            jit_compile=precision.jit_compile,
        )
        result["loss"] = "sparse_categorical_crossentropy"
    elif name in CROP_CLASSIFIERS:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                      jit_compile=precision.jit_compile)
        result["loss"] = "binary_crossentropy"
    else:
        from_logits = name in LOGIT_OUTPUTS
        loss = "set_prediction" if name in SET_PREDICTION else ("bce_logits" if from_logits else "bce")
        loss_kwargs = {}
        if name in SET_PREDICTION:
            # paper 000's criterion (its weights and 12,544 sampled points); at the small size the quick profile's
            # recorded override, whole masks at 1/4 scale, which is what the main job trains
            from lungkit import papers

            paper_recipe = papers.get_paper("paper000").RECIPES[name]
            loss_kwargs = dict(paper_recipe["profile_overrides"]["quick"]["loss_kwargs"] if spec["size"] == "small"
                               else paper_recipe["loss_kwargs"])
        recipe = Recipe(
            model=name,
            image_size=int(shape[0]),
            input_channels=int(shape[2]),  # 1 CT, 2 CT + PET (paper 000), 3 ImageNet-style encoders
            preprocessing="hu_window_zscore",
            optimizer="adam",
            learning_rate=1e-4,
            loss=loss,
            loss_kwargs=loss_kwargs,
            from_logits=from_logits,
            batch_size=batch,
            epochs=1,
        )
        compile_model(model, recipe, jit_compile=precision.jit_compile)
        result["loss"] = recipe.describe_loss()
    _reset_gpu_peak(tf)
    result["training"] = _timed_steps(
        lambda: model.train_on_batch(images, targets), spec["steps"], spec["repeats"], batch
    )
    result["peak_rss_after_training_mib"] = peak_rss_mib()
    result["gpu_peak_training_mib"] = _gpu_peak_mib(tf)
    return result


def plan(quick: bool) -> list[dict]:
    """The (model, size) measurements, small sizes first.

    ``--quick`` measures the small size only, with fewer steps.
    """
    from lungkit.models import available_models

    unplanned = sorted(set(available_models()) - set(PAPER_INPUTS))
    if unplanned:
        raise KeyError(f"benchmarks.models.PAPER_INPUTS has no paper input shape for registry model(s) {unplanned}: "
                       "add one (the paper's input size and channels)")
    entries = []
    for name in available_models():
        small_input = SMALL_INPUTS.get(name, (SMALL_SIZE, SMALL_SIZE, SMALL_CHANNELS.get(name, 1)))
        entries.append(
            {
                "model": name,
                "size": "small",
                "scale": "tiny" if name == "sam" else "small",
                "input_shape": list(small_input),
                "batch_size": SMALL_BATCH,
                "steps": 2 if quick else 3,
                "repeats": 2 if quick else 3,
                "timeout_s": 300,
            }
        )
    if not quick:
        for name in available_models():
            entries.append(
                {
                    "model": name,
                    "size": "paper",
                    "scale": "paper",
                    "input_shape": list(PAPER_INPUTS[name]),
                    "batch_size": 1 if name == "sam" else PAPER_BATCH,
                    # one step per timed stretch: a paper-size step takes seconds to tens of seconds here
                    "steps": 1,
                    "repeats": 2 if name == "sam" else 3,
                    "eager_too": False,
                    "timeout_s": PAPER_TIMEOUT_S.get(name, DEFAULT_PAPER_TIMEOUT_S),
                }
            )
    return entries


def run(quick: bool, threads: int, scratch_dir: Path, only: list[str] | None = None) -> dict:
    """Measure every registry model in its own child process.

    Args:
        quick: small size only, fewer steps.
        threads: TensorFlow intra/inter-op threads per child.
        scratch_dir: this run's scratch folder.
        only: restrict to these registry names (for development).

    Returns:
        ``{"entries": [...one per (model, size)...]}``; a failed or timed-out child is an entry with ``error``.
    """
    entries = []
    for item in plan(quick):
        if only and item["model"] not in only:
            continue
        spec = {**item, "threads": threads}
        measured = run_child("benchmarks.models", spec, timeout_s=item["timeout_s"], threads=threads,
                             scratch_dir=scratch_dir)
        entries.append({**item, **measured})
    return {"small_size": SMALL_SIZE, "small_batch": SMALL_BATCH, "paper_batch": PAPER_BATCH, "entries": entries}


def fastest_training(result: dict) -> dict | None:
    """The entry with the highest training images/s among the models the slice pipeline feeds (the crop classifiers
    read small crops, another feed): ``{"model", "scale", "image_size", "images_per_s"}``."""
    trained = [e for e in result.get("entries", []) if "training" in e and e["model"] not in CROP_CLASSIFIERS]
    if not trained:
        return None
    best = max(trained, key=lambda e: e["training"]["images_per_s"]["median"])
    return {
        "model": best["model"],
        "scale": best["scale"],
        "image_size": best["input_shape"][0],
        "images_per_s": best["training"]["images_per_s"]["median"],
    }


def _rate(block: dict | None) -> str:
    if not block:
        return "n/a"
    r = block["images_per_s"]
    return f"{r['median']:.2f} [{r['min']:.2f} - {r['max']:.2f}]"


def _seconds(block: dict | None, key: str) -> str:
    if not block:
        return "n/a"
    return f"{block[key]:.1f}"


def markdown(result: dict) -> str:
    """The models section of ``reports/benchmarks.md``."""
    lines = [
        "## 3. Models: training and inference throughput, tracing, memory",
        "",
        f"Random inputs of a fixed shape; `small` = scale small at {result['small_size']} px, batch "
        f"{result['small_batch']} (the quick profile's model input); `paper` = scale paper at the paper's input "
        f"size, batch {result['paper_batch']} (SAM: batch 1, inference only, random-init ViT-B with "
        "`sam_base_sa1b`'s architecture; its small row is the tiny random miniature at 128 px). Images/s: median of "
        "timed stretches after one warm-up call, [min - max]. *First call* = tracing + graph building + one step; "
        "*trace* = first call minus a steady step. Peak RSS is the child's `ru_maxrss` (after inference / after "
        "training; baseline = after importing TensorFlow and lungkit). Training goes through "
        "`lungkit.training.compile_model` (Adam, BCE, Dice + pooled-IoU metrics; Mask2Former and MaskFormer: paper "
        "000's set-prediction criterion, at the small size on whole masks at 1/4 scale as the quick profile trains, "
        "at the paper size on 12,544 sampled points; paper 000's models take CT + PET, 2 channels).",
        "",
        "| model | size | input | batch | params | train img/s | train first call (s) | train trace (s) | "
        "infer img/s | infer first call (s) | peak RSS infer | peak RSS train | baseline |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    measured_later: dict[tuple[str, str], list[str]] = {}
    for e in result["entries"]:
        shape = "x".join(str(v) for v in e["input_shape"])
        if "error" in e:
            lines.append(f"| {e['model']} | {e['size']} | {shape} | {e['batch_size']} | failed (see JSON) ||||||||| ")
            notes.append(f"- {e['model']} ({e['size']}): `{str(e['error']).strip().splitlines()[-1][:300]}`")
            continue
        training = e.get("training")
        lines.append(
            f"| {e['model']} | {e['size']} | {shape} | {e['batch_size']} | {e['parameters'] / 1e6:.2f} M | "
            f"{_rate(training) if training else 'inference only'} | {_seconds(training, 'first_call_s')} | "
            f"{_seconds(training, 'trace_s')} | {_rate(e.get('inference'))} | "
            f"{_seconds(e.get('inference'), 'first_call_s')} | {e['peak_rss_after_inference_mib']:,.0f} MiB | "
            + (f"{e['peak_rss_after_training_mib']:,.0f} MiB" if training else "n/a")
            + f" | {e['baseline_rss_mib']:,.0f} MiB |"
        )
        if e.get("measured"):
            stamp = (str(e["measured"].get("commit"))[:10], str(e["measured"].get("at")))
            measured_later.setdefault(stamp, []).append(f"{e['model']} ({e['size']})")
        if e.get("inference_eager"):
            notes.append(
                f"- {e['model']} ({e['size']}): the kit's eager call (`segment_with_boxes` calls the model directly) "
                f"runs at {_rate(e['inference_eager'])} images/s vs {_rate(e['inference'])} in a `tf.function`."
            )
    notes += [f"- Measured later than the rest of this table, at commit {commit} ({at}; `--models`): "
              f"{', '.join(rows)}." for (commit, at), rows in measured_later.items()]
    gpu_rows = [e for e in result["entries"] if e.get("gpu")]
    if gpu_rows:
        lines += ["", "GPU peak allocation (MiB):", "", "| model | size | inference | training |", "| --- | --- | ---: | ---: |"]
        for e in gpu_rows:
            lines.append(
                f"| {e['model']} | {e['size']} | {e.get('gpu_peak_inference_mib') or 0:,.0f} | "
                f"{e.get('gpu_peak_training_mib') or 0:,.0f} |"
            )
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main(_child)
