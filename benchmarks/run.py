"""Run the lungkit benchmarks and write ``reports/benchmarks.md`` and ``reports/benchmarks.json``.

Usage::

    python -m benchmarks.run [--quick] [--sections conversion pipeline models peer training predict] [--out reports]
                             [--work-dir benchmarks/_work] [--threads N] [--models NAME [NAME ...]]

(``make bench`` runs it with the defaults.) Sections run in the order conversion, models, pipeline, peer, training, predict; the
pipeline's verdict needs the models' training throughput, so both are written together at the end. Every
measurement that reports memory runs in its own child process. The JSON holds the machine, the library versions,
the load average at the start and end of each section and every figure, including the raw samples. A run of some
sections only replaces those in an existing ``benchmarks.json`` and keeps the others (each section records the
commit and time it was measured at); ``--models`` measures only the named registry models and replaces just their
rows of the models section (each such row records its own commit and time).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import DEFAULT_WORK_DIR, load_average, write_json_atomic, write_text_atomic

SECTIONS = ("conversion", "pipeline", "models", "peer", "training", "predict")
_RUN_ORDER = ("conversion", "models", "pipeline", "peer", "training", "predict")
_VERSIONED = ("tensorflow", "keras", "keras-hub", "numpy", "pandas", "opencv-python-headless", "albumentations",
              "torch", "monai", "lungkit")


def machine_description() -> dict:
    """CPU model, cores, memory, GPU (from ``nvidia-smi`` when present), OS and Python.

    TensorFlow is not imported here (the parent stays small); each model child records whether TensorFlow saw a
    GPU, and :func:`lungkit.training.configure_precision` decides on mixed precision and XLA there.
    """
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_bytes = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    memory_bytes = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30,
            )
            gpus = [line.strip() for line in listing.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(memory_bytes / 2**30, 2) if memory_bytes else None,
        "gpus": gpus,
        "os": platform.platform(),
    }


def versions() -> dict:
    """Python and library versions (None for a library that is not installed)."""
    found = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _run_section(name: str, quick: bool, work_dir: Path, threads: int, scratch: Path,
                 models_only: list[str] | None = None) -> dict:
    if name == "conversion":
        from benchmarks import conversion

        return conversion.run(quick, work_dir, threads, scratch)
    if name == "pipeline":
        from benchmarks import pipeline

        return pipeline.run(quick, work_dir, threads, scratch)
    if name == "models":
        from benchmarks import models

        return models.run(quick, threads, scratch, only=models_only)
    if name == "training":
        from benchmarks import training_feed

        return training_feed.run(quick, threads, scratch)
    if name == "predict":
        from benchmarks import predict

        return predict.run(quick, threads, scratch)
    from benchmarks import peer_monai

    return peer_monai.run(quick, threads, scratch)


def gpu_section_markdown(report: dict) -> str:
    """Section 5: what the GPU path does, and whether a GPU result exists."""
    model_entries = (report["sections"].get("models") or {}).get("entries", [])
    on_gpu = any(e.get("gpu") for e in model_entries)
    precision = next((e["precision"] for e in model_entries if "precision" in e), None)
    lines = [
        "## 5. GPU path",
        "",
        "The same command on a machine with a GPU runs every model child with "
        "`lungkit.training.configure_precision()`: `mixed_float16` with loss scaling and `jit_compile=True` (XLA) "
        "when `gpu_present()`, float32 without XLA on a CPU; the models table then adds the GPU's peak "
        "allocation, and the MONAI side runs on CUDA with `torch.autocast(float16)` and a `GradScaler`.",
        "",
    ]
    if on_gpu:
        lines.append(f"This run used the GPU ({', '.join(report['machine']['gpus']) or 'seen by TensorFlow'}); "
                     f"precision: `{precision}`.")
    else:
        lines.append(
            "**No GPU result exists yet**: this run had no GPU"
            + (f" (precision chosen: `{precision['dtype_policy']}`, XLA {precision['jit_compile']})" if precision else "")
            + ". Run `make bench` on a GPU machine (e.g. Colab with `tensorflow[and-cuda]==2.21.0` and the `bench` "
            "extra) and commit `reports/benchmarks.json` / `.md` with the machine description they record."
        )
    return "\n".join(lines) + "\n"


def summary_lines(sections: dict, fastest: dict | None) -> list[str]:
    """One bullet per section with its headline figure (empty for sections that did not run or failed)."""
    bullets = []
    ext = (sections.get("conversion") or {}).get("extrapolation")
    fit = (sections.get("conversion") or {}).get("fit")
    if ext and fit:
        bullets.append(
            f"- Conversion: peak memory = {fit['intercept_bytes'] / 2**20:.0f} MiB + "
            f"{fit['slope_bytes_per_pickle_byte']:.2f} x the pickle's size; the real 4.15 GiB train pickle needs "
            f"{ext['predicted_peak_bytes'] / 2**30:.2f} GiB (a 12 GiB Colab session converts pickles up to "
            f"{ext['largest_pickle_bytes_in_colab'] / 2**30:.1f} GiB)."
        )
    pipeline = sections.get("pipeline") or {}
    augmented = [c for c in pipeline.get("configs", []) if c["augment"] and c["image_size"] == 256 and not c.get("cache")]
    if augmented and fastest:
        best = max(c["images_per_s"]["median"] for c in augmented)
        bullets.append(
            f"- Input pipeline: {best:.0f} augmented 256 px images/s vs {fastest['images_per_s']:.0f} consumed by the "
            f"fastest training step ({fastest['model']}, {fastest['scale']}): "
            + ("not the bottleneck on this CPU." if best >= fastest["images_per_s"] else "could be the bottleneck.")
        )
    models_section = sections.get("models") or {}
    entries = [e for e in models_section.get("entries", []) if "training" in e and e["size"] == "small"]
    if entries:
        side = models_section.get("small_size", 128)
        rates = sorted(entries, key=lambda e: -e["training"]["images_per_s"]["median"])
        at_side = [e for e in rates if e["input_shape"][0] == side]
        other = [e for e in rates if e["input_shape"][0] != side]
        bullets.append(
            f"- Models (small, {side} px, batch {models_section.get('small_batch', 8)}, training img/s): "
            + ", ".join(f"{e['model']} {e['training']['images_per_s']['median']:.1f}" for e in at_side)
            + (("; at their own input sizes: " + ", ".join(
                f"{e['model']} {e['training']['images_per_s']['median']:.1f} ({e['input_shape'][0]} px)"
                for e in other)) if other else "")
            + "."
        )
    peer = sections.get("peer") or {}
    ratios = [
        (e["lungkit_model"], e["ratio_lungkit_over_monai"].get("1"))
        for e in peer.get("pairs", [])
        if e.get("ratio_lungkit_over_monai", {}).get("1") is not None
    ]
    if ratios:
        bullets.append(
            "- lungkit / MONAI training throughput at 1 thread: "
            + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios)
            + " (> 1: lungkit faster)."
        )
    elif peer and not peer.get("available", True):
        bullets.append("- Peer comparison skipped: PyTorch / MONAI not installed.")
    return bullets


def _earlier_sections_note(report: dict) -> str:
    """A sentence naming the sections kept from earlier runs (their machine and versions may differ)."""
    load = report.get("load", {})
    earlier = [name for name, info in load.items()
               if info.get("measured", {}).get("commit", report["git_commit"]) != report["git_commit"]]
    if not earlier:
        return ""
    measured = [n for n in load if n not in earlier]
    # a --models run measured some rows of a section that is otherwise kept
    measured += [f"some rows of {n} (marked below its table)" for n in earlier
                 if load[n].get("rows_measured_later", {}).get("commit") == report["git_commit"]]
    return (f" This run measured {', '.join(measured) or 'nothing new'}; the sections "
            f"{', '.join(earlier)} are kept from earlier runs (commit and time in the load table; the machine and "
            "versions below are this run's).")


def render_markdown(report: dict) -> str:
    """The whole of ``reports/benchmarks.md`` from the report dict."""
    machine, found = report["machine"], report["versions"]
    lines = [
        "# lungkit benchmarks",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if report['quick'] else ''}` on "
        f"{report['finished_at']} (commit {report['git_commit']}, {report['wall_s'] / 60:.1f} min). Every figure "
        "is the median of several timed repeats after a warm-up, with [min - max]; every number, with its raw "
        "samples, is in `benchmarks.json`. These are benchmarks, not tests: nothing asserts a time."
        + _earlier_sections_note(report),
        "",
        f"**Machine**: {machine['cpu_model']}, {machine['usable_cores']} cores, {machine['memory_gib']} GiB RAM, "
        f"GPU: {', '.join(machine['gpus']) or 'none'}. **Versions**: Python {found['python']}, TensorFlow "
        f"{found['tensorflow']}, Keras {found['keras']}, keras-hub {found['keras-hub']}, NumPy {found['numpy']}, "
        f"PyTorch {found['torch'] or 'not installed'}, MONAI {found['monai'] or 'not installed'}. "
        f"Threads per process: {report['threads']}.",
        "",
        "**Noise**: the machine is shared (other jobs run on the same cores), so figures move by tens of percent "
        "between runs. Load average (1 / 5 / 15 min) at the start and end of each section:",
        "",
        "| section | load at start | load at end | wall time | measured at |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for name in _RUN_ORDER:
        info = report["load"].get(name)
        if info:
            lines.append(
                f"| {name} | {' / '.join(map(str, info['start']))} | {' / '.join(map(str, info['end']))} | "
                f"{info['wall_s']:.0f} s | {info.get('measured', {}).get('commit', '')} "
                f"{info.get('measured', {}).get('at', '')} |"
            )
    lines.append("")
    sections = report["sections"]
    fastest = None
    if sections.get("models"):
        from benchmarks import models

        fastest = models.fastest_training(sections["models"])
    summary = summary_lines(sections, fastest)
    if summary:
        lines += ["## Summary", ""] + summary + [""]
    for name in ("conversion", "pipeline", "models", "training", "peer", "predict"):
        result = sections.get(name)
        if result is None:
            continue
        if "error" in result and len(result) <= 2:
            lines += [f"## {name}", "", f"Failed: `{str(result['error'])[:500]}`", ""]
            continue
        if name == "conversion":
            from benchmarks import conversion

            baselines = [e["baseline_rss_mib"] for e in (sections.get("models") or {}).get("entries", [])
                         if "baseline_rss_mib" in e]
            lines.append(conversion.markdown(result, max(baselines) if baselines else None))
        elif name == "pipeline":
            from benchmarks import pipeline

            lines.append(pipeline.markdown(result, fastest))
        elif name == "models":
            from benchmarks import models

            lines.append(models.markdown(result))
        elif name == "training":
            from benchmarks import training_feed

            lines.append(training_feed.markdown(result))
        elif name == "predict":
            from benchmarks import predict

            lines.append(predict.markdown(result))
        else:
            from benchmarks import peer_monai

            lines.append(peer_monai.markdown(result))
    lines.append(gpu_section_markdown(report))
    return "\n".join(lines)


def merge_model_rows(report: dict, previous: dict) -> None:
    """After a ``--models`` run: the previous models section with the rows just measured in place of theirs.

    Every new row records ``measured`` (commit and time), since the section's own record (``load``) is the
    previous run's; a row of a model the previous section lacked is appended.
    """
    fresh = (report["sections"].get("models") or {}).get("entries")
    before = previous.get("sections", {}).get("models") or {}
    if fresh is None or not before.get("entries"):
        return
    stamp = {"commit": report["git_commit"], "at": report["finished_at"]}
    fresh = [{**entry, "measured": stamp} for entry in fresh]
    replaced = {(entry["model"], entry["size"]) for entry in fresh}
    kept = [entry for entry in before["entries"] if (entry["model"], entry["size"]) not in replaced]
    report["sections"]["models"] = {**before, "entries": kept + fresh}
    report["load"]["models"] = {**previous.get("load", {}).get("models", {}), "rows_measured_later": stamp}


def main(argv=None) -> int:
    """Command-line entry point; returns the process exit status (1 when a section failed outright)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats; small models only (~7 min)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--out", default="reports", help="folder for benchmarks.md and benchmarks.json")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR), help="cache of phantom pickles (git-ignored)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compute threads per process")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="models section: measure only these registry models and replace their rows in the "
                             "existing benchmarks.json (the other rows stay)")
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="only rewrite benchmarks.md in --out from an existing benchmarks.json (no measuring)")
    arguments = parser.parse_args(argv)
    if arguments.models:
        from lungkit.models import available_models

        unknown = sorted(set(arguments.models) - set(available_models()))
        if unknown:
            parser.error(f"--models: unknown registry model(s) {unknown}; known: {sorted(available_models())}")
    if arguments.render:
        report = json.loads(Path(arguments.render).read_text())
        write_text_atomic(render_markdown(report), Path(arguments.out) / "benchmarks.md")
        print(f"[bench] rendered {Path(arguments.out) / 'benchmarks.md'} from {arguments.render}")
        return 0

    work_dir = Path(arguments.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))
    started = time.perf_counter()
    from lungkit.evaluation import git_commit  # the commit every protocol records, -dirty with uncommitted code

    report = {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": arguments.quick,
        "threads": arguments.threads,
        "machine": machine_description(),
        "versions": versions(),
        "git_commit": git_commit(Path(__file__).resolve().parent.parent),
        "load": {},
        "sections": {},
    }
    failed = False
    try:
        for name in _RUN_ORDER:
            if name not in arguments.sections:
                continue
            print(f"[bench] {name} ...", flush=True)
            load_start, section_started = load_average(), time.perf_counter()
            try:
                report["sections"][name] = _run_section(name, arguments.quick, work_dir, arguments.threads, scratch,
                                                        arguments.models)
            except Exception as error:  # noqa: BLE001 - one broken section must not lose the others' figures
                failed = True
                print(f"[bench] {name} failed: {type(error).__name__}: {error}", flush=True)
                if arguments.models and name == "models":
                    # a --models run measures a few rows: its failure must not replace the section it left alone
                    continue
                report["sections"][name] = {"error": f"{type(error).__name__}: {error}"}
            section_wall = time.perf_counter() - section_started
            report["load"][name] = {"start": load_start, "end": load_average(), "wall_s": section_wall}
            print(f"[bench] {name} done in {section_wall:.0f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["wall_s"] = time.perf_counter() - started
    report["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for name in report["sections"]:
        report["load"][name]["measured"] = {"commit": report["git_commit"], "at": report["finished_at"]}
    out = Path(arguments.out)
    previous_path = out / "benchmarks.json"
    models_measured = "models" in report["sections"]
    if (set(arguments.sections) != set(SECTIONS) or arguments.models) and previous_path.is_file():
        # a partial run must not erase the sections it did not measure
        previous = json.loads(previous_path.read_text())
        for name, result in previous.get("sections", {}).items():
            if name not in report["sections"]:
                report["sections"][name] = result
                report["load"][name] = previous.get("load", {}).get(name, {})
                report["load"][name].setdefault("measured", {"commit": previous.get("git_commit", "?"),
                                                             "at": previous.get("finished_at", "?")})
    if arguments.models and models_measured and previous_path.is_file():
        merge_model_rows(report, json.loads(previous_path.read_text()))
    write_json_atomic(report, out / "benchmarks.json")
    write_text_atomic(render_markdown(report), out / "benchmarks.md")
    print(f"[bench] wrote {out / 'benchmarks.md'} and {out / 'benchmarks.json'} in {report['wall_s'] / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
