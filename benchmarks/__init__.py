"""lungkit benchmarks: speed and memory of conversion, input pipeline and models, and a MONAI peer comparison.

Run ``python -m benchmarks.run`` (``make bench``); see ``benchmarks/README.md``. The benchmarks are not tests:
nothing here asserts a time, and CI does not run them.

This module is the measurement core every section shares:

- every figure is a :func:`summarise` of several timed repeats taken after a warm-up (median, min, max);
- every measurement that reports memory runs in a fresh child process (:func:`run_child`), so its peak resident
  set size (``ru_maxrss``) belongs to that measurement alone and not to whatever ran before it;
- children get the same thread settings (:func:`thread_environment`, :func:`configure_tensorflow_threads`), so a
  TensorFlow child and a PyTorch child compete on equal terms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

#: Where cached phantom pickles and scratch datasets live (git-ignored).
DEFAULT_WORK_DIR = Path(__file__).resolve().parent / "_work"
_REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def summarise(samples: Sequence[float]) -> dict:
    """Median, min and max of repeated measurements.

    Args:
        samples: one value per timed repeat (warm-up runs excluded).

    Returns:
        ``{"median", "min", "max", "n", "samples"}``.

    Raises:
        ValueError: if ``samples`` is empty.
    """
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("summarise needs at least one sample")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": values,
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other processes on the machine make timings noisy)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB (from ``/proc/self/statm``; the peak where unavailable)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def thread_environment(threads: int) -> dict[str, str]:
    """Environment variables giving a child ``threads`` compute threads in every numeric library.

    Args:
        threads: threads per process (the benchmark's ``--threads``, default all cores).

    Returns:
        Variables for OpenMP / MKL / OpenBLAS (PyTorch and numpy read these) and quiet TensorFlow logs.
    """
    value = str(int(threads))
    return {
        "OMP_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
        "OPENBLAS_NUM_THREADS": value,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }


def configure_tensorflow_threads(threads: int) -> None:
    """Give TensorFlow ``threads`` intra-op and ``threads`` inter-op threads (call before any TF op runs).

    PyTorch children get the same numbers through ``torch.set_num_threads`` / ``set_num_interop_threads``.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    tf.config.threading.set_inter_op_parallelism_threads(int(threads))


def write_json_atomic(payload: dict, path: str | Path) -> None:
    """Write ``payload`` as indented JSON, atomically (lungkit's own writer: temp file + ``os.replace``)."""
    write_text_atomic(json.dumps(payload, indent=2, default=str) + "\n", path)


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write ``text`` atomically with :func:`lungkit.data.export.write_text_atomic` (arguments in this order)."""
    from lungkit.data.export import write_text_atomic as write_atomically

    write_atomically(path, text)


def run_child(
    module: str,
    spec: dict,
    timeout_s: float,
    threads: int,
    scratch_dir: str | Path,
    extra_env: dict[str, str] | None = None,
) -> dict:
    """Run one measurement in a fresh Python process and return what it measured.

    The child is ``python -m <module> --child SPEC.json --result RESULT.json``; it must call :func:`child_main`.

    Args:
        module: e.g. ``"benchmarks.models"``.
        spec: what to measure (JSON-serialisable); passed to the child's handler.
        timeout_s: the child is killed after this many seconds.
        threads: compute threads of the child (:func:`thread_environment`).
        scratch_dir: folder for the spec and result files.
        extra_env: more environment variables for the child (e.g. ``OMP_WAIT_POLICY``).

    Returns:
        The handler's result dict plus ``wall_s`` (child wall time, imports included). On failure or timeout:
        ``{"error": "...", "wall_s": ...}`` with the tail of the child's output, so one failing measurement
        does not stop the benchmark.
    """
    scratch_dir = Path(scratch_dir)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    handle, spec_name = tempfile.mkstemp(prefix="spec-", suffix=".json", dir=scratch_dir)
    os.close(handle)
    spec_path = Path(spec_name)
    result_path = spec_path.with_name(spec_path.name.replace("spec-", "result-"))
    spec_path.write_text(json.dumps(spec, default=str))
    environment = {**os.environ, **thread_environment(threads), **(extra_env or {})}
    # the benchmarks package is found from the repository root whatever the caller's working directory
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPOSITORY_ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", module, "--child", str(spec_path), "--result", str(result_path)]
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=timeout_s, cwd=_REPOSITORY_ROOT
        )
        wall = time.perf_counter() - started
        if completed.returncode != 0 or not result_path.is_file():
            reported = json.loads(result_path.read_text()).get("error") if result_path.is_file() else None
            tail = reported or (completed.stdout + completed.stderr)[-3000:]
            return {"error": f"child exited with {completed.returncode}: {tail}", "wall_s": wall}
        result = json.loads(result_path.read_text())
        result["wall_s"] = wall
        return result
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": time.perf_counter() - started}
    finally:
        spec_path.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)


def child_main(handler: Callable[[dict], dict], argv: Sequence[str] | None = None) -> None:
    """Entry point of a child process started by :func:`run_child`.

    Reads the spec, calls ``handler(spec)``, writes its result dict (plus ``peak_rss_mib``) atomically. An
    exception is written as ``{"error": traceback}`` and the process exits with status 1.

    Args:
        handler: the measurement; gets the spec dict, returns a JSON-serialisable dict.
        argv: command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="benchmark child process (started by benchmarks.run)")
    parser.add_argument("--child", required=True, help="spec JSON file")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    arguments = parser.parse_args(argv)
    spec = json.loads(Path(arguments.child).read_text())
    try:
        result = handler(spec)
        result.setdefault("peak_rss_mib", peak_rss_mib())
        write_json_atomic(result, arguments.result)
    except Exception:  # noqa: BLE001 - the parent records the failure and goes on with the next measurement
        write_json_atomic({"error": traceback.format_exc()[-3000:]}, arguments.result)
        sys.exit(1)


def time_repeats(function: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Call ``function`` ``warmup`` times untimed, then ``repeats`` times timed; return the seconds of each."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


__all__ = [
    "DEFAULT_WORK_DIR",
    "child_main",
    "configure_tensorflow_threads",
    "current_rss_mib",
    "load_average",
    "peak_rss_mib",
    "run_child",
    "summarise",
    "thread_environment",
    "time_repeats",
    "write_json_atomic",
    "write_text_atomic",
]
