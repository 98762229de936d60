"""Command line: ``lungkit reproduce`` (the main job), ``lungkit notebooks`` (list them), ``lungkit predict`` (apply a
trained model to new scans) and ``lungkit export`` (a trained model for serving).

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
    reproduce.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="notebooks run at once (default 1): each starts once the notebooks its metadata 'needs' ran ok; results "
             "do not change, only wall times (make reproduce uses 2)",
    )
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

    predict = commands.add_parser(
        "predict", help="apply a trained model (model.keras + model_card.json) to volumes, DICOM series, slices "
                        "or Lung-RADS pickles; write masks in the input's geometry, overlays and tumours.csv",
    )
    predict.add_argument("model_dir", metavar="MODEL_DIR", help="folder with model.keras and model_card.json")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="NIfTI / NRRD / MHD volume, DICOM series folder, folder of PNG/TIFF/JPEG/NPY slices "
                              "(or one slice file), Lung-RADS .pkl")
    predict.add_argument("--ensemble-with", action="append", default=[], metavar="MODEL_DIR",
                         help="another model folder to average with MODEL_DIR (repeatable): the models' probabilities "
                              "are averaged before the threshold, as nnU-Net ensembles its folds")
    predict.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    predict.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the card's)")
    predict.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    predict.add_argument("--batch-size", type=int, default=8, help="slices or windows per forward pass (default 8)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    predict.add_argument("--lung-only", action="store_true",
                         help="keep tumour only inside the lungs found from HU (grown by --lung-margin-px)")
    predict.add_argument("--lung-margin-px", type=int, default=None,
                         help="with --lung-only: pixels the lungs are grown by (default 10)")
    predict.add_argument("--intensity", choices=("hu", "display8", "unit"), default=None,
                         help="what slice files' values mean (required for slice inputs; never guessed)")
    predict.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                         help="in-plane spacing of slice files and pickles, for sizes in mm and the Lung-RADS class")
    predict.add_argument("--no-postprocess", action="store_true",
                         help="threshold only, even when the card's result used a CRF-style refinement")
    predict.add_argument("--flips", action="store_true", help="test-time flips (off in every reported result)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bars")

    export = commands.add_parser(
        "export", help="export a trained model as a TensorFlow SavedModel or TFLite file, checked against Keras",
    )
    export.add_argument("model_dir", metavar="MODEL_DIR", help="folder with model.keras and model_card.json")
    export.add_argument("--format", required=True, choices=("savedmodel", "tflite"))
    export.add_argument("--out", default=None, help="export folder (default: MODEL_DIR/export_<format>)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    return parser, reproduce


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, refuse bad ones with a usage line and exit code 2 (before any folder is made), run.

    Raises:
        SystemExit: code 2 for arguments that cannot work (unknown profile, an ``--only`` prefix that matches no
            notebook, a missing ``--data-dir``, a run folder recorded with other parameters, nothing to resume).
    """
    parser, reproduce = _parsers()
    args = parser.parse_args(argv)
    if args.command == "predict":
        return _predict(args, parser)
    if args.command == "export":
        return _export(args)
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
            runner.check_jobs(args.jobs)
            runner.notebook_needs(runner.discover_notebooks(notebooks_dir, args.only))
            run_dir, is_new = runner.resolve_run_dir(args.runs_root, args.profile, args.data_dir, args.seed,
                                                     args.run_dir, args.resume)
        except (ValueError, FileNotFoundError) as error:
            reproduce.error(str(error))
        return runner.main_reproduce(args.profile, args.data_dir, args.runs_root, args.reports_dir, args.seed,
                                     args.only, run_dir=None if is_new else run_dir, notebooks_dir=notebooks_dir,
                                     jobs=args.jobs)
    if args.command == "notebooks":
        for notebook in runner.discover_notebooks(notebooks_dir):
            print(notebook.name)
        return 0
    return 2


def _predict(args, parser: argparse.ArgumentParser) -> int:
    """Run ``lungkit predict``; a refused input, model or output folder is one line on stderr and exit code 2."""
    from lungkit.model_card import ModelCardError
    from lungkit.predict import DEFAULT_LUNG_MARGIN_PX, PredictInputError, predict

    if args.lung_margin_px is not None and not args.lung_only:
        parser.error("--lung-margin-px needs --lung-only")
    try:
        table = predict(
            [args.model_dir, *args.ensemble_with] if args.ensemble_with else args.model_dir, args.inputs, args.out,
            threshold=args.threshold, batch_size=args.batch_size, device=args.device, overwrite=args.overwrite,
            lung_only=args.lung_only,
            lung_margin_px=DEFAULT_LUNG_MARGIN_PX if args.lung_margin_px is None else args.lung_margin_px,
            intensity=args.intensity, pixel_spacing_mm=args.pixel_spacing, postprocess=not args.no_postprocess,
            flips=args.flips, progress=not args.no_progress,
        )
    except (ModelCardError, PredictInputError, FileExistsError, ValueError) as error:
        print(f"lungkit predict: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(args.inputs)} input(s), {len(table)} tumour component(s); masks, overlays and tumours.csv in {args.out}")
    return 0


def _export(args) -> int:
    """Run ``lungkit export``; a refused model, format or folder, or a failed check, is one line and exit code 2."""
    from lungkit.model_card import ModelCardError
    from lungkit.serving import ExportError, export_model

    try:
        block = export_model(args.model_dir, args.format, out=args.out, overwrite=args.overwrite)
    except (ModelCardError, ExportError, FileExistsError, ValueError) as error:
        print(f"lungkit export: error: {error}", file=sys.stderr)
        return 2
    print(f"{block['format']} export in {block['path']}: probabilities within {block['max_abs_difference']:.2g} of "
          f"Keras on the check input (tolerance {block['tolerance']:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
