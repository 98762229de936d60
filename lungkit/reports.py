"""Reported vs measured: from the results of a run to one report per paper, a leaderboard and figures.

Everything here reads the results as plain files: ``<run_dir>/results/<paper_id>/<result_key>/summary.json`` (the
schema of ``lungkit.evaluation``) and, for prediction galleries, an optional ``predictions.npz`` beside it (arrays
``images``, ``masks``, ``probabilities`` and optionally ``dice``; otherwise the ``dice`` column of ``per_image.csv``).
The reported side comes from :mod:`lungkit.papers`, quoted exactly as printed.

Honesty rules the reports follow:

- every measured number carries its protocol line (profile, data source, image size, epochs, seed, split, data
  fingerprint, commit, post-processing);
- a row that ran is ``measured``, nothing more: whether the number agrees with the paper is a separate verdict per
  metric (:func:`metric_verdict`: the paper's printed value against lungkit's 95% bootstrap CI), so a Dice of 0.00
  beside the paper's 0.80 reads ``measured``, ``below paper`` and never as a success;
- a row lungkit has not produced yet says so instead of disappearing;
- a wiring-only result (e.g. SAM without weights) never shows numbers;
- results on the synthetic phantom, or from a profile other than ``paper``, come with a caveat paragraph.

Outputs (``reports/<paper_id>.md`` / ``.csv``, ``reports/leaderboard.md`` / ``.csv``, ``reports/figures/*.png``)
are written atomically: to a temporary name in the same folder, then ``os.replace``.

A partial run (``--only``) never erases results it did not produce. ``reports/results.json`` keeps the summary behind
every row of ``reports/`` with the run it came from; :func:`write_all_reports` merges a run's summaries into it by
``<paper>/<result_key>``, rewrites only the papers (and figures) the run produced results for, and keeps every other
row as written, with its run named in its protocol line.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungkit.data.kit_dataset import LUNGRADS_LABELS
from lungkit.figures import plot_prediction_gallery, plot_reported_vs_reproduced
from lungkit.papers import (
    all_paper_ids,
    find_rows_for_result,
    get_paper,
    get_postprocessing,
    get_table,
    parse_reported_value,
    resolve_table_id,
)

#: A lungkit result exists for the row: a number was measured. It says nothing about agreement (see the verdicts).
STATUS_MEASURED = "measured"
#: The former name of :data:`STATUS_MEASURED`, kept so that code written against it still imports.
STATUS_REPRODUCED = STATUS_MEASURED
STATUS_NOT_YET = "not reproduced yet"
STATUS_REFERENCE = "reference only (others' work)"
#: The paper's own row, but lungkit has no model (or no data) for it yet.
STATUS_NOT_IN_KIT = "reference only (not in lungkit yet)"
STATUS_WIRING = "wiring only (no weights)"

#: ``status`` values a summary.json may carry (``lungkit.evaluation.STATUSES``, not imported: it pulls in Keras).
SUMMARY_STATUSES = ("measured", "wiring_only")
#: Older names of a summary status, read as the current one: summaries written before the rename (``reports/
#: results.json`` keeps them) show as ``measured`` (``lungkit.evaluation.LEGACY_STATUSES``).
LEGACY_SUMMARY_STATUSES = {"reproduced": "measured"}

#: Per-metric verdicts: the paper's printed value against lungkit's 95% bootstrap CI (see :func:`metric_verdict`).
VERDICT_WITHIN = "within CI"
VERDICT_BELOW = "below paper"
VERDICT_ABOVE = "above paper"
#: Only without a CI: the point value equals the printed one at the printed precision.
VERDICT_EQUAL = "equals paper"
#: Appended when the metric has no CI (a pooled value, a single test image): the point value alone was compared.
NO_CI_SUFFIX = " (no CI)"
#: The paper printed no value for the metric.
VERDICT_NOT_PRINTED = "n/a"

VERDICT_LEGEND = (
    "**Words in the tables.** Status `measured`: lungkit ran this row and measured a number, nothing more; how it "
    "compares with the paper is the verdict beside each number. Verdicts compare the paper's printed value with "
    "lungkit's 95% bootstrap CI, both at the printed precision: `within CI` (the printed value lies inside the CI: "
    "no difference this test set can show), `below paper` (the whole CI lies below it: lungkit measured less), "
    "`above paper` (the whole CI lies above it). `(no CI)` after a verdict: the metric has no CI (a pooled value or a "
    "single test image), so only the point value was compared (`equals paper (no CI)` when it is the printed one). "
    "`n/a`: the paper printed no value. Below and above say which way, not which is better: for RMSE and the "
    "intensity std lower is better. A verdict compares numbers, not setups: a number from the phantom or a reduced "
    "profile is no reproduction whatever its verdict."
)
REQUIRED_SUMMARY_KEYS = ("paper", "model", "status", "protocol")

SEGMENTATION_LEADERBOARD_METRICS = ("dice", "iou", "precision", "recall", "specificity", "rmse")
CLASSIFICATION_LEADERBOARD_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")

_PROTOCOL_FIELDS = (
    ("profile", "profile"),
    ("data_source", "data"),
    ("image_size", "image size"),
    ("epochs", "epochs"),
    ("seed", "seed"),
    ("model_scale", "model scale"),
    ("split", "split"),
    ("loss", "loss"),
    ("optimizer", "optimizer"),
    ("postprocess", "post-processing"),
    ("data_fingerprint", "data fingerprint"),
    ("git_commit", "commit"),
    ("wall_time_s", "wall time (s)"),
)

#: Protocol fields named in the line only when a result records them (not every task trains this way).
_TRAINING_FIELDS = (
    ("steps_trained", "optimizer steps"),
    ("sampling", "sampling"),
    ("test_time_flips", "test-time flips"),
    ("masked_pretraining", "pretraining"),
)

PHANTOM_CAVEAT = (
    "**Synthetic data.** Results marked `data phantom` were computed on lungkit's synthetic phantom, not on the "
    "paper's data. They show that the pipeline runs end to end and that the model learns; they say nothing about "
    "what the paper's method reaches on real CT. Compare them with the paper's numbers only as a sanity check, "
    "never as a reproduction."
)
PROFILE_CAVEAT = (
    "**Reduced run.** Results from a profile other than `paper` ({profiles}) cap the image size, epochs and model "
    "scale (see each protocol line) so that the run fits a small machine. They are not the paper's configuration "
    "and will differ from what the recipe gives at full size."
)
WIRING_CAVEAT = (
    "**Wiring only.** Results marked wiring only ran a model without trained or pretrained weights (e.g. SAM "
    "without a local preset). They check the plumbing; their numbers are meaningless and are not shown."
)


# ----------------------------------------------------------------------------------------------- reading results


def read_summary(path: str | os.PathLike) -> dict:
    """Read and check one ``summary.json``.

    Args:
        path: ``<run_dir>/results/<paper_id>/<result_key>/summary.json``.

    Returns:
        The summary dict with ``_result_key`` (the folder name) and ``_path`` added (:func:`collect_summaries`
        also adds ``_run``, the run folder's name); an older status name (``reproduced``) reads as ``measured``.

    Raises:
        ValueError: naming the file, for invalid JSON, a missing key, an unknown status or paper, or a ``paper``
            field that disagrees with the folder the file sits in.
    """
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: expected a JSON object in the summary.json schema, got {type(summary).__name__}")
    missing = [key for key in REQUIRED_SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; a summary.json needs {list(REQUIRED_SUMMARY_KEYS)}")
    summary["status"] = _current_status(summary["status"])
    if summary["status"] not in SUMMARY_STATUSES:
        raise ValueError(f"{path}: status {summary['status']!r}; expected one of {list(SUMMARY_STATUSES)}")
    if summary["paper"] not in all_paper_ids():
        raise ValueError(f"{path}: paper {summary['paper']!r}; expected one of {all_paper_ids()}")
    folder_paper = path.parent.parent.name
    if folder_paper != summary["paper"]:
        raise ValueError(f"{path}: field paper={summary['paper']!r} but the file sits under results/{folder_paper}/")
    if summary["status"] == "measured" and not isinstance(summary.get("metrics"), dict):
        raise ValueError(f"{path}: a measured result needs a 'metrics' object")
    if not isinstance(summary["protocol"], dict):
        raise ValueError(f"{path}: 'protocol' must be an object, got {type(summary['protocol']).__name__}")
    summary["_result_key"] = path.parent.name
    summary["_path"] = str(path)
    return summary


def collect_summaries(run_dir: str | os.PathLike) -> list[dict]:
    """Read every ``results/*/*/summary.json`` of a run.

    Args:
        run_dir: the run directory; a run without a ``results`` folder gives an empty list.

    Returns:
        Summaries (see :func:`read_summary`) tagged with ``_run`` (the run folder's name), sorted by paper then
        result key.

    Raises:
        FileNotFoundError: when ``run_dir`` does not exist.
        ValueError: naming the file, for any summary that cannot be read (see :func:`read_summary`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    summaries = [read_summary(path) for path in sorted((run_dir / "results").glob("*/*/summary.json"))]
    for summary in summaries:
        # the run id travels with the summary, so a row kept in reports/ after later runs still names its run
        summary["_run"] = _run_id(run_dir)
    return summaries


def _current_status(status):
    return LEGACY_SUMMARY_STATUSES.get(status, status) if isinstance(status, str) else status


def _is_measured(summary: dict) -> bool:
    """Whether a summary holds numbers to show (summaries passed in directly may still say ``reproduced``)."""
    return _current_status(summary.get("status")) == "measured"


def _run_id(run_dir: str | os.PathLike) -> str:
    return Path(run_dir).resolve().name


def summary_result_key(summary: dict) -> str:
    """The result key of a summary: its folder name, else a ``result_key`` field, else the model name."""
    return summary.get("_result_key") or summary.get("result_key") or summary["model"]


def _summary_source(summary: dict) -> str:
    return summary.get("_path") or f"summary of {summary.get('paper')}/{summary_result_key(summary)}"


def _summaries_by_result_key(paper_id: str, summaries: Iterable[dict]) -> dict[str, dict]:
    by_key: dict[str, dict] = {}
    for summary in summaries:
        if summary.get("paper") != paper_id:
            continue
        key = summary_result_key(summary)
        if key in by_key:
            raise ValueError(
                f"two results for {paper_id}/{key}: {_summary_source(by_key[key])} and {_summary_source(summary)}; "
                "pass the summaries of one run"
            )
        by_key[key] = summary
    return by_key


def metric_from_summary(summary: dict, metric: str, basis: str = "per_image") -> dict | None:
    """Look one metric up in a summary.

    Args:
        summary: a summary.json dict.
        metric: a canonical key (``"dice"``) or a per-class key (``"dice@LR2"``).
        basis: ``"per_image"`` (the ``metrics`` means with CIs) or ``"pooled"`` (the ``pooled`` value, no CI; falls
            back to the per-image mean when the summary has no pooled value for the metric).

    Returns:
        ``{"mean", "ci_low", "ci_high", "n", "basis"}`` (NaN where absent), or None when the summary lacks it.

    Raises:
        ValueError: naming the summary, when an entry has no ``mean``.
    """
    name, _, class_name = metric.partition("@")
    if class_name:
        entry = (summary.get("per_class") or {}).get(class_name, {}).get(name)
        used_basis = f"per_image ({class_name})"
    else:
        if basis == "pooled":
            pooled = (summary.get("pooled") or {}).get(name)
            if pooled is not None:
                mean = pooled["mean"] if isinstance(pooled, dict) else pooled
                return {"mean": float(mean), "ci_low": math.nan, "ci_high": math.nan,
                        "n": summary.get("n_images", math.nan), "basis": "pooled"}
        entry = (summary.get("metrics") or {}).get(name)
        used_basis = "per_image" if summary.get("task", "segmentation") == "segmentation" else "test set"
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return {"mean": float(entry), "ci_low": math.nan, "ci_high": math.nan, "n": math.nan, "basis": used_basis}
    if "mean" not in entry:
        raise ValueError(f"{_summary_source(summary)}: metric {metric!r} has no 'mean' (got keys {sorted(entry)})")

    def number(key):
        value = entry.get(key)
        return math.nan if value is None else float(value)

    return {"mean": number("mean"), "ci_low": number("ci_low"), "ci_high": number("ci_high"),
            "n": number("n"), "basis": used_basis}


def pretrained_weights_text(protocol: dict) -> str:
    """What a result's pretrainable part started from, as the protocol line says it ("" when not recorded).

    Segmentation results record the encoder's status dict (``pretrained_encoder``: ``pretrained``, ``source``,
    ``sha256``, ...; see :func:`lungkit.models.encoder_weights_status`), paper 003's classifiers a string
    (``pretrained``). A model without a pretrainable part records None and gets nothing.
    """
    status = protocol.get("pretrained_encoder")
    if isinstance(status, dict) and status.get("pretrained") is not None:
        if not status["pretrained"]:
            return "encoder weights random (no local pretrained weights given; lungkit downloads none)"
        source = Path(str(status.get("source") or "")).name or "a local file"
        digest = f", sha256 {str(status['sha256'])[:12]}" if status.get("sha256") else ""
        official = ", the official ImageNet file" if status.get("official_imagenet_file") else ""
        resized = ", relative position tables resized to this window" if status.get("window_resized") else ""
        return f"encoder weights pretrained from {source}{digest}{official}{resized}"
    recorded = protocol.get("pretrained")
    if isinstance(recorded, str) and recorded:
        # a local path is named by its file, as above; "none (...)" says itself
        return f"pretrained weights {recorded if recorded.startswith('none') else Path(recorded).name}"
    return ""


def protocol_line(summary: dict) -> str:
    """One line saying how a result was produced: every protocol field, ``not recorded`` where the summary lacks
    it and ``none`` where it records None (e.g. the epochs of a zero-shot model), and the run it came from when
    the summary carries one (``_run``)."""
    protocol = summary.get("protocol") or {}
    parts = []
    for key, label in _PROTOCOL_FIELDS:
        value = protocol.get(key, "")
        parts.append(f"{label} {'not recorded' if value == '' else 'none' if value is None else value}")
    # how training saw the data, where the result records it (segmentation under a step budget: the epochs alone
    # hide patch training and its augmentation, which the recipe's notes, written for the paper, do not mention)
    for key, label in _TRAINING_FIELDS:
        if protocol.get(key) not in (None, ""):
            parts.append(f"{label} {protocol[key]}")
    if protocol.get("model_settings"):
        parts.append("model settings given at build: " + ", ".join(
            f"{key} {value}" for key, value in sorted(protocol["model_settings"].items())))
    start = pretrained_weights_text(protocol)
    if start:
        parts.append(start)
    if summary.get("_run"):
        parts.append(f"run {summary['_run']}")
    if summary.get("n_images") is not None:
        parts.append(f"n test images {summary['n_images']}")
    if protocol.get("overridden"):
        changes = ", ".join(
            f"{key} {change['recipe']} -> {change['used']}" for key, change in protocol["overridden"].items()
        )
        parts.append(f"this profile departs from the paper's recipe: {changes} (reason in the notes)")
    line = "; ".join(parts)
    if protocol.get("notes"):
        line += f"; notes: {protocol['notes']}"
    return line


def _row_status(row: dict, summary: dict | None) -> str:
    if row["reproduced_by"] is None:
        return STATUS_NOT_IN_KIT if row.get("origin", "").startswith("this paper") else STATUS_REFERENCE
    if summary is None:
        return STATUS_NOT_YET
    return STATUS_MEASURED if _is_measured(summary) else STATUS_WIRING


def metric_verdict(reported: float, measured: float, ci_low: float = math.nan, ci_high: float = math.nan,
                   n: float = math.nan) -> str:
    """How a measured number stands against the paper's printed one.

    The paper's value is compared with lungkit's 95% bootstrap CI, not with the mean: a mean below the paper's
    value whose CI still covers it is no evidence of a difference. Pass both sides at the same (printed) precision,
    as :func:`paper_table_frame` does, so that the verdict agrees with the numbers a reader sees.

    Args:
        reported: the paper's value (NaN when it printed none, e.g. ``"-"``).
        measured: lungkit's point value (NaN when nothing was measured).
        ci_low, ci_high: lungkit's 95% CI; NaN when the metric has none (pooled values).
        n: how many test images the metric averages; a CI over one image (``low == high == mean``) is no CI.

    Returns:
        ``"within CI"`` (``ci_low <= reported <= ci_high``), ``"below paper"`` (``ci_high < reported``), ``"above
        paper"`` (``ci_low > reported``); without a CI the point value decides and ``" (no CI)"`` follows, e.g.
        ``"below paper (no CI)"`` or ``"equals paper (no CI)"``; ``"n/a"`` when the paper printed no value and ``""``
        when nothing was measured.

    Example:
        >>> metric_verdict(0.80, 0.0, 0.0, 0.0, n=64)  # Dice 0.00 [0.00, 0.00] against a printed 0.80
        'below paper'
    """
    if not math.isfinite(measured):
        return ""
    if not math.isfinite(reported):
        return VERDICT_NOT_PRINTED
    if math.isfinite(ci_low) and math.isfinite(ci_high) and n != 1:
        if ci_high < reported:
            return VERDICT_BELOW
        if ci_low > reported:
            return VERDICT_ABOVE
        return VERDICT_WITHIN
    if measured < reported:
        verdict = VERDICT_BELOW
    elif measured > reported:
        verdict = VERDICT_ABOVE
    else:
        verdict = VERDICT_EQUAL
    return verdict + NO_CI_SUFFIX


def _at_printed_precision(value: float, value_scale: str, decimals: int | None) -> float:
    """A fraction rounded as the report prints it, so that the verdict and the table never disagree."""
    text = _format_number(value, value_scale, decimals=decimals)
    if not text:
        return math.nan
    return float(text) / (100.0 if value_scale == "percent" else 1.0)


# ------------------------------------------------------------------------------------------------- paper tables


def paper_table_frame(paper_id: str, table_id: str, summaries: Iterable[dict]) -> pd.DataFrame:
    """Reported vs measured for every row of one paper table, with a verdict per metric.

    Args:
        paper_id: e.g. ``"paper004"``.
        table_id: e.g. ``"table2"`` (aliases accepted).
        summaries: summaries of one run (see :func:`collect_summaries`); those of other papers are ignored.

    Returns:
        One row per table row and reading (:func:`table_readings`), in the paper's order. Columns: ``paper``,
        ``table``, ``row``, ``reading`` (the reading's name; empty for a table with one), any extra printed
        columns (e.g. ``dataset``), ``status``, ``result_key``, ``model``, ``notebook``, then per metric ``m``:
        ``m_reported_printed`` (the string as printed), ``m_reported`` (as a fraction; NaN when missing),
        ``m_measured`` (mean), ``m_ci_low``, ``m_ci_high``, ``m_n``, ``m_basis``, ``m_difference`` (measured -
        reported, fractions) and ``m_verdict`` (:func:`metric_verdict` at the printed precision: ``within CI``,
        ``below paper``, ``above paper``, each with `` (no CI)`` for metrics without one, ``n/a`` when the paper
        printed no value, empty when nothing was measured); then ``protocol``, ``paper_line`` and ``remarks``.
        Measured columns are NaN unless the status is ``measured`` (never numbers for wiring-only results).
    """
    canonical_id = resolve_table_id(paper_id, table_id)
    table = get_table(paper_id, canonical_id)
    by_key = _summaries_by_result_key(paper_id, summaries)
    records = []
    for row, reading in ((row, reading) for row in table["rows"] for reading in table_readings(table)):
        reproduced_by = row["reproduced_by"]
        summary = by_key.get(reproduced_by["result_key"]) if reproduced_by else None
        status = _row_status(row, summary)
        if reading.get("only_when_measured") and not (
                status == STATUS_MEASURED and any(_reading_value(summary, reading, m) for m in table["metrics"])):
            continue
        record = {"paper": paper_id, "table": canonical_id, "row": row["row"], "reading": reading["name"]}
        for column in table.get("extra_columns", {}):
            record[column] = row.get("extra", {}).get(column, "")
        record.update(
            status=status,
            result_key=reproduced_by["result_key"] if reproduced_by else "",
            model=reproduced_by["model"] if reproduced_by else "",
            notebook=reproduced_by["notebook"] if reproduced_by else "",
        )
        for metric in table["metrics"]:
            printed = row["reported"].get(metric, "")
            reported = parse_reported_value(printed, table["value_scale"])
            value = _reading_value(summary, reading, metric) if status == STATUS_MEASURED else None
            value = value or {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": math.nan, "basis": ""}
            reported_number = math.nan if reported is None else reported
            decimals = _printed_decimals(printed, table["value_scale"])

            def printed_precision(number: float) -> float:
                return _at_printed_precision(number, table["value_scale"], decimals)

            record.update({
                f"{metric}_reported_printed": printed,
                f"{metric}_reported": reported_number,
                f"{metric}_measured": value["mean"],
                f"{metric}_ci_low": value["ci_low"],
                f"{metric}_ci_high": value["ci_high"],
                f"{metric}_n": value["n"],
                f"{metric}_basis": value["basis"],
                f"{metric}_difference": value["mean"] - reported_number,
                f"{metric}_verdict": metric_verdict(
                    printed_precision(reported_number), printed_precision(value["mean"]),
                    printed_precision(value["ci_low"]), printed_precision(value["ci_high"]), value["n"]),
            })
        protocol = protocol_line(summary) if summary is not None else ""
        if summary is not None and reproduced_by and summary.get("model") != reproduced_by["model"]:
            protocol += f"; NOTE: model {summary.get('model')!r} differs from the row's {reproduced_by['model']!r}"
        record.update(protocol=protocol, paper_line=row.get("line", ""), remarks=" ".join(row.get("remarks", [])))
        records.append(record)
    return pd.DataFrame.from_records(records)


def table_readings(table: dict) -> list[dict]:
    """The readings of a table's metrics: lungkit's numbers read several ways beside the same printed row.

    A table whose paper does not define its metrics (paper 000's Table 1) lists ``readings``: each has a ``name``,
    a ``definition`` and ``metrics`` (``{table metric: [summary metric, basis]}``, basis ``"per_image"`` or
    ``"pooled"``; a table metric left out shows no number in that reading), and optionally ``only_when_measured``
    (shown only for rows whose result has a value for it, e.g. box IoU on box-derived masks). Any other table has
    one unnamed reading: each metric under its own name, on the basis of ``compare_with`` (per image otherwise).
    """
    if table.get("readings"):
        return table["readings"]
    compare_with = table.get("compare_with", {})
    return [{"name": "", "metrics": {m: [m, compare_with.get(m, "per_image")] for m in table["metrics"]}}]


def _reading_value(summary: dict | None, reading: dict, metric: str) -> dict | None:
    """One table metric of a summary as a reading reads it (None when the reading has no such metric or the
    summary no finite value)."""
    if summary is None or metric not in reading["metrics"]:
        return None
    name, basis = reading["metrics"][metric]
    value = metric_from_summary(summary, name, basis)
    return value if value is not None and math.isfinite(value["mean"]) else None


def result_table_rows(summary: dict, result_key: str | None = None) -> pd.DataFrame:
    """The rows one result fills in its paper's tables, every reading, for a notebook to show beside the paper.

    Args:
        summary: the result's summary (``EvaluationResult.summary`` or :func:`read_summary`).
        result_key: the result's key (default: :func:`summary_result_key`).

    Returns:
        One row per (table, row, reading): ``table``, ``row``, ``reading``, then per metric column ``<column>:
        paper`` (as printed), ``<column>: lungkit`` (3 decimals, NaN when the reading has none) and ``<column>:
        verdict``. A result no printed row holds (``BASELINES``) shows the readings of the table it is filed under,
        with ``not printed`` on the paper's side.
    """
    key = result_key or summary_result_key(summary)
    summary = {**summary, "result_key": key}
    summary.pop("_result_key", None)
    records = []
    for table_id in dict.fromkeys(row["table"] for row in find_rows_for_result(summary["paper"], key)):
        table = get_table(summary["paper"], table_id)
        frame = paper_table_frame(summary["paper"], table_id, [summary])
        for _, record in frame[frame["result_key"] == key].iterrows():
            entry = {"table": table_id, "row": record["row"], "reading": record["reading"]}
            for metric, column in zip(table["metrics"], table["columns"]):
                entry[f"{column}: paper"] = record[f"{metric}_reported_printed"]
                entry[f"{column}: lungkit"] = round(float(record[f"{metric}_measured"]), 3)
                entry[f"{column}: verdict"] = record[f"{metric}_verdict"]
            records.append(entry)
    if not records:  # a lungkit-only result (BASELINES) filed under a paper table: its readings, nothing printed
        tables = get_paper(summary["paper"]).TABLES
        for table_id in (t for t in summary.get("tables", []) if t in tables):
            table = tables[table_id]
            for reading in table_readings(table):
                values = {m: _reading_value(summary, reading, m) for m in table["metrics"]}
                if reading.get("only_when_measured") and not any(values.values()):
                    continue
                entry = {"table": table_id, "row": summary.get("row", key), "reading": reading["name"]}
                for metric, column in zip(table["metrics"], table["columns"]):
                    entry[f"{column}: paper"] = "not printed"
                    entry[f"{column}: lungkit"] = round(values[metric]["mean"], 3) if values[metric] else math.nan
                    entry[f"{column}: verdict"] = VERDICT_NOT_PRINTED if values[metric] else ""
                records.append(entry)
    return pd.DataFrame.from_records(records)


def _row_label(row: dict) -> str:
    """Row name plus its extra printed columns (two rows of paper 003 are both called 'Ours')."""
    extras = ", ".join(str(value) for value in row.get("extra", {}).values())
    return f"{row['row']} ({extras})" if extras else row["row"]


def _table_label(table_id: str) -> str:
    match = re.fullmatch(r"table(\d+)", table_id)
    return f"Table {match.group(1)}" if match else "Reference table"


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(_md_cell(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _printed_decimals(printed: str, value_scale: str) -> int | None:
    """Decimals of a printed value, so that lungkit's numbers are shown to the paper's precision (at least 3
    decimals for fractions, 2 for percentages)."""
    match = re.search(r"\.(\d+)", printed or "")
    floor = 2 if (value_scale == "percent" or (printed or "").strip().endswith("%")) else 3
    return max(floor, len(match.group(1))) if match else None


def _format_number(value: float, value_scale: str = "fraction", signed: bool = False,
                   decimals: int | None = None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    sign = "+" if signed else ""
    if value_scale == "percent":
        return f"{value * 100:{sign}.{decimals or 2}f}"
    if decimals is None:
        decimals = 4 if value != 0 and abs(value) < 0.1 else 3
    return f"{value:{sign}.{decimals}f}"


def _format_with_ci(mean: float, low: float, high: float, value_scale: str = "fraction", basis: str = "",
                    decimals: int | None = None) -> str:
    text = _format_number(mean, value_scale, decimals=decimals)
    if not text:
        return ""
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{_format_number(low, value_scale, decimals=decimals)}, " \
                f"{_format_number(high, value_scale, decimals=decimals)}]"
    if basis == "pooled":
        text += " (pooled)"
    return text


def _table_markdown(table: dict, frame: pd.DataFrame) -> str:
    scale = table["value_scale"]
    readings = {reading["name"]: reading for reading in table_readings(table)}
    named = bool(table.get("readings"))
    header = [table.get("row_header", "Row")] + (["lungkit reading"] if named else [])
    header += list(table.get("extra_columns", {}).values())
    for column in table["columns"]:
        header += [f"{column}: paper", f"{column}: lungkit [95% CI]", f"{column}: Δ, verdict"]
    header.append("Status")
    body = []
    for _, record in frame.iterrows():
        cells = [record["row"]] + ([record["reading"]] if named else [])
        cells += [record[column] for column in table.get("extra_columns", {})]
        for metric in table["metrics"]:
            printed = record[f"{metric}_reported_printed"]
            if metric not in readings[record["reading"]]["metrics"]:
                cells += [printed, "-", ""]  # this reading has no value of this metric (e.g. an F1-only reading)
                continue
            decimals = _printed_decimals(printed, scale)
            # a named reading says how it was counted; "(pooled)" would mislabel a point value such as the F1 of
            # the mean P and R
            basis = "" if named else record[f"{metric}_basis"]
            measured = _format_with_ci(record[f"{metric}_measured"], record[f"{metric}_ci_low"],
                                       record[f"{metric}_ci_high"], scale, basis, decimals)
            if measured and table.get("compare_with", {}).get(metric) == "pooled" \
                    and record[f"{metric}_basis"] != "pooled":
                measured += " (per-image: no pooled value)"
            if not measured and record["status"] == STATUS_MEASURED:
                measured = "not computed"  # the result exists but its summary has no value for this metric
            # the verdict sits beside the difference it qualifies: "-0.563, below paper"
            comparison = ", ".join(part for part in (
                _format_number(record[f"{metric}_difference"], scale, signed=True, decimals=decimals),
                record[f"{metric}_verdict"]) if part)
            cells += [printed, measured, comparison]
        cells.append(record["status"])
        body.append(cells)
    return _markdown_table(header, body)


def _figure_name(paper_id: str, table_id: str) -> str:
    # the file name predates the word "measured"; kept so that links to committed figures stay valid
    return f"{paper_id}_{table_id}_reported_vs_reproduced.png"


def _copy_report_figures(paper_id: str, run_dir: Path, figures_dir: Path, produced_keys: set[str]) -> list[Path]:
    """Copy the figures a paper's ``REPORT_FIGURES`` names from ``<run_dir>/figures`` into the reports, atomically, when
    this run produced one of the results each figure shows (else the reports keep the figure they have)."""
    from lungkit.data.export import write_bytes_atomic

    copied = []
    for name, spec in getattr(get_paper(paper_id), "REPORT_FIGURES", {}).items():
        source = Path(run_dir) / "figures" / name
        if source.is_file() and any(key.startswith(tuple(spec["results"])) for key in produced_keys):
            target = figures_dir / name
            write_bytes_atomic(target, source.read_bytes())
            copied.append(target)
    return copied


def _gallery_name(paper_id: str, result_key: str) -> str:
    return f"{paper_id}_{result_key}_gallery.png"


def _caveats(summaries: list[dict]) -> list[str]:
    caveats = []
    if any((s.get("protocol") or {}).get("data_source") == "phantom" for s in summaries):
        caveats.append(PHANTOM_CAVEAT)
    profiles = sorted({str((s.get("protocol") or {}).get("profile")) for s in summaries} - {"paper"})
    if profiles:
        caveats.append(PROFILE_CAVEAT.format(profiles=", ".join(f"`{p}`" for p in profiles)))
    if any(s.get("status") == "wiring_only" for s in summaries):
        caveats.append(WIRING_CAVEAT)
    return caveats


def _recipe_markdown(paper_id: str, module) -> list[str]:
    lines = []
    for result_key, recipe in module.RECIPES.items():
        lines += [f"### `{result_key}` (training recipe)", ""]
        settings = [[key, json.dumps(value)] for key, value in recipe.items() if key != "notes"]
        settings.append(["post-processing", get_postprocessing(paper_id, result_key)])
        lines += [_markdown_table(["setting", "value"], settings), "", f"Notes: {recipe.get('notes', '')}", ""]
    for result_key, setup in getattr(module, "ZERO_SHOT", {}).items():
        lines += [f"### `{result_key}` (zero-shot evaluation, no training)", ""]
        settings = [[key, json.dumps(value)] for key, value in setup.items() if key != "notes"]
        lines += [_markdown_table(["setting", "value"], settings), "", f"Notes: {setup.get('notes', '')}", ""]
    return lines


def _paper_report_markdown(paper_id: str, summaries: list[dict], reports_dir: Path, run_dir) -> tuple[str, list]:
    module = get_paper(paper_id)
    paper = module.PAPER
    by_key = _summaries_by_result_key(paper_id, summaries)
    lines = [f"# {paper_id}: {paper['title']}", ""]
    # the run's id, not its absolute path: a committed report must not carry one machine's folders
    source = f"the results of run `{_run_id(run_dir)}`" if run_dir is not None else "the summaries passed in"
    kept = {key: s["_run"] for key, s in sorted(by_key.items())
            if s.get("_run") and (run_dir is None or s["_run"] != _run_id(run_dir))}
    if kept:
        source += ("; rows that run did not produce are kept from earlier runs: "
                   + ", ".join(f"`{key}` from run `{run}`" for key, run in kept.items())
                   + " (each row's protocol line names its run)")
    lines += [f"*{paper['short_title']}*. Paper text: `shared/papers/{paper['file']}`. "
              f"lungkit's numbers from {source}.", ""]
    if module.TABLES:  # the words of the tables, once, before anything uses them
        lines += [VERDICT_LEGEND, ""]
    lines += ["## What the paper did", "", f"**Data.** {paper['data']}", "", "**Systems.**", ""]
    lines += [f"- {system}" for system in paper["systems"]] + [""]
    if paper.get("notes"):
        lines += ["**Notes on the paper.**", ""] + [f"- {note}" for note in paper["notes"]] + [""]
    caveats = _caveats(list(by_key.values()))
    if caveats:
        lines += ["## Read this first", ""]
        for caveat in caveats:
            lines += [caveat, ""]
    lines += [
        "## How to read the tables",
        "",
        "*paper*: the value exactly as printed (a percent table prints percent). *lungkit*: the measured mean over "
        "the test set with its 95% confidence interval from `lungkit.evaluation` (pooled values have none), in the "
        "paper's units and to the paper's number of decimals. *Δ* = lungkit - paper, in the paper's units, followed "
        "by the verdict (see *Words in the tables* above). A row lungkit ran says `measured`; a row lungkit has not "
        "produced yet says `not reproduced yet`; rows of other people's work say `reference only "
        "(others' work)`; the paper's own rows that lungkit cannot run yet say `reference only (not in lungkit "
        "yet)`; results without weights say `wiring only` and show no numbers.",
        "",
    ]

    frames = []
    if not module.TABLES:
        lines += ["## Results tables", "", paper.get("no_table_note", "The paper prints no results table."), ""]
        if paper.get("printed_numbers"):
            lines += ["Numbers the paper does print:", ""]
            lines += [_markdown_table(["what", "printed"], [[k, v] for k, v in paper["printed_numbers"].items()]), ""]
    for table_id, table in module.TABLES.items():
        frame = paper_table_frame(paper_id, table_id, summaries)
        frames.append(frame)
        heading = f"## {_table_label(table_id)}: {table['title']}"
        if table.get("aliases"):
            heading += f" (alias {', '.join(table['aliases'])})"
        lines += [heading, ""]
        if table.get("numbering_note"):
            lines += [f"*Numbering.* {table['numbering_note']}", ""]
        if table.get("source_note"):
            lines += [f"*Source.* {table['source_note']}", ""]
        lines += [f"*Paper's protocol.* {table['protocol']}", "", _table_markdown(table, frame), ""]
        lines += ["**Metric definitions** (what the paper seems to mean):", ""]
        for metric, column in zip(table["metrics"], table["columns"]):
            basis = f"the {table.get('compare_with', {}).get(metric, 'per-image mean')} value"
            if table.get("readings"):
                basis = "each reading's value (below)"
            lines.append(f"- {column} (`{metric}`, lungkit compares with {basis}): "
                         f"{table['metric_definitions'].get(metric, 'not defined')}")
        if table.get("readings"):
            lines += ["", "**lungkit's readings** (each row of lungkit numbers is one of these; the paper's numbers "
                      "are repeated beside each):", ""]
            lines += [f"- *{reading['name']}*: {reading['definition']}" for reading in table["readings"]]
        lines += ["", "**How each lungkit row was produced:**", ""]
        reproducible = [row for row in table["rows"] if row["reproduced_by"]]
        for row in reproducible:
            key = row["reproduced_by"]["result_key"]
            summary = by_key.get(key)
            where = f"`{key}` (model `{row['reproduced_by']['model']}`, notebook `{row['reproduced_by']['notebook']}`)"
            if summary is None:
                lines.append(f"- **{_row_label(row)}** <- {where}: not reproduced yet "
                             f"(no results/{paper_id}/{key}/summary.json).")
            else:
                status = _row_status(row, summary)
                lines.append(f"- **{_row_label(row)}** <- {where}, {status}: {protocol_line(summary)}")
        if not reproducible:
            lines.append("- No row of this table is run by lungkit (reference only).")
        remarks = [(_row_label(row), remark) for row in table["rows"] for remark in row.get("remarks", [])]
        if remarks:
            lines += ["", "**Remarks on the printed numbers:**", ""]
            lines += [f"- *{name}*: {remark}" for name, remark in remarks]
        figure = reports_dir / "figures" / _figure_name(paper_id, table_id)
        if figure.exists():
            lines += ["", f"![{paper_id} {table_id}: reported vs measured](figures/{figure.name})"]
        lines.append("")

    table_keys = {row["reproduced_by"]["result_key"] for t in module.TABLES.values() for row in t["rows"]
                  if row["reproduced_by"]}
    unmatched = [summary for key, summary in sorted(by_key.items()) if key not in table_keys]
    if unmatched:
        lines += ["## lungkit results with no row in the paper's tables", ""]
        for summary in unmatched:
            if not _is_measured(summary):
                numbers = STATUS_WIRING
            else:
                numbers = ", ".join(
                    f"{name} {_format_with_ci(v['mean'], v['ci_low'], v['ci_high'])}"
                    for name in summary.get("metrics", {})
                    if (v := metric_from_summary(summary, name)) is not None
                )
            lines.append(f"- `{summary_result_key(summary)}` (model `{summary['model']}`): {numbers}. "
                         f"Protocol: {protocol_line(summary)}")
        lines.append("")

    galleries = sorted((reports_dir / "figures").glob(f"{paper_id}_*_gallery.png"))
    if galleries:
        lines += ["## Predictions: best, median and worst test image per model", ""]
        lines += [f"![{path.stem}](figures/{path.name})" for path in galleries] + [""]

    shown = [(name, spec) for name, spec in getattr(module, "REPORT_FIGURES", {}).items()
             if (reports_dir / "figures" / name).is_file()]
    if shown:
        lines += ["## Figures from the notebooks", ""]
        for name, spec in shown:
            lines += [f"{spec['caption']}:", "", f"![{Path(name).stem}](figures/{name})", ""]

    if module.RECIPES or getattr(module, "ZERO_SHOT", {}):
        lines += ["## Recipes (the paper's settings as lungkit runs them)", ""] + _recipe_markdown(paper_id, module)
    return "\n".join(lines).rstrip() + "\n", frames


# ---------------------------------------------------------------------------------------------------- writing


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Write through ``write(temporary_path)`` in the target's folder, then move it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    return _replace_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return _replace_atomically(path, lambda temporary: frame.to_csv(temporary, index=False))


def _save_figure(path: Path, figure: Figure) -> Path:
    return _replace_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=110))


_EMPTY_PAPER_COLUMNS = ["paper", "table", "row", "status", "result_key", "model", "notebook", "protocol",
                        "paper_line", "remarks"]


def write_paper_report(paper_id: str, summaries: Iterable[dict], reports_dir: str | os.PathLike,
                       run_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``reports/<paper_id>.md`` and ``reports/<paper_id>.csv``.

    The markdown has the paper's data and systems, caveats (phantom data, reduced profile, wiring-only results),
    a legend of the status and verdict words, one table per printed table with reported vs measured (95% CI), the
    difference and the verdict, the protocol line of every
    lungkit row, the metric definitions, remarks on the printed numbers, figures found in ``reports/figures`` and
    the recipes. The CSV holds every table's :func:`paper_table_frame`, stacked.

    Args:
        paper_id: e.g. ``"paper001"``.
        summaries: summaries of one run (other papers' are ignored).
        reports_dir: output folder (created if needed).
        run_dir: the run the summaries came from, named in the report; optional.

    Returns:
        (markdown path, csv path).
    """
    reports_dir = Path(reports_dir)
    summaries = list(summaries)
    text, frames = _paper_report_markdown(paper_id, summaries, reports_dir, run_dir)
    if frames:
        frame = pd.concat(frames, ignore_index=True)
        # tables have different metrics: keep the free-text columns last, after every table's metric columns
        trailing = ["protocol", "paper_line", "remarks"]
        frame = frame[[c for c in frame.columns if c not in trailing] + trailing]
    else:
        frame = pd.DataFrame(columns=_EMPTY_PAPER_COLUMNS)
    md_path = _write_text(reports_dir / f"{paper_id}.md", text)
    csv_path = _write_csv(reports_dir / f"{paper_id}.csv", frame)
    return md_path, csv_path


# -------------------------------------------------------------------------------------------------- leaderboard


def _split_group(summary: dict) -> str:
    protocol = summary.get("protocol") or {}
    return (f"data {protocol.get('data_source', 'not recorded')}; split {protocol.get('split', 'not recorded')}; "
            f"data fingerprint {protocol.get('data_fingerprint', 'not recorded')}")


def _paper_verdicts(summary: dict) -> list[tuple[str, str]]:
    """``("<table> <row>: <column>", verdict)`` for every number one result gives in its paper's tables."""
    key = summary_result_key(summary)
    verdicts = []
    for table_id in dict.fromkeys(row["table"] for row in find_rows_for_result(summary["paper"], key)):
        table = get_table(summary["paper"], table_id)
        frame = paper_table_frame(summary["paper"], table_id, [summary])
        for _, record in frame[frame["result_key"] == key].iterrows():
            reading = f" ({record['reading']})" if record["reading"] else ""
            verdicts += [(f"{table_id} {record['row']}{reading}: {column}", record[f"{metric}_verdict"])
                         for metric, column in zip(table["metrics"], table["columns"])
                         if record[f"{metric}_verdict"]]
    return verdicts


def _verdict_counts(verdicts: list[tuple[str, str]]) -> str:
    """``"4 below paper, 2 above paper (no CI)"``: the verdicts of :func:`_paper_verdicts`, counted."""
    words = [verdict for _, verdict in verdicts]
    names = [VERDICT_WITHIN, VERDICT_BELOW, VERDICT_ABOVE, VERDICT_EQUAL]
    order = [name + suffix for suffix in ("", NO_CI_SUFFIX) for name in names] + [VERDICT_NOT_PRINTED]
    return ", ".join(f"{words.count(word)} {word}" for word in order if word in words)


def leaderboard_frame(summaries: Iterable[dict]) -> pd.DataFrame:
    """One row per measured result: overall metrics with CIs, per-class Dice and the verdicts against the paper.

    Wiring-only results are left out (they never show numbers). Rows are grouped by ``split_group`` (data source,
    split and data fingerprint: only results in one group were tested on the same images) and sorted by Dice
    (segmentation) or accuracy (classification), best first.

    Returns:
        Columns ``split_group``, ``task``, ``paper``, ``result_key``, ``model``, ``paper_rows``, ``profile``,
        ``data_source``, ``image_size``, ``epochs``, ``seed``, ``n_images``, ``run`` (the run folder's name, when
        known), ``vs_paper`` (the verdicts of the result's numbers in the paper's tables, counted, e.g. ``"3 below
        paper, 1 within CI"``; empty when no row of the paper's tables shows the result), ``paper_verdicts`` (each
        of them: ``"table2 Traditional U-Net: Dice Score below paper; ..."``), then ``<metric>_mean``,
        ``<metric>_ci_low``, ``<metric>_ci_high`` for the segmentation and classification metrics, then
        ``dice_<class>_mean`` / ``_ci_low`` / ``_ci_high`` for LR2, LR3, LR4A, LR4B and any other class present.
    """
    summaries = [s for s in summaries if _is_measured(s)]
    classes = list(LUNGRADS_LABELS)
    for summary in summaries:
        classes += [c for c in (summary.get("per_class") or {}) if c not in classes]
    metrics = list(dict.fromkeys(SEGMENTATION_LEADERBOARD_METRICS + CLASSIFICATION_LEADERBOARD_METRICS))
    columns = ["split_group", "task", "paper", "result_key", "model", "paper_rows", "profile", "data_source",
               "image_size", "epochs", "seed", "n_images", "run", "vs_paper", "paper_verdicts"]
    columns += [f"{m}_{part}" for m in metrics for part in ("mean", "ci_low", "ci_high")]
    columns += [f"dice_{c}_{part}" for c in classes for part in ("mean", "ci_low", "ci_high")]
    records = []
    for summary in summaries:
        protocol = summary.get("protocol") or {}
        key = summary_result_key(summary)
        rows = find_rows_for_result(summary["paper"], key)
        record = {
            "split_group": _split_group(summary),
            "task": summary.get("task", "segmentation"),
            "paper": summary["paper"],
            "result_key": key,
            "model": summary["model"],
            "paper_rows": "; ".join(f"{r['table']}: {r['row']}" for r in rows),
            "profile": protocol.get("profile"),
            "data_source": protocol.get("data_source"),
            "image_size": protocol.get("image_size"),
            "epochs": protocol.get("epochs"),
            "seed": protocol.get("seed"),
            "n_images": summary.get("n_images"),
            "run": summary.get("_run", ""),
        }
        verdicts = _paper_verdicts(summary)
        record.update(vs_paper=_verdict_counts(verdicts),
                      paper_verdicts="; ".join(f"{number} {verdict}" for number, verdict in verdicts))
        for metric in metrics + [f"dice@{c}" for c in classes]:
            value = metric_from_summary(summary, metric)
            prefix = metric.replace("@", "_")
            for part in ("mean", "ci_low", "ci_high"):
                record[f"{prefix}_{part}"] = value[part] if value else math.nan
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=columns)
    if frame.empty:
        return frame
    frame["_rank"] = np.where(frame["task"] == "classification", frame["accuracy_mean"], frame["dice_mean"])
    frame = frame.sort_values(["split_group", "task", "_rank"], ascending=[True, True, False], na_position="last")
    return frame.drop(columns="_rank").reset_index(drop=True)


def write_leaderboard(summaries: Iterable[dict], reports_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``reports/leaderboard.md`` and ``reports/leaderboard.csv`` (see :func:`leaderboard_frame`).

    Returns:
        (markdown path, csv path).
    """
    reports_dir = Path(reports_dir)
    summaries = list(summaries)
    frame = leaderboard_frame(summaries)
    lines = ["# Leaderboard", "",
             "One row per lungkit result, grouped by test set (data source, split, data fingerprint): only results "
             "in the same group were scored on the same images. Means over test images with 95% CIs. *vs paper*: "
             "the result's numbers in its paper's tables, counted by verdict: `within CI` (the paper's printed value "
             "lies inside lungkit's 95% CI), `below paper` / `above paper` (the whole CI lies below / above it), "
             "`(no CI)` where only a point value could be compared (pooled values), `n/a` where the paper printed "
             "none; each number's verdict is in `leaderboard.csv` (`paper_verdicts`) and the paper's report.", ""]
    caveats = _caveats([s for s in summaries if _is_measured(s)])
    lines += [caveat + "\n" for caveat in caveats if caveat is not WIRING_CAVEAT]
    if frame.empty:
        lines += ["No measured results yet.", ""]
    classes = [c[len("dice_"):-len("_mean")] for c in frame.columns if c.startswith("dice_") and c.endswith("_mean")
               and c != "dice_mean"]
    for (group, task), part in frame.groupby(["split_group", "task"], sort=False):
        lines += [f"## {task}: {group}", ""]
        metrics = SEGMENTATION_LEADERBOARD_METRICS if task != "classification" else CLASSIFICATION_LEADERBOARD_METRICS
        header = ["paper", "result", "model", "run", "profile", "image size", "epochs", "n", "vs paper"] + list(metrics)
        if task != "classification":
            header += [f"Dice {c}" for c in classes]
        body = []
        for _, record in part.iterrows():
            cells = [record["paper"], record["result_key"], record["model"], record["run"], record["profile"],
                     record["image_size"], record["epochs"], record["n_images"], record["vs_paper"]]
            cells += [_format_with_ci(record[f"{m}_mean"], record[f"{m}_ci_low"], record[f"{m}_ci_high"])
                      for m in metrics]
            if task != "classification":
                cells += [_format_with_ci(record[f"dice_{c}_mean"], record[f"dice_{c}_ci_low"],
                                          record[f"dice_{c}_ci_high"]) for c in classes]
            body.append(["" if cell is None or (isinstance(cell, float) and math.isnan(cell)) else cell
                         for cell in cells])
        lines += [_markdown_table(header, body), ""]
    wiring = [s for s in summaries if s.get("status") == "wiring_only"]
    if wiring:
        lines += ["Left out as wiring only (no weights, numbers not shown): "
                  + ", ".join(f"`{s['paper']}/{summary_result_key(s)}`" for s in wiring), ""]
    md_path = _write_text(reports_dir / "leaderboard.md", "\n".join(lines).rstrip() + "\n")
    csv_path = _write_csv(reports_dir / "leaderboard.csv", frame)
    return md_path, csv_path


# ------------------------------------------------------------------------------------------------------ figures


def _load_gallery_arrays(result_dir: Path) -> tuple | None:
    """Per-image predictions of one result, when its evaluation saved them (``predictions.npz``)."""
    npz_path = result_dir / "predictions.npz"
    if not npz_path.exists():
        return None
    with np.load(npz_path) as arrays:
        missing = [k for k in ("images", "masks", "probabilities") if k not in arrays.files]
        if missing:
            raise ValueError(f"{npz_path}: missing array(s) {missing}; expected images, masks, probabilities[, dice]")
        images, masks, probabilities = arrays["images"], arrays["masks"], arrays["probabilities"]
        dice = arrays["dice"] if "dice" in arrays.files else None
    if dice is None:
        csv_path = result_dir / "per_image.csv"
        if not csv_path.exists():
            raise ValueError(f"{npz_path}: has no 'dice' array and {csv_path} is missing")
        table = pd.read_csv(csv_path)
        if "dice" not in table.columns or len(table) != len(images):
            raise ValueError(f"{csv_path}: needs a 'dice' column with one row per image of {npz_path} "
                             f"({len(images)} images, got {len(table)} rows)")
        dice = table["dice"].to_numpy(float)
    return images, masks, probabilities, dice


RESULTS_INDEX_NAME = "results.json"
#: Row statuses that show a lungkit result: a rewrite that turned one into ``not reproduced yet`` would erase it.
#: ``reproduced`` is the former name of ``measured``: reports written before the rename still say it.
_STATUSES_WITH_A_RESULT = (STATUS_MEASURED, STATUS_WIRING, "reproduced")


def _index_key(summary: dict) -> str:
    return f"{summary['paper']}/{summary_result_key(summary)}"


def read_results_index(reports_dir: str | os.PathLike) -> dict[str, dict]:
    """The summaries behind the rows of a reports folder (``<reports_dir>/results.json``), by ``paper/result_key``.

    Args:
        reports_dir: a folder :func:`write_all_reports` wrote; one without ``results.json`` gives ``{}``.

    Returns:
        ``{"paper004/unet": summary}``; each summary carries ``_result_key`` and ``_run`` (no ``_path``: the run
        folder that held it may be gone).

    Raises:
        ValueError: naming the file, when it is not the index :func:`write_all_reports` writes.
    """
    path = Path(reports_dir) / RESULTS_INDEX_NAME
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8")).get("results")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{path}: not the results index lungkit writes ({error})") from error
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected an object with 'results': {{'<paper>/<result_key>': summary}}")
    for key, summary in results.items():
        missing = [name for name in REQUIRED_SUMMARY_KEYS if name not in (summary or {})]
        if missing or key != _index_key(summary):
            raise ValueError(f"{path}: entry {key!r} is not a summary of that result (missing {missing})")
        # entries kept from before the rename say "reproduced"; they show, and are written back, as "measured"
        summary["status"] = _current_status(summary["status"])
    return results


def _write_results_index(reports_dir: Path, summaries: list[dict]) -> Path:
    results = {_index_key(s): {k: v for k, v in s.items() if k != "_path"} for s in summaries}
    document = {
        "about": "The summary.json behind every lungkit row of this folder's reports, with the run it came from "
                 "(_run); lungkit.reports.write_all_reports merges each run into it, so a partial run keeps the "
                 "rows it did not produce.",
        "results": dict(sorted(results.items())),
    }
    return _write_text(reports_dir / RESULTS_INDEX_NAME, json.dumps(document, indent=1, sort_keys=True) + "\n")


def _results_a_rewrite_would_erase(reports_dir: Path, paper_ids: list[str], rewrite_leaderboard: bool,
                                   merged_keys: set[str]) -> list[str]:
    """Results the existing reports show that the merged summaries lack (e.g. reports written before
    ``results.json`` existed): rewriting those files would turn them into ``not reproduced yet``."""
    shown = set()
    for paper_id in paper_ids:
        csv_path = reports_dir / f"{paper_id}.csv"
        if csv_path.is_file():
            frame = pd.read_csv(csv_path, usecols=lambda c: c in ("status", "result_key"), dtype=str)
            if {"status", "result_key"} <= set(frame.columns):
                keys = frame.loc[frame["status"].isin(_STATUSES_WITH_A_RESULT), "result_key"].dropna()
                shown |= {f"{paper_id}/{key}" for key in keys}
    leaderboard_csv = reports_dir / "leaderboard.csv"
    if rewrite_leaderboard and leaderboard_csv.is_file():
        frame = pd.read_csv(leaderboard_csv, usecols=lambda c: c in ("paper", "result_key"), dtype=str)
        if {"paper", "result_key"} <= set(frame.columns):
            shown |= {f"{paper}/{key}" for paper, key in zip(frame["paper"], frame["result_key"])}
    return sorted(shown - merged_keys)


def write_all_reports(run_dir: str | os.PathLike, reports_dir: str | os.PathLike,
                      say: Callable[[str], None] = print) -> list[Path]:
    """Merge one run's results into a reports folder: every paper's report, the leaderboard and the figures.

    The run's summaries replace the rows of the same ``paper/result_key``; every other row is kept as an earlier run
    wrote it (its summary is in ``<reports_dir>/results.json``, and its protocol line names its run). Only what the
    run changes is rewritten: a paper's report and its table figures when the run produced a result of that paper
    (or the report does not exist yet), the leaderboard when the run produced any result, a gallery when the run
    saved ``predictions.npz`` for that result. A run with no results (``--only 90``) leaves the folder as it was.

    When the reports folder shows results that neither the run nor ``results.json`` holds (reports written before
    the index existed), merging would erase them: then the whole report goes to ``<run_dir>/reports`` instead and
    ``reports_dir`` is left untouched.

    Figures: a reported-vs-measured bar chart for every table with at least one measured row, and a
    best/median/worst gallery for every measured segmentation result whose evaluation saved ``predictions.npz``.

    Args:
        run_dir: the run directory (``results/`` inside may be absent or empty).
        reports_dir: output folder, e.g. ``reports``.
        say: receives one line per decision (rows kept and from which run, files left alone, a redirect).

    Returns:
        Paths written: per paper its figures, markdown and CSV, then the leaderboard's and ``results.json``.
    """
    run_dir, reports_dir = Path(run_dir), Path(reports_dir)
    produced = collect_summaries(run_dir)
    index = read_results_index(reports_dir)
    produced_keys = {_index_key(s) for s in produced}
    kept = [summary for key, summary in sorted(index.items()) if key not in produced_keys]
    merged = produced + kept
    papers_produced = {s["paper"] for s in produced}
    papers_to_write = [p for p in all_paper_ids()
                       if p in papers_produced or not (reports_dir / f"{p}.md").exists()]
    rewrite_leaderboard = bool(produced) or not (reports_dir / "leaderboard.md").exists()

    erased = _results_a_rewrite_would_erase(reports_dir, papers_to_write, rewrite_leaderboard,
                                            {_index_key(s) for s in merged})
    if erased:
        target = run_dir / "reports"
        say(f"[reports] {reports_dir} left untouched: it shows {', '.join(erased)}, which neither this run nor "
            f"{reports_dir / RESULTS_INDEX_NAME} holds, so rewriting it would erase them. This run's reports went to "
            f"{target}; a run that produces those results too (e.g. a full run) updates {reports_dir}.")
        return write_all_reports(run_dir, target, say)

    for paper_id in all_paper_ids():
        if paper_id not in papers_to_write:
            say(f"[reports] {reports_dir / paper_id}.md kept as it was: this run produced no {paper_id} result")
    for summary in kept:
        say(f"[reports] kept {_index_key(summary)} from run {summary.get('_run', 'unknown')} "
            "(this run did not produce it)")

    figures_dir = reports_dir / "figures"
    written: list[Path] = []
    for paper_id in papers_to_write:
        paper_summaries = [s for s in merged if s["paper"] == paper_id]
        paper_produced_keys = {summary_result_key(s) for s in produced if s["paper"] == paper_id}
        for table_id, table in get_paper(paper_id).TABLES.items():
            figure_path = figures_dir / _figure_name(paper_id, table_id)
            table_keys = {row["reproduced_by"]["result_key"] for row in table["rows"] if row["reproduced_by"]}
            # a chart changes only when this run changed one of its rows; the others stay byte for byte
            if figure_path.exists() and not table_keys & paper_produced_keys:
                continue
            frame = paper_table_frame(paper_id, table_id, paper_summaries)
            if (frame["status"] == STATUS_MEASURED).any():
                figure = plot_reported_vs_reproduced(paper_id, table_id, paper_summaries)
                written.append(_save_figure(figure_path, figure))
            elif figure_path.exists():
                figure_path.unlink()  # its bars would show a result the table no longer has
                say(f"[reports] removed {figure_path}: no measured row of {paper_id} {table_id} is left")
        for summary in produced:
            if summary["paper"] != paper_id:
                continue
            key = summary_result_key(summary)
            gallery_path = figures_dir / _gallery_name(paper_id, key)
            arrays = None
            if _is_measured(summary) and summary.get("task", "segmentation") == "segmentation":
                arrays = _load_gallery_arrays(Path(summary["_path"]).parent)
            if arrays is None:
                if gallery_path.exists():
                    # an earlier run's predictions beside this run's numbers would be out of step with the table
                    gallery_path.unlink()
                    say(f"[reports] removed {gallery_path}: it showed an earlier run's predictions and this run "
                        "saved none for that result")
                continue
            protocol = summary.get("protocol") or {}
            title = (f"{paper_id} / {key} ({summary['model']}): data {protocol.get('data_source')}, "
                     f"profile {protocol.get('profile')}, {protocol.get('image_size')} px, run {summary['_run']}")
            figure = plot_prediction_gallery(*arrays, title=title)
            written.append(_save_figure(gallery_path, figure))
        written.extend(_copy_report_figures(paper_id, run_dir, figures_dir, paper_produced_keys))
        written.extend(write_paper_report(paper_id, paper_summaries, reports_dir, run_dir=run_dir))
    if rewrite_leaderboard:
        written.extend(write_leaderboard(merged, reports_dir))
    else:
        say(f"[reports] {reports_dir / 'leaderboard.md'} kept as it was: this run produced no result")
    if written:
        written.append(_write_results_index(reports_dir, merged))
    return written


__all__ = [
    "STATUS_NOT_IN_KIT",
    "STATUS_NOT_YET",
    "STATUS_MEASURED",
    "STATUS_REFERENCE",
    "STATUS_WIRING",
    "VERDICT_ABOVE",
    "VERDICT_BELOW",
    "VERDICT_EQUAL",
    "VERDICT_NOT_PRINTED",
    "VERDICT_WITHIN",
    "collect_summaries",
    "leaderboard_frame",
    "metric_from_summary",
    "metric_verdict",
    "paper_table_frame",
    "table_readings",
    "result_table_rows",
    "protocol_line",
    "read_results_index",
    "read_summary",
    "summary_result_key",
    "write_all_reports",
    "write_leaderboard",
    "write_paper_report",
]
