"""Section 2: images per second delivered by the tf.data input pipeline (:func:`lungkit.pipeline.make_dataset`).

The source is a kit dataset converted from a cached 512 px phantom pickle (what ``00_convert`` writes: 16-bit HU
PNGs, mask and lung PNGs). Each configuration iterates the train split with ``repeat=True``: decode the PNGs,
paper 001's on-the-fly augmentation (albumentations through ``tf.numpy_function``, which also resizes 512 -> 256)
or a plain resize, then ``hu_window_zscore``, batches of 8. After a warm-up of a few batches (buffers filled, the
first trace done) several timed stretches of batches are taken; the figure is images per second.

All configurations run in one child process, one after the other, with the benchmark's thread settings.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import child_main, configure_tensorflow_threads, run_child, summarise
from benchmarks.conversion import ensure_phantom_pickle

AUTOTUNE = -1  # tf.data.AUTOTUNE
BATCH_SIZE = 8
PREPROCESSING = "hu_window_zscore"


def ensure_kit_dataset(work_dir: Path, rows: int, threads: int, scratch_dir: Path) -> Path:
    """A finished kit dataset (train split) converted from the cached phantom pickle with ``rows`` rows.

    Raises:
        RuntimeError: when generation or conversion fails.
    """
    dataset_dir = Path(work_dir) / f"kit-512px-{rows}rows"
    if (dataset_dir / "COMPLETE").is_file():
        return dataset_dir
    train = ensure_phantom_pickle(work_dir, rows, threads, scratch_dir)
    result = run_child(
        "benchmarks.conversion",
        {"mode": "convert", "pickles": {"train": str(train)}, "out_dir": str(dataset_dir)},
        timeout_s=1800,
        threads=threads,
        scratch_dir=scratch_dir,
    )
    if "error" in result:
        raise RuntimeError(f"could not convert the pipeline's dataset: {result['error']}")
    return dataset_dir


def configurations(quick: bool) -> list[dict]:
    """The pipeline settings measured: 256 px with augmentation at 1, 2 and AUTOTUNE parallel calls, plus
    references (no augmentation; the quick profile's 128 px output; decoded slices cached in memory)."""
    configs = [
        {"name": "augment, 1 parallel call", "image_size": 256, "augment": True, "num_parallel_calls": 1},
        {"name": "augment, 2 parallel calls", "image_size": 256, "augment": True, "num_parallel_calls": 2},
        {"name": "augment, AUTOTUNE", "image_size": 256, "augment": True, "num_parallel_calls": AUTOTUNE},
        {"name": "no augmentation, 1 parallel call", "image_size": 256, "augment": False, "num_parallel_calls": 1},
        {"name": "no augmentation, AUTOTUNE", "image_size": 256, "augment": False, "num_parallel_calls": AUTOTUNE},
    ]
    if not quick:
        configs += [
            {"name": "augment, AUTOTUNE, 128 px (quick profile's input)", "image_size": 128, "augment": True,
             "num_parallel_calls": AUTOTUNE},
            {"name": "augment, AUTOTUNE, decoded slices cached in memory", "image_size": 256, "augment": True,
             "num_parallel_calls": AUTOTUNE, "cache": True},
        ]
    return configs


def _child(spec: dict) -> dict:
    """Child process: time every configuration in ``spec["configs"]``."""
    configure_tensorflow_threads(spec["threads"])
    from lungkit.pipeline import make_dataset

    results = []
    for config in spec["configs"]:
        dataset = make_dataset(
            spec["dataset_dir"],
            "train",
            preprocessing=PREPROCESSING,
            image_size=config["image_size"],
            batch_size=BATCH_SIZE,
            augment=config["augment"],
            seed=0,
            repeat=True,
            cache=config.get("cache", False),
            num_parallel_calls=config["num_parallel_calls"],
        )
        iterator = iter(dataset)
        started = time.perf_counter()
        next(iterator)
        first_batch_s = time.perf_counter() - started
        warmup = spec["warmup_batches"] + (spec["rows"] // BATCH_SIZE + 1 if config.get("cache") else 0)
        for _ in range(warmup):  # a cached pipeline fills its cache during the first pass
            next(iterator)
        rates = []
        for _ in range(spec["repeats"]):
            started = time.perf_counter()
            for _ in range(spec["timed_batches"]):
                next(iterator)
            rates.append(spec["timed_batches"] * BATCH_SIZE / (time.perf_counter() - started))
        results.append({**config, "first_batch_s": first_batch_s, "images_per_s": summarise(rates)})
        del iterator, dataset
    return {"configs": results}


def run(quick: bool, work_dir: Path, threads: int, scratch_dir: Path) -> dict:
    """Measure the input pipeline.

    Args:
        quick: fewer configurations and batches.
        work_dir: cache folder (phantom pickles, the converted dataset).
        threads: TensorFlow intra/inter-op threads of the child (tf.data's own pool has one thread per core).
        scratch_dir: this run's scratch folder.

    Returns:
        ``{"dataset_rows", "batch_size", "configs": [{name, image_size, augment, num_parallel_calls,
        first_batch_s, images_per_s}], ...}`` or ``{"error": ...}``.
    """
    rows = 50 if quick else 100
    dataset_dir = ensure_kit_dataset(work_dir, rows, threads, scratch_dir)
    spec = {
        "dataset_dir": str(dataset_dir),
        "rows": rows,
        "configs": configurations(quick),
        "warmup_batches": 2 if quick else 3,
        "timed_batches": 4 if quick else 8,
        "repeats": 3 if quick else 5,
        "threads": threads,
    }
    result = run_child("benchmarks.pipeline", spec, timeout_s=1500, threads=threads, scratch_dir=scratch_dir)
    return {
        "dataset_rows": rows,
        "source_image_size": 512,
        "batch_size": BATCH_SIZE,
        "preprocessing": PREPROCESSING,
        "warmup_batches": spec["warmup_batches"],
        "timed_batches": spec["timed_batches"],
        "repeats": spec["repeats"],
        **result,
    }


def _parallel_label(value: int) -> str:
    return "AUTOTUNE" if value == AUTOTUNE else str(value)


def markdown(result: dict, fastest_training: dict | None = None) -> str:
    """The pipeline section of ``reports/benchmarks.md``.

    Args:
        result: what :func:`run` returned.
        fastest_training: ``{"model", "scale", "image_size", "images_per_s"}`` of the fastest training step
            measured in the models section, for the bottleneck verdict; None when that section did not run.
    """
    lines = [
        "## 2. Input pipeline: `make_dataset` images per second",
        "",
        f"Train split of a kit dataset converted from a {result['dataset_rows']}-row phantom pickle "
        f"({result['source_image_size']} px PNGs): decode -> paper 001's on-the-fly augmentation (albumentations, "
        f"resizes too) or a plain resize -> `{result['preprocessing']}` -> batches of {result['batch_size']}. Median "
        f"of {result['repeats']} stretches of {result['timed_batches']} batches after {result['warmup_batches']} "
        "warm-up batches, [min - max].",
        "",
    ]
    if "error" in result:
        return "\n".join(lines + [f"Failed: `{str(result['error'])[:400]}`", ""])
    lines += [
        "| configuration | output px | num_parallel_calls | images/s | first batch (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in result["configs"]:
        r = c["images_per_s"]
        lines.append(
            f"| {c['name']} | {c['image_size']} | {_parallel_label(c['num_parallel_calls'])} | "
            f"{r['median']:.1f} [{r['min']:.1f} - {r['max']:.1f}] | {c['first_batch_s']:.2f} |"
        )
    augmented_256 = [c for c in result["configs"] if c["augment"] and c["image_size"] == 256 and not c.get("cache")]
    by_calls = {c["num_parallel_calls"]: c["images_per_s"]["median"] for c in augmented_256}
    if fastest_training and by_calls:
        best_calls = max(by_calls, key=by_calls.get)
        best = by_calls[best_calls]
        single = by_calls.get(1)
        consumed = fastest_training["images_per_s"]
        verdict = (
            "so on this CPU the pipeline is **not** the bottleneck: the model waits for nothing"
            if best >= consumed
            else "so on this CPU the pipeline **could be** the bottleneck for that model"
        )
        lines += [
            "",
            f"**Pipeline vs model.** The fastest training step measured in section 3 ({fastest_training['model']}, "
            f"{fastest_training['scale']}, {fastest_training['image_size']} px) consumes "
            f"{consumed:.1f} images/s; the augmented 256 px pipeline delivers {best:.1f} images/s with "
            f"{_parallel_label(best_calls)} parallel calls"
            + (f" and {single:.1f} with one" if single is not None and best_calls != 1 else "")
            + f" ({best / consumed:.1f}x), {verdict}. Training and the pipeline share the same 2 cores, so in a "
            "real `fit` the two add up rather than overlap. On a GPU the training step is one to two orders of "
            "magnitude faster while a Colab/Kaggle VM still has 2-4 CPU cores: there the on-the-fly augmentation "
            "will be the bottleneck; use the offline expansion (`01_augment`, `expand_training_split`) and "
            "`cache=True` so each epoch only reads finished slices.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main(_child)
