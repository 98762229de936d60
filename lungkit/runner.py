"""Run the notebooks headless with papermill: the main job, CI's smoke run and Colab/Kaggle batch runs.

Every notebook in ``notebooks/`` has a cell tagged ``parameters`` with at least ``profile``, ``data_dir``,
``run_dir``, ``reports_dir`` and ``seed``. :func:`run_notebooks` executes them in file-name order (the numeric
prefixes are the story's order), each into ``<run_dir>/notebooks/<name>.ipynb`` with its outputs, and stops at the
first failure with an error that names the notebook, the cell and the exception, and points at the executed copy.

Notebooks can run side by side (``jobs=2``, ``make reproduce``'s default): a notebook names in its metadata the
notebooks whose outputs it reads, ``{"lungkit": {"needs": ["00", "10"]}}`` (prefixes of earlier notebooks), and
starts as soon as those ran ok; a notebook without ``needs`` waits for every notebook before it, so the order of a
one-at-a-time run is unchanged. Each notebook is one kernel process with its own seeds, so running two at once
changes no result, only the wall times in the protocols.

A run folder can be continued: ``<run_dir>/notebook_runs.json`` records the parameters and every notebook's outcome,
and a rerun into the same folder skips the notebooks recorded ``ok`` with the same parameters, reruns the failed or
unfinished one (its training resumes from the last completed epoch, because it gets the same ``run_dir``) and refuses
a folder whose recorded profile, data folder or seed differ from the ones asked for.
"""

from __future__ import annotations

import datetime as _dt
import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUN_RECORD_NAME = "notebook_runs.json"
#: The parameters that make two runs the same run: a folder recorded with other values is never continued.
RUN_IDENTITY_PARAMETERS = ("profile", "data_dir", "seed")

DEAD_KERNEL_HINT = (
    "the kernel died: most often the process ran out of memory (check `dmesg` for the OOM killer; reduce the "
    "batch_size or use a smaller profile)"
)


class NotebookFailed(RuntimeError):
    """A notebook raised while papermill executed it."""

    def __init__(self, notebook: Path, cell_index: int | None, error: str, executed_copy: Path):
        self.notebook = notebook
        self.cell_index = cell_index
        self.error = error
        self.executed_copy = executed_copy
        where = f"cell {cell_index}" if cell_index is not None else "start-up (before any cell ran)"
        super().__init__(f"notebook {notebook.name} failed in {where}: {error}\n  executed copy: {executed_copy}")


class RunParametersMismatch(ValueError):
    """A run folder was recorded with other parameters than the ones asked for, so it cannot be continued."""


@dataclass
class NotebookRun:
    """What happened to one notebook."""

    notebook: str
    output: str
    seconds: float
    status: str  # "ok", "failed", "running" (started, not finished: killed), "skipped" (ok earlier) or "left out"
    error: str = ""
    parameters: dict = field(default_factory=dict)  # what it ran with: a rerun skips it only with the same ones


def discover_notebooks(notebooks_dir: str | Path = DEFAULT_NOTEBOOKS_DIR, only: list[str] | None = None) -> list[Path]:
    """Notebooks to run, in file-name order.

    Args:
        notebooks_dir: folder holding the ``.ipynb`` files.
        only: keep only notebooks whose name starts with one of these prefixes (e.g. ``["00", "10"]``).

    Raises:
        FileNotFoundError: if the folder holds no notebook, or a prefix of ``only`` matches none (a typo in a list
            of prefixes must not silently drop a notebook).
    """
    notebooks_dir = Path(notebooks_dir)
    notebooks = sorted(p for p in notebooks_dir.glob("*.ipynb") if not p.name.startswith("."))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks to run in {notebooks_dir}")
    if only:
        unmatched = [prefix for prefix in only if not any(p.name.startswith(prefix) for p in notebooks)]
        if unmatched:
            raise FileNotFoundError(
                f"--only prefix(es) {unmatched} match no notebook in {notebooks_dir}; "
                f"expected prefixes of {[p.name for p in notebooks]}"
            )
        notebooks = [p for p in notebooks if any(p.name.startswith(prefix) for prefix in only)]
    return notebooks


def main_job_exclusion(notebook: Path, profile: str) -> str | None:
    """Why the main job leaves ``notebook`` out at ``profile``, or None when it runs.

    A notebook names the profiles it is too costly for in its metadata, with the measurement that says so:
    ``{"lungkit": {"main_job_leaves_out": {"quick": "reason"}}}``. Only the whole main job honours it; ``--only``
    runs the notebook anyway. The notebook's table rows then stay ``not reproduced yet``.
    """
    reasons = _notebook_metadata(notebook).get("main_job_leaves_out") or {}
    return reasons.get(profile) if isinstance(reasons, dict) else None


def _notebook_metadata(notebook: Path) -> dict:
    """The notebook's ``lungkit`` metadata block; empty when absent or unreadable (the run itself reports that)."""
    try:
        return json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {}).get("lungkit") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def notebook_needs(notebooks: list[Path]) -> dict[str, list[str]]:
    """Which notebooks each notebook waits for before it may start.

    A notebook's metadata ``{"lungkit": {"needs": ["00", "10"]}}`` names, by prefix, the earlier notebooks whose
    outputs it reads (converted data, a trained model, another result); without ``needs`` it waits for every notebook
    before it. Only the notebooks in ``notebooks`` count: with ``--only``, a needed notebook that was not selected is
    taken as done (it ran earlier in the run folder, or the user chose to go without it).

    Args:
        notebooks: the notebooks of the run, in file-name order (:func:`discover_notebooks`).

    Returns:
        notebook name -> names of the notebooks in ``notebooks`` it waits for.

    Raises:
        ValueError: naming the notebook, when ``needs`` is not a list of strings, or a prefix matches no earlier
            notebook of its folder (a later one would break the file-name order every run keeps).
    """
    names = [notebook.name for notebook in notebooks]
    # every notebook of the folder (not only the selected ones), for checking the prefixes
    folder = [p.name for p in discover_notebooks(notebooks[0].parent)] if notebooks else []
    needs: dict[str, list[str]] = {}
    for position, notebook in enumerate(notebooks):
        declared = _notebook_metadata(notebook).get("needs")
        if declared is None:
            needs[notebook.name] = names[:position]
            continue
        if not isinstance(declared, list) or not all(isinstance(prefix, str) and prefix for prefix in declared):
            raise ValueError(f"{notebook}: metadata lungkit.needs must be a list of notebook-name prefixes, got "
                             f"{declared!r}")
        waits = []
        for prefix in declared:
            earlier = [name for name in folder if name.startswith(prefix) and name < notebook.name]
            if not earlier:
                raise ValueError(f"{notebook}: metadata lungkit.needs prefix {prefix!r} matches no earlier notebook "
                                 f"in {notebook.parent}; expected prefixes of {[n for n in folder if n < notebook.name]}")
            waits += [name for name in names[:position] if name in earlier and name not in waits]
        needs[notebook.name] = waits
    return needs


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


def _cell_that_was_running(executed_copy: Path) -> tuple[int, str] | None:
    """The cell a kernel was executing when it died, read from the partial copy papermill writes as it goes.

    papermill marks a cell ``running`` while it executes; when the kernel dies it may already have relabelled every
    cell, so the last code cell that has a start time (or an execution count) is the one that was running.

    Returns:
        (index in the executed copy, first source line), or None when no cell had started (or no copy exists).
    """
    try:
        cells = json.loads(executed_copy.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    started = None
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        papermill_metadata = cell.get("metadata", {}).get("papermill", {})
        if papermill_metadata.get("status") == "running":
            started = index
            break
        if papermill_metadata.get("start_time") or cell.get("execution_count"):
            started = index
    if started is None:
        return None
    source = cells[started].get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    first_line = source.strip().splitlines()[:1]
    return started, first_line[0][:80] if first_line else ""


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
        NotebookFailed: naming the notebook, the failing cell (index in the executed copy and its first source
            line) and the error; when the kernel died, the cell it was running and the likely cause.
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
        # a kernel that dies mid-cell raises here, not as an execution error: the partial copy says which cell
        running = _cell_that_was_running(output)
        message = f"{type(error).__name__}: {error}"
        if running is not None:
            message += f"  [cell starts: {running[1]!r}]"
        if type(error).__name__ == "DeadKernelError" or "kernel died" in str(error).lower():
            message += f"; {DEAD_KERNEL_HINT}"
        raise NotebookFailed(notebook, running[0] if running else None, message, output) from error
    return NotebookRun(notebook.name, str(output), time.perf_counter() - start, "ok", parameters=dict(parameters))


def read_run_record(run_dir: str | Path) -> dict | None:
    """The ``notebook_runs.json`` of a run folder, or None when the folder has none.

    Raises:
        ValueError: naming the file, when it is not the JSON object :func:`run_notebooks` writes.
    """
    path = Path(run_dir) / RUN_RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); expected the record lungkit reproduce writes") from error
    if not isinstance(record, dict) or not isinstance(record.get("parameters"), dict) \
            or not isinstance(record.get("notebooks"), list):
        raise ValueError(f"{path}: expected an object with 'parameters' (object) and 'notebooks' (list)")
    return record


def _identity(profile: str, data_dir: str | None, seed: int) -> dict:
    """The run-identity parameters as :func:`run_notebooks` records them (data folder resolved, '' for phantom)."""
    return {"profile": profile, "data_dir": str(Path(data_dir).resolve()) if data_dir else "", "seed": int(seed)}


def check_run_parameters(run_dir: str | Path, profile: str, data_dir: str | None, seed: int) -> dict | None:
    """Refuse to continue a run folder that was recorded with another profile, data folder or seed.

    Args:
        run_dir: the folder to continue; one without ``notebook_runs.json`` (or not there yet) is accepted.
        profile, data_dir, seed: what the new run asks for.

    Returns:
        The folder's record, or None when it has none.

    Raises:
        RunParametersMismatch: naming the folder and every parameter that differs, recorded vs asked.
        ValueError: when the record cannot be read.
    """
    record = read_run_record(run_dir)
    if record is None:
        return None
    asked = _identity(profile, data_dir, seed)
    differences = [
        f"{name} recorded {record['parameters'].get(name)!r}, asked {asked[name]!r}"
        for name in RUN_IDENTITY_PARAMETERS
        if record["parameters"].get(name) != asked[name]
    ]
    if differences:
        raise RunParametersMismatch(
            f"run folder {run_dir} was made with other parameters ({'; '.join(differences)}); continuing it would "
            "mix two runs. Continue it with the recorded values, or start a new run (without --run-dir / --resume)."
        )
    return record


def find_resumable_run(runs_root: str | Path, profile: str, data_dir: str | None, seed: int) -> Path:
    """The newest run folder under ``runs_root`` recorded with the same profile, data folder and seed.

    Newest means the most recently written ``notebook_runs.json`` (a run's record is rewritten after every notebook),
    so a run that crashed is found even when a later run with other parameters exists.

    Raises:
        FileNotFoundError: when no run folder matches, saying what was looked for.
    """
    asked = _identity(profile, data_dir, seed)
    candidates = []
    for record_path in Path(runs_root).glob(f"*/{RUN_RECORD_NAME}"):
        try:
            record = read_run_record(record_path.parent)
        except ValueError:
            continue  # an unreadable record is no run to continue; --run-dir on it says why
        if all(record["parameters"].get(name) == asked[name] for name in RUN_IDENTITY_PARAMETERS):
            candidates.append((record_path.stat().st_mtime, record_path.parent.name, record_path.parent))
    if not candidates:
        raise FileNotFoundError(
            f"--resume: no run folder under {runs_root} was recorded with profile {asked['profile']!r}, data dir "
            f"{asked['data_dir'] or '(phantom)'!r} and seed {asked['seed']}; start a new run without --resume"
        )
    return max(candidates)[2]


def _save_record(record_path: Path, parameters: dict, entries: dict[str, dict]) -> None:
    # atomic: a run killed while writing must leave the previous record readable, or it cannot be continued
    from lungkit.data.export import write_text_atomic

    record = {"parameters": parameters, "notebooks": [entries[name] for name in sorted(entries)]}
    write_text_atomic(record_path, json.dumps(record, indent=2))


def _run_notebook_in_worker(notebook: str, output: str, parameters: dict, kernel_name: str | None,
                            log_output: bool) -> dict:
    """:func:`run_notebook` in a worker process; the outcome as plain data (a raised error may not unpickle)."""
    try:
        return {"run": run_notebook(notebook, output, parameters, kernel_name=kernel_name,
                                    log_output=log_output).__dict__}
    except NotebookFailed as failure:
        return {"failure": {"cell_index": failure.cell_index, "error": failure.error}}


def check_jobs(jobs) -> int:
    """``jobs`` (notebooks run at once) as an int; ValueError below 1, before any kernel starts."""
    if int(jobs) < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs} (the number of notebooks run at once)")
    return int(jobs)


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
    jobs: int = 1,
) -> list[NotebookRun]:
    """Run the notebooks in order, stopping at the first failure; continue a run folder that has a record.

    A notebook recorded ``ok`` in ``<run_dir>/notebook_runs.json`` with exactly these parameters (and whose executed
    copy exists) is skipped; every other one runs. Training inside a notebook resumes from its last completed epoch
    because it gets the same ``run_dir``.

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
        jobs: notebooks run at once, each in its own worker process; a notebook starts once the notebooks its
            metadata ``needs`` (:func:`notebook_needs`) ran ok. 1 runs them one after another in this process. After
            a failure no further notebook starts; the ones already running finish and are recorded.

    Returns:
        One :class:`NotebookRun` per selected notebook in file-name order, status ``ok``, ``skipped`` (ok in an
        earlier attempt) or ``left out``; the record ``<run_dir>/notebook_runs.json`` keeps every notebook's latest
        outcome.

    Raises:
        NotebookFailed: for the first notebook that failed (the others' outcomes are recorded in the JSON file).
        RunParametersMismatch: when ``run_dir`` was recorded with another profile, data folder or seed.
        ValueError: for an unknown profile, ``jobs`` below 1 or a notebook's malformed ``needs``, before any kernel
            starts.
        FileNotFoundError: when there is no notebook to run or a prefix of ``only`` matches none.
    """
    from lungkit.profiles import get_profile

    get_profile(profile)  # fail before starting any kernel on a typo
    check_jobs(jobs)
    notebooks = discover_notebooks(notebooks_dir, only)
    needs = notebook_needs(notebooks)
    run_dir = Path(run_dir).resolve()
    previous = check_run_parameters(run_dir, profile, data_dir, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    reports_dir = Path(reports_dir).resolve() if reports_dir else REPO_ROOT / "reports"
    parameters = {
        **_identity(profile, data_dir, seed),
        "run_dir": str(run_dir),
        "reports_dir": str(reports_dir),
        **(extra_parameters or {}),
    }
    # every notebook's latest outcome, earlier attempts included, so a record covers the whole run folder
    entries: dict[str, dict] = {entry["notebook"]: entry for entry in (previous or {}).get("notebooks", [])}
    outcomes: dict[str, NotebookRun] = {}
    record = run_dir / RUN_RECORD_NAME

    def output_of(notebook: Path) -> Path:
        return run_dir / "notebooks" / notebook.name

    to_run = []
    for notebook in notebooks:
        output = output_of(notebook)
        left_out = None if only else main_job_exclusion(notebook, profile)
        if left_out:
            print(f"[lungkit] leaving out {notebook.name} at profile {profile}: {left_out} (run it alone with "
                  f"--only {notebook.name[:2]})", flush=True)
            outcomes[notebook.name] = NotebookRun(notebook.name, str(output), 0.0, "left out", left_out,
                                                  parameters=dict(parameters))
            entries[notebook.name] = outcomes[notebook.name].__dict__
            _save_record(record, parameters, entries)
            continue
        earlier = entries.get(notebook.name)
        # records written before per-notebook parameters existed hold them once, at the top
        earlier_parameters = (earlier or {}).get("parameters") or (previous or {}).get("parameters")
        if earlier and earlier.get("status") == "ok" and earlier_parameters == parameters and output.is_file():
            print(f"[lungkit] skipping {notebook.name}: it ran ok in this run folder with the same parameters "
                  f"({earlier.get('seconds', 0):.0f} s); executed copy {output}", flush=True)
            outcomes[notebook.name] = NotebookRun(notebook.name, str(output), 0.0, "skipped",
                                                  parameters=dict(parameters))
            continue
        to_run.append(notebook)

    def started(notebook: Path) -> None:
        print(f"[lungkit] running {notebook.name} (profile={profile}) -> {output_of(notebook)}", flush=True)
        # recorded before it starts, so a run killed from outside still shows which notebook was unfinished
        entries[notebook.name] = NotebookRun(notebook.name, str(output_of(notebook)), 0.0, "running",
                                             parameters=dict(parameters)).__dict__
        _save_record(record, parameters, entries)

    def finished(notebook: Path, run: NotebookRun | None, failure: NotebookFailed | None) -> None:
        if failure is not None:
            entries[notebook.name] = NotebookRun(notebook.name, str(output_of(notebook)), 0.0, "failed",
                                                 str(failure), parameters=dict(parameters)).__dict__
        else:
            outcomes[notebook.name] = run
            entries[notebook.name] = run.__dict__
            print(f"[lungkit] {notebook.name} done in {run.seconds:.0f} s", flush=True)
        _save_record(record, parameters, entries)

    if jobs == 1 or len(to_run) < 2:
        for notebook in to_run:
            started(notebook)
            try:
                run = run_notebook(notebook, output_of(notebook), parameters, kernel_name=kernel_name,
                                   log_output=log_output)
            except NotebookFailed as failure:
                finished(notebook, None, failure)
                raise
            finished(notebook, run, None)
    else:
        _run_side_by_side(to_run, needs, int(jobs), started, finished, output_of, parameters, kernel_name,
                          log_output)
    return [outcomes[notebook.name] for notebook in notebooks]


def _run_side_by_side(to_run: list[Path], needs: dict[str, list[str]], jobs: int, started, finished, output_of,
                      parameters: dict, kernel_name: str | None, log_output: bool) -> None:
    """Run ``to_run`` up to ``jobs`` at once, each when its needs ran ok, in worker processes; see :func:`run_notebooks`.

    Raises:
        NotebookFailed: the first failure, once every notebook already running has finished.
    """
    waiting = list(to_run)
    in_this_run = {notebook.name for notebook in to_run}
    ran_ok: set[str] = set()
    first_failure: NotebookFailed | None = None
    # spawn, not fork: the parent may hold threads (papermill's, TensorFlow's in a test process) that a fork copies
    # in an undefined state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}
        while True:
            if first_failure is None:
                for notebook in list(waiting):
                    if len(running) >= jobs:
                        break
                    # a needed notebook outside this run (skipped: ok earlier; left out; not selected) counts as done
                    if all(name in ran_ok or name not in in_this_run for name in needs[notebook.name]):
                        waiting.remove(notebook)
                        started(notebook)
                        future = pool.submit(_run_notebook_in_worker, str(notebook), str(output_of(notebook)),
                                             parameters, kernel_name, log_output)
                        running[future] = notebook
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                notebook = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as error:  # the worker process itself died (killed, out of memory)
                    outcome = {"failure": {"cell_index": None, "error": f"{type(error).__name__}: {error}; "
                                           f"{DEAD_KERNEL_HINT}"}}
                if "run" in outcome:
                    ran_ok.add(notebook.name)
                    finished(notebook, NotebookRun(**outcome["run"]), None)
                    continue
                failure = NotebookFailed(notebook, outcome["failure"]["cell_index"], outcome["failure"]["error"],
                                         output_of(notebook))
                finished(notebook, None, failure)
                if first_failure is None:
                    first_failure = failure
                    if running:
                        print(f"[lungkit] {notebook.name} failed; no further notebook starts, waiting for "
                              f"{', '.join(sorted(n.name for n in running.values()))} to finish", flush=True)
    if first_failure is not None:
        raise first_failure


def resolve_run_dir(runs_root: str | Path, profile: str, data_dir: str | None, seed: int,
                    run_dir: str | Path | None = None, resume: bool = False) -> tuple[Path, bool]:
    """The run folder the main job uses, checked before anything is created.

    Args:
        runs_root: folder of the runs (``runs``).
        profile, data_dir, seed: the run's identity.
        run_dir: a folder to use or continue (created when absent).
        resume: continue the newest run under ``runs_root`` with the same profile, data folder and seed.

    Returns:
        (the folder, whether it is new). A new folder under ``runs_root`` is not created here.

    Raises:
        ValueError: when both ``run_dir`` and ``resume`` are given, or ``run_dir`` is a file.
        RunParametersMismatch: when the folder was recorded with other parameters.
        FileNotFoundError: when ``resume`` finds no matching run.
    """
    if run_dir is not None and resume:
        raise ValueError("give either a run folder (--run-dir) or --resume, not both")
    if resume:
        return find_resumable_run(runs_root, profile, data_dir, seed), False
    if run_dir is None:
        return Path(runs_root), True
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-dir {run_dir} is a file; expected a run folder (existing or to be created)")
    check_run_parameters(run_dir, profile, data_dir, seed)
    return run_dir, False


def main_reproduce(profile: str, data_dir: str | None, runs_root: str | Path, reports_dir: str | None, seed: int,
                   only: list[str] | None, run_dir: str | Path | None = None, resume: bool = False,
                   notebooks_dir: str | Path = DEFAULT_NOTEBOOKS_DIR, jobs: int = 1) -> int:
    """The main job: a fresh run folder (or the one given / found by ``resume``), every notebook in order.

    Args:
        profile, data_dir, runs_root, reports_dir, seed, only, jobs: see :func:`run_notebooks`; ``runs_root`` holds
            the new run folder.
        run_dir: use or continue this folder instead of a new one.
        resume: continue the newest run under ``runs_root`` with the same profile, data folder and seed.
        notebooks_dir: folder of the notebooks.

    Returns:
        0 when every notebook ran, 1 when one failed (named on stderr), 2 when the arguments are refused (nothing
        was run and no folder created).
    """
    try:
        from lungkit.profiles import get_profile

        get_profile(profile)
        check_jobs(jobs)
        notebook_needs(discover_notebooks(notebooks_dir, only))
        chosen, is_new = resolve_run_dir(runs_root, profile, data_dir, seed, run_dir, resume)
    except (ValueError, FileNotFoundError) as error:
        print(f"[lungkit] refused: {error}", file=sys.stderr)
        return 2
    if is_new:
        run_dir = new_run_dir(chosen, profile)
        print(f"[lungkit] new run folder {run_dir}", flush=True)
    else:
        run_dir = chosen
        print(f"[lungkit] continuing run folder {run_dir} (notebooks recorded ok there with the same parameters "
              "are skipped)", flush=True)
    start = time.perf_counter()
    try:
        runs = run_notebooks(run_dir, profile=profile, data_dir=data_dir, reports_dir=reports_dir, seed=seed,
                             only=only, notebooks_dir=notebooks_dir, jobs=jobs)
    except NotebookFailed as failure:
        print(f"\n[lungkit] FAILED: {failure}", file=sys.stderr)
        print(f"[lungkit] continue this run where it stopped: python -m lungkit reproduce --run-dir {run_dir} "
              f"--profile {profile} --seed {seed}" + (f" --data-dir {data_dir}" if data_dir else ""),
              file=sys.stderr)
        return 1
    total = time.perf_counter() - start
    ran = [run for run in runs if run.status == "ok"]
    left_out = [run for run in runs if run.status == "left out"]
    print(f"\n[lungkit] {len(ran)} notebooks ran in {total / 60:.1f} min"
          f"{f' ({jobs} at a time)' if jobs > 1 else ''}"
          f"{f', {len(runs) - len(ran) - len(left_out)} skipped (ok earlier)' if len(ran) + len(left_out) < len(runs) else ''}"
          f"{f', {len(left_out)} left out at this profile' if left_out else ''}; run folder {run_dir}")
    for run in runs:
        shown = {"ok": f"{run.seconds:7.0f} s", "left out": f"left out: {run.error}"}
        print(f"  {run.notebook:40s} " + shown.get(run.status, "skipped (ok earlier)"))
    return 0
