"""Run the notebooks headless with papermill: the main job, CI's smoke run and Colab/Kaggle batch runs.

Every notebook in ``notebooks/`` has a cell tagged ``parameters`` with at least ``profile``, ``data_dir``,
``run_dir``, ``reports_dir`` and ``seed``. :func:`run_notebooks` executes them in file-name order (the numeric
prefixes are the story's order), each into ``<run_dir>/notebooks/<name>.ipynb`` with its outputs, and stops at the
first failure with an error that names the notebook, the cell and the exception, and points at the executed copy.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised while papermill executed it."""

    def __init__(self, notebook: Path, cell_index: int | None, error: str, executed_copy: Path):
        self.notebook = notebook
        self.cell_index = cell_index
        self.error = error
        self.executed_copy = executed_copy
        where = f"cell {cell_index}" if cell_index is not None else "start-up (before any cell ran)"
        super().__init__(f"notebook {notebook.name} failed in {where}: {error}\n  executed copy: {executed_copy}")


@dataclass
class NotebookRun:
    """What happened to one notebook."""

    notebook: str
    output: str
    seconds: float
    status: str  # "ok" or "failed"
    error: str = ""


def discover_notebooks(notebooks_dir: str | Path = DEFAULT_NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """Notebooks to run, in file-name order.

    Args:
        notebooks_dir: folder holding the ``.ipynb`` files.
        only: keep only notebooks whose name starts with one of these prefixes (e.g. ``["00", "10"]``).

    Raises:
        FileNotFoundError: if the folder holds no notebook (or none matches ``only``).
    """
    notebooks_dir = Path(notebooks_dir)
    notebooks = sorted(p for p in notebooks_dir.glob("*.ipynb") if not p.name.startswith("."))
    if only:
        notebooks = [p for p in notebooks if any(p.name.startswith(prefix) for prefix in only)]
    if not notebooks:
        raise FileNotFoundError(f"no notebooks to run in {notebooks_dir} (filter: {only})")
    return notebooks


def new_run_dir(runs_root: str | Path, profile: str) -> Path:
    """A fresh ``runs/<run-id>/`` folder; the id is the UTC time plus the profile, so runs sort by time."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(runs_root) / f"{stamp}-{profile}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(runs_root) / f"{stamp}-{profile}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def run_notebook(
    notebook: str | Path,
    output: str | Path,
    parameters: dict,
    cwd: str | Path | None = None,
    kernel_name: str | None = None,
    log_output: bool = True,
) -> NotebookRun:
    """Execute one notebook with papermill.

    Args:
        notebook: the source notebook (never modified).
        output: where the executed copy (with outputs) is written.
        parameters: values injected after the ``parameters`` cell.
        cwd: working directory of the kernel; the repository root when None.
        kernel_name: Jupyter kernel; papermill's default (the notebook's, ``python3``) when None.
        log_output: stream cell outputs to this process's log, as MONAI's runner does.

    Raises:
        NotebookFailed: naming the notebook, the failing cell and the error.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook, output = Path(notebook), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(cwd or REPO_ROOT),
            kernel_name=kernel_name,
            log_output=log_output,
            progress_bar=False,
        )
    except PapermillExecutionError as error:
        # cell_index counts every cell of the executed copy (papermill's injected-parameters cell included);
        # the first source line lets a reader find the cell in the source notebook as well
        first_line = (error.source or "").strip().splitlines()[:1]
        raise NotebookFailed(
            notebook,
            error.cell_index,
            f"{error.ename}: {error.evalue}" + (f"  [cell starts: {first_line[0][:80]!r}]" if first_line else ""),
            output,
        ) from error
    except Exception as error:  # kernel death, missing kernel, invalid notebook JSON ...
        raise NotebookFailed(notebook, None, f"{type(error).__name__}: {error}", output) from error
    return NotebookRun(notebook.name, str(output), time.perf_counter() - start, "ok")


def run_notebooks(
    run_dir: str | Path,
    profile: str = "quick",
    data_dir: str | None = None,
    reports_dir: str | Path | None = None,
    seed: int = 0,
    notebooks_dir: str | Path = DEFAULT_NOTEBOOKS_DIR,
    only: list[str] | None = None,
    extra_parameters: dict | None = None,
    kernel_name: str | None = None,
    log_output: bool = True,
) -> list[NotebookRun]:
    """Run the notebooks in order, stopping at the first failure.

    Args:
        run_dir: the run's folder; every notebook reads and writes inside it.
        profile: ``smoke``, ``quick`` or ``paper`` (see :mod:`lungkit.profiles`).
        data_dir: folder with the real Lung-RADS pickles; the built-in phantom when None or empty.
        reports_dir: where the paper tables go; ``<repo>/reports`` when None.
        seed: one seed for data generation, splits, augmentation and training.
        notebooks_dir: folder of the notebooks.
        only: run only notebooks whose names start with these prefixes.
        extra_parameters: further papermill parameters for every notebook.
        kernel_name: Jupyter kernel name.
        log_output: stream cell outputs.

    Returns:
        One :class:`NotebookRun` per notebook run; also written to ``<run_dir>/notebook_runs.json``.

    Raises:
        NotebookFailed: at the first failing notebook (the runs before it are recorded in the JSON file).
    """
    from lungkit.profiles import get_profile

    get_profile(profile)  # fail before starting any kernel on a typo
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    reports_dir = Path(reports_dir).resolve() if reports_dir else REPO_ROOT / "reports"
    parameters = {
        "profile": profile,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else "",
        "run_dir": str(run_dir),
        "reports_dir": str(reports_dir),
        "seed": int(seed),
        **(extra_parameters or {}),
    }
    runs: list[NotebookRun] = []
    record = run_dir / "notebook_runs.json"

    def save_record():
        record.write_text(json.dumps({"parameters": parameters, "notebooks": [r.__dict__ for r in runs]}, indent=2))

    for notebook in discover_notebooks(notebooks_dir, only):
        output = run_dir / "notebooks" / notebook.name
        print(f"[lungkit] running {notebook.name} (profile={profile}) -> {output}", flush=True)
        try:
            runs.append(run_notebook(notebook, output, parameters, kernel_name=kernel_name, log_output=log_output))
        except NotebookFailed as failure:
            runs.append(NotebookRun(notebook.name, str(output), 0.0, "failed", str(failure)))
            save_record()
            raise
        print(f"[lungkit] {notebook.name} done in {runs[-1].seconds:.0f} s", flush=True)
        save_record()
    return runs


def main_reproduce(profile: str, data_dir: str | None, runs_root: str | Path, reports_dir: str | None, seed: int,
                   only: list[str] | None) -> int:
    """The main job: a fresh run folder, every notebook in order, a non-zero exit naming what failed."""
    run_dir = new_run_dir(runs_root, profile)
    start = time.perf_counter()
    try:
        runs = run_notebooks(run_dir, profile=profile, data_dir=data_dir, reports_dir=reports_dir, seed=seed, only=only)
    except NotebookFailed as failure:
        print(f"\n[lungkit] FAILED: {failure}", file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    print(f"\n[lungkit] {len(runs)} notebooks ran in {total / 60:.1f} min; run folder {run_dir}")
    for run in runs:
        print(f"  {run.notebook:40s} {run.seconds:7.0f} s")
    return 0
