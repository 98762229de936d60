"""Quiet TensorFlow's start-up on a machine without an accelerator, without hiding real errors.

The TensorFlow wheel for Linux is built with CUDA, so on a CPU-only machine it still asks the CUDA driver for GPUs
the first time it lists devices and logs, at ERROR level::

    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ... UNKNOWN ERROR (303)

plus an INFO line advising to rebuild TensorFlow for AVX2/FMA. Every notebook and the CLI print them, and a
student reads them as failures. Measured with tensorflow 2.21.0 on a CPU-only Linux machine:

- ``CUDA_VISIBLE_DEVICES=""`` does not remove the cuInit line (the driver API is initialised all the same).
- ``TF_CPP_MIN_LOG_LEVEL=3`` removes it, but also every real C++ error, so it is not used.
- ``TF_ENABLED_DEVICE_TYPES=CPU,XLA_CPU`` makes TensorFlow skip its GPU device factories, so cuInit is never
  called; TensorFlow then logs one INFO line per skipped factory.
- ``TF_CPP_MIN_LOG_LEVEL=1`` hides INFO lines only (those, and the AVX2/FMA advice); warnings and errors stay.

:func:`quiet_cpu_tensorflow` sets those two variables, and only when no accelerator TensorFlow could use is present
and the user has not set them. It runs from ``lungkit/__init__.py``, i.e. before any TensorFlow import in the CLI
and in every notebook kernel that imports lungkit; the CLI's papermill kernels inherit the environment.

What stays: while TensorFlow's shared libraries load, before any setting is read, they print
``WARNING: All log messages before absl::InitializeLog() ...`` and ``cudart_stub.cc ... Could not find cuda drivers
on your machine, GPU will not be used.`` (even ``TF_CPP_MIN_LOG_LEVEL=3`` keeps them); that message is true.

To get TensorFlow's default behaviour back, set ``TF_ENABLED_DEVICE_TYPES=`` (empty: every device type) and/or
``TF_CPP_MIN_LOG_LEVEL=0`` before importing lungkit.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["CPU_ONLY_SETTINGS", "find_accelerator", "quiet_cpu_tensorflow"]

# CPU and the (legacy) XLA CPU device: every device factory TensorFlow has on a CPU-only machine except the GPU ones,
# so nothing but the failing GPU probe changes.
CPU_ONLY_SETTINGS: dict[str, str] = {
    "TF_ENABLED_DEVICE_TYPES": "CPU,XLA_CPU",
    # 1 = hide INFO only; WARNING and ERROR lines from TensorFlow's C++ side are still printed.
    "TF_CPP_MIN_LOG_LEVEL": "1",
}

# Device nodes and driver files that mean an accelerator may be usable: NVIDIA, AMD ROCm, Google TPU VMs.
_ACCELERATOR_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")
_ACCELERATOR_GLOBS = ("/dev/nvidia[0-9]*", "/dev/accel*")
# Colab / Cloud TPU runtimes announce themselves through these. Keep this and the /dev/accel* glob a superset of
# lungkit.training's TPU evidence: where training would look for a TPU, the TPU device factory must stay on.
_TPU_ENV = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")


def _libcuda_loadable() -> bool:
    # WSL2 and some containers expose the NVIDIA driver only as a library, without /proc/driver/nvidia.
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _module_installed(name: str) -> bool:
    # find_spec locates a top-level module without importing it.
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _tensorflow_plugins_dir() -> Path | None:
    # PluggableDevice packages (tensorflow-metal, intel-extension-for-tensorflow, ...) install shared libraries into
    # site-packages/tensorflow-plugins; TensorFlow would register their device types, which the allow-list would drop.
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    plugins = Path(next(iter(spec.submodule_search_locations))).parent / "tensorflow-plugins"
    return plugins if plugins.is_dir() and any(plugins.iterdir()) else None


def find_accelerator(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Say why an accelerator TensorFlow could use may be present, or return None when there is surely none.

    Conservative: anything that may be a GPU, TPU or TensorFlow device plugin counts, and so does any platform other
    than Linux (the macOS and Windows wheels have no CUDA to probe; tensorflow-metal registers a GPU there).

    Args:
        environ: environment to read the TPU variables from; ``os.environ`` when None.

    Returns:
        A short human-readable reason (e.g. ``"NVIDIA driver: /proc/driver/nvidia"``), or None.
    """
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return f"platform {sys.platform} (only Linux is checked)"
    for path in _ACCELERATOR_PATHS:
        if os.path.exists(path):
            return f"accelerator device or driver: {path}"
    for pattern in _ACCELERATOR_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return f"accelerator device: {found[0]}"
    for name in _TPU_ENV:
        if environ.get(name):
            return f"TPU runtime: {name} is set"
    if _module_installed("libtpu"):
        return "TPU runtime: libtpu is installed"
    plugins = _tensorflow_plugins_dir()
    if plugins is not None:
        return f"TensorFlow device plugins: {plugins}"
    if _libcuda_loadable():
        return "NVIDIA driver: libcuda.so.1 loads"
    return None


def quiet_cpu_tensorflow(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """On a machine without an accelerator, set the environment that keeps TensorFlow's expected CPU noise out.

    Sets :data:`CPU_ONLY_SETTINGS` (GPU device factories off, so no failing cuInit call; C++ INFO lines hidden,
    warnings and errors kept), each only where the environment does not already hold that variable, even an empty
    one: a value the user set always wins. Does nothing at all when :func:`find_accelerator` finds anything.
    Takes effect only if it runs before TensorFlow initialises its devices, hence the call in ``lungkit/__init__.py``.

    Args:
        environ: the environment to update; ``os.environ`` (so subprocesses such as papermill kernels inherit it)
            when None.

    Returns:
        The variables this call set, by name (empty when it set nothing).
    """
    environ = os.environ if environ is None else environ
    if all(name in environ for name in CPU_ONLY_SETTINGS):
        return {}
    if find_accelerator(environ) is not None:
        return {}
    applied = {name: value for name, value in CPU_ONLY_SETTINGS.items() if name not in environ}
    environ.update(applied)
    return applied
