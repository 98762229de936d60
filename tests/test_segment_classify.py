"""Segment, then classify (paper 002): label rules, the size-only baseline computed exactly, crop views and
centres, a tiny crop CNN that learns a separable toy task, a phantom run in which no test slice reaches the
classifier's training data, and the MobileNetV2 transfer model trained and filed beside the crop CNN."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from lungkit.experiments.classification import balanced_indices
from lungkit.experiments.segment_classify import (
    CLASSIFIER_KEY,
    LABEL_RULES,
    MASK_SOURCES,
    TRANSFER_KEY,
    SegmentThenClassify,
    crop_views,
    equivalent_diameter_px,
    fit_size_threshold,
    lungrads_labels,
    mask_centres,
)
from lungkit.models import build_model


def test_label_rules_are_named_and_strict():
    assert lungrads_labels(["LR2", "LR3", "LR4A", "LR4B"]).tolist() == [0, 0, 1, 1]
    assert lungrads_labels(["LR2", "LR3", "LR4A", "LR4B"], "lr234a_vs_lr4b").tolist() == [0, 0, 0, 1]
    assert LABEL_RULES["lr23_vs_lr4"] == {"LR2": 0, "LR3": 0, "LR4A": 1, "LR4B": 1}
    with pytest.raises(ValueError, match="unknown label rule"):
        lungrads_labels(["LR2"], "lr2_vs_rest")
    with pytest.raises(ValueError, match="LR5"):
        lungrads_labels(["LR5"])



def test_segment_then_classify_refuses_the_histology_rule(tmp_path):
    # its crops are Lung-RADS crops: a histology rule there would fail later, on the labels, far from the cause
    with pytest.raises(ValueError, match="'adenocarcinoma_vs_other' is a histology rule"):
        SegmentThenClassify("smoke", tmp_path, label_rule="adenocarcinoma_vs_other")


def test_equivalent_diameter_is_the_disc_of_the_same_area():
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, :2, :2] = 1  # area 4
    masks[1, 3:6, 3:6] = 1  # area 9
    np.testing.assert_allclose(equivalent_diameter_px(masks), [2 * math.sqrt(4 / math.pi), 2 * math.sqrt(9 / math.pi), 0])


def test_size_threshold_maximises_balanced_accuracy_exactly():
    # by hand: threshold 3 -> sens 2/2, spec 3/4 (the 4 of class 0 is above): 0.875; threshold 4 -> sens 2/2,
    # spec 3/4... 4 is class 0 and >= 4: 0.875 too; threshold 5 -> sens 1/2, spec 4/4: 0.75. Ties: smallest, 3.
    diameters = [1.0, 2.0, 4.0, 2.5, 3.0, 5.0]
    labels = [0, 0, 0, 0, 1, 1]
    assert fit_size_threshold(diameters, labels) == 3.0
    # perfectly separable: the smallest diameter of class 1
    assert fit_size_threshold([1, 2, 3, 7, 8], [0, 0, 0, 1, 1]) == 7.0
    with pytest.raises(ValueError, match="both classes"):
        fit_size_threshold([1, 2], [1, 1])


def test_centres_and_views():
    masks = np.zeros((2, 9, 9), np.uint8)
    masks[0, 2:5, 4:7] = 1
    probabilities = np.zeros((2, 9, 9), np.float32)
    probabilities[1, 7, 1] = 0.3  # an empty predicted mask: cropped at the highest probability
    centres, found = mask_centres(masks, probabilities)
    np.testing.assert_allclose(centres, [[3.0, 5.0], [7.0, 1.0]])
    assert found.tolist() == [True, False]
    images = np.full((2, 9, 9), 0.5, np.float32)
    image = crop_views(images, masks, centres, 4, "image")
    mask = crop_views(images, masks, centres, 4, "mask")
    product = crop_views(images, masks, centres, 4, "image_x_mask")
    assert image.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(product, image * mask)
    # the crop around (7, 1) covers rows 5..8 and columns -1..2: its first column is outside the slice (0)
    assert mask[1].sum() == 0 and image[1, 0, 0, 0] == 0.0 and image[1, 0, 1, 0] == 0.5
    with pytest.raises(ValueError, match="unknown crop view"):
        crop_views(images, masks, centres, 4, "pet")


def test_tiny_crop_cnn_learns_a_separable_toy_task():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:16, :16]
    radii = np.r_[rng.uniform(1.5, 3.0, 16), rng.uniform(5.0, 7.0, 16)]  # small discs 0, large discs 1
    x = np.stack([((rows - 7.5) ** 2 + (cols - 7.5) ** 2 <= r**2).astype("float32") for r in radii])[..., None]
    x += rng.normal(0, 0.1, x.shape).astype("float32")
    y = np.r_[np.zeros(16), np.ones(16)].astype("float32")
    model = build_model("crop_cnn_classifier", scale="tiny")
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", jit_compile=False)
    losses = [float(model.train_on_batch(x, y)) for _ in range(60)]
    assert losses[-1] < 0.4 * losses[0], losses
    assert model.output_shape == (None, 1)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """The smoke phantom with a perfect 'segmentation' of its test split written as mobilenetv2_unet's predictions."""
    from lungkit.data.prepare import prepare_lungrads_dataset
    from lungkit.pipeline import load_split_arrays

    run_dir = tmp_path_factory.mktemp("segment_classify")
    dataset_dir = prepare_lungrads_dataset(None, run_dir, "smoke", 0)
    _, masks, _ = load_split_arrays(dataset_dir, "test", "hu", 128, 1)
    folder = run_dir / "results" / "paper002" / "mobilenetv2_unet"
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "predictions.npz", masks=masks[..., 0].astype(np.uint8),
                        probabilities=masks[..., 0].astype(np.float16))
    return run_dir


def test_no_test_slice_reaches_training(phantom_run):
    experiment = SegmentThenClassify("smoke", phantom_run)
    splits = experiment.prepare_data()
    test_ids = set(splits["test"].ids)
    assert test_ids and not test_ids & set(experiment.training_ids())
    assert not test_ids & set(splits["val"].ids)
    # and no training crop is a test crop, pixel for pixel
    train_x, _, _ = experiment.views("train", "ground_truth", "image")
    test_x, _, _ = experiment.views("test", "ground_truth", "image")
    flat_train = {crop.tobytes() for crop in train_x}
    assert not any(crop.tobytes() in flat_train for crop in test_x)
    # the training dataset holds exactly the (balanced) training crops
    train_ds, _, _ = experiment.datasets("image")
    assert sum(int(batch[0].shape[0]) for batch in train_ds) == len(balanced_indices(splits["train"].labels))


def test_size_baseline_on_perfect_predictions_equals_ground_truth(phantom_run):
    experiment = SegmentThenClassify("smoke", phantom_run)
    _, truth = experiment.evaluate_size_baseline("ground_truth")
    per_case, predicted = experiment.evaluate_size_baseline("predicted")
    assert truth["metrics"]["accuracy"]["mean"] == predicted["metrics"]["accuracy"]["mean"]
    threshold = experiment.size_threshold()
    np.testing.assert_array_equal(per_case["y_pred"], (per_case["diameter_px"] >= threshold).astype(int))
    assert (phantom_run / "results" / "paper002" / "size_baseline_predicted" / "summary.json").is_file()


def test_mismatched_predictions_are_refused(phantom_run, tmp_path):
    import shutil

    other = tmp_path / "run"
    shutil.copytree(phantom_run, other)
    path = other / "results" / "paper002" / "mobilenetv2_unet" / "predictions.npz"
    with np.load(path) as data:
        masks = data["masks"].copy()
    masks[0] = 1 - masks[0]
    np.savez_compressed(path, masks=masks, probabilities=masks.astype(np.float16))
    with pytest.raises(ValueError, match="do not match"):
        SegmentThenClassify("smoke", other).prepare_data()


def test_transfer_model_is_trained_and_filed_beside_the_crop_cnn(phantom_run):
    """The MobileNetV2 transfer model trains on the same crops as the small CNN, is scored on the same test cases
    and files its own rows; without local weights its protocol says the encoder trained from scratch."""
    import json

    experiment = SegmentThenClassify("smoke", phantom_run)
    experiment.prepare_data()
    with pytest.raises(ValueError, match="no view"):
        experiment.best_view()
    cnn, _ = experiment.train_classifier("image_x_mask", verbose=0)
    assert experiment.best_view() == "image_x_mask"  # the only view trained; chosen by validation loss
    model, fit = experiment.train_classifier("image_x_mask", verbose=0, model_key=TRANSFER_KEY)
    assert model.name == TRANSFER_KEY and model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 1)
    assert experiment.recipes[TRANSFER_KEY].batch_size == experiment.recipes[CLASSIFIER_KEY].batch_size
    cnn_cases, _ = experiment.evaluate_classifier(cnn, "image_x_mask", "predicted")
    for source in MASK_SOURCES:
        cases, summary = experiment.evaluate_classifier(model, "image_x_mask", source)
        assert cases["id"].tolist() == cnn_cases["id"].tolist() == experiment.splits["test"].ids
        assert {"roc_auc", "sensitivity", "specificity", "accuracy"} <= set(summary["metrics"])
        document = json.loads((phantom_run / "results" / "paper002" / f"mobilenetv2_image_x_mask_{source}"
                               / "summary.json").read_text())
        protocol = document["protocol"]
        assert document["model"] == TRANSFER_KEY and document["table"] == "lungkit_classification"
        assert "MobileNetV2" in document["row"] and protocol["mask_source"] == source
        assert protocol["pretrained_encoder"] == {"pretrained": False, "source": None, "sha256": None}
        assert "fine-tuning schedule skipped" in protocol["optimizer"]
        assert protocol["fine_tuning"]["frozen_layer"] == "mobilenetv2_encoder"
    assert (phantom_run / "results" / "paper002" / "crop_cnn_image_x_mask_predicted" / "summary.json").is_file()
    print(f"transfer model at smoke: {fit.epochs_completed} epochs, training {fit.wall_time_s:.1f} s")
    # the weights setting reaches the builder: a missing local file is refused with its name, nothing downloaded
    with_weights = SegmentThenClassify("smoke", phantom_run, mobilenet_weights=str(phantom_run / "no_weights"))
    with pytest.raises(FileNotFoundError, match="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"):
        with_weights.train_classifier("image_x_mask", verbose=0, model_key=TRANSFER_KEY)
