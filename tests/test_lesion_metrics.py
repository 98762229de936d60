"""Lesion-level matching (IoU >= 0.5, one-to-one, mask or box IoU) and the two F1 readings, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungkit.lesion_metrics import LesionCounts, components, f1_readings, match_lesions


def square(row, col, side, size=20):
    mask = np.zeros((size, size), bool)
    mask[row : row + side, col : col + side] = True
    return mask


def test_match_counts_by_hand():
    target = square(0, 0, 4) | square(10, 10, 4)  # two tumours of 16 px
    exact = square(0, 0, 4)
    shifted = square(10, 11, 4)  # IoU 12 / 20 = 0.6 with the second tumour
    far = square(16, 0, 3)
    assert match_lesions([exact, shifted, far], target) == LesionCounts(tp=2, fp=1, fn=0)
    too_far = square(10, 12, 4)  # IoU 8 / 24 = 0.33
    assert match_lesions([exact, too_far], target) == LesionCounts(tp=1, fp=1, fn=1)
    # one prediction covering both tumours matches neither (IoU 32 / 196) and counts once as FP
    assert match_lesions([square(0, 0, 14)], target) == LesionCounts(tp=0, fp=1, fn=2)
    assert match_lesions([], target) == LesionCounts(0, 0, 2)
    assert match_lesions([np.zeros((20, 20), bool)], np.zeros((20, 20))) == LesionCounts(0, 0, 0)


def test_one_to_one_matching_prefers_more_matches():
    target = square(0, 0, 4) | square(0, 5, 4)
    # prediction A overlaps tumour 1 well and tumour 2 a little; B fits tumour 2: both must match
    a = square(0, 0, 4)
    b = square(0, 5, 4)
    assert match_lesions([a, b], target).tp == 2


def test_box_iou_for_box_derived_masks():
    target = square(0, 0, 6)
    ring = square(0, 0, 6) & ~square(1, 1, 4)  # same box, mask IoU 20 / 36 = 0.56
    thin = square(0, 0, 6) & ~square(0, 1, 6)  # one column: mask IoU 6 / 36, box IoU 6 / 36
    assert match_lesions([ring], target, use_boxes=True).tp == 1
    assert match_lesions([thin], target, use_boxes=True).tp == 0


def test_scores_and_f1_readings():
    scores = LesionCounts(tp=3, fp=1, fn=2).scores()
    assert scores == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 6 / 9})
    assert math.isnan(LesionCounts().scores()["precision"])
    # image 1: P 1, R 0.5, F1 2/3; image 2: P 0.5, R 1, F1 2/3 -> mean F1 2/3, harmonic of means 0.75
    readings = f1_readings([1.0, 0.5], [0.5, 1.0], [2 / 3, 2 / 3])
    assert readings["mean_of_per_image_f1"] == pytest.approx(2 / 3)
    assert readings["harmonic_of_mean_precision_and_recall"] == pytest.approx(0.75)
    assert len(components(square(0, 0, 2) | square(3, 3, 2))) == 2


def test_table1_metrics_by_hand():
    from lungkit.lesion_metrics import table1_metrics

    target = np.stack([square(0, 0, 6), square(0, 0, 4) | square(10, 10, 4)])
    # image 0: a ring inside the tumour's box (mask IoU 20/36 >= 0.5); image 1: one exact hit, one far miss
    ring = square(0, 0, 6) & ~square(1, 1, 4)
    thin = square(0, 0, 6) & ~square(0, 1, 6)  # image 0 alternative: mask and box IoU 6/36
    predicted = np.stack([ring, square(0, 0, 4) | square(16, 16, 3)])
    per_image = {"precision": [1.0, 0.5], "recall": [0.5, 0.5], "f1": [0.9, 0.1]}
    result = table1_metrics(predicted, target, per_image, box_derived=True)
    # lesions: TP 2 (ring, exact), FP 1 (far), FN 1 (second tumour of image 1)
    assert result["lesion_precision"] == pytest.approx(2 / 3)
    assert result["lesion_recall"] == pytest.approx(2 / 3)
    assert result["lesion_f1"] == pytest.approx(4 / 6)
    assert result["lesion_box_precision"] == pytest.approx(2 / 3)
    # F1 of the means (0.75, 0.5) = 0.6, not the mean of per-image F1 (0.5)
    assert result["f1_of_mean_precision_recall"] == pytest.approx(0.6)
    thin_result = table1_metrics(np.stack([thin, predicted[1]]), target, per_image, box_derived=False)
    assert thin_result["lesion_precision"] == pytest.approx(1 / 3)
    assert not any(key.startswith("lesion_box") for key in thin_result)


def test_query_instances_scored_as_their_own_lesions():
    """A query model's instances are matched as they are: two instances on one tumour give one TP and one FP,
    where the components of their union would give one TP."""
    from lungkit.lesion_metrics import instance_lesion_metrics, table1_metrics

    target = np.stack([square(0, 0, 4) | square(10, 10, 4), square(2, 2, 6)])
    instances = [
        [{"mask": square(0, 0, 4)}, {"mask": square(0, 0, 3)}, {"mask": square(10, 11, 4)}],  # IoU 1, 9/16, 12/20
        [],  # nothing found: one FN
    ]
    result = instance_lesion_metrics(instances, target)
    # TP 2 (one per tumour of image 0), FP 1 (the second hit on the first tumour), FN 1 (image 1)
    assert result["instance_lesion_precision"] == pytest.approx(2 / 3)
    assert result["instance_lesion_recall"] == pytest.approx(2 / 3)
    assert not any("box" in key for key in result)
    with_boxes = instance_lesion_metrics(instances, target, box_derived=True)
    assert with_boxes["instance_lesion_box_f1"] == pytest.approx(2 / 3)
    per_image = {"precision": [1.0, 0.0], "recall": [1.0, 0.0], "f1": [1.0, 0.0]}
    predicted = np.stack([square(0, 0, 4) | square(10, 11, 4), np.zeros((20, 20), bool)])
    combined = table1_metrics(predicted, target, per_image, instances=instances)
    assert combined["lesion_precision"] == pytest.approx(1.0)  # components: two, both hits
    assert combined["instance_lesion_precision"] == pytest.approx(2 / 3)
    assert "instance_lesion_f1" not in table1_metrics(predicted, target, per_image)
    with pytest.raises(ValueError, match="1 lists of instances for 2 images"):
        instance_lesion_metrics(instances[:1], target)
