"""Every metric of the kit, defined once.

Segmentation metrics are computed from the confusion counts of one binary prediction against one binary target
(``tp``, ``fp``, ``fn``, ``tn`` = pixels). Two ways of summarising a test set are kept apart everywhere:

- **per image**: the metric of each slice, then the mean over slices (``*_per_image``,
  :func:`segmentation_metrics_per_image`). Every slice weighs the same, whatever its tumour size.
- **pooled**: the confusion counts summed over all pixels of all slices, then one metric
  (:func:`pooled_segmentation_metrics`). Large tumours dominate.

Empty-mask convention (one rule for every ratio): a ratio whose denominator is zero is **1 when prediction and
target are both empty** (nothing to find, nothing predicted: perfect agreement) and **0 otherwise**.

==============================  =====  =====  =========  ======  ===========  ========
case (one image)                dice   iou    precision  recall  specificity  accuracy
==============================  =====  =====  =========  ======  ===========  ========
target empty, prediction empty  1      1      1          1       1            1
target empty, prediction not    0      0      0          0 (*)   TN/(TN+FP)   ratio
prediction empty, target not    0      0      0 (**)     0       1            ratio
both non-empty                  ratio  ratio  ratio      ratio   ratio        ratio
==============================  =====  =====  =========  ======  ===========  ========

(*) recall is 0/0 here; we score 0, not 1: a model that paints tumour on a tumour-free slice has failed on it, and
scoring recall 1 there would let "predict tumour everywhere" collect full recall on normal slices.
(**) precision is 0/0 here; we score 0, not 1, so that "predict nothing" never earns precision.
F1 equals Dice for binary masks (same formula 2TP / (2TP + FP + FN)); both keys are reported because the papers
name them differently. Specificity's denominator TN + FP is zero only for a slice that is all tumour.

What the papers seem to use (they never say; reasoning from their numbers):

- Paper 001 (Table 2): IoU is higher than Dice/(2 - Dice) for every row (SwinUNET 0.7143 vs 0.662, ResNet50-UNet
  0.6754 vs 0.608). For pooled counts IoU = Dice/(2 - Dice) exactly; the mean over images (or batches) of the convex
  map Dice -> Dice/(2 - Dice) is above it (Jensen). So 001 averages per image (or per batch), not pooled.
- Paper 004: Table 2's IoU 0.83 > 0.89/1.11 = 0.80, again an average over images. Table 3's F-score equals the
  harmonic mean of its printed precision and recall (2 * 0.86 * 0.81 / 1.67 = 0.834 -> 0.83; baseline 0.731 -> 0.73)
  and differs from Table 2's Dice 0.89 although eq. 14 is the Dice formula: Table 3 is consistent with pooled counts
  (pooled F1 is exactly the harmonic mean of pooled precision and recall) or with F computed from mean P and R.
  Its pixel accuracy 0.92 is far below the ~0.99 any tumour segmenter gets over whole slices (background dominates),
  so its accuracy was not computed over whole slices; we cannot tell over what.
- Paper 000 (Table 1): MaskFormer F1 0.619 is below both its precision 0.898 and recall 0.772. A harmonic mean can
  never be below both, so F1 there is a mean of per-image F1 values (with P and R averaged separately).
- Paper 003: Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), stated per nodule; averaging not stated.

RMSE (paper 001, eq. in section 3.1: sqrt(mean((y - y_hat)^2)) with no further detail): its values 0.012-0.022
are only possible over whole slices. A 512x512 slice has 262,144 pixels; a tumour of 1,000 px segmented with
Dice 0.8 leaves about 400 wrong pixels, i.e. binary RMSE sqrt(400 / 262144) = 0.039; a 100 px tumour gives 0.012.
Restricted to a tumour crop the RMSE would be ~0.3. Values of 0.01-0.02 therefore mean per-pixel RMSE over the
whole image between the sigmoid probability map and the 0/1 mask (the natural output of a PyTorch training loop
that logs ``sqrt(mse(sigmoid(logits), mask))``), averaged over images or batches. Our ``rmse`` key is exactly that
(probability map vs binary target, per image); ``rmse_binary`` uses the thresholded mask (= sqrt of the pixel error
rate) and is reported beside it. Both are resolution dependent: at 128 px the same errors give a larger RMSE than
at 512 px, so compare only at the paper's resolution.

Paper 004's extra metrics have no printed definition; ours are :func:`small_tumour_recall` (lesion-level recall of
tumours below 10 mm) and :func:`intensity_robustness_std` (standard deviation of mean Dice over a fixed set of HU
perturbations); their docstrings say exactly what is computed.

Classification metrics (:func:`classification_metrics`) follow the same zero-denominator rule and use
scikit-learn's ``confusion_matrix`` and ``roc_auc_score``.

The Keras metric classes at the end (:class:`DiceMetric`, :class:`IoUMetric`) give the same per-image numbers
during training; everything else in this module is numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
from scipy import ndimage
from sklearn.metrics import confusion_matrix, roc_auc_score

from lungkit.postprocess import threshold as threshold_probabilities

#: Canonical per-image segmentation metric keys (summary.json ``metrics``), in report order.
SEGMENTATION_METRIC_KEYS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "accuracy",
    "f1",
    "rmse",
    "rmse_binary",
    "small_tumour_recall",
)
#: Canonical classification metric keys.
CLASSIFICATION_METRIC_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
#: Paper 004 mentions that chest X-ray "had low sensitivity for small tumors, less than 1 centimeter in size";
#: 10 mm is also the usual cut between small and larger nodules (Lung-RADS 4A starts at 8 mm, 4B at 15 mm).
SMALL_TUMOUR_MAX_DIAMETER_MM = 10.0


# ---------------------------------------------------------------------------------------------------------------
# Confusion counts and the empty-mask convention
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfusionCounts:
    """Pixel (or case) confusion counts of a binary prediction. They add up: ``sum(counts_list, ConfusionCounts())``."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def __radd__(self, other):
        # lets the builtin sum() start from 0
        return self if other == 0 else self.__add__(other)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def as_array(self) -> np.ndarray:
        """The counts as an int64 array ``[tp, fp, fn, tn]``."""
        return np.array([self.tp, self.fp, self.fn, self.tn], dtype=np.int64)


def as_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Check that ``mask`` is binary and return it as bool.

    Args:
        mask: bool array or numeric array holding only 0 and 1. A trailing channel axis of size 1 is dropped.
        name: what to call the array in the error message.

    Returns:
        Bool array.

    Raises:
        ValueError: if the array holds values other than 0 and 1 (e.g. 0/255 PNG masks or probabilities).
    """
    mask = np.asarray(mask)
    if mask.ndim >= 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.dtype == bool:
        return mask
    if not np.all((mask == 0) | (mask == 1)):  # O(n), unlike np.unique; unique only for the message
        values = np.unique(mask)
        shown = values[:6].tolist()
        raise ValueError(
            f"{name} must be binary (0/1 or bool); found values {shown}{'...' if values.size > 6 else ''}. "
            "Divide 0/255 PNG masks by 255; threshold probabilities with lungkit.postprocess.threshold"
        )
    return mask.astype(bool)


def _check_same_shape(prediction: np.ndarray, target: np.ndarray) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")


def confusion_counts(pred_mask: np.ndarray, target_mask: np.ndarray) -> ConfusionCounts:
    """Confusion counts of one binary prediction against its target (all pixels).

    Args:
        pred_mask: binary prediction (H, W) or (H, W, 1).
        target_mask: binary target of the same shape.

    Returns:
        :class:`ConfusionCounts` with Python ints.

    Raises:
        ValueError: if a mask is not binary or the shapes differ.
    """
    pred = as_binary_mask(pred_mask, "prediction")
    target = as_binary_mask(target_mask, "target")
    _check_same_shape(pred, target)
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=int(pred.size) - tp - fp - fn)


def confusion_counts_batch(pred_masks: np.ndarray, target_masks: np.ndarray) -> np.ndarray:
    """Confusion counts of every image of a batch.

    Args:
        pred_masks: binary predictions (N, H, W) or (N, H, W, 1).
        target_masks: binary targets of the same shape.

    Returns:
        int64 array (N, 4), columns ``tp, fp, fn, tn``.
    """
    pred = as_binary_mask(pred_masks, "predictions")
    target = as_binary_mask(target_masks, "targets")
    _check_same_shape(pred, target)
    if pred.ndim < 2:
        raise ValueError(f"expected a batch (N, H, W); got shape {pred.shape}")
    axes = tuple(range(1, pred.ndim))
    tp = np.count_nonzero(pred & target, axis=axes)
    fp = np.count_nonzero(pred & ~target, axis=axes)
    fn = np.count_nonzero(~pred & target, axis=axes)
    n_pixels = int(np.prod(pred.shape[1:]))
    return np.stack([tp, fp, fn, n_pixels - tp - fp - fn], axis=-1).astype(np.int64)


def _counts_array(counts) -> np.ndarray:
    if isinstance(counts, ConfusionCounts):
        return counts.as_array()
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape[-1:] != (4,):
        raise ValueError(f"confusion counts must end in an axis of 4 (tp, fp, fn, tn); got shape {counts.shape}")
    return counts


def _ratio_with_convention(numerator, denominator, both_empty):
    """numerator / denominator; where the denominator is 0: 1 if both masks are empty, else 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    value = np.where(denominator > 0, numerator / safe, np.where(both_empty, 1.0, 0.0))
    return float(value) if value.ndim == 0 else value


def _split(counts):
    c = _counts_array(counts)
    tp, fp, fn, tn = c[..., 0], c[..., 1], c[..., 2], c[..., 3]
    both_empty = (tp + fp + fn) == 0  # nothing predicted and nothing to find
    return tp, fp, fn, tn, both_empty


def dice_from_counts(counts) -> float | np.ndarray:
    """Dice = 2TP / (2TP + FP + FN), empty-mask convention of the module. Counts: ConfusionCounts or (..., 4)."""
    tp, fp, fn, _, both_empty = _split(counts)
    return _ratio_with_convention(2 * tp, 2 * tp + fp + fn, both_empty)


def iou_from_counts(counts) -> float | np.ndarray:
    """IoU (Jaccard) = TP / (TP + FP + FN), empty-mask convention of the module."""
    tp, fp, fn, _, both_empty = _split(counts)
    return _ratio_with_convention(tp, tp + fp + fn, both_empty)


def precision_from_counts(counts) -> float | np.ndarray:
    """Precision = TP / (TP + FP); empty prediction -> 1 if the target is empty too, else 0."""
    tp, fp, _, _, both_empty = _split(counts)
    return _ratio_with_convention(tp, tp + fp, both_empty)


def recall_from_counts(counts) -> float | np.ndarray:
    """Recall = sensitivity = TP / (TP + FN); empty target -> 1 if the prediction is empty too, else 0."""
    tp, _, fn, _, both_empty = _split(counts)
    return _ratio_with_convention(tp, tp + fn, both_empty)


def specificity_from_counts(counts) -> float | np.ndarray:
    """Specificity = TN / (TN + FP); an all-tumour image -> 1 if nothing was mispredicted, else 0."""
    tp, fp, fn, tn, _ = _split(counts)
    # denominator 0 means there is no negative pixel: "both empty" of the negative class is FP == 0 and FN == 0
    return _ratio_with_convention(tn, tn + fp, (fp + fn) == 0)


def accuracy_from_counts(counts) -> float | np.ndarray:
    """Accuracy = (TP + TN) / all pixels (1 for an image with no pixels)."""
    tp, fp, fn, tn, _ = _split(counts)
    total = tp + fp + fn + tn
    return _ratio_with_convention(tp + tn, total, total == 0)


def f1_from_counts(counts) -> float | np.ndarray:
    """F1 = 2TP / (2TP + FP + FN); identical to Dice for binary masks (kept under both names)."""
    return dice_from_counts(counts)


def metrics_from_counts(counts) -> dict[str, float]:
    """All count-based segmentation metrics (dice, iou, precision, recall, specificity, accuracy, f1)."""
    return {
        "dice": dice_from_counts(counts),
        "iou": iou_from_counts(counts),
        "precision": precision_from_counts(counts),
        "recall": recall_from_counts(counts),
        "specificity": specificity_from_counts(counts),
        "accuracy": accuracy_from_counts(counts),
        "f1": f1_from_counts(counts),
    }


# ---------------------------------------------------------------------------------------------------------------
# Per image
# ---------------------------------------------------------------------------------------------------------------


def dice_per_image(pred_mask: np.ndarray, target_mask: np.ndarray) -> float:
    """Dice of one binary prediction (H, W) against its target; see the module's empty-mask convention."""
    return dice_from_counts(confusion_counts(pred_mask, target_mask))


def iou_per_image(pred_mask: np.ndarray, target_mask: np.ndarray) -> float:
    """IoU of one binary prediction against its target."""
    return iou_from_counts(confusion_counts(pred_mask, target_mask))


def precision_per_image(pred_mask: np.ndarray, target_mask: np.ndarray) -> float:
    """Pixel precision of one binary prediction against its target."""
    return precision_from_counts(confusion_counts(pred_mask, target_mask))


def recall_per_image(pred_mask: np.ndarray, target_mask: np.ndarray) -> float:
    """Pixel recall (sensitivity) of one binary prediction against its target."""
    return recall_from_counts(confusion_counts(pred_mask, target_mask))


sensitivity_per_image = recall_per_image


def specificity_per_image(pred_mask: np.ndarray, target_mask: np.ndarray) -> float:
    """Pixel specificity of one binary prediction against its target."""
    return specificity_from_counts(confusion_counts(pred_mask, target_mask))


def accuracy_per_image(pred_mask: np.ndarray, target_mask: np.ndarray) -> float:
    """Pixel accuracy of one binary prediction against its target."""
    return accuracy_from_counts(confusion_counts(pred_mask, target_mask))


def f1_per_image(pred_mask: np.ndarray, target_mask: np.ndarray) -> float:
    """Pixel F1 of one binary prediction against its target (equal to Dice)."""
    return f1_from_counts(confusion_counts(pred_mask, target_mask))


def _squeeze_channel(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array[..., 0] if array.ndim >= 3 and array.shape[-1] == 1 else array


def check_probabilities(probabilities: np.ndarray, name: str = "probabilities") -> np.ndarray:
    """Return ``probabilities`` as float64 after checking they lie in [0, 1] and are finite.

    Raises:
        ValueError: naming ``name`` when values are NaN or outside [0, 1] (logits: apply a sigmoid first).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(f"{name} contain NaN or infinite values")
    low, high = probabilities.min(initial=0.0), probabilities.max(initial=0.0)
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1]; found range [{low:.4g}, {high:.4g}]. "
            "If the model outputs logits, apply a sigmoid first"
        )
    return probabilities


def sum_squared_error(prediction: np.ndarray, target_mask: np.ndarray) -> float:
    """Sum over pixels of (prediction - target)^2; the pooling-friendly part of RMSE."""
    prediction = _squeeze_channel(prediction).astype(np.float64)
    target = as_binary_mask(target_mask, "target").astype(np.float64)
    _check_same_shape(prediction, target)
    return float(np.sum((prediction - target) ** 2))


def rmse_per_image(prediction: np.ndarray, target_mask: np.ndarray) -> float:
    """Per-pixel RMSE of one image: sqrt(mean over all pixels of (prediction - target)^2).

    Args:
        prediction: probability map in [0, 1] (paper 001's RMSE, see module docstring) or a binary mask
            (then RMSE = sqrt(pixel error rate)). (H, W) or (H, W, 1).
        target_mask: binary target.

    Returns:
        The RMSE (0 for an image without pixels).
    """
    prediction = _squeeze_channel(prediction)
    if prediction.size == 0:
        return 0.0
    return math.sqrt(sum_squared_error(prediction, target_mask) / prediction.size)


def segmentation_metrics_per_image(
    probability: np.ndarray,
    target_mask: np.ndarray,
    threshold: float = 0.5,
    pred_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """All pixel metrics of one image, plus the counts needed to pool them.

    Args:
        probability: predicted foreground probability (H, W) or (H, W, 1) in [0, 1].
        target_mask: binary target of the same shape.
        threshold: probabilities >= threshold are tumour (ignored when ``pred_mask`` is given).
        pred_mask: the binary prediction to score when it is not ``probability >= threshold`` (e.g. after CRF
            post-processing); RMSE still uses ``probability``.

    Returns:
        Dict with dice, iou, precision, recall, specificity, accuracy, f1, rmse (probability vs target),
        rmse_binary (mask vs target), and tp, fp, fn, tn, n_pixels, sum_squared_error,
        sum_squared_error_binary, target_area_px, pred_area_px.
    """
    probability = check_probabilities(_squeeze_channel(probability))
    if pred_mask is None:
        pred_mask = threshold_probabilities(probability, threshold)
    pred = as_binary_mask(pred_mask, "prediction")
    target = as_binary_mask(target_mask, "target")
    _check_same_shape(probability, target)
    counts = confusion_counts(pred, target)
    sse = sum_squared_error(probability, target)
    sse_binary = float(counts.fp + counts.fn)
    n_pixels = counts.total
    result = metrics_from_counts(counts)
    result.update(
        rmse=math.sqrt(sse / n_pixels) if n_pixels else 0.0,
        rmse_binary=math.sqrt(sse_binary / n_pixels) if n_pixels else 0.0,
        tp=counts.tp,
        fp=counts.fp,
        fn=counts.fn,
        tn=counts.tn,
        n_pixels=n_pixels,
        sum_squared_error=sse,
        sum_squared_error_binary=sse_binary,
        target_area_px=counts.tp + counts.fn,
        pred_area_px=counts.tp + counts.fp,
    )
    return result


# ---------------------------------------------------------------------------------------------------------------
# Pooled over a data set
# ---------------------------------------------------------------------------------------------------------------


def pooled_segmentation_metrics(
    counts,
    sum_squared_error_total: float | None = None,
    sum_squared_error_binary_total: float | None = None,
) -> dict[str, float]:
    """Metrics of the confusion counts summed over all pixels of all images.

    Args:
        counts: :class:`ConfusionCounts`, a list of them, or an int array (N, 4) / (4,) of ``tp, fp, fn, tn``.
        sum_squared_error_total: sum over all pixels of (probability - target)^2; gives pooled ``rmse``.
        sum_squared_error_binary_total: same for the binary prediction; gives pooled ``rmse_binary``.

    Returns:
        Dict dice, iou, precision, recall, specificity, accuracy, f1 (and rmse / rmse_binary when the sums are
        given), plus the pooled counts tp, fp, fn, tn.
    """
    if isinstance(counts, (list, tuple)) and counts and isinstance(counts[0], ConfusionCounts):
        counts = np.stack([c.as_array() for c in counts])
    total = _counts_array(counts)
    if total.ndim == 2:
        total = total.sum(axis=0)
    result = metrics_from_counts(total)
    n_pixels = int(total.sum())
    if sum_squared_error_total is not None:
        result["rmse"] = math.sqrt(sum_squared_error_total / n_pixels) if n_pixels else 0.0
    if sum_squared_error_binary_total is not None:
        result["rmse_binary"] = math.sqrt(sum_squared_error_binary_total / n_pixels) if n_pixels else 0.0
    result.update(tp=int(total[0]), fp=int(total[1]), fn=int(total[2]), tn=int(total[3]))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Paper 004 extras: small-tumour recall, robustness to intensity changes
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LesionDetection:
    """Lesion-level detection counts; they add up over images, ``recall`` is NaN when there is no lesion."""

    detected: int = 0
    total: int = 0

    def __add__(self, other: LesionDetection) -> LesionDetection:
        return LesionDetection(self.detected + other.detected, self.total + other.total)

    def __radd__(self, other):
        return self if other == 0 else self.__add__(other)

    @property
    def recall(self) -> float:
        return self.detected / self.total if self.total else float("nan")


def _pixel_area_mm2(spacing_mm) -> float:
    spacing = np.atleast_1d(np.asarray(spacing_mm, dtype=np.float64))
    if spacing.size == 1:
        spacing = np.repeat(spacing, 2)
    if spacing.size != 2 or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be one positive number or a (row, column) pair; got {spacing_mm!r}")
    return float(spacing[0] * spacing[1])


def tumour_components(target_mask: np.ndarray, connectivity: int = 2) -> tuple[np.ndarray, int, np.ndarray]:
    """Connected tumours of a target mask.

    Args:
        target_mask: binary (H, W) mask.
        connectivity: 1 (4-neighbourhood) or 2 (8-neighbourhood, default: a diagonal step joins a nodule).

    Returns:
        ``(labels, n_components, areas_px)``: the label image (0 = background), the number of components and
        their areas in pixels (``areas_px[i]`` is component ``i + 1``).
    """
    target = as_binary_mask(target_mask, "target")
    structure = ndimage.generate_binary_structure(target.ndim, connectivity)
    labels, n_components = ndimage.label(target, structure=structure)
    areas = np.bincount(labels.ravel(), minlength=n_components + 1)[1:]
    return labels, int(n_components), areas


def small_tumour_recall(
    pred_mask: np.ndarray,
    target_mask: np.ndarray,
    max_diameter_mm: float = SMALL_TUMOUR_MAX_DIAMETER_MM,
    spacing_mm: float | Sequence[float] | None = None,
    max_diameter_px: float | None = None,
    min_overlap_fraction: float = 0.0,
    connectivity: int = 2,
) -> LesionDetection:
    """Lesion-level recall of small tumours (paper 004, Table 2 "Small Tumor Recall"; no definition printed).

    A tumour is a connected component of the target (8-connected by default). Its size is its equivalent diameter,
    the diameter of the circle of the same area: ``sqrt(4 * area / pi)`` (scikit-image's ``equivalent_diameter_area``).
    It is *small* when that diameter is strictly below the threshold: ``max_diameter_mm`` (default 10 mm, the
    "less than 1 centimeter" paper 004 cites for small tumours) with the pixel spacing of the evaluated image, or
    ``max_diameter_px`` when the spacing is unknown. A small tumour is *detected* when the prediction covers at least
    one of its pixels (``min_overlap_fraction=0``) or at least that fraction of its area.

    Args:
        pred_mask: binary prediction (H, W).
        target_mask: binary target (H, W).
        max_diameter_mm: size threshold in mm, used with ``spacing_mm``.
        spacing_mm: pixel spacing of *these* arrays (after any resize), one number or (row, column).
        max_diameter_px: size threshold in pixels; takes precedence over the mm threshold when given.
        min_overlap_fraction: fraction of the tumour area the prediction must cover; 0 means >= 1 pixel.
        connectivity: 1 or 2, see :func:`tumour_components`.

    Returns:
        :class:`LesionDetection` (detected, total) over the small tumours of this image; sum them over images for
        the pooled lesion-level recall.

    Raises:
        ValueError: if neither ``max_diameter_px`` nor ``spacing_mm`` is given, or the fraction is outside [0, 1].
    """
    if not 0.0 <= min_overlap_fraction <= 1.0:
        raise ValueError(f"min_overlap_fraction must lie in [0, 1]; got {min_overlap_fraction}")
    pred = as_binary_mask(pred_mask, "prediction")
    labels, n_components, areas = tumour_components(target_mask, connectivity)
    _check_same_shape(pred, labels)
    if max_diameter_px is not None:
        diameters = np.sqrt(4.0 * areas / np.pi)
        is_small = diameters < max_diameter_px
    elif spacing_mm is not None:
        diameters_mm = np.sqrt(4.0 * areas * _pixel_area_mm2(spacing_mm) / np.pi)
        is_small = diameters_mm < max_diameter_mm
    else:
        raise ValueError("small_tumour_recall needs spacing_mm (for the mm threshold) or max_diameter_px")
    covered = np.bincount(labels[pred], minlength=n_components + 1)[1:]
    needed = np.maximum(1, np.ceil(min_overlap_fraction * areas))
    detected = (covered >= needed) & is_small
    return LesionDetection(detected=int(detected.sum()), total=int(is_small.sum()))


#: Centre of the contrast change: the middle of paper 004's HU window [-1000, 400].
CONTRAST_CENTRE_HU = -300.0


@dataclass(frozen=True)
class IntensityPerturbation:
    """One intensity change applied to HU slices: ``centre + scale * (hu + offset - centre) + noise``.

    Args:
        name: short name used as a key in results.
        offset_hu: added to every pixel (a calibration shift).
        contrast_scale: multiplies the distance from ``CONTRAST_CENTRE_HU`` (-300 HU, middle of [-1000, 400]).
        noise_sigma_hu: standard deviation of additive Gaussian noise; drawn from ``numpy.random.default_rng(seed)``,
            so every call with the same images gives the same noise.
        seed: seed of the noise.
    """

    name: str
    offset_hu: float = 0.0
    contrast_scale: float = 1.0
    noise_sigma_hu: float = 0.0
    seed: int = 0

    def apply(self, hu_images: np.ndarray) -> np.ndarray:
        """Return perturbed float32 copies of ``hu_images`` (any shape, HU)."""
        hu = np.asarray(hu_images, dtype=np.float32)
        out = CONTRAST_CENTRE_HU + self.contrast_scale * (hu + self.offset_hu - CONTRAST_CENTRE_HU)
        if self.noise_sigma_hu > 0:
            out = out + np.random.default_rng(self.seed).normal(0.0, self.noise_sigma_hu, size=hu.shape)
        return out.astype(np.float32)


#: The fixed set behind ``intensity_robustness_std``: the unchanged images, HU offsets of +-50 (a calibration drift
#: larger than the few-HU tolerance of CT quality control), contrast 0.9 / 1.1 (kernel and dose differences) and
#: Gaussian noise of 20 HU (low-dose scans are noisier), each applied in HU before the model's own preprocessing.
DEFAULT_INTENSITY_PERTURBATIONS: tuple[IntensityPerturbation, ...] = (
    IntensityPerturbation("identity"),
    IntensityPerturbation("offset_minus_50hu", offset_hu=-50.0),
    IntensityPerturbation("offset_plus_50hu", offset_hu=50.0),
    IntensityPerturbation("contrast_0.9", contrast_scale=0.9),
    IntensityPerturbation("contrast_1.1", contrast_scale=1.1),
    IntensityPerturbation("noise_20hu", noise_sigma_hu=20.0, seed=0),
)


@dataclass(frozen=True)
class IntensityRobustness:
    """Result of :func:`intensity_robustness_std`: the std and the mean Dice under each perturbation."""

    std: float
    mean_dice: dict[str, float]


def intensity_robustness_std(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    images_hu: np.ndarray,
    targets: np.ndarray,
    perturbations: Sequence[IntensityPerturbation] = DEFAULT_INTENSITY_PERTURBATIONS,
    threshold: float = 0.5,
    batch_size: int | None = None,
) -> IntensityRobustness:
    """Paper 004's "robustness to intensity variance (std)", made explicit.

    The paper says only "measured via standard deviation of predictions". Ours: for each perturbation of a fixed set
    (``DEFAULT_INTENSITY_PERTURBATIONS``, which includes the unchanged images), perturb the test slices in HU, run the
    model, threshold, and take the mean per-image Dice over the test set; the result is the population standard
    deviation (ddof=0) of these mean Dice values. 0 means the segmentation does not depend on these intensity
    changes; lower is more robust. (Another reading of the paper's phrase, the std of per-image Dice over the
    unperturbed test set, measures spread across patients rather than robustness; it can be computed from
    ``per_image.csv`` and is not what this function returns.)

    Pass ``result.std`` to :func:`lungkit.evaluation.summarize` as ``extra_metrics={"intensity_robustness_std": ...}``
    and keep ``result.mean_dice`` in the protocol notes.

    Args:
        predict_fn: maps a float32 batch of HU slices (N, H, W) to probabilities (N, H, W) or (N, H, W, 1) in [0, 1];
            it does its own preprocessing (windowing, normalisation, resizing), so the perturbation acts on HU.
        images_hu: HU slices (N, H, W).
        targets: binary targets at the resolution ``predict_fn`` returns.
        perturbations: the set; its names key ``mean_dice``.
        threshold: probabilities >= threshold are tumour.
        batch_size: call ``predict_fn`` on chunks of this many slices (all at once when None).

    Returns:
        :class:`IntensityRobustness` with ``std`` and ``mean_dice`` per perturbation name.

    Raises:
        ValueError: if fewer than two perturbations are given, names repeat, or shapes do not match.
    """
    names = [p.name for p in perturbations]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"need at least two perturbations with distinct names; got {names}")
    images_hu = np.asarray(images_hu, dtype=np.float32)
    target_masks = as_binary_mask(targets, "targets")
    if images_hu.shape[0] != target_masks.shape[0]:
        raise ValueError(f"{images_hu.shape[0]} images but {target_masks.shape[0]} targets")
    chunk = batch_size or max(1, images_hu.shape[0])
    mean_dice = {}
    for perturbation in perturbations:
        perturbed = perturbation.apply(images_hu)
        probabilities = np.concatenate(
            [np.asarray(predict_fn(perturbed[i : i + chunk])) for i in range(0, len(perturbed), chunk)]
        )
        probabilities = check_probabilities(_squeeze_channel(probabilities), f"predict_fn output ({perturbation.name})")
        counts = confusion_counts_batch(threshold_probabilities(probabilities, threshold), target_masks)
        mean_dice[perturbation.name] = float(np.mean(dice_from_counts(counts)))
    return IntensityRobustness(std=float(np.std(list(mean_dice.values()), ddof=0)), mean_dice=mean_dice)


# ---------------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------------


def _binary_labels(values, name: str) -> np.ndarray:
    values = np.asarray(values).ravel()
    if values.dtype != bool and not np.all(np.isin(np.unique(values), (0, 1))):
        raise ValueError(f"{name} must be 0/1 class labels; found {np.unique(values)[:6].tolist()}")
    return values.astype(np.int64)


def binary_confusion_matrix(y_true, y_pred) -> ConfusionCounts:
    """Case counts of binary labels (positive = 1), via scikit-learn's ``confusion_matrix``."""
    y_true = _binary_labels(y_true, "y_true")
    y_pred = _binary_labels(y_pred, "y_pred")
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    return ConfusionCounts(tp=int(tp), fp=int(fp), fn=int(fn), tn=int(tn))


def roc_auc(y_true, y_score) -> float:
    """ROC AUC (scikit-learn); NaN when only one class is present (AUC is undefined then)."""
    y_true = _binary_labels(y_true, "y_true")
    if np.unique(y_true).size < 2:
        return float("nan")
    return float(roc_auc_score(y_true, np.asarray(y_score, dtype=np.float64).ravel()))


def classification_metrics(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Case-level binary classification metrics (positive class = 1, e.g. malignant).

    Args:
        y_true: 0/1 labels (N,).
        y_score: predicted probability of class 1 (N,); ``y_score >= threshold`` predicts 1.
        threshold: decision threshold.

    Returns:
        Dict accuracy, sensitivity, specificity, precision, f1, roc_auc (NaN with one class), and tp, fp, fn, tn.
        Zero denominators follow the module's convention.
    """
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    y_true = _binary_labels(y_true, "y_true")
    if y_true.shape != y_score.shape:
        raise ValueError(f"{y_true.size} labels but {y_score.size} scores")
    counts = binary_confusion_matrix(y_true, (y_score >= threshold).astype(np.int64))
    return {
        "accuracy": accuracy_from_counts(counts),
        "sensitivity": recall_from_counts(counts),
        "specificity": specificity_from_counts(counts),
        "precision": precision_from_counts(counts),
        "f1": f1_from_counts(counts),
        "roc_auc": roc_auc(y_true, y_score),
        "tp": counts.tp,
        "fp": counts.fp,
        "fn": counts.fn,
        "tn": counts.tn,
    }


# ---------------------------------------------------------------------------------------------------------------
# Keras metrics for training logs (Keras has BinaryIoU, Precision, Recall, but no Dice and no per-image IoU)
# ---------------------------------------------------------------------------------------------------------------


class _ThresholdedOverlapMetric(keras.metrics.Metric):
    """Shared state of :class:`DiceMetric` and :class:`IoUMetric`."""

    def __init__(self, threshold=0.5, from_logits=False, per_image=True, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self.per_image = bool(per_image)
        self.score_sum = self.add_variable(shape=(), initializer="zeros", name="score_sum")
        self.image_count = self.add_variable(shape=(), initializer="zeros", name="image_count")
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def _score(self, tp, fp, fn):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        if self.from_logits:
            y_pred = ops.sigmoid(y_pred)
        pred = ops.cast(ops.greater_equal(y_pred, self.threshold), self.dtype)
        true = ops.cast(ops.greater_equal(ops.cast(y_true, self.dtype), 0.5), self.dtype)
        axes = tuple(range(1, len(pred.shape)))
        tp = ops.sum(pred * true, axis=axes)
        fp = ops.sum(pred * (1.0 - true), axis=axes)
        fn = ops.sum((1.0 - pred) * true, axis=axes)
        # one weight per image (e.g. 0 to skip padding images of the last batch)
        if sample_weight is None:
            weights = ops.ones_like(tp)
        else:
            weights = ops.cast(ops.reshape(sample_weight, (-1,)), self.dtype)
        self.score_sum.assign_add(ops.sum(weights * self._score(tp, fp, fn)))
        self.image_count.assign_add(ops.sum(weights))
        self.tp.assign_add(ops.sum(weights * tp))
        self.fp.assign_add(ops.sum(weights * fp))
        self.fn.assign_add(ops.sum(weights * fn))

    def result(self):
        ops = keras.ops
        if self.per_image:
            return ops.divide_no_nan(self.score_sum, self.image_count)
        return self._score(self.tp, self.fp, self.fn)

    def reset_state(self):
        for variable in self.variables:
            variable.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold, from_logits=self.from_logits, per_image=self.per_image)
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class DiceMetric(_ThresholdedOverlapMetric):
    """Thresholded Dice for training logs, the same number as :func:`dice_per_image` averaged over images.

    Args:
        threshold: probability at or above which a pixel is tumour.
        from_logits: apply a sigmoid to ``y_pred`` first (the model outputs logits).
        per_image: True (default): mean over all images seen of each image's Dice (module convention: both empty
            -> 1). False: pooled Dice of all pixels seen, 2 sum(TP) / (2 sum(TP) + sum(FP) + sum(FN)).
        name: metric name in the logs (``val_dice`` for monitoring).
    """

    def __init__(self, threshold=0.5, from_logits=False, per_image=True, name="dice", dtype=None):
        super().__init__(threshold=threshold, from_logits=from_logits, per_image=per_image, name=name, dtype=dtype)

    def _score(self, tp, fp, fn):
        ops = keras.ops
        denominator = 2.0 * tp + fp + fn
        return ops.where(denominator > 0, ops.divide_no_nan(2.0 * tp, denominator), ops.ones_like(denominator))


@keras.saving.register_keras_serializable(package="lungkit")
class IoUMetric(_ThresholdedOverlapMetric):
    """Thresholded IoU for training logs, per image (default) or pooled; same arguments as :class:`DiceMetric`.

    ``keras.metrics.BinaryIoU(target_class_ids=[1])`` is the pooled variant without ``from_logits``.
    """

    def __init__(self, threshold=0.5, from_logits=False, per_image=True, name="iou", dtype=None):
        super().__init__(threshold=threshold, from_logits=from_logits, per_image=per_image, name=name, dtype=dtype)

    def _score(self, tp, fp, fn):
        ops = keras.ops
        denominator = tp + fp + fn
        return ops.where(denominator > 0, ops.divide_no_nan(tp, denominator), ops.ones_like(denominator))


def segmentation_training_metrics(threshold: float = 0.5, from_logits: bool = False) -> list:
    """Metrics to pass to ``model.compile``: per-image Dice and IoU, pooled pixel precision and recall.

    Args:
        threshold: probability threshold.
        from_logits: the model outputs logits; Keras' Precision/Recall then get the threshold as a logit.

    Returns:
        ``[DiceMetric, IoUMetric, keras.metrics.Precision, keras.metrics.Recall]`` named dice, iou, precision, recall.

    Raises:
        ValueError: with ``from_logits`` and a threshold whose logit falls outside [0, 1] (Keras' Precision and
            Recall accept only thresholds in [0, 1]), i.e. threshold outside [0.5, 0.731].
    """
    keras_threshold = threshold
    if from_logits:
        keras_threshold = math.log(threshold / (1.0 - threshold))
        if not 0.0 <= keras_threshold <= 1.0:
            raise ValueError(
                f"with from_logits=True the threshold {threshold} is the logit {keras_threshold:.3f}, outside the "
                "[0, 1] that keras.metrics.Precision/Recall accept; use a threshold in [0.5, 0.731]"
            )
    return [
        DiceMetric(threshold=threshold, from_logits=from_logits, name="dice"),
        IoUMetric(threshold=threshold, from_logits=from_logits, name="iou"),
        keras.metrics.Precision(thresholds=keras_threshold, name="precision"),
        keras.metrics.Recall(thresholds=keras_threshold, name="recall"),
    ]
