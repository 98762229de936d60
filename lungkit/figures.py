"""Every figure the notebooks show, in the order of the pipeline: data, training, reports.

Each function takes what its stage produced (a dataset folder, a training history, an evaluation result, a summary)
and returns a matplotlib ``Figure``; the notebook shows it and saves it with ``savefig``. matplotlib and the stages'
modules are imported inside each function, so importing this module (as :mod:`lungkit.reports` does) stays cheap
and needs no display.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# ================================================================================================================= data


def plot_examples_per_class(dataset_dir: str | Path, n_per_class: int = 3, seed: int = 0, split: str | None = None):
    """Figure of example slices, one row per Lung-RADS class, tumour outlined, with a zoomed inset.

    CT is shown in a lung window (level -600, width 1500 HU). The inset zooms on the tumour, because LR2 nodules
    are only a few pixels across on a 512 px slice.

    Args:
        dataset_dir: a finished kit dataset.
        n_per_class: examples per class (fewer when a class has fewer slices).
        seed: which examples are drawn.
        split: draw from this split only; all splits when None.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from lungkit.data.export import read_hu_png, read_png
    from lungkit.data.kit_dataset import LUNGRADS_LABELS, read_manifest

    manifest = read_manifest(dataset_dir, split=split)
    labels = [label for label in LUNGRADS_LABELS if (manifest["label1"] == label).any()]
    labels += sorted(set(manifest["label1"]) - set(LUNGRADS_LABELS))
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        max(len(labels), 1), n_per_class, figsize=(3.2 * n_per_class, 3.3 * max(len(labels), 1)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    level, width = -600.0, 1500.0
    for row, label in enumerate(labels):
        rows = manifest[manifest["label1"] == label]
        picks = rng.choice(len(rows), size=min(n_per_class, len(rows)), replace=False)
        for col, pick in enumerate(sorted(picks)):
            entry = rows.iloc[int(pick)]
            hu = read_hu_png(entry["image_path"])
            mask = read_png(entry["mask_path"]) > 0
            ax = axes[row, col]
            ax.imshow(hu, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="nearest")
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
                y0, x0, y1, x1 = (int(entry[k]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"))
                margin = max(12, (y1 - y0), (x1 - x0))
                cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
                ys = slice(max(cy - margin, 0), min(cy + margin, hu.shape[0]))
                xs = slice(max(cx - margin, 0), min(cx + margin, hu.shape[1]))
                inset = ax.inset_axes([0.64, 0.64, 0.35, 0.35])
                inset.imshow(hu[ys, xs], cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                             interpolation="nearest")
                inset.contour(mask[ys, xs], levels=[0.5], colors="red", linewidths=0.8)
                inset.set_xticks([])
                inset.set_yticks([])
            diameter = entry["equivalent_diameter_mm"]
            size = f"{diameter:.1f} mm" if np.isfinite(diameter) else f"{entry['equivalent_diameter_px']:.1f} px"
            ax.set_title(f"{label}  {entry['id']}\ntumour {size}", fontsize=9)
    fig.suptitle("Examples per Lung-RADS class (lung window; tumour outlined in red)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_slice_augmentation_preview(
    dataset_dir: str | Path, n: int = 4, seed: int = 0, image_size: int = 256, versions: int = 4
):
    """Show train slices next to paper 001's augmented versions of them (:mod:`lungkit.augment`), tumour outlined.

    Args:
        dataset_dir: a kit dataset (the one before augmentation).
        n: number of train slices (rows of the grid); slices with a tumour come first.
        seed: base seed; version ``j`` of slice ``i`` uses ``derive_seed(seed, i, j)``.
        image_size: side of the augmented images.
        versions: augmented versions per slice (columns after the original).

    Returns:
        A matplotlib Figure: one row per slice, the original (resized) first, HU shown in the lung window.
    """
    import matplotlib.pyplot as plt

    from lungkit import preprocess
    from lungkit.augment import apply_augmentation, build_train_augmentation, derive_seed, read_kit_slice
    from lungkit.data import kit_dataset

    train = kit_dataset.read_manifest(dataset_dir, "train")
    if train.empty:
        raise ValueError(f"{dataset_dir}: no train rows to preview")
    chosen = train.sort_values("tumour_area_px", ascending=False, kind="stable").head(n)
    compose = build_train_augmentation(image_size, seed)
    fig, axes = plt.subplots(
        len(chosen), versions + 1, figsize=(2.2 * (versions + 1), 2.2 * len(chosen)), squeeze=False
    )
    for i, row in enumerate(chosen.itertuples(index=False)):
        hu, tumour, _ = read_kit_slice(row)
        panels = [(preprocess.resize_image(hu, image_size), preprocess.resize_mask(tumour, image_size), "original")]
        for j in range(versions):
            aug_hu, aug_mask, _ = apply_augmentation(compose, hu, tumour, derive_seed(seed, i, j))
            panels.append((aug_hu, aug_mask, f"augmented {j + 1}"))
        for ax, (image, mask, title) in zip(axes[i], panels):
            ax.imshow(preprocess.hu_window_unit(image), cmap="gray", vmin=0, vmax=1)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{row.id}\n{title}" if title == "original" else title, fontsize=8)
            ax.axis("off")
    fig.suptitle("Paper 001 augmentation (lung window, tumour outlined in red)", fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================================================= training


def plot_training_curves(history: pd.DataFrame):
    """Loss and Dice per epoch, training vs validation.

    Args:
        history: ``TrainResult.history`` (or a ``history.csv`` read with pandas).

    Returns:
        ``matplotlib.figure.Figure`` with two panels (loss; dice, or IoU when there is no dice column).

    Raises:
        ValueError: when the history has no ``loss`` column.
    """
    from matplotlib.figure import Figure

    if "loss" not in history:
        raise ValueError(f"history has no 'loss' column; columns: {list(history.columns)}")
    epochs = (history["epoch"] + 1) if "epoch" in history else np.arange(1, len(history) + 1)
    metric = next((key for key in ("dice", "pooled_iou", "iou") if key in history), None)
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    panels = figure.subplots(1, 2 if metric else 1, squeeze=False)[0]
    for axis, key, label in zip(panels, ("loss", metric), ("loss", metric)):
        axis.plot(epochs, history[key], marker="o", label=f"train {label}")
        if f"val_{key}" in history:
            axis.plot(epochs, history[f"val_{key}"], marker="o", label=f"validation {label}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    return figure


# ============================================================================================================== reports


def plot_reported_vs_reproduced(paper_id: str, table_id: str, summaries: Iterable[dict]) -> Figure:
    """Grouped bars: the paper's value and lungkit's (with its 95% CI) for every reproducible row, per metric.

    Rows lungkit has not produced yet, or only wired, get no lungkit bar and a label saying so. Values are in the
    paper's units (percent tables in percent).

    Returns:
        A matplotlib ``Figure`` (not registered with pyplot; save it with ``savefig``).

    Raises:
        ValueError: when no row of the table is reproducible by lungkit.
    """
    from matplotlib.figure import Figure

    from lungkit.papers import get_table, resolve_table_id
    from lungkit.reports import STATUS_REPRODUCED, STATUS_WIRING, _table_label, paper_table_frame

    canonical_id = resolve_table_id(paper_id, table_id)
    table = get_table(paper_id, canonical_id)
    summaries = list(summaries)
    frame = paper_table_frame(paper_id, canonical_id, summaries)
    frame = frame[frame["result_key"] != ""].reset_index(drop=True)
    if frame.empty:
        raise ValueError(f"{paper_id} {canonical_id} has no row lungkit reproduces; nothing to plot")
    factor = 100.0 if table["value_scale"] == "percent" else 1.0
    metrics = table["metrics"]
    figure = Figure(figsize=(1.0 + len(metrics) * max(2.8, 0.9 * len(frame)), 4.2), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    positions = np.arange(len(frame))
    width = 0.38
    for axis, metric, column in zip(axes, metrics, table["columns"]):
        reported = frame[f"{metric}_reported"].to_numpy(float) * factor
        reproduced = frame[f"{metric}_reproduced"].to_numpy(float) * factor
        low = frame[f"{metric}_ci_low"].to_numpy(float) * factor
        high = frame[f"{metric}_ci_high"].to_numpy(float) * factor
        # NaN error bars (no CI: pooled values, missing results) are simply not drawn.
        errors = np.vstack([reproduced - low, high - reproduced])
        axis.bar(positions - width / 2, np.nan_to_num(reported), width, label="paper (as printed)",
                 color="#9ecae1", edgecolor="#3182bd", hatch="//")
        axis.bar(positions + width / 2, np.nan_to_num(reproduced), width, yerr=errors, capsize=3,
                 label="lungkit (95% CI)", color="#fd8d3c", edgecolor="#e6550d")
        top = np.nanmax(np.concatenate([reported, reproduced, high, [1e-9]]))
        for position, status, value in zip(positions, frame["status"], reproduced):
            if not np.isfinite(value):
                label = {STATUS_WIRING: "wiring\nonly", STATUS_REPRODUCED: "not\ncomputed"}.get(status, "not\nyet")
                axis.text(position + width / 2, 0.02 * top, label, ha="center", va="bottom", fontsize=7)
        axis.set_xticks(positions, frame["row"], rotation=30, ha="right", fontsize=8)
        axis.set_title(column, fontsize=9)
        axis.set_ylim(0, top * 1.15)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    phantom = any((s.get("protocol") or {}).get("data_source") == "phantom"
                  for s in summaries if s.get("paper") == paper_id)
    title = f"{paper_id} {_table_label(canonical_id)}: {table['title']}"
    if phantom:
        title += "\n(lungkit bars from the synthetic phantom: a pipeline check, not the paper's data)"
    figure.suptitle(title, fontsize=10)
    return figure


def _as_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[-1] in (1, 3):
        array = array[..., 0] if array.shape[-1] == 1 else array.mean(axis=-1)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, H, W, 1|3), got {array.shape}")
    return array


def gallery_indices(dice: np.ndarray) -> dict[str, int]:
    """Indices of the best, median and worst image by per-image Dice (NaN ignored).

    Raises:
        ValueError: when every Dice value is NaN or the array is empty.
    """
    dice = np.asarray(dice, dtype=float).ravel()
    valid = np.flatnonzero(np.isfinite(dice))
    if valid.size == 0:
        raise ValueError("per-image dice has no finite value; cannot pick best / median / worst")
    order = valid[np.argsort(dice[valid], kind="stable")]
    return {"best": int(order[-1]), "median": int(order[(order.size - 1) // 2]), "worst": int(order[0])}


def plot_prediction_gallery(images: np.ndarray, masks: np.ndarray, probabilities: np.ndarray, dice: np.ndarray,
                            title: str | None = None, threshold: float = 0.5) -> Figure:
    """Best, median and worst test prediction of one model: CT, ground truth and prediction side by side.

    Args:
        images: (N, H, W) or (N, H, W, 1|3) test images, any intensity scale.
        masks: (N, H, W[, 1]) ground-truth masks (non-zero = tumour).
        probabilities: (N, H, W[, 1]) predicted tumour probabilities.
        dice: (N,) per-image Dice, used to rank the images.
        title: figure title, e.g. the model and its protocol.
        threshold: probability at which a pixel counts as tumour.

    Returns:
        A matplotlib ``Figure`` with three rows (best, median, worst) and three columns.

    Raises:
        ValueError: for mismatched shapes or no finite Dice.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    truth_colour, prediction_colour = ListedColormap(["#31a354"]), ListedColormap(["#e6550d"])
    images = _as_2d(images, "images")
    masks = _as_2d(masks, "masks")
    probabilities = _as_2d(probabilities, "probabilities")
    dice = np.asarray(dice, dtype=float).ravel()
    if not (images.shape == masks.shape == probabilities.shape) or dice.shape[0] != images.shape[0]:
        raise ValueError(f"shapes disagree: images {images.shape}, masks {masks.shape}, probabilities "
                         f"{probabilities.shape}, dice {dice.shape}")
    picks = gallery_indices(dice)
    figure = Figure(figsize=(8.4, 8.6), layout="constrained")
    axes = figure.subplots(3, 3)
    for axis_row, (label, index) in zip(axes, picks.items()):
        image = images[index]
        truth = masks[index] > 0
        predicted = probabilities[index] >= threshold
        for axis in axis_row:
            axis.imshow(image, cmap="gray")
            axis.set_xticks([])
            axis.set_yticks([])
        axis_row[1].imshow(np.ma.masked_where(~truth, truth), cmap=truth_colour, alpha=0.55, vmin=0, vmax=1)
        axis_row[2].imshow(np.ma.masked_where(~predicted, predicted), cmap=prediction_colour, alpha=0.55,
                           vmin=0, vmax=1)
        if truth.any():  # the ground-truth outline on the prediction panel shows misses and false positives
            axis_row[2].contour(truth, levels=[0.5], colors=["#31a354"], linewidths=1.0)
        axis_row[0].set_ylabel(f"{label}\n(image {index}, Dice {dice[index]:.3f})", fontsize=9)
    axes[0][0].set_title("CT", fontsize=9)
    axes[0][1].set_title("ground truth", fontsize=9)
    axes[0][2].set_title(f"prediction (p >= {threshold:g}), truth outlined", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


__all__ = [
    "gallery_indices",
    "plot_examples_per_class",
    "plot_prediction_gallery",
    "plot_reported_vs_reproduced",
    "plot_slice_augmentation_preview",
    "plot_training_curves",
]
