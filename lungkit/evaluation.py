"""Predictions -> per-image metrics table -> summary with bootstrap CIs -> ``per_image.csv`` + ``summary.json``.

Per-image rows are computed and written before any averaging (nnU-Net's habit): every number in a summary can be
recomputed from ``per_image.csv``. The summary follows the schema of the contracts (``paper``, ``tables``, ``row``,
``model``, ``task``, ``status``, ``protocol``, ``n_images``, ``metrics``, ``pooled``, ``per_class``,
``per_image_csv``). Metric definitions live in :mod:`lungkit.metrics`; this module only applies and summarises
them (numpy / pandas, no framework).

Summary conventions:

- ``metrics[key]``: mean over images of the per-image values with a percentile bootstrap CI over images
  (:func:`bootstrap_ci`); NaN values (e.g. small-tumour recall of a slice without a small tumour) are left out and
  ``n`` counts the images that have a value. For classification, ``mean`` holds the metric over all cases and the CI
  comes from resampling cases. A dataset-level number (``intensity_robustness_std``) has ``ci_low``/``ci_high`` null.
- ``pooled``: segmentation metrics of the confusion counts summed over all test pixels; ``small_tumour_recall``
  pooled is lesion level (all small tumours detected / all small tumours), the closest to paper 004's Table 2.
- ``per_class``: the same as ``metrics`` within each value of the manifest column ``label1``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from lungkit.data.kit_dataset import manifest_fingerprint as data_fingerprint  # the one fingerprint, re-exported
from lungkit.metrics import (
    CLASSIFICATION_METRIC_KEYS,
    SEGMENTATION_METRIC_KEYS,
    SMALL_TUMOUR_MAX_DIAMETER_MM,
    accuracy_from_counts,
    as_binary_mask,
    check_probabilities,
    classification_metrics,
    f1_from_counts,
    pooled_segmentation_metrics,
    precision_from_counts,
    recall_from_counts,
    segmentation_metrics_per_image,
    small_tumour_recall,
    specificity_from_counts,
)
from lungkit.postprocess import REFINE_METHODS_USED

PER_IMAGE_CSV = "per_image.csv"
SUMMARY_JSON = "summary.json"
#: Manifest columns copied into the per-image table (those present).
MANIFEST_COLUMNS_KEPT = (
    "id",
    "label1",
    "pixel_spacing_mm",
    "tumour_area_px",
    "equivalent_diameter_px",
    "equivalent_diameter_mm",
)
#: Protocol keys a summary must carry (values may be None only for ``epochs``, e.g. a zero-shot model).

REQUIRED_PROTOCOL_KEYS = ("profile", "data_source", "split", "image_size", "epochs", "seed", "data_fingerprint")
REQUIRED_SUMMARY_KEYS = (
    "paper", "tables", "row", "model", "task", "status", "protocol", "n_images", "metrics", "per_class",
)  # fmt: skip
#: ``measured``: the numbers were measured (nothing more: how they compare with the paper is the reports' verdict);
#: ``wiring_only``: numbers that must never be shown as results (e.g. SAM without weights).
STATUSES = ("measured", "wiring_only")
#: Older names of a status, still accepted: summaries written before the rename (reports/results.json keeps them).
LEGACY_STATUSES = {"reproduced": "measured"}


def current_status(status):
    """The current name of a summary status (``reproduced`` -> ``measured``); anything else comes back as it is,
    for the caller's check to refuse."""
    return LEGACY_STATUSES.get(status, status) if isinstance(status, str) else status
TASKS = ("segmentation", "classification")
#: Dataset-level metrics: one number per test set, no per-image values to bootstrap.
DATASET_LEVEL_METRICS = ("intensity_robustness_std",)


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------------------------


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each column of ``replicates`` (n_boot, k), ignoring non-finite replicates."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    replicates = np.where(np.isfinite(replicates), replicates, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, which is what we want
        low, high = np.nanpercentile(replicates, [tail, 100.0 - tail], axis=0)
    return low, high


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile bootstrap confidence interval (resampling images with replacement).

    Args:
        values: one value per image; NaN values are dropped first.
        n_boot: number of bootstrap resamples.
        confidence: coverage of the interval, e.g. 0.95.
        seed: seed of ``numpy.random.default_rng``; the same inputs always give the same interval.

    Returns:
        ``(mean, low, high)``; all NaN when no value is left; ``low == high == mean`` for a single value.

    Raises:
        ValueError: if ``confidence`` is not in (0, 1) or ``n_boot`` < 1.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if values.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    # chunks keep the (n_boot, n) index array small for large test sets
    chunk = max(1, 2_000_000 // values.size)
    replicates = np.concatenate(
        [values[rng.integers(0, values.size, size=(min(chunk, n_boot - start), values.size))].mean(axis=1)
         for start in range(0, n_boot, chunk)]
    )  # fmt: skip
    low, high = _percentile_interval(replicates[:, None], confidence)
    return mean, float(low[0]), float(high[0])


def bootstrap_statistic_ci(
    n_cases: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CIs of statistics of whole case sets (e.g. ROC AUC, sensitivity), resampling cases.

    Args:
        n_cases: number of cases (>= 1).
        statistic: vectorised: maps an index matrix (n_resamples, n_cases), each row a resample of
            ``range(n_cases)``, to an array (n_resamples, k) of k statistics. Non-finite results (e.g. AUC of a
            resample with one class) are left out of the percentiles.
        n_boot, confidence, seed: as for :func:`bootstrap_ci`.

    Returns:
        ``(low, high)``: arrays (k,). NaN where no resample gives a finite value; the statistics of the single case
        when ``n_cases == 1``.
    """
    if n_cases < 1:
        raise ValueError("bootstrap_statistic_ci needs at least one case")
    if n_cases == 1:
        value = np.asarray(statistic(np.zeros((1, 1), dtype=np.int64)), dtype=np.float64)[0]
        return value, value
    rng = np.random.default_rng(seed)
    replicates = np.asarray(statistic(rng.integers(0, n_cases, size=(n_boot, n_cases))), dtype=np.float64)
    return _percentile_interval(replicates, confidence)


# ---------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------


def _as_image_stack(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{name} must be a stack (N, H, W) or (N, H, W, 1); got shape {array.shape}")
    return array


def _evaluation_spacing(manifest_row: Mapping, height: int, width: int) -> tuple[float, float] | None:
    """Pixel spacing (row, column) of the evaluated arrays: the source spacing scaled by the resize factor."""
    spacing = manifest_row.get("pixel_spacing_mm")
    source_height, source_width = manifest_row.get("height"), manifest_row.get("width")
    if spacing is None or not np.isfinite(spacing) or spacing <= 0:
        return None
    if source_height is None or source_width is None or not np.isfinite([source_height, source_width]).all():
        return None
    return float(spacing) * float(source_height) / height, float(spacing) * float(source_width) / width


def evaluate_segmentation(
    probabilities: np.ndarray,
    targets: np.ndarray,
    manifest: pd.DataFrame,
    threshold: float = 0.5,
    spacing_mm: float | Sequence[float] | None = None,
    masks: np.ndarray | None = None,
    small_tumour_max_diameter_mm: float = SMALL_TUMOUR_MAX_DIAMETER_MM,
    small_tumour_max_diameter_px: float | None = None,
    small_tumour_min_overlap: float = 0.0,
) -> pd.DataFrame:
    """Every segmentation metric of every test slice, one row per slice.

    Args:
        probabilities: predicted tumour probabilities (N, H, W) or (N, H, W, 1) in [0, 1], in manifest order.
        targets: binary targets at the same resolution.
        manifest: the test rows of the kit manifest, in the same order (at least ``id``; ``label1``, spacing and
            size columns are copied when present).
        threshold: probabilities >= threshold are tumour (ignored when ``masks`` is given).
        spacing_mm: pixel spacing of the evaluated arrays: one number for all slices, or one per slice, shape (N,)
            or (N, 2) for (row, column). When None it
            is derived per slice from the manifest: ``pixel_spacing_mm * height / H`` (and width / W), since the
            manifest spacing belongs to the source resolution.
        masks: binary predictions to score instead of thresholded probabilities (e.g. after
            :func:`lungkit.postprocess.refine_batch`); RMSE still uses ``probabilities``.
        small_tumour_max_diameter_mm: threshold of :func:`lungkit.metrics.small_tumour_recall`.
        small_tumour_max_diameter_px: pixel threshold; when given it replaces the mm threshold for every slice.
        small_tumour_min_overlap: fraction of a small tumour the prediction must cover (0: >= 1 pixel).

    Returns:
        DataFrame: manifest columns (``id``, ``label1``, ...), ``eval_spacing_mm``, every metric of
        :func:`lungkit.metrics.segmentation_metrics_per_image` (with the counts ``tp, fp, fn, tn`` and squared-error
        sums for pooling), ``small_tumours_total``, ``small_tumours_detected`` and ``small_tumour_recall``
        (NaN when the slice has no small tumour or its spacing is unknown and no pixel threshold is given).

    Raises:
        ValueError: on mismatched lengths or shapes, non-binary targets or probabilities outside [0, 1], each
            naming the slice (row index and id).
    """
    probabilities = _as_image_stack(probabilities, "probabilities")
    targets = _as_image_stack(targets, "targets")
    if masks is not None:
        masks = _as_image_stack(masks, "masks")
    manifest = manifest.reset_index(drop=True)
    n_images = len(probabilities)
    if len(targets) != n_images or len(manifest) != n_images or (masks is not None and len(masks) != n_images):
        raise ValueError(
            f"lengths differ: {n_images} probability maps, {len(targets)} targets, {len(manifest)} manifest rows"
            + ("" if masks is None else f", {len(masks)} masks")
        )
    if "id" not in manifest.columns:
        raise ValueError(f"manifest needs an 'id' column; it has {list(manifest.columns)}")
    height, width = probabilities.shape[1:]
    if spacing_mm is None:
        per_slice_spacing = [_evaluation_spacing(manifest.iloc[i], height, width) for i in range(n_images)]
    else:
        spacing_array = np.asarray(spacing_mm, dtype=np.float64)
        if spacing_array.ndim == 0:
            per_slice_spacing = [float(spacing_array)] * n_images
        elif spacing_array.ndim in (1, 2) and spacing_array.shape[0] == n_images:
            per_slice_spacing = [tuple(np.atleast_1d(s).tolist()) for s in spacing_array]
        else:
            raise ValueError(
                f"spacing_mm must be one number or one entry per slice ({n_images}, or ({n_images}, 2)); "
                f"got shape {spacing_array.shape}"
            )

    rows = []
    missing_spacing = 0
    for index in range(n_images):
        row_id = manifest.at[index, "id"]
        where = f"slice {index} (id {row_id!r})"
        try:
            target = as_binary_mask(targets[index], f"target of {where}")
            probability = check_probabilities(probabilities[index], f"probabilities of {where}")
            if probability.shape != target.shape:
                raise ValueError(f"{where}: probability shape {probability.shape} != target shape {target.shape}")
            pred_mask = None if masks is None else as_binary_mask(masks[index], f"mask of {where}")
            metrics = segmentation_metrics_per_image(probability, target, threshold, pred_mask=pred_mask)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if pred_mask is None:
            pred_mask = probability >= threshold
        spacing = per_slice_spacing[index]
        if small_tumour_max_diameter_px is not None or spacing is not None:
            lesions = small_tumour_recall(
                pred_mask,
                target,
                max_diameter_mm=small_tumour_max_diameter_mm,
                spacing_mm=spacing,
                max_diameter_px=small_tumour_max_diameter_px,
                min_overlap_fraction=small_tumour_min_overlap,
            )
            small = {
                "small_tumours_total": lesions.total,
                "small_tumours_detected": lesions.detected,
                "small_tumour_recall": lesions.recall,
            }
        else:
            missing_spacing += 1
            small = {"small_tumours_total": 0, "small_tumours_detected": 0, "small_tumour_recall": float("nan")}
        row = {c: manifest.at[index, c] for c in MANIFEST_COLUMNS_KEPT if c in manifest.columns}
        row["eval_spacing_mm"] = float(np.mean(spacing)) if spacing is not None else float("nan")
        row.update(metrics)
        row.update(small)
        rows.append(row)
    if missing_spacing:
        warnings.warn(
            f"{missing_spacing} of {n_images} slices have no pixel spacing: small_tumour_recall is NaN for them; "
            "pass spacing_mm or small_tumour_max_diameter_px",
            stacklevel=2,
        )
    return pd.DataFrame(rows)


def pooled_from_per_image(per_image_df: pd.DataFrame) -> dict[str, float]:
    """Pooled metrics from the count columns of a per-image table (see :func:`evaluate_segmentation`)."""
    needed = ["tp", "fp", "fn", "tn"]
    missing = [c for c in needed if c not in per_image_df.columns]
    if missing:
        raise ValueError(f"per-image table lacks the count columns {missing} needed for pooled metrics")
    def column_total(name):
        return float(per_image_df[name].sum()) if name in per_image_df.columns else None

    pooled = pooled_segmentation_metrics(
        per_image_df[needed].to_numpy(dtype=np.int64),
        sum_squared_error_total=column_total("sum_squared_error"),
        sum_squared_error_binary_total=column_total("sum_squared_error_binary"),
    )
    if {"small_tumours_total", "small_tumours_detected"} <= set(per_image_df.columns):
        total = int(per_image_df["small_tumours_total"].sum())
        pooled["small_tumours_total"] = total
        pooled["small_tumours_detected"] = int(per_image_df["small_tumours_detected"].sum())
        pooled["small_tumour_recall"] = pooled["small_tumours_detected"] / total if total else float("nan")
    return pooled


def _metric_block(values, n_boot, confidence, seed) -> dict:
    values = np.asarray(values, dtype=np.float64)
    mean, low, high = bootstrap_ci(values, n_boot=n_boot, confidence=confidence, seed=seed)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": int(np.count_nonzero(~np.isnan(values)))}


def summarize(
    per_image_df: pd.DataFrame,
    pooled_counts: Mapping | None = None,
    by: str | None = "label1",
    metric_keys: Sequence[str] | None = None,
    extra_metrics: Mapping[str, float] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Summarise a per-image segmentation table: overall and per class, mean with bootstrap CI, plus pooled.

    Args:
        per_image_df: output of :func:`evaluate_segmentation`.
        pooled_counts: pooled metrics to report; computed from the table's count columns when None.
        by: column to break down by (``label1``); no breakdown when None or absent.
        metric_keys: per-image columns to summarise; the canonical keys present in the table when None.
        extra_metrics: dataset-level numbers, e.g. ``{"intensity_robustness_std": 0.03}``; reported in
            ``metrics`` with null CI and in ``pooled``.
        n_boot, confidence, seed: passed to :func:`bootstrap_ci`.

    Returns:
        ``{"n_images", "metrics", "pooled", "per_class"}`` as in the summary.json schema.
    """
    if metric_keys is None:
        metric_keys = [k for k in SEGMENTATION_METRIC_KEYS if k in per_image_df.columns]
    missing = [k for k in metric_keys if k not in per_image_df.columns]
    if missing:
        raise ValueError(f"per-image table lacks metric columns {missing}")
    n_images = len(per_image_df)
    metrics = {k: _metric_block(per_image_df[k], n_boot, confidence, seed) for k in metric_keys}
    pooled = dict(pooled_counts) if pooled_counts is not None else pooled_from_per_image(per_image_df)
    for name, value in (extra_metrics or {}).items():
        metrics[name] = {"mean": float(value), "ci_low": None, "ci_high": None, "n": n_images}
        pooled[name] = float(value)
    per_class = {}
    if by is not None and by in per_image_df.columns:
        for label, group in per_image_df.groupby(by, sort=True):
            block = {k: _metric_block(group[k], n_boot, confidence, seed) for k in metric_keys}
            per_class[str(label)] = block
    return {"n_images": n_images, "metrics": metrics, "pooled": pooled, "per_class": per_class}


# ---------------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------------


def _roc_auc_rows(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC of every row (Mann-Whitney U with mid-ranks for ties, as scikit-learn); NaN for one-class rows."""
    ranks = rankdata(y_score, axis=1)
    positives = y_true.sum(axis=1)
    negatives = y_true.shape[1] - positives
    u_statistic = (ranks * y_true).sum(axis=1) - positives * (positives + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((positives > 0) & (negatives > 0), u_statistic / (positives * negatives), np.nan)


def _classification_replicates(y_true, y_score, threshold):
    """Vectorised statistic for :func:`bootstrap_statistic_ci`: every classification metric of every resample."""

    def statistic(index: np.ndarray) -> np.ndarray:
        truth = y_true[index].astype(bool)
        score = y_score[index]
        predicted = score >= threshold
        counts = np.stack(
            [(predicted & truth).sum(1), (predicted & ~truth).sum(1), (~predicted & truth).sum(1),
             (~predicted & ~truth).sum(1)], axis=-1,
        )  # fmt: skip
        by_key = {
            "accuracy": accuracy_from_counts(counts),
            "sensitivity": recall_from_counts(counts),
            "specificity": specificity_from_counts(counts),
            "precision": precision_from_counts(counts),
            "f1": f1_from_counts(counts),
            "roc_auc": _roc_auc_rows(truth.astype(np.float64), score),
        }
        return np.stack([np.atleast_1d(by_key[k]) for k in CLASSIFICATION_METRIC_KEYS], axis=-1)

    return statistic


def _classification_blocks(y_true, y_score, threshold, n_boot, confidence, seed) -> dict:
    point = classification_metrics(y_true, y_score, threshold)
    low, high = bootstrap_statistic_ci(
        len(y_true), _classification_replicates(y_true, y_score, threshold), n_boot, confidence, seed
    )
    return {
        key: {"mean": point[key], "ci_low": float(low[i]), "ci_high": float(high[i]), "n": int(len(y_true))}
        for i, key in enumerate(CLASSIFICATION_METRIC_KEYS)
    }


def evaluate_classification(
    y_true: Sequence[int] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    ids: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Per-case table and summary of a binary classifier (positive = 1, e.g. malignant).

    Args:
        y_true: 0/1 labels (N,).
        y_score: predicted probability of class 1 (N,).
        threshold: ``y_score >= threshold`` predicts 1.
        ids: case ids (default ``"0" .. "N-1"``).
        labels: a grouping per case for ``per_class`` (e.g. ``label1``); no breakdown when None.
        n_boot, confidence, seed: bootstrap over cases (:func:`bootstrap_statistic_ci`).

    Returns:
        ``(per_case_df, summary)``: columns id, [label1], y_true, y_score, y_pred, correct; summary
        ``{"n_images", "metrics", "pooled", "per_class"}`` where ``metrics[k]["mean"]`` is the metric over all cases
        and the CI comes from resampling cases; ``pooled`` holds the confusion counts.

    Raises:
        ValueError: on mismatched lengths or labels other than 0/1.
    """
    y_true = np.asarray(y_true).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    n_cases = len(y_true)
    if len(y_score) != n_cases:
        raise ValueError(f"{n_cases} labels but {len(y_score)} scores")
    if ids is not None and len(ids) != n_cases:
        raise ValueError(f"{n_cases} labels but {len(ids)} ids")
    if labels is not None and len(labels) != n_cases:
        raise ValueError(f"{n_cases} labels but {len(labels)} group labels")
    point = classification_metrics(y_true, y_score, threshold)  # validates 0/1 labels
    y_true = y_true.astype(np.int64)
    y_pred = (y_score >= threshold).astype(np.int64)
    table = pd.DataFrame({"id": [str(i) for i in ids] if ids is not None else [str(i) for i in range(n_cases)]})
    if labels is not None:
        table["label1"] = [str(label) for label in labels]
    table["y_true"] = y_true
    table["y_score"] = y_score
    table["y_pred"] = y_pred
    table["correct"] = (y_pred == y_true).astype(np.int64)
    summary = {
        "n_images": n_cases,
        "metrics": _classification_blocks(y_true, y_score, threshold, n_boot, confidence, seed),
        "pooled": {k: point[k] for k in ("tp", "fp", "fn", "tn")},
        "per_class": {},
    }
    if labels is not None:
        for label, group in table.groupby("label1", sort=True):
            index = group.index.to_numpy()
            block = _classification_blocks(y_true[index], y_score[index], threshold, n_boot, confidence, seed)
            summary["per_class"][str(label)] = block
    return table, summary


# ---------------------------------------------------------------------------------------------------------------
# Provenance and files
# ---------------------------------------------------------------------------------------------------------------


#: The paths whose uncommitted changes make a result's commit ``<commit>-dirty``: the code, not the reports a run
#: rewrites (a second run after the first rewrote ``reports/`` still ran the committed code).
CODE_PATHS = ("lungkit", "benchmarks", "notebooks", "pyproject.toml")


def git_commit(repo_dir: str | Path | None = None) -> str:
    """Short commit of the lungkit checkout (``git rev-parse --short HEAD``), with ``-dirty`` when tracked files under
    :data:`CODE_PATHS` differ from it (the number was not made by that commit alone), or ``'unknown'`` outside a repo.
    """
    repo_dir = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=10
        )
        commit = result.stdout.strip()
        if result.returncode != 0 or not commit:
            return "unknown"
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--",
             *(f":(top){path}" for path in CODE_PATHS)],
            cwd=repo_dir, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if changes.returncode == 0 and changes.stdout.strip() else commit


def _json_ready(value):
    """numpy scalars -> Python, NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_results(
    results_dir: str | Path,
    per_image_df: pd.DataFrame,
    summary: Mapping,
    *,
    paper: str,
    tables: Sequence[str],
    row: str,
    model: str,
    task: str,
    protocol: Mapping,
    status: str = "measured",
    dataset_dir: str | Path | None = None,
    wall_time_s: float | None = None,
) -> Path:
    """Write ``per_image.csv`` first, then ``summary.json`` (both atomically) in the contract schema.

    Args:
        results_dir: ``<run_dir>/results/<paper_id>/<result_key>``; created if missing.
        per_image_df: the per-image (or per-case) table.
        summary: output of :func:`summarize` or the summary of :func:`evaluate_classification`.
        paper: ``paper000`` .. ``paper004``.
        tables: the paper tables this result feeds, e.g. ``["table2", "table3"]``.
        row: the row name exactly as printed in the paper's table.
        model: registry name of the model.
        task: ``segmentation`` or ``classification``.
        protocol: how the numbers were produced (``REQUIRED_PROTOCOL_KEYS`` at least; plus loss, optimizer,
            postprocess, notes ...). ``git_commit`` is added when absent.
        status: ``measured``, or ``wiring_only`` for numbers that must never be shown as results (the older name
            ``reproduced`` is accepted and written as ``measured``).
        dataset_dir: the kit dataset evaluated; its manifest gives ``data_fingerprint`` when the protocol lacks it.
        wall_time_s: seconds the run took; stored as ``protocol.wall_time_s``.

    Returns:
        Path of ``summary.json``.

    Raises:
        ValueError: for an unknown status or task, a malformed paper id, no tables, or missing protocol keys.
    """
    status = current_status(status)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}; got {status!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if not (len(paper) == 8 and paper.startswith("paper") and paper[5:].isdigit()):
        raise ValueError(f"paper must look like 'paper004'; got {paper!r}")
    if isinstance(tables, str) or not tables:
        raise ValueError(f"tables must be a non-empty list such as ['table2']; got {tables!r}")
    for key in ("n_images", "metrics", "per_class"):
        if key not in summary:
            raise ValueError(f"summary lacks {key!r}; build it with summarize() or evaluate_classification()")
    protocol = dict(protocol)
    if dataset_dir is not None and not protocol.get("data_fingerprint"):
        protocol["data_fingerprint"] = data_fingerprint(dataset_dir)
    protocol.setdefault("git_commit", git_commit())
    if wall_time_s is not None:
        protocol["wall_time_s"] = round(float(wall_time_s), 1)
    missing = [k for k in REQUIRED_PROTOCOL_KEYS if k not in protocol or (protocol[k] is None and k != "epochs")]
    if missing:
        raise ValueError(f"protocol lacks {missing}; a measured number always carries {list(REQUIRED_PROTOCOL_KEYS)}")
    if "postprocess" in protocol and protocol["postprocess"] not in REFINE_METHODS_USED:
        raise ValueError(
            f"protocol postprocess {protocol['postprocess']!r} is not one of {REFINE_METHODS_USED}; "
            "store the method_used that lungkit.postprocess.refine returned"
        )

    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(results_dir / PER_IMAGE_CSV, per_image_df.to_csv(index=False))
    document = {
        "paper": paper,
        "table": tables[0],
        "tables": list(tables),
        "row": row,
        "model": model,
        "task": task,
        "status": status,
        "protocol": protocol,
        "n_images": int(summary["n_images"]),
        "metrics": summary["metrics"],
        "pooled": summary.get("pooled", {}),
        "per_class": summary["per_class"],
        "per_image_csv": PER_IMAGE_CSV,
    }
    summary_path = results_dir / SUMMARY_JSON
    _atomic_write_text(summary_path, json.dumps(_json_ready(document), indent=2, allow_nan=False) + "\n")
    return summary_path


def load_summary(path: str | Path) -> dict:
    """Read a ``summary.json`` (or the folder holding it) and check its keys.

    Returns:
        The summary as a dict (null CI bounds and NaN metrics come back as None; an older status name such as
        ``reproduced`` comes back as its current one, ``measured``).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is not valid JSON or lacks schema keys (naming the file and the keys).
    """
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no summary.json here")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"{path}: summary lacks keys {missing}; expected {list(REQUIRED_SUMMARY_KEYS)}")
    summary["status"] = current_status(summary["status"])
    if summary["status"] not in STATUSES:
        raise ValueError(f"{path}: status {summary['status']!r} is not one of {STATUSES}")
    return summary


def load_per_image(results_dir: str | Path) -> pd.DataFrame:
    """Read the ``per_image.csv`` a summary points to (``id`` and ``label1`` kept as strings)."""
    summary = load_summary(results_dir)
    folder = Path(results_dir) if Path(results_dir).is_dir() else Path(results_dir).parent
    return pd.read_csv(folder / summary.get("per_image_csv", PER_IMAGE_CSV), dtype={"id": str, "label1": str})
