"""Quiet TensorFlow start-up on a CPU-only machine: no cuInit error; real warnings and user settings kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungkit import device_env

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = tuple(device_env.CPU_ONLY_SETTINGS)


@pytest.fixture
def bare_linux(monkeypatch):
    """A Linux machine with no accelerator of any kind; returns the set of paths to pretend exist."""
    present: set[str] = set()
    monkeypatch.setattr(device_env.sys, "platform", "linux")
    monkeypatch.setattr(device_env.os.path, "exists", lambda path: path in present)
    monkeypatch.setattr(device_env.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(device_env, "_module_installed", lambda name: False)
    monkeypatch.setattr(device_env, "_tensorflow_plugins_dir", lambda: None)
    monkeypatch.setattr(device_env, "_libcuda_loadable", lambda: False)
    return present


def test_bare_linux_has_no_accelerator_and_gets_the_cpu_settings(bare_linux):
    assert device_env.find_accelerator({}) is None
    environ = {"HOME": "/home/student"}
    applied = device_env.quiet_cpu_tensorflow(environ)
    assert applied == {"TF_ENABLED_DEVICE_TYPES": "CPU,XLA_CPU", "TF_CPP_MIN_LOG_LEVEL": "1"}
    assert environ == {"HOME": "/home/student", **applied}
    # Level 1 hides INFO only; 2 or 3 would also hide TensorFlow's warnings / errors.
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.mark.parametrize(
    "sign",
    ["/proc/driver/nvidia", "/dev/kfd", "libcuda", "TPU_NAME", "libtpu", "plugins", "darwin"],
)
def test_any_sign_of_an_accelerator_leaves_the_environment_alone(bare_linux, monkeypatch, sign):
    environ = {}
    if sign.startswith("/"):
        bare_linux.add(sign)
    elif sign == "libcuda":  # WSL2: the driver is only a library
        monkeypatch.setattr(device_env, "_libcuda_loadable", lambda: True)
    elif sign == "TPU_NAME":
        environ["TPU_NAME"] = "local"
    elif sign == "libtpu":
        monkeypatch.setattr(device_env, "_module_installed", lambda name: name == "libtpu")
    elif sign == "plugins":
        monkeypatch.setattr(device_env, "_tensorflow_plugins_dir", lambda: Path("/site-packages/tensorflow-plugins"))
    else:
        monkeypatch.setattr(device_env.sys, "platform", sign)
    before = dict(environ)
    assert device_env.find_accelerator(environ) is not None
    assert device_env.quiet_cpu_tensorflow(environ) == {}
    assert environ == before


def test_accelerator_device_nodes_are_found_by_glob(bare_linux, monkeypatch):
    monkeypatch.setattr(device_env.glob, "glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    assert "/dev/nvidia0" in device_env.find_accelerator({})


@pytest.mark.parametrize(
    "user",
    [
        {"TF_CPP_MIN_LOG_LEVEL": "0"},
        {"TF_ENABLED_DEVICE_TYPES": ""},  # empty = every device type: the documented opt-out
        {"TF_ENABLED_DEVICE_TYPES": "CPU,GPU", "TF_CPP_MIN_LOG_LEVEL": "3"},
    ],
)
def test_a_value_the_user_set_is_never_overridden(bare_linux, user):
    environ = dict(user)
    applied = device_env.quiet_cpu_tensorflow(environ)
    for name, value in user.items():
        assert environ[name] == value
        assert name not in applied
    for name in SETTINGS:
        if name not in user:
            assert environ[name] == device_env.CPU_ONLY_SETTINGS[name]


def test_importing_lungkit_sets_os_environ_before_tensorflow_in_a_fresh_process():
    # The call sits in lungkit/__init__.py; a bare `import lungkit` must do it (every notebook imports lungkit first).
    script = (
        "import os, sys, lungkit\n"
        "print(int('tensorflow' in sys.modules))\n"
        "print(os.environ.get('TF_ENABLED_DEVICE_TYPES'))"
    )
    environ = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    tf_imported, device_types = done.stdout.split()
    assert tf_imported == "0"  # lungkit's import pulls in no TensorFlow, so the variables are set in time
    expected = "None" if device_env.find_accelerator() else device_env.CPU_ONLY_SETTINGS["TF_ENABLED_DEVICE_TYPES"]
    assert device_types == expected


# A CPU-only machine's TensorFlow start-up, as the CLI process sees it. The tf.data cache left half read makes
# TensorFlow's C++ side log a real WARNING, which must still come through.
_TF_SCRIPT = """
import lungkit
import tensorflow as tf
print(tf.config.list_physical_devices())
print(float(tf.reduce_sum(tf.ones((2, 2)))))
for _ in tf.data.Dataset.range(10).cache().take(2):
    pass
print("built_with_cuda", tf.test.is_built_with_cuda())
"""


@pytest.mark.slow
@pytest.mark.skipif(device_env.find_accelerator() is not None, reason="needs a machine without an accelerator")
@pytest.mark.parametrize("user_opt_out", [False, True])
def test_tensorflow_on_cpu_prints_no_cuinit_error_but_keeps_real_warnings(user_opt_out):
    environ = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    if user_opt_out:
        environ["TF_ENABLED_DEVICE_TYPES"] = ""  # the user asks for every device type: lungkit must not override
    done = subprocess.run(
        [sys.executable, "-c", _TF_SCRIPT], cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CPU:0" in done.stdout and "4.0" in done.stdout
    assert "IProgress" not in done.stderr
    assert "did not fully read the dataset being cached" in done.stderr  # a C++ WARNING still shows
    if user_opt_out:
        # The control: with the user's setting honoured, this machine's CUDA build prints the error again.
        if "built_with_cuda True" in done.stdout:
            assert "cuInit" in done.stderr
    else:
        assert "cuInit" not in done.stderr
        assert "cpu_feature_guard" not in done.stderr  # INFO: "rebuild TensorFlow with the appropriate flags"
