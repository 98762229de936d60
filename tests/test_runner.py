"""The papermill runner: order, parameters, and a failure that names the notebook and the cell."""

from __future__ import annotations

import json
import os

import nbformat
import pytest

from lungkit import cli, runner
from lungkit.runner import NotebookFailed, RunParametersMismatch, discover_notebooks, new_run_dir, run_notebooks


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
    # one mistyped prefix among good ones is refused, not silently dropped
    with pytest.raises(FileNotFoundError, match=r"prefix\(es\) \['99'\] match no notebook"):
        discover_notebooks(tmp_path, only=["10", "99"])


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


def test_a_kernel_that_dies_mid_cell_names_that_cell_and_memory(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    # cells: 0 parameters, 1 papermill's injected parameters, 2 "x = 1", 3 the one that kills its own kernel
    _write_notebook(notebooks / "00_dies.ipynb", ["x = 1", "import os\nos._exit(1)", "never = True"])
    with pytest.raises(NotebookFailed) as failure:
        run_notebooks(tmp_path / "run", profile="smoke", notebooks_dir=notebooks, log_output=False)
    message = str(failure.value)
    assert failure.value.cell_index == 3
    assert "failed in cell 3" in message and "start-up" not in message
    assert "[cell starts: 'import os']" in message
    assert "DeadKernelError" in message and "ran out of memory" in message


def _resumable_notebooks(tmp_path):
    """00 appends to a log; 10 appends, then raises while a flag file exists; 20 appends."""
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    append = "from pathlib import Path\nwith open(Path(run_dir, 'log.txt'), 'a') as log:\n    log.write('{}\\n')"
    _write_notebook(notebooks / "00_first.ipynb", [append.format("00")])
    _write_notebook(notebooks / "10_flaky.ipynb", [
        append.format("10"),
        "if Path(run_dir, 'fail.flag').exists():\n    raise RuntimeError('flag file present')",
    ])
    _write_notebook(notebooks / "20_last.ipynb", [append.format("20")])
    return notebooks


def test_rerun_into_the_same_run_dir_skips_what_ran_ok_and_finishes(tmp_path, capsys):
    notebooks = _resumable_notebooks(tmp_path)
    run_dir = tmp_path / "runs" / "crashed"
    run_dir.mkdir(parents=True)
    (run_dir / "fail.flag").touch()
    arguments = dict(profile="smoke", data_dir=None, runs_root=tmp_path / "runs", reports_dir=str(tmp_path / "rep"),
                     seed=3, only=None, notebooks_dir=notebooks)
    assert runner.main_reproduce(**arguments, run_dir=run_dir) == 1
    assert (run_dir / "log.txt").read_text().split() == ["00", "10"]
    assert "--run-dir" in capsys.readouterr().err  # the failure says how to continue

    (run_dir / "fail.flag").unlink()
    assert runner.main_reproduce(**arguments, run_dir=run_dir) == 0
    assert (run_dir / "log.txt").read_text().split() == ["00", "10", "10", "20"]  # 00 not rerun
    assert "skipping 00_first.ipynb" in capsys.readouterr().out
    record = json.loads((run_dir / "notebook_runs.json").read_text())
    assert [(r["notebook"], r["status"]) for r in record["notebooks"]] == [
        ("00_first.ipynb", "ok"), ("10_flaky.ipynb", "ok"), ("20_last.ipynb", "ok")]
    assert list((tmp_path / "runs").iterdir()) == [run_dir]  # no second run folder

    # --resume finds the same folder by its profile, data dir and seed; everything is done, nothing reruns
    assert runner.main_reproduce(**arguments, resume=True) == 0
    assert (run_dir / "log.txt").read_text().split() == ["00", "10", "10", "20"]


def test_a_run_dir_recorded_with_other_parameters_is_refused(tmp_path):
    notebooks = _resumable_notebooks(tmp_path)
    run_dir = tmp_path / "run"
    run_notebooks(run_dir, profile="smoke", seed=3, notebooks_dir=notebooks, only=["00"], log_output=False)
    with pytest.raises(RunParametersMismatch, match=r"profile recorded 'smoke', asked 'quick'.*seed recorded 3"):
        run_notebooks(run_dir, profile="quick", seed=4, notebooks_dir=notebooks, log_output=False)
    assert (run_dir / "log.txt").read_text().split() == ["00"]


def test_resume_picks_the_newest_run_with_the_same_parameters(tmp_path):
    runs_root = tmp_path / "runs"
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (runs_root / name).mkdir(parents=True)
        record = {"parameters": {"profile": "smoke", "data_dir": "", "seed": seed}, "notebooks": []}
        (runs_root / name / "notebook_runs.json").write_text(json.dumps(record))
    os.utime(runs_root / "a" / "notebook_runs.json", (2e9, 2e9))  # a's record was written last
    assert runner.find_resumable_run(runs_root, "smoke", None, 0) == runs_root / "a"
    assert runner.find_resumable_run(runs_root, "smoke", "", 1) == runs_root / "c"
    with pytest.raises(FileNotFoundError, match="no run folder under"):
        runner.find_resumable_run(runs_root, "quick", None, 0)


# ------------------------------------------------------------------------------------------- side by side (jobs)


def _with_needs(path, needs):
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["lungkit"] = {"needs": needs}
    nbformat.write(notebook, path)


def test_needs_default_to_every_earlier_notebook_and_are_checked(tmp_path):
    for name in ("00_a.ipynb", "10_b.ipynb", "20_c.ipynb", "30_d.ipynb"):
        _write_notebook(tmp_path / name, [])
    _with_needs(tmp_path / "20_c.ipynb", ["00"])
    _with_needs(tmp_path / "30_d.ipynb", [])
    assert runner.notebook_needs(discover_notebooks(tmp_path)) == {
        "00_a.ipynb": [], "10_b.ipynb": ["00_a.ipynb"], "20_c.ipynb": ["00_a.ipynb"], "30_d.ipynb": []}
    # with --only, a needed notebook that was not selected is not waited for
    assert runner.notebook_needs(discover_notebooks(tmp_path, only=["10", "20"])) == {
        "10_b.ipynb": [], "20_c.ipynb": []}
    for needs, expected in ((["30"], "prefix '30' matches no earlier notebook"), (["99"], "prefix '99'"),
                            ("00", "must be a list of notebook-name prefixes")):
        _with_needs(tmp_path / "20_c.ipynb", needs)
        with pytest.raises(ValueError, match=expected) as refused:
            runner.notebook_needs(discover_notebooks(tmp_path))
        assert "20_c.ipynb" in str(refused.value)


def test_the_kit_notebooks_needs_are_valid_and_the_tables_wait_for_every_result():
    notebooks = discover_notebooks()
    needs = runner.notebook_needs(notebooks)
    names = [notebook.name for notebook in notebooks]
    tables = next(name for name in names if name.startswith("90_"))
    assert needs[tables] == names[: names.index(tables)]
    # the notebooks that read what another one wrote name it (the Attention U-Net shows the U-Net's predictions)
    assert needs["11_attention_unet.ipynb"] == ["10_unet_baseline.ipynb"]
    assert needs["41_mask2former.ipynb"] == ["40_petct_convert.ipynb"]


def _timed_notebook(path, tag, seconds, extra=""):
    """A notebook that writes ``<tag>.start`` / ``<tag>.end`` (times) into the run folder, sleeping in between."""
    _write_notebook(path, [
        "import time\nfrom pathlib import Path\n"
        f"Path(run_dir, '{tag}.start').write_text(repr(time.time()))\n{extra}"
        f"time.sleep({seconds})\nPath(run_dir, '{tag}.end').write_text(repr(time.time()))"
    ])


def _times(run_dir, tag):
    return float((run_dir / f"{tag}.start").read_text()), float((run_dir / f"{tag}.end").read_text())


def test_two_jobs_overlap_independent_notebooks_and_start_one_only_after_its_needs(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    _timed_notebook(notebooks / "00_a.ipynb", "a", 3)
    _timed_notebook(notebooks / "10_b.ipynb", "b", 3)
    _with_needs(notebooks / "10_b.ipynb", [])
    _timed_notebook(notebooks / "20_c.ipynb", "c", 0)
    _with_needs(notebooks / "20_c.ipynb", ["00", "10"])
    run_dir = tmp_path / "run"
    runs = run_notebooks(run_dir, profile="smoke", notebooks_dir=notebooks, log_output=False, jobs=2)
    assert [(run.notebook, run.status) for run in runs] == [
        ("00_a.ipynb", "ok"), ("10_b.ipynb", "ok"), ("20_c.ipynb", "ok")]
    (a_start, a_end), (b_start, b_end), (c_start, _) = (_times(run_dir, tag) for tag in "abc")
    assert b_start < a_end and a_start < b_end  # 00 and 10 ran at the same time
    assert c_start >= max(a_end, b_end)  # 20 waited for both
    record = json.loads((run_dir / "notebook_runs.json").read_text())
    assert [r["status"] for r in record["notebooks"]] == ["ok", "ok", "ok"]
    assert all((run_dir / "notebooks" / run.notebook).is_file() for run in runs)


def test_two_jobs_after_a_failure_start_nothing_new_but_let_the_running_notebook_finish(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    _write_notebook(notebooks / "00_fails.ipynb", ["raise ValueError('broken on purpose')"])
    _timed_notebook(notebooks / "10_slow.ipynb", "slow", 4)
    _with_needs(notebooks / "10_slow.ipynb", [])
    _timed_notebook(notebooks / "20_needs_00.ipynb", "dependent", 0)
    _with_needs(notebooks / "20_needs_00.ipynb", ["00"])
    _timed_notebook(notebooks / "30_free.ipynb", "free", 0)
    _with_needs(notebooks / "30_free.ipynb", [])
    run_dir = tmp_path / "run"
    with pytest.raises(NotebookFailed) as failure:
        run_notebooks(run_dir, profile="smoke", notebooks_dir=notebooks, log_output=False, jobs=2)
    assert "00_fails.ipynb" in str(failure.value) and "ValueError: broken on purpose" in str(failure.value)
    assert failure.value.cell_index is not None
    assert (run_dir / "slow.end").is_file()  # the notebook already running finished
    assert not (run_dir / "dependent.start").exists() and not (run_dir / "free.start").exists()
    record = json.loads((run_dir / "notebook_runs.json").read_text())
    assert [(r["notebook"], r["status"]) for r in record["notebooks"]] == [
        ("00_fails.ipynb", "failed"), ("10_slow.ipynb", "ok")]

    # the rerun into the same folder skips what ran ok and runs the rest, still two at a time
    _write_notebook(notebooks / "00_fails.ipynb", ["x = 1"])
    runs = run_notebooks(run_dir, profile="smoke", notebooks_dir=notebooks, log_output=False, jobs=2)
    assert [run.status for run in runs] == ["ok", "skipped", "ok", "ok"]


def test_jobs_below_one_are_refused_before_any_kernel(tmp_path):
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_notebooks(tmp_path / "run", profile="smoke", notebooks_dir=tmp_path, jobs=0)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    "arguments,expected",
    [
        (["--profile", "fast"], "invalid choice: 'fast'"),
        (["--only", "99"], "['99'] match no notebook"),
        (["--only"], "expected at least one argument"),
        (["--data-dir", "no/such/folder"], "--data-dir no/such/folder: no such folder"),
        (["--resume"], "no run folder under"),
        (["--resume", "--run-dir", "x"], "not allowed with argument"),
        (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    ],
)
def test_cli_refuses_bad_arguments_with_usage_and_no_run_folder(tmp_path, capsys, arguments, expected):
    runs_root = tmp_path / "runs"
    with pytest.raises(SystemExit) as leave:
        cli.main(["reproduce", "--runs-root", str(runs_root), *arguments])
    assert leave.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("usage: lungkit reproduce") and expected in stderr
    assert not runs_root.exists()


def test_cli_refuses_a_run_dir_with_other_parameters(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record = {"parameters": {"profile": "quick", "data_dir": "", "seed": 0}, "notebooks": []}
    (run_dir / "notebook_runs.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit) as leave:
        cli.main(["reproduce", "--profile", "smoke", "--run-dir", str(run_dir), "--runs-root", str(tmp_path / "r")])
    assert leave.value.code == 2
    assert "profile recorded 'quick', asked 'smoke'" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == ["notebook_runs.json"]


def test_a_notebook_too_costly_for_a_profile_is_left_out_of_the_main_job_but_runs_alone(tmp_path, capsys):
    notebooks = _resumable_notebooks(tmp_path)
    costly = nbformat.read(notebooks / "20_last.ipynb", as_version=4)
    costly.metadata["lungkit"] = {"main_job_leaves_out": {"smoke": "measured 60 s per step on 2 cores"}}
    nbformat.write(costly, notebooks / "20_last.ipynb")
    arguments = dict(profile="smoke", data_dir=None, runs_root=tmp_path / "runs", reports_dir=str(tmp_path / "rep"),
                     seed=0, notebooks_dir=notebooks)
    run_dir = tmp_path / "runs" / "main"
    run_dir.mkdir(parents=True)
    assert runner.main_reproduce(**arguments, only=None, run_dir=run_dir) == 0
    assert (run_dir / "log.txt").read_text().split() == ["00", "10"]
    out = capsys.readouterr().out
    assert "leaving out 20_last.ipynb at profile smoke: measured 60 s per step on 2 cores" in out
    assert "1 left out at this profile" in out
    record = json.loads((run_dir / "notebook_runs.json").read_text())
    assert record["notebooks"][-1]["status"] == "left out"
    # asked for by name, it runs; other profiles never leave it out
    assert runner.main_reproduce(**arguments, only=["20"], run_dir=run_dir) == 0
    assert (run_dir / "log.txt").read_text().split() == ["00", "10", "20"]
    assert runner.main_job_exclusion(notebooks / "20_last.ipynb", "quick") is None
