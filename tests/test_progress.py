"""Progress bars: the text bar outside a kernel, the widget bar with ipywidgets, and never tqdm's IProgress warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from lungkit import device_env, progress

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_progress_bar_outside_a_kernel_is_the_text_bar():
    assert progress.in_notebook_kernel() is False
    assert progress.progress_bar_class() is progress.text_tqdm
    with progress.progress_bar(range(3), disable=True) as bar:
        assert list(bar) == [0, 1, 2]


@pytest.fixture
def fake_kernel(monkeypatch):
    """Make this process look like a Jupyter kernel to lungkit.progress."""
    shell = SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda: shell))


def test_progress_bar_in_a_kernel_without_ipywidgets_is_text_and_silent(fake_kernel, monkeypatch):
    import tqdm.notebook

    monkeypatch.setattr(tqdm.notebook, "IProgress", None)  # what tqdm.notebook sets when ipywidgets is missing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = progress.progress_bar_class()
    assert progress.in_notebook_kernel() is True
    assert cls is progress.text_tqdm
    assert not [w for w in caught if "IProgress" in str(w.message)]


def test_progress_bar_in_a_kernel_with_ipywidgets_is_the_widget_bar(fake_kernel, monkeypatch):
    import tqdm.notebook

    monkeypatch.setattr(tqdm.notebook, "IProgress", object)
    assert progress.progress_bar_class() is tqdm.notebook.tqdm


# A real kernel (what papermill and Jupyter run) with ipywidgets hidden. Cell 1 is the kit's path; cell 2 is the
# control: tqdm.auto in the same kernel does print the warning this module avoids.
_KERNEL_SCRIPT = """
import json, sys
import nbformat
from nbclient import NotebookClient

cells = [
    "import sys\\nsys.modules['ipywidgets'] = None\\n"
    "import lungkit\\nfrom lungkit.progress import progress_bar\\n"
    "for _ in progress_bar(range(3), desc='kit bar'):\\n    pass",
    "import tqdm.auto",
]
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
NotebookClient(nb, timeout=120, kernel_name="python3").execute()
texts = ["".join(out.get("text", "") for out in cell.outputs) for cell in nb.cells]
print(json.dumps(texts))
"""


@pytest.mark.slow
def test_notebook_kernel_without_ipywidgets_prints_no_iprogress_warning():
    environ = {name: value for name, value in os.environ.items() if name not in device_env.CPU_ONLY_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", _KERNEL_SCRIPT], cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kit_cell, control_cell = json.loads(done.stdout.strip().splitlines()[-1])
    assert "kit bar" in kit_cell and "3/3" in kit_cell  # the text bar ran
    assert "IProgress" not in kit_cell and "IProgress" not in done.stderr
    assert "IProgress" in control_cell
