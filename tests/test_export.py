"""Pickles -> kit dataset: exact PNG round trip, manifest values, atomic + resumable conversion, prepare()."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import lungkit.data.export as export
from lungkit.data.export import (
    convert_lungrads_to_kit,
    read_png,
    staging_dir,
    tumour_statistics,
    write_png,
)
from lungkit.data.kit_dataset import (
    COMPLETE_MARKER,
    HU_OFFSET,
    MANIFEST_COLUMNS,
    hu_to_png16,
    png16_to_hu,
    read_manifest,
)
from lungkit.data.phantom import phantom_pixel_spacing_mm, write_phantom_pickles
from lungkit.data.prepare import dataset_fingerprint, prepare_lungrads_dataset, read_dataset_info
from lungkit.figures import plot_examples_per_class

SIZE = 96


@pytest.fixture(scope="module")
def phantom_pickles(tmp_path_factory):
    return write_phantom_pickles(tmp_path_factory.mktemp("phantom"), n_train=10, n_test=6, image_size=SIZE, seed=4)


def test_png16_round_trip_is_exact_for_integer_hu(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-3024, 3072, size=(37, 53)).astype(np.float64)
    hu[0, :4] = [-2048, 3071, -1024, 0]
    hu[1, 0] = -HU_OFFSET  # the range ends
    hu[1, 1] = 65535 - HU_OFFSET
    path = tmp_path / "slice.png"
    write_png(hu_to_png16(hu), path)
    stored = read_png(path)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(png16_to_hu(stored), hu.astype(np.float32))
    # an independent decoder (Pillow) reads the same 16-bit values
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image).astype(np.int64), hu.astype(np.int64) + HU_OFFSET)


def test_png8_mask_round_trip(tmp_path):
    mask = (np.random.default_rng(1).random((20, 30)) > 0.5).astype(np.uint8) * 255
    write_png(mask, tmp_path / "m.png")
    np.testing.assert_array_equal(read_png(tmp_path / "m.png"), mask)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_png(mask.astype(np.float32), tmp_path / "bad.png")


def test_tumour_statistics_hand_computed():
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:5, 3:7] = 1  # 12 pixels, rows 2..4, cols 3..6
    stats = tumour_statistics(mask, 0.5)
    assert stats["tumour_area_px"] == 12
    assert stats["equivalent_diameter_px"] == pytest.approx(2 * math.sqrt(12 / math.pi))
    assert stats["equivalent_diameter_mm"] == pytest.approx(math.sqrt(12 / math.pi))
    assert (stats["bbox_y0"], stats["bbox_x0"], stats["bbox_y1"], stats["bbox_x1"]) == (2, 3, 5, 7)
    empty = tumour_statistics(np.zeros((4, 4)), None)
    assert empty["tumour_area_px"] == 0 and empty["equivalent_diameter_px"] == 0
    assert math.isnan(empty["equivalent_diameter_mm"])
    assert [empty[k] for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")] == [-1, -1, -1, -1]


def test_conversion_matches_the_pickles(tmp_path, phantom_pickles):
    spacing = phantom_pixel_spacing_mm(SIZE)
    manifest = convert_lungrads_to_kit(phantom_pickles, tmp_path / "dataset", pixel_spacing_mm=spacing,
                                       progress=False)
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert len(manifest) == 16 and manifest["id"].iloc[10] == "test_000000"
    for split in ("train", "test"):
        frame = pd.read_pickle(phantom_pickles[split])
        rows = manifest[manifest["split"] == split]
        for entry in rows.itertuples():
            label, mask, hu_lung, hu = (frame.iat[entry.source_row, c] for c in range(4))
            assert entry.id == f"{split}_{entry.source_row:06d}" and entry.label1 == label
            assert entry.source_file == f"lung_cancer_{split}.pkl"
            np.testing.assert_array_equal(png16_to_hu(read_png(entry.image_path)), hu.astype(np.float32))
            np.testing.assert_array_equal(read_png(entry.mask_path), (mask != 0) * 255)
            np.testing.assert_array_equal(read_png(entry.lung_path), (hu_lung != 0) * 255)
            ys, xs = np.nonzero(mask)
            assert entry.tumour_area_px == ys.size
            assert (entry.bbox_y0, entry.bbox_x0, entry.bbox_y1, entry.bbox_x1) == (
                ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            assert entry.equivalent_diameter_mm == pytest.approx(2 * math.sqrt(ys.size / math.pi) * spacing)
            assert (entry.height, entry.width, entry.pixel_spacing_mm) == (SIZE, SIZE, pytest.approx(spacing))
    info = json.loads((tmp_path / "dataset" / "dataset.json").read_text())
    assert info["n_slices"] == 16 and info["pixel_spacing_mm"] == pytest.approx(spacing)
    assert info["hu_rounding"]["rounded"] is False and info["hu_rounding"]["max_abs_error_hu"] == 0.0
    assert not staging_dir(tmp_path / "dataset").exists()


def test_float_hu_is_rounded_to_the_nearest_hu_and_recorded(tmp_path):
    """Resampled / rescaled CT has non-integer HU: the conversion rounds them to 1 HU, says so, and never fails."""
    rng = np.random.default_rng(3)
    table = np.empty((2, 4), dtype=object)
    for row in range(2):
        hu = rng.uniform(-1000.0, 400.0, size=(16, 16))
        lungs = np.zeros((16, 16))
        lungs[4:12, 4:12] = 1
        mask = np.zeros((16, 16), dtype=np.int8)
        mask[6:9, 6:9] = 1
        table[row] = ["LR3", mask, hu * lungs, hu]
    frame = pd.DataFrame(table, columns=pd.Index(["label1", "mask", "hu_array", "hu_array_old"], dtype=object),
                         dtype=object)
    path = tmp_path / "lung_cancer_test.pkl"
    frame.to_pickle(path, protocol=4)
    manifest = convert_lungrads_to_kit({"test": path}, tmp_path / "dataset", progress=False)
    errors = []
    for entry in manifest.itertuples():
        hu = frame.iat[entry.source_row, 3].astype(np.float32).astype(np.float64)  # the slice's float32 HU
        stored = png16_to_hu(read_png(entry.image_path)).astype(np.float64)
        np.testing.assert_array_equal(stored, np.rint(hu))
        errors.append(np.abs(stored - hu).max())
    rounding = read_dataset_info(tmp_path / "dataset")["hu_rounding"]
    assert rounding["rounded"] is True and "nearest 1 HU" in rounding["rule"]
    assert rounding["max_abs_error_hu"] == pytest.approx(max(errors), abs=1e-9)
    assert 0.45 < rounding["max_abs_error_hu"] <= 0.5  # 512 uniform fractions: the largest is close to 0.5


def test_real_samples_have_unknown_spacing(tmp_path, lungrads_sample):
    pickles = {"test": lungrads_sample / "lung_cancer_test.pkl"}
    manifest = convert_lungrads_to_kit(pickles, tmp_path / "real", progress=False)
    assert len(manifest) == 3 and set(manifest["label1"]) == {"LR4A"}
    assert manifest["pixel_spacing_mm"].isna().all() and manifest["equivalent_diameter_mm"].isna().all()
    assert (manifest["tumour_area_px"] > 0).all() and (manifest["height"] == 512).all()
    assert read_dataset_info(tmp_path / "real")["hu_rounding"]["rounded"] is False  # real CT: integer HU, exact PNG


def test_killed_conversion_is_not_accepted_and_resumes(tmp_path, phantom_pickles, monkeypatch):
    out = tmp_path / "dataset"
    real_write_png = export.write_png
    calls = []

    def dies_after_20_pngs(array, path):
        if len(calls) == 20:
            raise KeyboardInterrupt("simulated kill")
        calls.append(path)
        real_write_png(array, path)

    monkeypatch.setattr(export, "write_png", dies_after_20_pngs)
    with pytest.raises(KeyboardInterrupt):
        convert_lungrads_to_kit(phantom_pickles, out, progress=False)
    partial = staging_dir(out)
    assert partial.is_dir() and not (partial / COMPLETE_MARKER).exists()
    with pytest.raises(FileNotFoundError):
        read_manifest(out)
    with pytest.raises(FileNotFoundError):
        read_manifest(partial)
    written_first = sorted(p.name for p in partial.rglob("*.png"))
    assert len(written_first) == 20
    assert not list(partial.rglob("*.tmp"))  # atomic writes leave no half files

    resumed = []

    def counts(array, path):
        resumed.append(path)
        real_write_png(array, path)

    monkeypatch.setattr(export, "write_png", counts)
    manifest = convert_lungrads_to_kit(phantom_pickles, out, progress=False)
    assert len(resumed) == 16 * 3 - 20  # only the missing PNGs were written
    assert len(manifest) == 16 and (out / COMPLETE_MARKER).is_file() and not partial.exists()
    # a finished dataset is returned untouched
    resumed.clear()
    convert_lungrads_to_kit(phantom_pickles, out, progress=False)
    assert resumed == []


def test_staging_from_other_inputs_is_discarded(tmp_path, phantom_pickles):
    out = tmp_path / "dataset"
    partial = staging_dir(out)
    (partial / "images").mkdir(parents=True)
    stale = partial / "images" / "train_000000.png"
    write_png(np.zeros((4, 4), np.uint16), stale)
    manifest = convert_lungrads_to_kit(phantom_pickles, out, progress=False)
    assert read_png(manifest["image_path"].iloc[0]).shape == (SIZE, SIZE)


def test_existing_foreign_folder_is_not_replaced(tmp_path, phantom_pickles):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        convert_lungrads_to_kit(phantom_pickles, out, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    convert_lungrads_to_kit(phantom_pickles, out, overwrite=True, progress=False)
    assert not (out / "notes.txt").exists() and (out / COMPLETE_MARKER).is_file()


def test_prepare_phantom_dataset_is_idempotent(tmp_path):
    run_dir = tmp_path / "run"
    dataset = prepare_lungrads_dataset(None, run_dir, "smoke", seed=0)
    assert dataset == run_dir / "dataset"
    manifest = read_manifest(dataset)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["split"] == "test").sum() == 8 and len(manifest) == 32
    info = read_dataset_info(dataset)
    assert info["data_source"] == "phantom" and info["profile"] == "smoke" and info["seed"] == 0
    assert info["pixel_spacing_mm"] == pytest.approx(phantom_pixel_spacing_mm(128))
    fingerprint = dataset_fingerprint(dataset)
    assert len(fingerprint) == 12 and int(fingerprint, 16) >= 0
    stamp = os.stat(dataset / "manifest.csv").st_mtime_ns
    assert prepare_lungrads_dataset("", run_dir, "smoke", seed=0) == dataset
    assert os.stat(dataset / "manifest.csv").st_mtime_ns == stamp and dataset_fingerprint(dataset) == fingerprint
    with pytest.raises(ValueError, match="other settings"):
        prepare_lungrads_dataset(None, run_dir, "quick", seed=0)


def test_prepare_real_samples(tmp_path, lungrads_sample):
    dataset = prepare_lungrads_dataset(lungrads_sample, tmp_path / "run", "smoke")
    manifest = read_manifest(dataset)
    assert read_dataset_info(dataset)["data_source"] == "lungrads"
    assert (manifest["split"] == "test").sum() == 3
    assert (manifest["split"] == "val").sum() >= 1  # carved from the 11 train rows, in one block
    assert not (tmp_path / "run" / "phantom").exists()


def test_plot_examples_per_class(tmp_path, phantom_pickles):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    convert_lungrads_to_kit(phantom_pickles, tmp_path / "dataset", progress=False)
    figure = plot_examples_per_class(tmp_path / "dataset", n_per_class=2, seed=0)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 4 * 2 and titles[0].startswith("LR2")
    plt.close(figure)
