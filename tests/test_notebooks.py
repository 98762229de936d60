"""Every notebook in notebooks/ runs headless with papermill at profile=smoke; this is how CI reruns the papers.

New notebooks are picked up by the glob, without editing this file. They run in file-name order in one shared run
folder, as the main job runs them, so later notebooks reuse the data the earlier ones converted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungkit.runner import DEFAULT_NOTEBOOKS_DIR, discover_notebooks, run_notebook

NOTEBOOKS = discover_notebooks(DEFAULT_NOTEBOOKS_DIR) if any(DEFAULT_NOTEBOOKS_DIR.glob("*.ipynb")) else []
REQUIRED_PARAMETERS = ("profile", "data_dir", "run_dir", "reports_dir", "seed")


def _parameters_cell(notebook: Path) -> dict:
    cells = json.loads(notebook.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: needs exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {DEFAULT_NOTEBOOKS_DIR}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_is_committed_clean(notebook: Path):
    cell = _parameters_cell(notebook)
    source = "".join(cell["source"])
    for name in REQUIRED_PARAMETERS:
        assert f"{name} =" in source, f"{notebook.name}: parameters cell lacks {name!r}"
    for index, c in enumerate(json.loads(notebook.read_text())["cells"]):
        if c["cell_type"] == "code":
            assert not c.get("outputs") and not c.get("execution_count"), f"{notebook.name}: cell {index} has outputs"


@pytest.fixture(scope="module")
def smoke_run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke_run")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs_at_smoke_profile(notebook: Path, smoke_run_dir: Path):
    parameters = {
        "profile": "smoke",
        "data_dir": "",
        "run_dir": str(smoke_run_dir),
        "reports_dir": str(smoke_run_dir / "reports"),
        "seed": 0,
    }
    result = run_notebook(notebook, smoke_run_dir / "notebooks" / notebook.name, parameters, log_output=False)
    assert result.status == "ok"
    assert Path(result.output).is_file()
