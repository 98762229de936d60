"""lungkit.metrics against scikit-learn, scikit-image and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import label, regionprops
from sklearn import metrics as skm

from lungkit import metrics as M


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


# --- per-image metrics vs scikit-learn on random masks --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    pred = (rng.random((24, 20)) > 0.7).astype(np.uint8)
    target = (rng.random((24, 20)) > 0.6).astype(np.uint8)
    p, t = pred.ravel(), target.ravel()
    assert M.dice_per_image(pred, target) == pytest.approx(skm.f1_score(t, p))
    assert M.f1_per_image(pred, target) == pytest.approx(skm.f1_score(t, p))
    assert M.iou_per_image(pred, target) == pytest.approx(skm.jaccard_score(t, p))
    assert M.precision_per_image(pred, target) == pytest.approx(skm.precision_score(t, p))
    assert M.recall_per_image(pred, target) == pytest.approx(skm.recall_score(t, p))
    assert M.sensitivity_per_image(pred, target) == pytest.approx(skm.recall_score(t, p))
    assert M.specificity_per_image(pred, target) == pytest.approx(skm.recall_score(t, p, pos_label=0))
    assert M.accuracy_per_image(pred, target) == pytest.approx(skm.accuracy_score(t, p))
    tn, fp, fn, tp = skm.confusion_matrix(t, p, labels=[0, 1]).ravel()
    assert M.confusion_counts(pred, target) == M.ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=tn)


def test_rmse_matches_sklearn_on_probabilities_and_masks():
    rng = np.random.default_rng(3)
    prob = rng.random((16, 16))
    target = (rng.random((16, 16)) > 0.5).astype(np.uint8)
    expected = math.sqrt(skm.mean_squared_error(target.ravel(), prob.ravel()))
    assert M.rmse_per_image(prob, target) == pytest.approx(expected)
    pred = (prob >= 0.5).astype(np.uint8)
    error_rate = np.mean(pred != target)
    assert M.rmse_per_image(pred, target) == pytest.approx(math.sqrt(error_rate))


def test_segmentation_metrics_per_image_is_consistent():
    rng = np.random.default_rng(4)
    prob = rng.random((20, 20, 1))
    target = (rng.random((20, 20, 1)) > 0.5).astype(np.uint8)
    result = M.segmentation_metrics_per_image(prob, target, threshold=0.4)
    pred = (prob[..., 0] >= 0.4).astype(np.uint8)
    assert result["dice"] == pytest.approx(skm.f1_score(target.ravel(), pred.ravel()))
    assert result["rmse"] == pytest.approx(math.sqrt(np.mean((prob - target) ** 2)))
    assert result["rmse_binary"] == pytest.approx(math.sqrt(np.mean(pred != target[..., 0])))
    assert result["tp"] + result["fp"] + result["fn"] + result["tn"] == result["n_pixels"] == 400
    assert result["target_area_px"] == int(target.sum())
    # an explicit mask replaces the threshold for the count metrics, not for RMSE
    empty = np.zeros((20, 20), dtype=np.uint8)
    with_mask = M.segmentation_metrics_per_image(prob, target, pred_mask=empty)
    assert with_mask["pred_area_px"] == 0 and with_mask["dice"] == 0.0
    assert with_mask["rmse"] == pytest.approx(result["rmse"])


# --- edge cases and the empty-mask convention -----------------------------------------------------------------

ZERO = np.zeros((5, 5), dtype=np.uint8)


def one_pixel(y, x):
    mask = ZERO.copy()
    mask[y, x] = 1
    return mask


@pytest.mark.parametrize(
    "pred, target, expected",
    [
        # both empty: perfect agreement
        (ZERO, ZERO, dict(dice=1, iou=1, precision=1, recall=1, specificity=1, accuracy=1)),
        # identical single pixel
        (one_pixel(2, 2), one_pixel(2, 2), dict(dice=1, iou=1, precision=1, recall=1, specificity=1, accuracy=1)),
        # disjoint single pixels: 1 FP, 1 FN, 23 TN
        (one_pixel(0, 0), one_pixel(4, 4), dict(dice=0, iou=0, precision=0, recall=0, specificity=23 / 24,
                                                accuracy=23 / 25)),
        # prediction empty, target not: precision 0/0 -> 0
        (ZERO, one_pixel(1, 1), dict(dice=0, iou=0, precision=0, recall=0, specificity=1, accuracy=24 / 25)),
        # target empty, prediction not: recall 0/0 -> 0
        (one_pixel(1, 1), ZERO, dict(dice=0, iou=0, precision=0, recall=0, specificity=24 / 25, accuracy=24 / 25)),
        # all-tumour image predicted perfectly: specificity 0/0 with nothing wrong -> 1
        (np.ones((5, 5)), np.ones((5, 5)), dict(dice=1, iou=1, precision=1, recall=1, specificity=1, accuracy=1)),
        # all-tumour image, prediction misses one pixel: specificity 0/0 with an error -> 0
        (1 - one_pixel(0, 0), np.ones((5, 5)), dict(dice=48 / 49, iou=24 / 25, precision=1, recall=24 / 25,
                                                    specificity=0, accuracy=24 / 25)),
    ],
)  # fmt: skip
def test_empty_mask_convention(pred, target, expected):
    counts = M.confusion_counts(pred, target)
    computed = M.metrics_from_counts(counts)
    for key, value in expected.items():
        assert computed[key] == pytest.approx(value), key
    assert computed["f1"] == computed["dice"]


def test_batch_counts_equal_per_image_counts():
    rng = np.random.default_rng(5)
    preds = (rng.random((4, 8, 8, 1)) > 0.5).astype(np.uint8)
    targets = (rng.random((4, 8, 8, 1)) > 0.5).astype(np.uint8)
    batch = M.confusion_counts_batch(preds, targets)
    for i in range(4):
        np.testing.assert_array_equal(batch[i], M.confusion_counts(preds[i], targets[i]).as_array())
    np.testing.assert_allclose(M.dice_from_counts(batch), [M.dice_per_image(preds[i], targets[i]) for i in range(4)])


def test_per_image_and_pooled_differ_as_expected():
    # image A: a 100-pixel tumour found exactly; image B: a 4-pixel tumour missed entirely
    target_a = np.zeros((20, 20), dtype=np.uint8)
    target_a[0:10, 0:10] = 1
    target_b = np.zeros((20, 20), dtype=np.uint8)
    target_b[5:7, 5:7] = 1
    pred_a, pred_b = target_a.copy(), np.zeros_like(target_b)
    per_image = [M.dice_per_image(pred_a, target_a), M.dice_per_image(pred_b, target_b)]
    assert np.mean(per_image) == pytest.approx(0.5)
    pooled = M.pooled_segmentation_metrics([M.confusion_counts(pred_a, target_a), M.confusion_counts(pred_b, target_b)])
    assert pooled["dice"] == pytest.approx(200 / 204)  # the big tumour dominates the pooled number
    flat_pred = np.concatenate([pred_a.ravel(), pred_b.ravel()])
    flat_target = np.concatenate([target_a.ravel(), target_b.ravel()])
    assert pooled["dice"] == pytest.approx(skm.f1_score(flat_target, flat_pred))
    assert pooled["iou"] == pytest.approx(skm.jaccard_score(flat_target, flat_pred))
    # pooled IoU = Dice / (2 - Dice) exactly; the per-image means do not obey it in general
    assert pooled["iou"] == pytest.approx(pooled["dice"] / (2 - pooled["dice"]))


def test_pooled_rmse_is_over_all_pixels():
    rng = np.random.default_rng(6)
    probs = rng.random((3, 6, 6))
    targets = (rng.random((3, 6, 6)) > 0.5).astype(np.uint8)
    counts = M.confusion_counts_batch((probs >= 0.5).astype(np.uint8), targets)
    sse = sum(M.sum_squared_error(probs[i], targets[i]) for i in range(3))
    pooled = M.pooled_segmentation_metrics(counts, sum_squared_error_total=sse)
    assert pooled["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(targets.ravel(), probs.ravel())))


def test_bad_inputs_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="255"):
        M.as_binary_mask(np.array([[0, 255]]), "target")
    with pytest.raises(ValueError, match="sigmoid"):
        M.check_probabilities(np.array([-2.0, 3.0]))
    with pytest.raises(ValueError, match="shape"):
        M.confusion_counts(np.zeros((3, 3)), np.zeros((3, 4)))


# --- small-tumour recall --------------------------------------------------------------------------------------


def three_tumours():
    """64x64 target at 1 mm/px: two small discs (radius 2 -> ~4.5 mm) and one large (radius 12 -> ~24 mm)."""
    target = disc((64, 64), (10, 10), 2) | disc((64, 64), (10, 50), 2) | disc((64, 64), (44, 30), 12)
    return target.astype(np.uint8)


def test_small_tumour_recall_counts_small_components_only():
    target = three_tumours()
    diameters = [r.equivalent_diameter_area for r in regionprops(label(target))]
    assert len(diameters) == 3
    assert sum(d < 10 for d in diameters) == 2  # independent check of the construction with scikit-image
    pred = disc((64, 64), (10, 10), 1) | disc((64, 64), (44, 30), 11)  # finds small #1 and the large one
    result = M.small_tumour_recall(pred, target, spacing_mm=1.0)
    assert (result.detected, result.total) == (1, 2)
    assert result.recall == pytest.approx(0.5)
    # in pixels the same threshold gives the same answer; with 0.2 mm/px every tumour is small
    assert M.small_tumour_recall(pred, target, max_diameter_px=10) == result
    assert M.small_tumour_recall(pred, target, spacing_mm=0.2) == M.LesionDetection(2, 3)
    # requiring half of each tumour: the radius-1 disc covers 5 of 13 pixels of small #1 -> not detected
    assert M.small_tumour_recall(pred, target, spacing_mm=1.0, min_overlap_fraction=0.5).detected == 0
    assert M.small_tumour_recall(np.zeros_like(target), target, spacing_mm=1.0) == M.LesionDetection(0, 2)


def test_small_tumour_recall_pools_and_handles_no_tumour():
    empty = np.zeros((16, 16), dtype=np.uint8)
    none = M.small_tumour_recall(empty, empty, spacing_mm=0.7)
    assert none.total == 0 and math.isnan(none.recall)
    total = sum([M.LesionDetection(1, 2), M.LesionDetection(0, 1), none])
    assert total == M.LesionDetection(1, 3)
    with pytest.raises(ValueError, match="spacing_mm"):
        M.small_tumour_recall(empty, empty)


# --- robustness to intensity changes --------------------------------------------------------------------------


def test_intensity_perturbations_apply_in_hu():
    hu = np.full((2, 8, 8), -300.0, dtype=np.float32)
    hu[:, 0, 0] = -1000.0
    offset = M.IntensityPerturbation("o", offset_hu=50.0).apply(hu)
    assert offset[0, 1, 1] == pytest.approx(-250.0)
    contrast = M.IntensityPerturbation("c", contrast_scale=1.1).apply(hu)
    assert contrast[0, 1, 1] == pytest.approx(-300.0)  # the centre does not move
    assert contrast[0, 0, 0] == pytest.approx(-300.0 + 1.1 * (-700.0))
    big = np.zeros((4, 64, 64), dtype=np.float32)
    noisy = M.IntensityPerturbation("n", noise_sigma_hu=20.0, seed=3)
    np.testing.assert_array_equal(noisy.apply(big), noisy.apply(big))  # fixed seed: same noise each call
    assert np.std(noisy.apply(big)) == pytest.approx(20.0, rel=0.05)
    names = [p.name for p in M.DEFAULT_INTENSITY_PERTURBATIONS]
    assert "identity" in names and len(set(names)) == len(names)


def robustness_data():
    images, targets = [], []
    for i in range(3):
        target = disc((32, 32), (12 + i, 14), 5)
        images.append(np.where(target == 1, -380.0, -800.0).astype(np.float32))
        targets.append(target)
    return np.stack(images), np.stack(targets)


def test_robustness_std_is_zero_for_a_predictor_ignoring_intensity():
    images, targets = robustness_data()
    fixed = np.stack([disc((32, 32), (12, 14), 5)] * 3).astype(np.float32)
    result = M.intensity_robustness_std(lambda batch: fixed[: len(batch)], images, targets)
    assert result.std == 0.0
    assert set(result.mean_dice) == {p.name for p in M.DEFAULT_INTENSITY_PERTURBATIONS}


def test_robustness_std_is_positive_for_a_threshold_predictor():
    images, targets = robustness_data()

    def threshold_predictor(batch):  # tumour = above -400 HU; the tumour sits 20 HU above it
        return (batch > -400.0).astype(np.float32)[..., None]

    result = M.intensity_robustness_std(threshold_predictor, images, targets, batch_size=2)
    assert result.mean_dice["identity"] == pytest.approx(1.0)
    assert result.mean_dice["offset_minus_50hu"] == pytest.approx(0.0)
    values = np.array(list(result.mean_dice.values()))
    assert result.std == pytest.approx(np.std(values)) and result.std > 0.1


# --- classification -------------------------------------------------------------------------------------------


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 2, 60)
    y_score = np.clip(0.35 * y_true + rng.random(60) * 0.7, 0, 1)
    result = M.classification_metrics(y_true, y_score, threshold=0.5)
    y_pred = (y_score >= 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred))
    assert result["specificity"] == pytest.approx(skm.recall_score(y_true, y_pred, pos_label=0))
    assert result["precision"] == pytest.approx(skm.precision_score(y_true, y_pred))
    assert result["f1"] == pytest.approx(skm.f1_score(y_true, y_pred))
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, y_score))


def test_classification_edge_cases():
    assert math.isnan(M.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    counts = M.binary_confusion_matrix([1, 0, 1, 0], [1, 1, 0, 0])
    assert counts == M.ConfusionCounts(tp=1, fp=1, fn=1, tn=1)
    all_negative = M.classification_metrics([0, 0], [0.1, 0.2])
    assert all_negative["precision"] == 1.0 and all_negative["sensitivity"] == 1.0  # nothing to find, none claimed
    with pytest.raises(ValueError, match="0/1"):
        M.classification_metrics([0, 2], [0.1, 0.2])


# --- Keras metrics ---------------------------------------------------------------------------------------------


def test_dice_metric_matches_numpy_per_image_and_pooled():
    rng = np.random.default_rng(8)
    batches = [
        ((rng.random((3, 8, 8, 1)) > 0.6).astype("float32"), rng.random((3, 8, 8, 1)).astype("float32"))
        for _ in range(2)
    ]
    batches[0][0][1] = 0  # an empty target ...
    batches[0][1][1] = 0.1  # ... with an empty prediction: Dice 1 by convention
    per_image, pooled = M.DiceMetric(), M.DiceMetric(per_image=False)
    iou = M.IoUMetric()
    expected_dice, expected_iou, all_counts = [], [], []
    for y_true, y_pred in batches:
        for metric in (per_image, pooled, iou):
            metric.update_state(y_true, y_pred)
        counts = M.confusion_counts_batch((y_pred >= 0.5).astype(np.uint8), y_true.astype(np.uint8))
        expected_dice.extend(M.dice_from_counts(counts))
        expected_iou.extend(M.iou_from_counts(counts))
        all_counts.append(counts)
    assert float(per_image.result()) == pytest.approx(np.mean(expected_dice), abs=1e-6)
    assert float(iou.result()) == pytest.approx(np.mean(expected_iou), abs=1e-6)
    assert float(pooled.result()) == pytest.approx(
        M.pooled_segmentation_metrics(np.concatenate(all_counts))["dice"], abs=1e-6
    )
    per_image.reset_state()
    assert float(per_image.result()) == 0.0


def test_dice_metric_from_logits_and_config():
    rng = np.random.default_rng(9)
    y_true = (rng.random((2, 6, 6, 1)) > 0.5).astype("float32")
    probs = rng.uniform(0.01, 0.99, (2, 6, 6, 1)).astype("float32")
    logits = np.log(probs / (1 - probs))
    from_probs, from_logits = M.DiceMetric(threshold=0.6), M.DiceMetric(threshold=0.6, from_logits=True)
    from_probs.update_state(y_true, probs)
    from_logits.update_state(y_true, logits)
    assert float(from_logits.result()) == pytest.approx(float(from_probs.result()), abs=1e-6)
    clone = M.DiceMetric.from_config(from_logits.get_config())
    assert (clone.threshold, clone.from_logits, clone.per_image) == (0.6, True, True)


def test_segmentation_training_metrics():
    names = [m.name for m in M.segmentation_training_metrics()]
    assert names == ["dice", "iou", "precision", "recall"]
    assert M.segmentation_training_metrics(from_logits=True)[2].thresholds == pytest.approx([0.0])
    with pytest.raises(ValueError, match="logit"):
        M.segmentation_training_metrics(threshold=0.3, from_logits=True)


# --- real tumour masks (Lung-RADS sample; skipped when ../shared/data is absent) --------------------------------


def test_metrics_on_real_lungrads_masks(lungrads_sample):
    import pandas as pd

    rows = pd.read_pickle(lungrads_sample / "lung_cancer_test.pkl")  # trusted sample file written by pandas 1.5
    for mask in rows["mask"]:
        target = np.asarray(mask).astype(np.uint8)
        assert target.any()
        shifted = np.roll(target, 3, axis=1)  # a prediction 3 px (~2 mm) off
        assert M.dice_per_image(target, target) == 1.0
        assert M.dice_per_image(shifted, target) == pytest.approx(skm.f1_score(target.ravel(), shifted.ravel()))
        assert M.iou_per_image(shifted, target) == pytest.approx(skm.jaccard_score(target.ravel(), shifted.ravel()))
        # these LR4A tumours are about 10-15 mm across at an assumed 0.7 mm/px: all below a 20 mm threshold
        detection = M.small_tumour_recall(shifted, target, spacing_mm=0.7, max_diameter_mm=20.0)
        assert detection.total == 1 and detection.detected == 1
