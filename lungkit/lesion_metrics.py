"""Lesion-level precision, recall and F1 for paper 000's Table 1, beside the pixel-level ones.

Paper 000 prints precision, recall and F1 for an *instance* segmentation model without defining them (and its F1s
are not the harmonic means of its P and R). lungkit reports every reading, each defined here once:

- **pixel, pooled**: TP / FP / FN summed over all pixels of all test images, then P = TP/(TP+FP), R = TP/(TP+FN),
  F1 = 2PR/(P+R) (``lungkit.metrics.pooled_segmentation_metrics``);
- **pixel, per image**: the same on each image, then averaged (``lungkit.metrics.segmentation_metrics_per_image``;
  an image with no tumour and no prediction scores 1). The mean of per-image F1 is in general *not* the harmonic
  mean of mean P and mean R: :func:`f1_readings` computes both, which is one way a paper can print an F1 below
  both its P and R (as paper 000's MaskFormer row does);
- **lesion** (this module): ground-truth tumours are the connected components of the target mask (8-neighbourhood,
  as ``lungkit.metrics.tumour_components``); predicted lesions are the instances of a query model
  (``lungkit.models.query_decoder.instance_predictions``) or the connected components of a per-pixel model's
  thresholded map. A prediction and a tumour match when their mask IoU is >= 0.5 (for box-derived ground truth,
  such as Lung-PET-CT-Dx's boxes, ``use_boxes=True`` compares the bounding boxes instead); matching is one-to-one,
  maximising the number of matches and then the summed IoU (Hungarian), so a prediction can match at most one
  tumour. TP = matches, FP = unmatched predictions, FN = unmatched tumours, pooled over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

LESION_IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class LesionCounts:
    """Lesion matches of one or more images; they add up with ``+`` / ``sum``."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: "LesionCounts") -> "LesionCounts":
        return LesionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def __radd__(self, other):
        return self if other == 0 else self.__add__(other)

    def scores(self) -> dict[str, float]:
        """``precision``, ``recall``, ``f1`` (NaN when undefined: no prediction, no tumour, or neither)."""
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")
        denominator = 2 * self.tp + self.fp + self.fn
        f1 = 2 * self.tp / denominator if denominator else float("nan")
        return {"precision": precision, "recall": recall, "f1": f1}


def components(mask: np.ndarray, connectivity: int = 2) -> list[np.ndarray]:
    """The connected components of a binary (H, W) mask as a list of bool masks (label order)."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    labels, count = ndimage.label(mask > 0.5, structure=ndimage.generate_binary_structure(2, connectivity))
    return [labels == label for label in range(1, count + 1)]


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1), end-exclusive, of a non-empty bool mask."""
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _iou(a, b, use_boxes: bool) -> float:
    if use_boxes:
        (r0, c0, r1, c1), (s0, d0, s1, d1) = bounding_box(a), bounding_box(b)
        inter = max(0, min(r1, s1) - max(r0, s0)) * max(0, min(c1, d1) - max(c0, d0))
        union = (r1 - r0) * (c1 - c0) + (s1 - s0) * (d1 - d0) - inter
    else:
        inter = int(np.logical_and(a, b).sum())
        union = int(np.logical_or(a, b).sum())
    return inter / union if union else 0.0


def match_lesions(predicted: list, target_mask: np.ndarray, iou_threshold: float = LESION_IOU_THRESHOLD,
                  use_boxes: bool = False, connectivity: int = 2) -> LesionCounts:
    """Lesion-level TP / FP / FN of one image.

    Args:
        predicted: bool (H, W) masks of the predicted lesions (empty masks are ignored).
        target_mask: binary (H, W) or (H, W, 1) tumour mask; its connected components are the tumours.
        iou_threshold: a pair matches at IoU >= this.
        use_boxes: compare bounding boxes instead of masks (box-derived ground truth).
        connectivity: 1 or 2, for the tumour components.

    Returns:
        :class:`LesionCounts`.
    """
    predicted = [np.asarray(p, bool) for p in predicted if np.asarray(p).any()]
    tumours = components(target_mask, connectivity)
    if not predicted or not tumours:
        return LesionCounts(0, len(predicted), len(tumours))
    iou = np.array([[_iou(p, t, use_boxes) for t in tumours] for p in predicted])
    eligible = iou >= iou_threshold
    # maximise the number of matches first (a large bonus per eligible pair), then their summed IoU
    rows, cols = linear_sum_assignment(-(eligible * (1.0 + iou)))
    matches = int(eligible[rows, cols].sum())
    return LesionCounts(matches, len(predicted) - matches, len(tumours) - matches)


def f1_readings(precisions, recalls, f1s) -> dict[str, float]:
    """Two F1s a paper may print from per-image scores: the mean of per-image F1 and the harmonic mean of the
    mean precision and mean recall (NaN images left out of each mean)."""
    precision, recall = float(np.nanmean(precisions)), float(np.nanmean(recalls))
    harmonic = 2 * precision * recall / (precision + recall) if precision + recall else float("nan")
    return {"mean_precision": precision, "mean_recall": recall, "mean_of_per_image_f1": float(np.nanmean(f1s)),
            "harmonic_of_mean_precision_and_recall": harmonic}


#: The summary name of the F1 of the mean per-image P and R (:func:`table1_metrics`).
F1_OF_MEANS = "f1_of_mean_precision_recall"


def instance_lesion_metrics(instances, masks, box_derived: bool = False,
                            iou_threshold: float = LESION_IOU_THRESHOLD) -> dict[str, float]:
    """Lesion-level P / R / F1 of a query model's own instances (its official instance inference, e.g.
    :func:`lungkit.inference.sliding_window_query_predict`) instead of the components of its semantic map.

    Args:
        instances: per image a list of ``{"mask": bool (H, W), ...}``.
        masks: the ground truth, (N, H, W).
        box_derived: also match by box IoU (``instance_lesion_box_*``).
        iou_threshold: a predicted instance and a tumour match at IoU >= this.

    Returns:
        ``instance_lesion_precision``, ``_recall``, ``_f1`` (pooled over images), and ``instance_lesion_box_*`` when
        ``box_derived``.

    Raises:
        ValueError: when there is not one list of instances per image.
    """
    if len(instances) != len(masks):
        raise ValueError(f"{len(instances)} lists of instances for {len(masks)} images")
    result = {}
    for prefix, use_boxes in [("instance_lesion", False)] + ([("instance_lesion_box", True)] if box_derived else []):
        counts = sum((match_lesions([item["mask"] for item in predicted], target, iou_threshold, use_boxes=use_boxes)
                      for predicted, target in zip(instances, masks)), LesionCounts())
        result.update({f"{prefix}_{key}": value for key, value in counts.scores().items()})
    return result


def table1_metrics(predicted_masks, masks, per_image, box_derived: bool = False,
                   iou_threshold: float = LESION_IOU_THRESHOLD, instances=None) -> dict[str, float]:
    """The readings of paper 000's Table 1 that a per-image table lacks, as dataset-level numbers (no CI).

    Predicted lesions are the connected components of each scored binary prediction (for the query models too:
    their ``predict`` gives the semantic map, whose components are scored like a per-pixel model's); a query
    model's own instances are scored separately when given.

    Args:
        predicted_masks: the scored binary predictions, (N, H, W).
        masks: the ground truth, (N, H, W).
        per_image: the per-image table (columns ``precision``, ``recall``, ``f1``).
        box_derived: the ground truth was derived from boxes: also match by box IoU (``lesion_box_*``).
        iou_threshold: a predicted lesion and a tumour match at IoU >= this.
        instances: a query model's own instances per image (:func:`instance_lesion_metrics`), or None.

    Returns:
        ``lesion_precision``, ``lesion_recall``, ``lesion_f1`` (mask IoU, pooled over images), ``lesion_box_*``
        when ``box_derived``, ``instance_lesion_*`` when ``instances`` are given, and ``f1_of_mean_precision_recall`` (2PR/(P+R) of the per-image means, the other F1
        a paper can print from per-image scores; :func:`f1_readings`). NaN where undefined.
    """
    predicted_components = [components(prediction) for prediction in predicted_masks]
    result = {}
    readings = [("lesion", False)] + ([("lesion_box", True)] if box_derived else [])
    for prefix, use_boxes in readings:
        counts = sum((match_lesions(predicted, target, iou_threshold, use_boxes=use_boxes)
                      for predicted, target in zip(predicted_components, masks)), LesionCounts())
        result.update({f"{prefix}_{key}": value for key, value in counts.scores().items()})
    result.update(instance_lesion_metrics(instances, masks, box_derived, iou_threshold) if instances is not None else {})
    result[F1_OF_MEANS] = f1_readings(per_image["precision"], per_image["recall"], per_image["f1"])[
        "harmonic_of_mean_precision_and_recall"]
    return result
