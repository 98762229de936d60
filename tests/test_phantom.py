"""Phantom: real pickle schema and dtypes, determinism, Lung-RADS nodule sizes, realistic HU, hard distractors."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lungkit.data.kit_dataset import LUNGRADS_LABELS
from lungkit.data.lungrads import LUNGRADS_COLUMNS, load_lungrads_pickle, validate_lungrads_frame
from lungkit.data.phantom import (
    NODULE_DIAMETER_RANGES_MM,
    PHANTOM_FIELD_OF_VIEW_MM,
    make_phantom_frame,
    phantom_pixel_spacing_mm,
    write_phantom_pickles,
)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    write_phantom_pickles(out, n_train=24, n_test=16, image_size=128, seed=3)
    return out


def test_spacing_is_a_fixed_field_of_view():
    assert phantom_pixel_spacing_mm(512) == pytest.approx(0.7)
    assert phantom_pixel_spacing_mm(256) == pytest.approx(1.4)
    assert phantom_pixel_spacing_mm(128) * 128 == pytest.approx(PHANTOM_FIELD_OF_VIEW_MM)


def test_pickles_have_the_real_schema_and_dtypes(phantom_dir):
    for name, n_rows, mask_dtype in (("lung_cancer_train.pkl", 24, np.int64), ("lung_cancer_test.pkl", 16, np.int8)):
        frame = load_lungrads_pickle(phantom_dir / name)  # the restricted reader + full validation
        assert list(frame.columns) == list(LUNGRADS_COLUMNS) and len(frame) == n_rows
        assert all(frame[c].dtype == object for c in LUNGRADS_COLUMNS)
        assert frame.columns.dtype == object  # like the pandas 1.x files: no pandas string dtype in the pickle
        for row in range(n_rows):
            label, mask, hu_lung, hu = (frame.iat[row, c] for c in range(4))
            assert mask.dtype == mask_dtype and hu.dtype == np.float64 and hu_lung.dtype == np.float64
            assert mask.shape == hu.shape == (128, 128)
            np.testing.assert_array_equal(hu, np.rint(hu))  # integer HU held in float64
            lungs = hu_lung != 0
            # hu_array is lung mask x HU: equal to HU inside, 0 outside
            np.testing.assert_array_equal(hu_lung[lungs], hu[lungs])
            assert 0.05 < lungs.mean() < 0.5


def test_rows_are_grouped_by_class_in_lung_rads_order():
    frame = make_phantom_frame(20, 96, seed=1, class_proportions={"LR2": 1, "LR3": 1, "LR4A": 2, "LR4B": 1})
    labels = list(frame["label1"])
    assert labels == ["LR2"] * 4 + ["LR3"] * 4 + ["LR4A"] * 8 + ["LR4B"] * 4


def test_default_class_mix_is_the_real_test_set():
    labels = pd.Series(make_phantom_frame(26, 96, seed=0)["label1"])
    # 35/37/97/95 of 264, scaled to 26 rows by largest remainder: 3.45, 3.64, 9.55, 9.36 -> 3, 4, 10, 9
    assert labels.value_counts().reindex(list(LUNGRADS_LABELS)).tolist() == [3, 4, 10, 9]


def test_padding_outside_the_field_of_view():
    frame = make_phantom_frame(8, 128, seed=5, split="test")
    centre = (128 - 1) / 2
    yy, xx = np.mgrid[:128, :128]
    outside = np.hypot(yy - centre, xx - centre) * phantom_pixel_spacing_mm(128) > PHANTOM_FIELD_OF_VIEW_MM / 2 + 1
    paddings = set()
    for hu in frame["hu_array_old"]:
        values = np.unique(hu[outside])
        assert values.size == 1 and values[0] in (-2048.0, -1024.0)
        paddings.add(values[0])
        assert hu[~outside].min() >= -1024
    assert hu.max() <= 3071


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, phantom_dir):
    again = write_phantom_pickles(tmp_path / "again", n_train=24, n_test=16, image_size=128, seed=3)
    for split, path in again.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == hashlib.sha256((phantom_dir / path.name).read_bytes()).hexdigest()
    first = make_phantom_frame(4, 96, seed=1)
    second = make_phantom_frame(4, 96, seed=2)
    assert not np.array_equal(first.iat[0, 3], second.iat[0, 3])
    # train and test are different draws for one seed
    test = make_phantom_frame(4, 96, seed=1, split="test")
    assert not np.array_equal(first.iat[0, 3], test.iat[0, 3])


@pytest.mark.parametrize("image_size", [128, 256])
def test_nodule_sizes_follow_lung_rads_classes(image_size):
    frame = make_phantom_frame(12, image_size, seed=11, class_proportions={c: 1 for c in LUNGRADS_LABELS})
    spacing = phantom_pixel_spacing_mm(image_size)
    for label, mask in zip(frame["label1"], frame["mask"]):
        labelled, count = ndimage.label(mask)
        assert count >= 1
        diameter_mm = 2 * math.sqrt(np.count_nonzero(mask) / math.pi) * spacing
        low, high = NODULE_DIAMETER_RANGES_MM[label]
        assert low <= diameter_mm < high, (label, diameter_mm)
    # LR2 is a few pixels at 256 px: as hard as on real CT
    lr2 = [np.count_nonzero(m) for lbl, m in zip(frame["label1"], frame["mask"]) if lbl == "LR2"]
    assert max(lr2) <= math.pi * (6.0 / 2 / spacing) ** 2


def test_hu_of_lungs_and_nodule_kinds(phantom_dir):
    nodules = pd.read_csv(phantom_dir / "phantom_nodules.csv")
    frames = {s: load_lungrads_pickle(phantom_dir / f"lung_cancer_{s}.pkl") for s in ("train", "test")}
    lung_medians, solid_means, glass_means = [], [], []
    for record in nodules.itertuples():
        frame = frames[record.split]
        mask, hu_lung, hu = frame.iat[record.row, 1], frame.iat[record.row, 2], frame.iat[record.row, 3]
        lungs = (hu_lung != 0) & (mask == 0)
        lung_medians.append(np.median(hu[lungs]))
        if record.area_px >= 12:  # the interior of larger nodules, away from the partial-volume edge
            core = ndimage.binary_erosion(mask != 0)
            (solid_means if record.kind == "solid" else glass_means if record.kind == "ground_glass" else []).append(
                hu[core].mean() if core.any() else hu[mask != 0].mean()
            )
    assert -900 < np.median(lung_medians) < -780
    assert solid_means and -150 < np.median(solid_means) < 120
    if glass_means:
        assert -780 < np.median(glass_means) < -400


def test_vessel_cross_sections_look_like_small_nodules():
    """Bright blobs the size of LR2-LR3 nodules exist outside the tumour mask: brightness alone cannot segment."""
    frame = make_phantom_frame(6, 256, seed=2, class_proportions={"LR2": 1})
    spacing = phantom_pixel_spacing_mm(256)
    nodule_sized = 0
    for mask, hu_lung, hu in zip(frame["mask"], frame["hu_array"], frame["hu_array_old"]):
        bright = (hu > -300) & (hu_lung != 0) & ~ndimage.binary_dilation(mask != 0, iterations=2)
        labelled, count = ndimage.label(bright)
        areas = np.bincount(labelled.ravel())[1:] * spacing**2
        diameters = 2 * np.sqrt(areas / math.pi)
        nodule_sized += int(np.count_nonzero((diameters >= 3) & (diameters < 8)))
    assert nodule_sized / len(frame) >= 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        make_phantom_frame(4, 128, split="val")
    with pytest.raises(ValueError, match="image_size"):
        make_phantom_frame(4, 64)
    with pytest.raises(ValueError, match="unknown classes"):
        make_phantom_frame(4, 128, class_proportions={"LR5": 1})


def test_frame_passes_validation_in_memory():
    validate_lungrads_frame(make_phantom_frame(5, 96, seed=9, split="test"), "phantom")
