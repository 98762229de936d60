"""The papermill runner: order, parameters, and a failure that names the notebook and the cell."""

from __future__ import annotations

import json

import nbformat
import pytest

from lungkit.runner import NotebookFailed, discover_notebooks, new_run_dir, run_notebooks


def _write_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"\ndata_dir = ""\nrun_dir = ""\nreports_dir = ""\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_discover_orders_by_name_and_filters(tmp_path):
    for name in ("10_b.ipynb", "00_a.ipynb", "90_c.ipynb"):
        _write_notebook(tmp_path / name, [])
    assert [p.name for p in discover_notebooks(tmp_path)] == ["00_a.ipynb", "10_b.ipynb", "90_c.ipynb"]
    assert [p.name for p in discover_notebooks(tmp_path, only=["10"])] == ["10_b.ipynb"]
    with pytest.raises(FileNotFoundError):
        discover_notebooks(tmp_path / "empty")


def test_new_run_dir_is_unique(tmp_path):
    first, second = new_run_dir(tmp_path, "smoke"), new_run_dir(tmp_path, "smoke")
    assert first != second and first.is_dir() and second.is_dir()


def test_runner_injects_parameters_and_stops_at_failing_cell(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    _write_notebook(
        notebooks / "00_ok.ipynb",
        ["from pathlib import Path\nPath(run_dir, 'seen.json').write_text(repr((profile, seed)))"],
    )
    _write_notebook(notebooks / "10_fails.ipynb", ["x = 1", "raise ValueError('broken on purpose')"])
    _write_notebook(notebooks / "20_never.ipynb", ["open(run_dir + '/never', 'w')"])
    run_dir = tmp_path / "run"
    with pytest.raises(NotebookFailed) as failure:
        run_notebooks(run_dir, profile="smoke", seed=7, notebooks_dir=notebooks, log_output=False)
    message = str(failure.value)
    assert "10_fails.ipynb" in message and "ValueError: broken on purpose" in message and "cell" in message
    assert (run_dir / "seen.json").read_text() == "('smoke', 7)"
    assert not (run_dir / "never").exists()
    record = json.loads((run_dir / "notebook_runs.json").read_text())
    assert [r["status"] for r in record["notebooks"]] == ["ok", "failed"]


def test_unknown_profile_is_refused_before_any_kernel(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        run_notebooks(tmp_path, profile="fast", notebooks_dir=tmp_path)
