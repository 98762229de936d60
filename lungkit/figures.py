"""Every figure the notebooks show, in the order of the pipeline: data, training, segmentation, prompted
segmentation, classification, reports.

Each function takes what its stage produced (a dataset folder, a training history, an evaluation result, a summary)
and returns a matplotlib ``Figure``; the notebook shows it and saves it with ``savefig``. The experiments and data
modules draw nothing, so they never import matplotlib; here matplotlib and the stages' modules are imported inside
each function, so importing this module (as :mod:`lungkit.reports` does) stays cheap and needs no display.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lungkit.experiments.classification import NoduleCrops
    from lungkit.experiments.prompted import SlicePredictions
    from lungkit.experiments.segmentation import EvaluationResult, SegmentationExperiment


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


# ========================================================================================================= segmentation


def plot_predictions(evaluation: EvaluationResult, n: int = 4, title: str = ""):
    """CT (lung window) with the ground truth in green and the prediction in red, for the best, median and worst
    slices that contain a tumour (by Dice)."""
    import matplotlib.pyplot as plt

    dice = evaluation.per_image["dice"].to_numpy()
    has_tumour = evaluation.masks.reshape(len(dice), -1).any(axis=1)
    order = [i for i in np.argsort(-dice) if has_tumour[i]]
    if not order:
        order = list(range(len(dice)))
    picks = [order[int(round(k))] for k in np.linspace(0, len(order) - 1, min(n, len(order)))]
    figure, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4), squeeze=False)
    for axis, index in zip(axes[0], picks):
        axis.imshow(evaluation.images[index], cmap="gray", vmin=0, vmax=1)
        axis.contour(evaluation.masks[index], levels=[0.5], colors="lime", linewidths=1.0)
        if evaluation.predicted_masks[index].any():
            axis.contour(evaluation.predicted_masks[index], levels=[0.5], colors="red", linewidths=1.0)
        row = evaluation.per_image.iloc[index]
        axis.set_title(f"{row.get('label1', '')} Dice {row['dice']:.2f}", fontsize=9)
        axis.axis("off")
    figure.suptitle(title or "green: ground truth, red: prediction (best -> worst tumour slices)", fontsize=10)
    figure.tight_layout()
    return figure


def plot_side_by_side(run_dir: str | Path, paper_id: str, result_keys: list[str], labels: list[str], n: int = 4,
                      seed: int = 0):
    """Ground truth beside several models' predictions on the same test slices (paper 004's comparison figure).

    Slices are drawn at random (seeded) among those with a tumour; every model must have been evaluated at the same
    image size.
    """
    import matplotlib.pyplot as plt

    from lungkit.experiments.segmentation import load_predictions

    predictions = [load_predictions(run_dir, paper_id, key) for key in result_keys]
    masks = predictions[0]["masks"]
    for key, p in zip(result_keys, predictions):
        if p["masks"].shape != masks.shape:
            raise ValueError(f"{key}: predictions at {p['masks'].shape[1:]}, {result_keys[0]} at {masks.shape[1:]}")
    candidates = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    picks = np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False)
    columns = 1 + len(result_keys)
    figure, axes = plt.subplots(len(picks), columns, figsize=(3 * columns, 3 * len(picks)), squeeze=False)
    for row_axes, index in zip(axes, picks):
        image = predictions[0]["images"][index]
        row_axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        row_axes[0].contour(masks[index], levels=[0.5], colors="lime", linewidths=1.0)
        row_axes[0].set_title("ground truth", fontsize=9)
        for axis, label, p in zip(row_axes[1:], labels, predictions):
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            axis.imshow(np.ma.masked_less(p["probabilities"][index], 0.5), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
            axis.set_title(f"{label}  Dice {p['dice'][index]:.2f}", fontsize=9)
        for axis in row_axes:
            axis.axis("off")
    figure.tight_layout()
    return figure


def _window_on_tumour(mask: np.ndarray, window: int) -> tuple[slice, slice]:
    """A ``window``-sided crop of a slice centred on its tumour (the slice centre when it has none)."""
    height, width = mask.shape
    window = min(window, height, width)
    rows, cols = np.nonzero(mask)
    cy, cx = (int(rows.mean()), int(cols.mean())) if len(rows) else (height // 2, width // 2)
    y0 = int(np.clip(cy - window // 2, 0, height - window))
    x0 = int(np.clip(cx - window // 2, 0, width - window))
    return slice(y0, y0 + window), slice(x0, x0 + window)


def plot_attention_maps(experiment: SegmentationExperiment, model, evaluation: EvaluationResult, n: int = 3):
    """Attention U-Net gate coefficients over CT slices: where each gate lets skip features through.

    One row per slice (the tumour slices with the largest tumours): the CT with the ground truth, then the
    coefficient map of every gate, finest first, upsampled to the slice and laid over it. A model trained on patches
    sees a window of its input size centred on the tumour.
    """
    import matplotlib.pyplot as plt
    from skimage.transform import resize

    from lungkit.models.attention_unet import attention_maps_model

    maps_model = attention_maps_model(model)
    areas = evaluation.masks.reshape(len(evaluation.masks), -1).sum(axis=1)
    picks = np.argsort(-areas)[:n]
    window = model.input_shape[1] or evaluation.hu.shape[1]
    crops = [_window_on_tumour(evaluation.masks[index], window) for index in picks]
    hu = np.stack([evaluation.hu[index][crop] for index, crop in zip(picks, crops)])
    maps = maps_model.predict(experiment.model_inputs(hu), verbose=0)
    names = sorted(maps, key=lambda name: int(name.rsplit("_", 1)[-1]))
    figure, axes = plt.subplots(len(picks), 1 + len(names), figsize=(2.8 * (1 + len(names)), 2.8 * len(picks)),
                                squeeze=False)
    for row, (index, crop) in enumerate(zip(picks, crops)):
        image = evaluation.images[index][crop]
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].contour(evaluation.masks[index][crop], levels=[0.5], colors="lime", linewidths=1.0)
        axes[row, 0].set_title("CT + ground truth", fontsize=9)
        for column, name in enumerate(names, start=1):
            coefficients = resize(np.asarray(maps[name][row, ..., 0], np.float32), image.shape, order=1)
            axes[row, column].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[row, column].imshow(coefficients, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[row, column].set_title(name.replace("_", " "), fontsize=9)
    for axis in axes.ravel():
        axis.axis("off")
    figure.tight_layout()
    return figure


# ============================================================================ PET/CT (paper 000, Lung-PET-CT-Dx)


def plot_petct_examples(dataset_dir: str | Path, n: int = 3, seed: int = 0, suv_max: float = 8.0):
    """Annotated PET/CT slices: CT, PET, fused, and the masks each method derives from the boxes.

    One row per slice (drawn seeded, one per histology first, slices with PET preferred). Columns: CT in a lung
    window with the boxes (yellow); PET SUV (0 to ``suv_max``, black where the study is CT-only); CT with PET
    overlaid where SUV > 1 (fused); a zoom on the first box with the outline of every mask method (box yellow,
    ``box_ct_threshold`` green, ``box_pet_threshold`` red).

    Args:
        dataset_dir: a Lung-PET-CT-Dx kit dataset (:func:`lungkit.data.petct_kit.prepare_petct_dataset`).
        n: slices to show.
        seed: which slices.
        suv_max: top of the PET colour scale.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from lungkit.data.luna16_kit import lung_window
    from lungkit.data.petct import masks_from_boxes
    from lungkit.data.petct_kit import read_petct_manifest, read_petct_row

    manifest = read_petct_manifest(dataset_dir)
    rng = np.random.default_rng(seed)
    order = manifest.iloc[rng.permutation(len(manifest))]
    order = order.sort_values("has_pet", ascending=False, kind="stable")
    picks = list(order.drop_duplicates("histology").index)[:n]
    picks += [i for i in order.index if i not in picks][: n - len(picks)]
    colours = {"box": "yellow", "box_ct_threshold": "lime", "box_pet_threshold": "red"}
    figure, axes = plt.subplots(len(picks), 4, figsize=(13, 3.3 * len(picks)), squeeze=False)
    for axis_row, index in zip(axes, picks):
        row = manifest.loc[index]
        arrays = read_petct_row(row)
        ct, pet, boxes = arrays["ct_hu"], arrays["pet_suv"], arrays["boxes"]
        shown_pet = pet if pet is not None else np.zeros_like(ct)
        axis_row[0].imshow(lung_window(ct), cmap="gray", vmin=0, vmax=1)
        axis_row[1].imshow(shown_pet, cmap="inferno", vmin=0, vmax=suv_max)
        axis_row[2].imshow(lung_window(ct), cmap="gray", vmin=0, vmax=1)
        axis_row[2].imshow(np.ma.masked_less(shown_pet, 1.0), cmap="inferno", vmin=0, vmax=suv_max, alpha=0.55)
        for axis in axis_row[:3]:
            for xmin, ymin, xmax, ymax in boxes:
                axis.add_patch(Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin + 1, ymax - ymin + 1, fill=False,
                                         edgecolor="yellow", linewidth=1.0))
        xmin, ymin, xmax, ymax = boxes[0]
        margin = max(8, (xmax - xmin) // 2, (ymax - ymin) // 2)
        ys = slice(max(ymin - margin, 0), min(ymax + margin + 1, ct.shape[0]))
        xs = slice(max(xmin - margin, 0), min(xmax + margin + 1, ct.shape[1]))
        axis_row[3].imshow(lung_window(ct[ys, xs]), cmap="gray", vmin=0, vmax=1)
        for method, colour in colours.items():
            mask, source = masks_from_boxes(boxes, method, ct_hu=ct, pet_suv=pet)
            if mask[ys, xs].any():
                axis_row[3].contour(mask[ys, xs], levels=[0.5], colors=colour, linewidths=1.1,
                                    linestyles="dashed" if "fallback" in source else "solid")
        pet_text = f"PET SUVmax in box {row['pet_suv_max']:.1f}" if pet is not None else "CT-only study (no PET)"
        axis_row[0].set_ylabel(f"{row['patient']} ({row['histology']}: {row['histology_name']})\n{pet_text}",
                               fontsize=8)
        for axis in axis_row:
            axis.set_xticks([])
            axis.set_yticks([])
    for axis, title in zip(axes[0], ("CT, boxes", f"PET SUV 0-{suv_max:g}", "fused (SUV > 1)",
                                     "masks: box / CT threshold / PET threshold")):
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


# ============================================================================ prompted segmentation (paper 003, LUNA16)


def plot_prompt_examples(dataset_dir: str | Path, n: int = 4, seed: int = 0):
    """A few nodule slices (lung window) with the box prompt (yellow) and the target mask (green outline).

    One slice each from ``n`` nodules drawn at random (seeded), alternating the nodule's central slice and its
    outermost slice, where the full-diameter box is much larger than the disc the sphere shows.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from lungkit.data.export import read_hu_png, read_png
    from lungkit.data.kit_dataset import read_manifest
    from lungkit.data.luna16_kit import lung_window
    from lungkit.data.nodule_slices import parse_box

    manifest = read_manifest(dataset_dir)
    rng = np.random.default_rng(seed)
    nodules = manifest.groupby(["seriesuid", "nodule_index"]).groups
    keys = list(nodules)
    picks = []
    for number, key in enumerate(rng.permutation(len(keys))[:n]):
        rows = manifest.loc[nodules[keys[key]]]
        offsets = rows["slice_offset_mm"].abs()
        picks.append(int(offsets.idxmin() if number % 2 == 0 else offsets.idxmax()))
    figure, axes = plt.subplots(1, len(picks), figsize=(3.3 * len(picks), 3.6), squeeze=False)
    for axis, index in zip(axes[0], picks):
        row = manifest.loc[index]
        x0, y0, x1, y1 = parse_box(row["prompt_box"])
        mask = read_png(row["mask_path"]) > 0
        axis.imshow(lung_window(read_hu_png(row["image_path"])), cmap="gray", vmin=0, vmax=1)
        axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.2))
        if mask.any():
            axis.contour(mask, levels=[0.5], colors="lime", linewidths=1.0)
        axis.set_title(
            f"d {row['diameter_mm']:.1f} mm, offset {row['slice_offset_mm']:+.1f} mm\n"
            f"section {row['section_diameter_mm']:.1f} mm ({row['mask_source']})",
            fontsize=8,
        )
        axis.axis("off")
    figure.suptitle("box prompt (yellow) and target mask (green)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return figure


def plot_prompt_sensitivity(sensitivity: pd.DataFrame, title: str = ""):
    """Dice (95% CI) against box jitter."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.8, 3.4))
    x = sensitivity["jitter_fraction"].to_numpy()
    axis.errorbar(x, sensitivity["dice_mean"], yerr=[sensitivity["dice_mean"] - sensitivity["dice_ci_low"],
                  sensitivity["dice_ci_high"] - sensitivity["dice_mean"]], marker="o", capsize=3)
    axis.set_xlabel("box jitter (fraction of box size per side)")
    axis.set_ylabel("mean Dice (95% CI)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.set_title(title or "SAM's sensitivity to the box prompt", fontsize=10)
    figure.tight_layout()
    return figure


def plot_slice_predictions(predictions: SlicePredictions, n: int = 4, title: str = "", show_scores: bool = True):
    """Slices with the box (yellow), target (green) and prediction (red), best -> worst by Dice.

    Args:
        show_scores: print each slice's Dice in its title (False for a wiring-only model).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from lungkit.data.luna16_kit import lung_window

    dice = predictions.per_image["dice"].to_numpy()
    order = np.argsort(-np.nan_to_num(dice, nan=-1.0))
    picks = [int(order[int(round(k))]) for k in np.linspace(0, len(order) - 1, min(n, len(order)))]
    figure, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4), squeeze=False)
    for axis, index in zip(axes[0], picks):
        x0, y0, x1, y1 = predictions.boxes[index]
        axis.imshow(lung_window(predictions.hu[index]), cmap="gray", vmin=0, vmax=1)
        axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.0))
        if predictions.masks[index].any():
            axis.contour(predictions.masks[index], levels=[0.5], colors="lime", linewidths=1.0)
        predicted = np.asarray(predictions.probabilities[index]) >= 0.5
        if predicted.any():
            axis.contour(predicted, levels=[0.5], colors="red", linewidths=1.0)
        axis.set_title(f"Dice {dice[index]:.2f}" if show_scores else "wiring only", fontsize=9)
        axis.axis("off")
    figure.suptitle(title or "box (yellow), target (green), prediction (red)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return figure


# =========================================================================================== classification (paper 003)


def plot_crop_examples(crops: NoduleCrops, n_per_class: int = 4, seed: int = 0):
    """Central-slice crops per class (lung window), with diameter and label."""
    import matplotlib.pyplot as plt

    from lungkit.data.luna16_kit import lung_window

    centre = crops.table[crops.table["role"] == "centre"]
    rng = np.random.default_rng(seed)
    classes = sorted(centre["label"].unique())
    figure, axes = plt.subplots(len(classes), n_per_class, figsize=(2.2 * n_per_class, 2.4 * len(classes)),
                                squeeze=False)
    for row_axes, label in zip(axes, classes):
        members = centre.index[centre["label"] == label].to_numpy()
        picks = rng.permutation(members)[:n_per_class]
        for axis, index in zip(row_axes, picks):
            record = crops.table.loc[index]
            axis.imshow(lung_window(crops.images[index]), cmap="gray", vmin=0, vmax=1)
            diameter = record.get("diameter_mm", np.nan)
            axis.set_title(f"{record['label_name']}\n{diameter:.0f} mm" if np.isfinite(diameter)
                           else record["label_name"], fontsize=8)
        for axis in row_axes:
            axis.axis("off")
    figure.tight_layout()
    return figure


def plot_crop_augmentation_preview(crop: np.ndarray, image_size: int, n: int = 6, seed: int = 0):
    """One scaled training crop and ``n`` augmented versions of it (what the classifier sees during training)."""
    import matplotlib.pyplot as plt

    from lungkit.experiments.classification import crop_augmenter, crops_to_inputs

    inputs = crops_to_inputs(np.repeat(np.asarray(crop, np.float32)[None], n, axis=0), image_size, 1)
    augmenter = crop_augmenter(seed)
    augmented = np.stack([np.asarray(augmenter(image)) for image in inputs])
    figure, axes = plt.subplots(1, n + 1, figsize=(2.0 * (n + 1), 2.3))
    axes[0].imshow(inputs[0, ..., 0], cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("crop", fontsize=8)
    for axis, image in zip(axes[1:], augmented):
        axis.imshow(np.clip(image[..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
        axis.set_title("augmented", fontsize=8)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    return figure


def plot_classifier_curves(history: pd.DataFrame):
    """Loss, accuracy and AUC per epoch, training vs validation."""
    import matplotlib.pyplot as plt

    epochs = history["epoch"] + 1 if "epoch" in history else np.arange(1, len(history) + 1)
    keys = [key for key in ("loss", "accuracy", "auc") if key in history]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for axis, key in zip(axes[0], keys):
        axis.plot(epochs, history[key], marker="o", markersize=3, label=f"train {key}")
        if f"val_{key}" in history:
            axis.plot(epochs, history[f"val_{key}"], marker="o", markersize=3, label=f"validation {key}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_confusion_matrix(per_case: pd.DataFrame, class_names=None, title: str = ""):
    """Confusion matrix of the test cases (rows: truth, columns: prediction), counts.

    Args:
        per_case: ``ClassifierEvaluation.per_case`` (columns ``y_true``, ``y_pred``).
        class_names: names of classes 0 and 1; None for
            :data:`lungkit.experiments.classification.CLASS_NAMES` (benign, malignant).
        title: figure title; the number of cases when empty.
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    if class_names is None:
        from lungkit.experiments.classification import CLASS_NAMES

        class_names = CLASS_NAMES
    figure, axis = plt.subplots(figsize=(3.8, 3.4))
    ConfusionMatrixDisplay.from_predictions(
        per_case["y_true"], per_case["y_pred"], labels=[0, 1], display_labels=list(class_names), ax=axis,
        colorbar=False, cmap="Blues",
    )
    axis.set_title(title or f"test cases (n = {len(per_case)})", fontsize=10)
    figure.tight_layout()
    return figure


def plot_roc_curves(per_case_by_name: dict, title: str = ""):
    """ROC curves of several binary classifiers scored on test cases, each with its AUC in the legend.

    Args:
        per_case_by_name: ``{legend name: per-case table}`` with columns ``y_true`` (0/1) and ``y_score`` (any
            score that ranks class 1 higher: a probability, or e.g. a diameter for a size-only baseline).
        title: figure title.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    figure, axis = plt.subplots(figsize=(4.6, 4.0))
    for name, per_case in per_case_by_name.items():
        truth, score = per_case["y_true"].to_numpy(), per_case["y_score"].to_numpy()
        if len(set(truth.tolist())) < 2:
            continue  # a ROC curve needs both classes
        false_positive_rate, true_positive_rate, _ = roc_curve(truth, score)
        axis.plot(false_positive_rate, true_positive_rate, label=f"{name} (AUC {roc_auc_score(truth, score):.2f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


# ============================================================================================================== reports


def plot_reported_vs_reproduced(paper_id: str, table_id: str, summaries: Iterable[dict]) -> Figure:
    """Grouped bars: the paper's value and lungkit's measured one (with its 95% CI) for every row lungkit runs,
    per metric.

    Rows lungkit has not produced yet, or only wired, get no lungkit bar and a label saying so. Values are in the
    paper's units (percent tables in percent).

    Returns:
        A matplotlib ``Figure`` (not registered with pyplot; save it with ``savefig``).

    Raises:
        ValueError: when no row of the table is reproducible by lungkit.
    """
    from matplotlib.figure import Figure

    from lungkit.papers import get_table, resolve_table_id
    from lungkit.reports import STATUS_MEASURED, STATUS_WIRING, _table_label, paper_table_frame

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
        measured = frame[f"{metric}_measured"].to_numpy(float) * factor
        low = frame[f"{metric}_ci_low"].to_numpy(float) * factor
        high = frame[f"{metric}_ci_high"].to_numpy(float) * factor
        # NaN error bars (no CI: pooled values, missing results) are simply not drawn.
        errors = np.vstack([measured - low, high - measured])
        axis.bar(positions - width / 2, np.nan_to_num(reported), width, label="paper (as printed)",
                 color="#9ecae1", edgecolor="#3182bd", hatch="//")
        axis.bar(positions + width / 2, np.nan_to_num(measured), width, yerr=errors, capsize=3,
                 label="lungkit (95% CI)", color="#fd8d3c", edgecolor="#e6550d")
        top = np.nanmax(np.concatenate([reported, measured, high, [1e-9]]))
        for position, status, value in zip(positions, frame["status"], measured):
            if not np.isfinite(value):
                label = {STATUS_WIRING: "wiring\nonly", STATUS_MEASURED: "not\ncomputed"}.get(status, "not\nyet")
                axis.text(position + width / 2, 0.02 * top, label, ha="center", va="bottom", fontsize=7)
        labels = [f"{row}\n{reading}" if reading else row for row, reading in zip(frame["row"], frame["reading"])]
        axis.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
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
    "plot_attention_maps",
    "plot_classifier_curves",
    "plot_confusion_matrix",
    "plot_crop_augmentation_preview",
    "plot_crop_examples",
    "plot_examples_per_class",
    "plot_petct_examples",
    "plot_prediction_gallery",
    "plot_predictions",
    "plot_prompt_examples",
    "plot_prompt_sensitivity",
    "plot_reported_vs_reproduced",
    "plot_side_by_side",
    "plot_slice_augmentation_preview",
    "plot_slice_predictions",
    "plot_training_curves",
]
