"""Section 1: Lung-RADS pickle -> kit dataset: slices per second, peak memory, disk size, and how they grow.

Phantom pickles in the real schema (512 x 512 float64 ``hu_array`` / ``hu_array_old``, int64 ``mask``, pickle
protocol 4; :func:`lungkit.data.phantom.write_phantom_pickles`) are generated once per size and cached under the
work folder. Each conversion (:func:`lungkit.data.export.convert_lungrads_to_kit`) runs in a fresh child process,
so its peak resident memory is its own. A second kind of child only loads and validates the pickle
(:func:`lungkit.data.lungrads.load_lungrads_pickle`), which splits the time into reading and writing PNGs.

Peak memory is fitted against the pickle's size by least squares (``peak = intercept + slope x bytes``); the
measured line is extrapolated to the real 4.15 GB train pickle and solved for the largest pickle a 12 GB session
can convert.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from benchmarks import child_main, current_rss_mib, peak_rss_mib, run_child, summarise

#: The real Lung-RADS train pickle (Nam, Panina, Pak 2024): 708 rows, listed as "4.15 GB". One row in this schema
#: (two 512 x 512 float64 arrays and an int64 mask) pickles to 6.29 MB, as the shared 11-row sample of the real file
#: shows (69.2 MB), so the file is 708 x 6.29 MB = 4.45e9 bytes: 4.15 GiB.
REAL_TRAIN_PICKLE_BYTES = 4.15 * 2**30
REAL_TRAIN_ROWS = 708
#: A free Colab session: "12 GB" of RAM (12.7 GiB total, of which the runtime itself takes some); taken as 12 GiB.
COLAB_RAM_BYTES = 12 * 2**30
#: The shared sample of the real pickles (11 + 3 rows of real CT), converted when present: real CT compresses
#: less well than the phantom as PNG, so it gives the honest disk ratio.
REAL_SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "lungrads-sample"
IMAGE_SIZE = 512
#: Pixel spacing handed to the conversion (the phantom's, at 512 px).
PIXEL_SPACING_MM = 0.7

FULL_SIZES = (50, 100, 200, 400)
QUICK_SIZES = (20, 50)


def phantom_dir(work_dir: Path, rows: int) -> Path:
    """Cache folder of the phantom pickle with ``rows`` train rows at 512 px (seed 0)."""
    return Path(work_dir) / f"phantom-{IMAGE_SIZE}px-{rows}rows"


def pickle_path(work_dir: Path, rows: int) -> Path:
    """Path of the cached train pickle with ``rows`` rows."""
    return phantom_dir(work_dir, rows) / "lung_cancer_train.pkl"


def ensure_phantom_pickle(work_dir: Path, rows: int, threads: int, scratch_dir: Path) -> Path:
    """Generate the phantom pickle with ``rows`` train rows unless it is cached; return the train pickle's path.

    Generation runs in a child process so the parent never holds gigabytes of arrays.

    Raises:
        RuntimeError: when generation fails.
    """
    path = pickle_path(work_dir, rows)
    if path.is_file():
        return path
    result = run_child(
        "benchmarks.conversion",
        {"mode": "generate", "out_dir": str(phantom_dir(work_dir, rows)), "rows": rows},
        timeout_s=1200,
        threads=threads,
        scratch_dir=scratch_dir,
    )
    if "error" in result or not path.is_file():
        raise RuntimeError(f"phantom pickle with {rows} rows could not be generated: {result.get('error')}")
    return path


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _child(spec: dict) -> dict:
    """Child process: generate, load or convert, reporting time and memory."""
    mode = spec["mode"]
    if mode == "generate":
        from lungkit.data.phantom import write_phantom_pickles

        started = time.perf_counter()
        # one test row: write_phantom_pickles always writes both files; only the train pickle is measured
        write_phantom_pickles(spec["out_dir"], n_train=int(spec["rows"]), n_test=1, image_size=IMAGE_SIZE, seed=0)
        return {"seconds": time.perf_counter() - started}
    if mode == "load":
        from lungkit.data.lungrads import load_lungrads_pickle

        baseline = current_rss_mib()
        started = time.perf_counter()
        frame = load_lungrads_pickle(spec["pickles"]["train"])
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "rows": int(len(frame)), "baseline_rss_mib": baseline, "peak_rss_mib": peak_rss_mib()}
    if mode == "convert":
        from lungkit.data.export import convert_lungrads_to_kit

        baseline = current_rss_mib()
        out_dir = Path(spec["out_dir"])
        started = time.perf_counter()
        manifest = convert_lungrads_to_kit(
            spec["pickles"], out_dir, pixel_spacing_mm=PIXEL_SPACING_MM, overwrite=True, progress=False
        )
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "rows": int(len(manifest)),
            "baseline_rss_mib": baseline,
            "peak_rss_mib": peak_rss_mib(),
            "dataset_bytes": _folder_bytes(out_dir),
        }
    raise ValueError(f"unknown conversion child mode {mode!r}")


def _linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = intercept + slope * x``; returns ``(intercept, slope)``."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("need at least two different pickle sizes to fit a slope")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    return mean_y - slope * mean_x, slope


def run(quick: bool, work_dir: Path, threads: int, scratch_dir: Path) -> dict:
    """Measure conversion at several pickle sizes.

    Args:
        quick: fewer and smaller sizes, two repeats.
        work_dir: cache of phantom pickles and kit datasets (git-ignored).
        threads: compute threads per child.
        scratch_dir: this run's scratch folder (conversion outputs are written and deleted there).

    Returns:
        ``{"sizes": [...per size...], "fit": {...}, "extrapolation": {...}, "pair": {...} | None}``.
    """
    sizes = QUICK_SIZES if quick else FULL_SIZES
    repeats = 2 if quick else 3
    generation = {}
    for rows in sizes:
        started = time.perf_counter()
        ensure_phantom_pickle(work_dir, rows, threads, scratch_dir)
        generation[rows] = time.perf_counter() - started
    out_dir = Path(scratch_dir) / "conversion-out"

    def convert(pickles: dict) -> dict:
        result = run_child(
            "benchmarks.conversion",
            {"mode": "convert", "pickles": {k: str(v) for k, v in pickles.items()}, "out_dir": str(out_dir)},
            timeout_s=1800,
            threads=threads,
            scratch_dir=scratch_dir,
        )
        shutil.rmtree(out_dir, ignore_errors=True)
        return result

    # warm-up: imports and the page cache of the smallest pickle
    convert({"train": pickle_path(work_dir, sizes[0])})
    per_size = []
    for rows in sizes:
        path = pickle_path(work_dir, rows)
        runs = [convert({"train": path}) for _ in range(repeats)]
        good = [r for r in runs if "error" not in r]
        entry = {"rows": rows, "pickle_bytes": path.stat().st_size, "generation_s_if_uncached": generation[rows]}
        if not good:
            entry["error"] = runs[-1].get("error")
            per_size.append(entry)
            continue
        load = run_child(
            "benchmarks.conversion",
            {"mode": "load", "pickles": {"train": str(path)}},
            timeout_s=1800,
            threads=threads,
            scratch_dir=scratch_dir,
        )
        seconds = summarise([r["seconds"] for r in good])
        entry.update(
            {
                "seconds": seconds,
                "slices_per_s": summarise([rows / r["seconds"] for r in good]),
                "peak_rss_mib": summarise([r["peak_rss_mib"] for r in good]),
                "baseline_rss_mib": summarise([r["baseline_rss_mib"] for r in good]),
                "dataset_bytes": good[0]["dataset_bytes"],
                "load_only": None if "error" in load else {
                    "seconds": load["seconds"],
                    "peak_rss_mib": load["peak_rss_mib"],
                    "baseline_rss_mib": load["baseline_rss_mib"],
                },
            }
        )
        if entry["load_only"]:
            write_seconds = seconds["median"] - load["seconds"]
            entry["write_slices_per_s"] = rows / write_seconds if write_seconds > 0 else None
        per_size.append(entry)

    measured = [e for e in per_size if "error" not in e]
    result: dict = {"image_size": IMAGE_SIZE, "repeats": repeats, "sizes": per_size, "real_sample": None}
    real_train = REAL_SAMPLE_DIR / "lung_cancer_train.pkl"
    if real_train.is_file():
        runs = [convert({"train": real_train}) for _ in range(repeats)]
        good = [r for r in runs if "error" not in r]
        if good:
            result["real_sample"] = {
                "path": str(real_train),
                "rows": good[0]["rows"],
                "pickle_bytes": real_train.stat().st_size,
                "seconds": summarise([r["seconds"] for r in good]),
                "slices_per_s": summarise([good[0]["rows"] / r["seconds"] for r in good]),
                "peak_rss_mib": summarise([r["peak_rss_mib"] for r in good]),
                "dataset_bytes": good[0]["dataset_bytes"],
            }
    if len(measured) >= 2:
        xs = [float(e["pickle_bytes"]) for e in measured]
        ys = [e["peak_rss_mib"]["median"] * 2**20 for e in measured]
        intercept, slope = _linear_fit(xs, ys)
        predicted_train = intercept + slope * REAL_TRAIN_PICKLE_BYTES
        largest_in_colab = (COLAB_RAM_BYTES - intercept) / slope if slope > 0 else float("inf")
        bytes_per_row = sum(xs) / sum(e["rows"] for e in measured)
        time_per_row = sum(e["seconds"]["median"] for e in measured) / sum(e["rows"] for e in measured)
        disk_ratio = sum(e["dataset_bytes"] for e in measured) / sum(xs)
        real = result["real_sample"]
        real_disk_ratio = real["dataset_bytes"] / real["pickle_bytes"] if real else None
        result["fit"] = {
            "intercept_bytes": intercept,
            "slope_bytes_per_pickle_byte": slope,
            "points": len(measured),
            "phantom_pickle_bytes_per_row": bytes_per_row,
        }
        result["extrapolation"] = {
            "real_train_pickle_bytes": REAL_TRAIN_PICKLE_BYTES,
            "predicted_peak_bytes": predicted_train,
            "colab_ram_bytes": COLAB_RAM_BYTES,
            "largest_pickle_bytes_in_colab": largest_in_colab,
            "largest_rows_in_colab_at_real_row_size": largest_in_colab / (REAL_TRAIN_PICKLE_BYTES / REAL_TRAIN_ROWS),
            "predicted_seconds_real_train": time_per_row * REAL_TRAIN_ROWS,
            "kit_dataset_bytes_per_pickle_byte": disk_ratio,
            "predicted_kit_dataset_bytes_real_train": disk_ratio * REAL_TRAIN_PICKLE_BYTES,
            "real_sample_kit_dataset_bytes_per_pickle_byte": real_disk_ratio,
            "predicted_kit_dataset_bytes_real_train_from_real_sample": (
                real_disk_ratio * REAL_TRAIN_PICKLE_BYTES if real_disk_ratio else None
            ),
        }
    if not quick and len(sizes) >= 2:
        # train + test in one call: the converter drops the first frame before loading the second, so the peak
        # should be the larger file's, not the sum.
        big, small = pickle_path(work_dir, sizes[-1]), pickle_path(work_dir, sizes[-2])
        pair = convert({"train": big, "test": small})
        result["pair"] = {
            "train_rows": sizes[-1],
            "test_rows": sizes[-2],
            "peak_rss_mib": pair.get("peak_rss_mib"),
            "seconds": pair.get("seconds"),
            "error": pair.get("error"),
        }
    return result


def _mib(value_bytes: float) -> str:
    return f"{value_bytes / 2**20:,.0f} MiB"


def _gib(value_bytes: float) -> str:
    return f"{value_bytes / 2**30:.2f} GiB"


def markdown(result: dict, tensorflow_baseline_mib: float | None = None) -> str:
    """The conversion section of ``reports/benchmarks.md``.

    Args:
        result: what :func:`run` returned.
        tensorflow_baseline_mib: resident memory of a process that imported TensorFlow and lungkit (from the
            models section), to say what a notebook kernel holds besides the conversion; None when unknown.
    """
    lines = [
        "## 1. Conversion: Lung-RADS pickle -> kit dataset",
        "",
        f"Phantom pickles in the real schema ({result['image_size']} x {result['image_size']} float64 HU arrays, "
        "int64 masks, pickle protocol 4), converted by `convert_lungrads_to_kit` (train split only), each run in a "
        f"fresh process; median of {result['repeats']} runs after a warm-up run, [min - max]. Peak = the child's "
        "`ru_maxrss`; baseline = its resident memory after imports. \"Load only\" is `load_lungrads_pickle` alone "
        "(unpickle + schema check) in its own process.",
        "",
        "| rows | pickle | seconds | slices/s | write-only slices/s | peak RSS | baseline | load-only peak | "
        "peak / pickle | kit dataset on disk | dataset / pickle |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in result["sizes"]:
        if "error" in e:
            lines.append(f"| {e['rows']} | {_mib(e['pickle_bytes'])} | failed: {str(e['error'])[:80]} |||||||||")
            continue
        s, v, p = e["seconds"], e["slices_per_s"], e["peak_rss_mib"]
        load = e.get("load_only") or {}
        write = e.get("write_slices_per_s")
        lines.append(
            f"| {e['rows']} | {_mib(e['pickle_bytes'])} | {s['median']:.2f} [{s['min']:.2f} - {s['max']:.2f}] | "
            f"{v['median']:.1f} [{v['min']:.1f} - {v['max']:.1f}] | {f'{write:.1f}' if write else 'n/a'} | "
            f"{p['median']:,.0f} MiB [{p['min']:,.0f} - {p['max']:,.0f}] | {e['baseline_rss_mib']['median']:,.0f} MiB | "
            f"{load.get('peak_rss_mib', float('nan')):,.0f} MiB | "
            f"{p['median'] * 2**20 / e['pickle_bytes']:.2f} | {_mib(e['dataset_bytes'])} | "
            f"{e['dataset_bytes'] / e['pickle_bytes']:.3f} |"
        )
    real = result.get("real_sample")
    if real:
        s, v, p = real["seconds"], real["slices_per_s"], real["peak_rss_mib"]
        lines.append(
            f"| {real['rows']} (real CT sample) | {_mib(real['pickle_bytes'])} | {s['median']:.2f} [{s['min']:.2f} - "
            f"{s['max']:.2f}] | {v['median']:.1f} [{v['min']:.1f} - {v['max']:.1f}] | | {p['median']:,.0f} MiB | | | "
            f"{p['median'] * 2**20 / real['pickle_bytes']:.2f} | {_mib(real['dataset_bytes'])} | "
            f"{real['dataset_bytes'] / real['pickle_bytes']:.3f} |"
        )
    fit, ext = result.get("fit"), result.get("extrapolation")
    if fit and ext:
        spare = ext["colab_ram_bytes"] - ext["predicted_peak_bytes"]
        tensorflow_note = (
            f" (importing TensorFlow and lungkit in the same kernel takes {tensorflow_baseline_mib / 1024:.2f} GiB, "
            "the models section's baseline)"
            if tensorflow_baseline_mib
            else ""
        )
        real_ratio = ext.get("real_sample_kit_dataset_bytes_per_pickle_byte")
        lines += [
            "",
            f"**Growth.** Peak memory is linear in the pickle's size: least squares over {fit['points']} sizes gives "
            f"peak = {_mib(fit['intercept_bytes'])} + {fit['slope_bytes_per_pickle_byte']:.3f} x pickle bytes. The "
            "converter holds the unpickled frame (the arrays keep the unpickled buffers) plus one slice at a time: "
            "the slope is the frame's bytes per pickle byte, the intercept the interpreter, pandas and OpenCV. Time "
            "grows with the rows as well (see slices/s across sizes).",
            "",
            f"**Real data, extrapolated with the measured line.** The real train pickle "
            f"({_gib(ext['real_train_pickle_bytes'])}, {REAL_TRAIN_ROWS} rows) needs a peak of "
            f"{_gib(ext['predicted_peak_bytes'])} to convert, in about {ext['predicted_seconds_real_train']:.0f} s on "
            f"this machine. A 12 GB Colab session (taken as {_gib(ext['colab_ram_bytes'])} for the notebook, of the "
            f"12.7 GiB Colab shows) can convert a pickle of up to {_gib(ext['largest_pickle_bytes_in_colab'])} "
            f"(about {ext['largest_rows_in_colab_at_real_row_size']:,.0f} rows of the real file's row size): the train "
            f"file fits with {_gib(spare)} to spare{tensorflow_note}. The converter loads one pickle at a time, so "
            "train + test need no more than train alone (checked below when measured).",
            "",
            f"**Disk.** The kit dataset takes {ext['kit_dataset_bytes_per_pickle_byte']:.3f} of the pickle's bytes "
            "for the phantom"
            + (
                f" and {real_ratio:.3f} for the real CT sample (real noise compresses less as PNG): about "
                f"{_gib(ext['predicted_kit_dataset_bytes_real_train_from_real_sample'])} for the real train file, "
                "against 4.15 GiB of pickle."
                if real_ratio
                else f": about {_gib(ext['predicted_kit_dataset_bytes_real_train'])} for the real train file."
            ),
        ]
    pair = result.get("pair")
    if pair and pair.get("peak_rss_mib"):
        single = next((e for e in result["sizes"] if e["rows"] == pair["train_rows"] and "error" not in e), None)
        if single:
            lines += [
                "",
                f"**Train + test in one call** ({pair['train_rows']} + {pair['test_rows']} rows): peak "
                f"{pair['peak_rss_mib']:,.0f} MiB vs {single['peak_rss_mib']['median']:,.0f} MiB for the train "
                "pickle alone: the first frame is released before the second is loaded, so the peak is the larger "
                "file's, not the sum.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    child_main(_child)
