"""Command line: ``lungkit reproduce`` (the main job) and ``lungkit notebooks`` (list them).

Also reachable as ``python -m lungkit``.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    reproduce = commands.add_parser(
        "reproduce", help="run every notebook headless with papermill and write the paper tables to reports/"
    )
    reproduce.add_argument("--profile", default="quick", help="smoke | quick (default) | paper")
    reproduce.add_argument(
        "--data-dir", default=None, help="folder with lung_cancer_train.pkl / lung_cancer_test.pkl; phantom if omitted"
    )
    reproduce.add_argument("--runs-root", default="runs", help="each run gets runs/<run-id>/ (default: runs)")
    reproduce.add_argument("--reports-dir", default=None, help="where the tables go (default: <repo>/reports)")
    reproduce.add_argument("--seed", type=int, default=0)
    reproduce.add_argument(
        "--only", nargs="*", default=None, help="run only notebooks whose names start with these prefixes, e.g. 00 10"
    )

    notebooks = commands.add_parser("notebooks", help="list the notebooks in run order")
    notebooks.add_argument("--notebooks-dir", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from lungkit import runner

    if args.command == "reproduce":
        return runner.main_reproduce(args.profile, args.data_dir, args.runs_root, args.reports_dir, args.seed, args.only)
    if args.command == "notebooks":
        for notebook in runner.discover_notebooks(args.notebooks_dir or runner.DEFAULT_NOTEBOOKS_DIR):
            print(notebook.name)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
