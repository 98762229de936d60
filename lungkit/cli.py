"""Command line: ``lungkit reproduce`` (the main job) and ``lungkit notebooks`` (list them).

Also reachable as ``python -m lungkit``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and the ``reproduce`` one (whose usage line its argument errors print)."""
    from lungkit.profiles import PROFILES

    parser = argparse.ArgumentParser(prog="lungkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    reproduce = commands.add_parser(
        "reproduce", help="run every notebook headless with papermill and write the paper tables to reports/"
    )
    reproduce.add_argument("--profile", default="quick", choices=list(PROFILES), help="default: quick")
    reproduce.add_argument(
        "--data-dir", default=None,
        help="folder with lung_cancer_train.pkl / lung_cancer_test.pkl, or a slice folder / arrays declared by a "
             "lungkit_source.json (the folder, or the file); phantom if omitted"
    )
    reproduce.add_argument("--runs-root", default="runs", help="each run gets runs/<run-id>/ (default: runs)")
    reproduce.add_argument("--reports-dir", default=None, help="where the tables go (default: <repo>/reports)")
    reproduce.add_argument("--seed", type=int, default=0)
    # nargs="+": a bare --only must not mean "every notebook" (nargs="*" would give [] and run them all)
    reproduce.add_argument(
        "--only", nargs="+", default=None, metavar="PREFIX",
        help="run only notebooks whose names start with these prefixes, e.g. 00 10; the tables of a partial run "
             "merge into reports/ and never erase results it did not produce",
    )
    continuing = reproduce.add_mutually_exclusive_group()
    continuing.add_argument(
        "--run-dir", default=None,
        help="use or continue this run folder: notebooks recorded ok there with the same parameters are skipped, "
             "the failed or unfinished one reruns (training resumes from its last completed epoch)",
    )
    continuing.add_argument(
        "--resume", action="store_true",
        help="continue the newest run folder under --runs-root with the same profile, data dir and seed",
    )
    reproduce.add_argument("--notebooks-dir", default=None, help="folder of the notebooks (default: the kit's)")

    notebooks = commands.add_parser("notebooks", help="list the notebooks in run order")
    notebooks.add_argument("--notebooks-dir", default=None)
    return parser, reproduce


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, refuse bad ones with a usage line and exit code 2 (before any folder is made), run.

    Raises:
        SystemExit: code 2 for arguments that cannot work (unknown profile, an ``--only`` prefix that matches no
            notebook, a missing ``--data-dir``, a run folder recorded with other parameters, nothing to resume).
    """
    parser, reproduce = _parsers()
    args = parser.parse_args(argv)
    from lungkit import runner

    notebooks_dir = Path(args.notebooks_dir) if args.notebooks_dir else runner.DEFAULT_NOTEBOOKS_DIR
    if args.command == "reproduce":
        if args.data_dir and not Path(args.data_dir).exists():
            reproduce.error(f"--data-dir {args.data_dir}: no such folder; expected the folder holding "
                            "lung_cancer_train.pkl and lung_cancer_test.pkl, or a lungkit_source.json (leave it out "
                            "for the phantom)")
        if args.data_dir:
            from lungkit.data.sources import SourceError, describe_source

            try:
                describe_source(args.data_dir)
            except (FileNotFoundError, SourceError) as error:
                reproduce.error(f"--data-dir {args.data_dir}: {error}")
        try:
            runner.discover_notebooks(notebooks_dir, args.only)
            run_dir, is_new = runner.resolve_run_dir(args.runs_root, args.profile, args.data_dir, args.seed,
                                                     args.run_dir, args.resume)
        except (ValueError, FileNotFoundError) as error:
            reproduce.error(str(error))
        return runner.main_reproduce(args.profile, args.data_dir, args.runs_root, args.reports_dir, args.seed,
                                     args.only, run_dir=None if is_new else run_dir, notebooks_dir=notebooks_dir)
    if args.command == "notebooks":
        for notebook in runner.discover_notebooks(notebooks_dir):
            print(notebook.name)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
