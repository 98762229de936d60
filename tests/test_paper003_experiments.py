"""Paper 003's experiments: LUNA16 phantom -> prompt boxes, nodule windows, SAM results, crops, balancing.

Covers :mod:`lungkit.data.luna16_kit`, :mod:`lungkit.experiments.prompted`, :mod:`lungkit.experiments.classification`
and :class:`lungkit.experiments.segmentation.LunaUNetBaseline`, which all share one converted phantom.

One smoke-size LUNA16 phantom (3 volumes) is converted once per module; every check recomputes what it asserts
from the files (PNG + manifest) or by hand, independently of the code under test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungkit import reports
from lungkit.data import luna16_kit
from lungkit.experiments import classification, prompted, segmentation
from lungkit.data.kit_dataset import read_manifest

from kit_fixtures import read_binary, read_hu, write_kit_dataset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("p003_run")


@pytest.fixture(scope="module")
def kit_dir(run_dir) -> Path:
    return luna16_kit.prepare_luna16_dataset("", run_dir, "smoke", seed=0)


# ------------------------------------------------------------------------------------------------ data


def test_phantom_path_gives_slices_with_boxes_inside_the_image(kit_dir, run_dir):
    manifest = read_manifest(kit_dir)
    assert len(manifest) > 0
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["mask_source"] == "disc_from_diameter").all()
    for row in manifest.itertuples():
        x0, y0, x1, y1 = (float(v) for v in row.prompt_box.split())
        mask = read_binary(row.mask_path)
        assert mask.shape == (row.height, row.width)
        assert 0 <= x0 < x1 <= row.width - 1 and 0 <= y0 < y1 <= row.height - 1, row.id
        ys, xs = np.nonzero(mask)
        assert len(ys), row.id
        # the full-diameter box encloses the slice's disc (pixel centres, half a pixel of rounding allowed)
        assert xs.min() >= math.floor(x0) - 0.5 and xs.max() <= math.ceil(x1) + 0.5, row.id
        assert ys.min() >= math.floor(y0) - 0.5 and ys.max() <= math.ceil(y1) + 0.5, row.id
    info = json.loads((kit_dir / "dataset.json").read_text())
    assert info["data_source"] == "phantom" and "by series" in info["split_description"]
    assert len(list((run_dir / luna16_kit.LUNA16_PHANTOM_DIR / "subset0").glob("*.mhd"))) == luna16_kit.phantom_volume_count("smoke")
    # idempotent: a second call reuses the finished dataset untouched
    stamp = (kit_dir / "manifest.csv").stat().st_mtime_ns
    assert luna16_kit.prepare_luna16_dataset("", run_dir, "smoke", seed=0) == kit_dir
    assert (kit_dir / "manifest.csv").stat().st_mtime_ns == stamp


def test_nodule_windows_are_crops_of_the_slices(kit_dir, run_dir):
    windows = luna16_kit.write_nodule_windows(kit_dir, run_dir / "windows", window_px=32)
    source = read_manifest(kit_dir).set_index("id")
    target = read_manifest(windows)
    assert sorted(target["id"]) == sorted(source.index) and (target["height"] == 32).all()
    for row in target.head(6).itertuples():
        original = source.loc[row.id]
        hu, mask = read_hu(original.image_path), read_binary(original.mask_path)
        padded_hu = np.pad(hu, 32, constant_values=-1024)
        padded_mask = np.pad(mask, 32)
        top, left = int(row.window_y0) + 32, int(row.window_x0) + 32
        np.testing.assert_array_equal(read_hu(row.image_path), padded_hu[top : top + 32, left : left + 32])
        np.testing.assert_array_equal(read_binary(row.mask_path), padded_mask[top : top + 32, left : left + 32])
        shifted = np.array(original.prompt_box.split(), float) - [row.window_x0, row.window_y0] * 2
        np.testing.assert_allclose(np.array(row.prompt_box.split(), float), shifted, atol=0.011)
        assert row.split == original.split
    stamp = (windows / "manifest.csv").stat().st_mtime_ns
    luna16_kit.write_nodule_windows(kit_dir, run_dir / "windows", window_px=32)
    assert (windows / "manifest.csv").stat().st_mtime_ns == stamp


def test_box_ellipse_by_hand():
    mask = np.zeros((20, 30), bool)
    (prediction,) = prompted.box_ellipse_predictions([mask], np.array([[4.0, 2.0, 16.0, 10.0]]))
    rows, cols = np.mgrid[:20, :30]
    expected = ((cols - 10.0) / 6.0) ** 2 + ((rows - 6.0) / 4.0) ** 2 <= 1.0
    np.testing.assert_array_equal(prediction.astype(bool), expected)


# ------------------------------------------------------------------------------------------------ SAM


def test_wiring_only_sam_result_shows_no_number(kit_dir, run_dir):
    setup = prompted.load_sam_setup("", verbose=False)
    assert setup.status == "wiring_only"
    predictions = prompted.segment_split_with_sam(setup, kit_dir, "test", max_slices=5)
    assert [p.shape for p in predictions.probabilities] == [m.shape for m in predictions.masks]
    path = prompted.write_sam_result(setup, predictions, kit_dir, run_dir, "smoke", seed=0)
    summary = json.loads(path.read_text())
    assert summary["status"] == "wiring_only" and summary["metrics"] == {} and summary["row"] == "Ours"
    assert "MASKS FROM DIAMETERS" in summary["protocol"]["notes"] and "SAM (v1)" in summary["protocol"]["notes"]
    per_image = pd.read_csv(path.parent / "per_image.csv")
    assert len(per_image) == 5 and not {"dice", "iou", "recall"} & set(per_image.columns)
    assert not (path.parent / "predictions.npz").exists()

    md_path, csv_path = reports.write_paper_report("paper003", reports.collect_summaries(run_dir), run_dir / "rep")
    line = next(l for l in md_path.read_text().splitlines() if l.startswith("| Ours | LUNA16 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[-1] == "wiring only (no weights)"
    assert cells[3] == "" and cells[6] == ""  # lungkit's Dice and IoU cells stay empty
    frame = pd.read_csv(csv_path)
    ours = frame[(frame["row"] == "Ours") & (frame["dataset"] == "LUNA16")]
    assert ours["dice_measured"].isna().all() and ours["iou_measured"].isna().all()


def test_sam_with_a_missing_preset_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="sam_base_sa1b"):
        prompted.load_sam_setup(tmp_path / "nothing_here")


# ------------------------------------------------------------------------------------------------ classifier


def test_crops_keep_patients_in_one_split_and_follow_the_label_rule(kit_dir):
    crops = classification.crops_from_luna16(kit_dir, crop_size=32)
    table = crops.table
    assert (table.groupby("patient")["split"].nunique() == 1).all()
    series_split = read_manifest(kit_dir).groupby("seriesuid")["split"].first()
    assert (table["split"] == table["patient"].map(series_split)).all()
    # paper 003: > 3 malignant, < 3 benign, 3 left out
    assert not (table["malignancy"] == 3).any()
    np.testing.assert_array_equal(table["label"], (table["malignancy"] > 3).astype(int))
    # one crop per validation / test case, at the central slice
    held_out = table[table["split"] != "train"]
    assert (held_out.groupby("case_id").size() == 1).all() and (held_out["role"] == "centre").all()
    assert crops.images.shape == (len(table), 32, 32)
    manifest = read_manifest(kit_dir).set_index("id")
    for index in range(3):
        row = manifest.loc[table.at[index, "id"]]
        cy, cx = (int(math.floor(v + 0.5)) for v in (row.centre_y_px, row.centre_x_px))
        padded = np.pad(read_hu(row.image_path), 16, constant_values=-1024)
        np.testing.assert_array_equal(crops.images[index], padded[cy : cy + 32, cx : cx + 32])
        hu = read_hu(row.image_path)
        scaled = np.pad((hu - hu.min()) / (hu.max() - hu.min()), 16)
        np.testing.assert_allclose(crops.scaled[index], scaled[cy : cy + 32, cx : cx + 32], atol=1e-6)


def test_missing_malignancy_is_a_clear_error(kit_dir, tmp_path):
    manifest = pd.read_csv(kit_dir / "manifest.csv")
    manifest["malignancy"] = np.nan
    manifest["label_binary"] = pd.NA
    copy = tmp_path / "kit"
    copy.mkdir()
    manifest.to_csv(copy / "manifest.csv", index=False)
    (copy / "COMPLETE").write_text("")
    (copy / "dataset.json").write_text((kit_dir / "dataset.json").read_text())
    with pytest.raises(ValueError, match="malignancy.csv"):
        classification.crops_from_luna16(copy)


def test_balanced_indices_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    index = classification.balanced_indices(labels, seed=3)
    assert set(range(len(labels))) <= set(index)  # every original example is kept
    assert np.bincount(labels[index]).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(index, classification.balanced_indices(labels, seed=3))
    assert classification.balanced_indices([], seed=0).size == 0


def test_balancing_and_augmentation_touch_the_training_split_only(run_dir):
    experiment = classification.ClassifierExperiment("smoke", run_dir, seed=0, crop_size=32)
    crops = experiment.prepare_data()
    raw_train = crops.select("train")[1]
    _, balanced = experiment.training_arrays()
    counts = np.bincount(balanced, minlength=2)
    assert len(np.unique(raw_train)) < 2 or counts[0] == counts[1]
    assert len(balanced) == len(np.unique(raw_train)) * np.bincount(raw_train).max()
    # validation batches are the plain crops, in order: no resampling, no augmentation
    _, validation, _ = experiment.datasets()
    images, labels, _ = crops.select("val", centre_only=True)
    batches = list(validation.as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches])[:, 0], labels)
    expected = classification.crops_to_inputs(images, experiment.recipe.image_size, experiment.recipe.input_channels)
    np.testing.assert_allclose(np.concatenate([x for x, _ in batches]), expected, atol=1e-6)
    # no upsampling without ImageNet weights, recorded as a cap
    assert experiment.recipe.image_size == 32 and experiment.recipe.capped["image_size"]["recipe"] == 224


def test_scaled_crop_is_slice_minmax_then_crop():
    slice_hu = np.arange(48, dtype=np.float32).reshape(6, 8) * 10 - 1000  # min -1000, max -530
    crop = classification.scaled_crop(slice_hu, (1, 1), crop_size=4)  # rows -1..2, cols -1..2: padded top-left
    expected = np.zeros((4, 4), np.float32)
    expected[1:, 1:] = (slice_hu[:3, :3] + 1000) / 470.0
    np.testing.assert_allclose(crop, expected, atol=1e-6)
    inputs = classification.crops_to_inputs(np.stack([crop, crop]), image_size=4, channels=3)
    assert inputs.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(inputs[1, ..., 2], crop)  # same size: no resampling, grey repeated
    assert classification.crops_to_inputs(np.stack([crop]), image_size=8, channels=1).shape == (1, 8, 8, 1)


def test_lungrads_proxy_labels_and_centres(tmp_path):
    dataset = write_kit_dataset(tmp_path / "lr", counts={"train": 4, "val": 2, "test": 4}, size=64)
    crops = classification.crops_from_lungrads(dataset, crop_size=16)
    manifest = read_manifest(dataset).set_index("id")
    expected = manifest.loc[crops.table["id"], "label1"].map({"LR2": 0, "LR3": 0, "LR4A": 1, "LR4B": 1})
    np.testing.assert_array_equal(crops.table["label"], expected.to_numpy())
    assert crops.label_source == "lungrads_proxy" and "PROXY" in crops.label_rule
    assert (crops.images[:, 8, 8] > -300).all()  # the crop centre sits on the nodule (~30 HU), not lung (-850)


# ------------------------------------------------------------------------------------------------ U-Net baseline


def test_unet_baseline_writes_a_lungkit_row_with_the_luna16_protocol(kit_dir, run_dir):
    windows = luna16_kit.write_nodule_windows(kit_dir, run_dir / "luna16_windows")
    baseline = segmentation.LunaUNetBaseline("paper003", "unet_luna16", "smoke", run_dir, seed=0, dataset_dir=windows)
    assert baseline.recipe.image_size == luna16_kit.WINDOW_PX and baseline.recipe.loss == "dice"
    model = baseline.build_model()
    baseline.train(model, verbose=0)
    result = baseline.evaluate(model)
    summary = json.loads(result.summary_path.read_text())
    assert summary["status"] == "measured" and summary["tables"] == ["lungkit_baselines"]
    assert summary["protocol"]["split"] == luna16_kit.split_description(0)
    assert summary["protocol"]["mask_source"] == "disc_from_diameter"
    assert summary["protocol"]["data_source"] == "phantom"
    assert summary["protocol"]["notes"].startswith("MASKS FROM DIAMETERS")
    assert summary["n_images"] == len(read_manifest(windows, "test"))
    from lungkit.model_card import load_model_with_card

    _, card = load_model_with_card(baseline.model_dir)  # evaluate saved the scored model with its card
    assert card["result"]["result_key"] == "unet_luna16" and card["input"]["slice_size"] == baseline.recipe.image_size
    assert card["result"]["test_metrics"]["dice"] == pytest.approx(summary["metrics"]["dice"]["mean"])
    markdown, _ = reports.write_paper_report("paper003", reports.collect_summaries(run_dir), run_dir / "rep2")
    section = markdown.read_text().split("## lungkit results with no row in the paper's tables")[1]
    assert re.search(r"`unet_luna16` \(model `unet`\): dice \d\.\d{3}", section)
    with pytest.raises(ValueError, match="no trained baseline"):
        segmentation.LunaUNetBaseline("paper003", "box_ellipse_luna16", "smoke", run_dir, dataset_dir=windows)


def test_augmented_crop_batches_repeat_exactly_with_the_same_seed():
    """The crop classifiers' training feed (DenseNet, segment-then-classify, SimCLR's downstream) is reproducible:
    its augmenter draws from stateful generators, so it must not run calls in parallel (their order would vary)."""
    import keras

    rng = np.random.default_rng(0)
    images = rng.random((24, 32, 32, 1)).astype(np.float32)
    labels = (rng.random(24) > 0.5).astype(np.int64)

    def one_epoch():
        keras.utils.set_random_seed(0)
        dataset = classification.make_crop_dataset(images, labels, 8, shuffle=True, augment=True, seed=3)
        return [x for x, _ in dataset.as_numpy_iterator()]

    first, second = one_epoch(), one_epoch()
    assert len(first) == 3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.sort(first[0].ravel()), np.sort(images[:8].ravel()))  # it did augment
