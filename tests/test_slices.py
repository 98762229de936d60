"""Folders of image/mask files and npz arrays -> kit dataset (lungkit.data.slices).

Real samples (skipped when ``../shared/data`` is absent): the LIDC-IDRI PNG export and the MSD lung patches. Every
bad-input test builds its own tiny tree in ``tmp_path`` and checks that the error names the offending file.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import shared_sample
from lungkit.data.export import DATASET_INFO_NAME, read_hu_png, read_png, staging_dir
from lungkit.data.kit_dataset import COMPLETE_MARKER, read_manifest
from lungkit.data.slices import (
    IntensityMap,
    SliceSourceError,
    binarise_mask,
    convert_array_files,
    convert_slice_folder,
    find_slice_pairs,
    intensity_map,
    read_slice_file,
)
from lungkit.data.splits import assign_patient_splits, describe_patient_split

SIDE = 16


def _image(seed: int = 0, side: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def _mask(side: int = SIDE) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    mask[4:8, 5:10] = 255
    return mask


def _write(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        assert cv2.imwrite(str(path), array), path


def _tree(root, patients=("p1", "p2"), names=("1", "2")) -> None:
    """The default layout: image/<patient>/<name>.png and label/<patient>/<name>.png."""
    for p_index, patient in enumerate(patients):
        for n_index, name in enumerate(names):
            _write(root / "image" / patient / f"{name}.png", _image(10 * p_index + n_index))
            _write(root / "label" / patient / f"{name}.png", _mask())


def _error_naming(error: pytest.ExceptionInfo, path) -> None:
    assert str(path) in str(error.value), f"message does not name {path}: {error.value}"


# -- real samples ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lidc_dataset(tmp_path_factory):
    root = shared_sample("lidc-png-sample")
    out = tmp_path_factory.mktemp("lidc") / "kit"
    return root, out, convert_slice_folder(root, out, intensity="display8")


def test_lidc_png_sample_converts_with_patients_binary_masks(lidc_dataset):
    root, out, manifest = lidc_dataset
    assert len(manifest) == 109
    counts = manifest.groupby("patient").size().to_dict()
    assert counts == {"LIDC-IDRI-2": 28, "LIDC-IDRI-19": 24, "LIDC-IDRI-29": 19, "LIDC-IDRI-72": 21,
                      "LIDC-IDRI-313": 17}
    assert set(manifest["split"]) == {"train"}
    # masks follow the > 127 rule exactly, written as 0/255
    for row in manifest.sample(12, random_state=0).itertuples():
        written = read_png(row.mask_path)
        source = cv2.imread(str(root / "label" / row.source_file.split("/", 1)[1]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(written)) <= {0, 255}
        np.testing.assert_array_equal(written > 0, source > 127)
    assert (manifest["tumour_area_px"] > 0).mean() > 0.9  # slices of nodules: nearly every one holds tumour
    info = json.loads((out / DATASET_INFO_NAME).read_text())
    assert info["intensity"]["kind"] == "display8" and "approximate" in info["intensity"]["description"]
    assert info["n_patients"] == 5


def _peak(values: np.ndarray) -> float:
    """The most frequent value (the slices hold 256 grey levels, so each level is one histogram bin)."""
    levels, counts = np.unique(values, return_counts=True)
    return float(levels[counts.argmax()])


def _lung_air_and_soft_tissue(manifest: pd.DataFrame) -> tuple[float, float]:
    """HU of the histogram peak of lung and air (-1400..-500 HU, which leaves out the black 0 padding of resized
    slices) and of the peak of everything denser (muscle, blood, fat)."""
    values = np.concatenate([read_hu_png(path).ravel() for path in manifest["image_path"]])
    return _peak(values[(values > -1400) & (values < -500)]), _peak(values[values >= -500])


def test_lidc_png_sample_hu_roughly_right(lidc_dataset, tmp_path):
    _, _, manifest = lidc_dataset
    # with per-patient calibration (the default for display renderings) every patient lands near the right HU
    for patient, rows in manifest.groupby("patient"):
        air, tissue = _lung_air_and_soft_tissue(rows)
        # air is -1000 HU; the lung peak mixes it with parenchyma (about -850 HU on real CT), hence -750 at the top
        assert -1150 <= air <= -750, (patient, air)
        assert abs(tissue) <= 150, (patient, tissue)
    # one fixed map for all: LIDC-IDRI-313's PNGs use another display window (air ~10, soft tissue ~100), so the
    # map measured on the others puts them far too low -- why the calibration exists
    fixed = convert_slice_folder(shared_sample("lidc-png-sample"), tmp_path / "fixed", intensity="display8",
                                 calibrate_display=False)
    air, tissue = _lung_air_and_soft_tissue(fixed[fixed["patient"] == "LIDC-IDRI-313"])
    assert air < -1200 and tissue < -300, (air, tissue)


@pytest.fixture(scope="module")
def msd_dataset(tmp_path_factory):
    root = shared_sample("msd-lung-patches")
    out = tmp_path_factory.mktemp("msd") / "kit"
    files = {"train": root / "train_patches.npz", "test": root / "test_patches.npz"}
    return out, convert_array_files(files, out, intensity="unit")


def test_msd_patches_convert_with_given_split_and_readme_tumour_counts(msd_dataset):
    out, manifest = msd_dataset
    assert manifest["split"].value_counts().to_dict() == {"train": 130, "test": 130}
    assert (manifest.loc[manifest["split"] == "train", "source_file"] == "train_patches.npz").all()
    assert (manifest.loc[manifest["split"] == "test", "source_file"] == "test_patches.npz").all()
    with_tumour = manifest[manifest["tumour_area_px"] > 0].groupby("split").size().to_dict()
    assert with_tumour == {"train": 111, "test": 117}  # the sample README's counts
    assert set(manifest[["height", "width"]].drop_duplicates().itertuples(index=False, name=None)) == {(48, 48)}
    # no patient ids in the files: each file is one patient group, so the given split cannot leak
    assert set(manifest["patient"]) == {"file:train_patches.npz", "file:test_patches.npz"}
    info = json.loads((out / DATASET_INFO_NAME).read_text())
    assert info["patients_known"] is False and info["intensity"]["kind"] == "unit"
    hu = read_hu_png(manifest["image_path"].iloc[0])
    assert -1000 <= hu.min() and hu.max() <= 400  # [0, 1] read as the lung window


# -- layouts --------------------------------------------------------------------------------------------------------


def test_default_layout_pairs_in_patient_then_natural_order(tmp_path):
    _tree(tmp_path, patients=("b", "a"), names=("10", "2", "1"))
    pairs = find_slice_pairs(tmp_path)
    assert list(zip(pairs["patient"], pairs["name"])) == [
        ("a", "1"), ("a", "2"), ("a", "10"), ("b", "1"), ("b", "2"), ("b", "10")]
    manifest = convert_slice_folder(tmp_path, tmp_path / "out")
    assert manifest["source_file"].tolist()[:3] == ["image/a/1.png", "image/a/2.png", "image/a/10.png"]
    # the first row is patient "a" (index 1) slice "1" (index 2): the image _tree wrote there
    np.testing.assert_array_equal(read_hu_png(manifest["image_path"].iloc[0]), _image(12).astype(np.float32))


def test_flat_layout_without_patients_makes_each_slice_its_own_patient(tmp_path):
    for index, name in enumerate(("a", "b", "c")):
        _write(tmp_path / "images" / f"{name}.png", _image(index))
        _write(tmp_path / "masks" / f"{name}.png", _mask())
    manifest = convert_slice_folder(tmp_path, tmp_path / "out", image_pattern="images/{name}",
                                    mask_pattern="masks/{name}")
    assert manifest["patient"].tolist() == ["slice:a", "slice:b", "slice:c"]
    split = assign_patient_splits(manifest, test_fraction=0.34, val_fraction=0.0, seed=0)
    assert (split["split"] == "test").sum() == 1


def test_prefixed_names_in_one_patient_folder(tmp_path):
    for patient in ("p1", "p2"):
        for index in range(2):
            _write(tmp_path / "scans" / patient / f"img_{index}.png", _image(index))
            _write(tmp_path / "scans" / patient / f"mask_{index}.png", _mask())
    pairs = find_slice_pairs(tmp_path, "scans/{patient}/img_{name}", "scans/{patient}/mask_{name}")
    assert list(zip(pairs["patient"], pairs["name"])) == [("p1", "0"), ("p1", "1"), ("p2", "0"), ("p2", "1")]
    assert all(m.endswith(f"mask_{n}.png") for m, n in zip(pairs["mask"], pairs["name"]))


def test_patient_prefix_in_flat_file_names(tmp_path):
    # images at the root named <patient>_<slice>, masks in a sub-folder: the sub-folder is not a patient folder
    for patient in ("p1", "p2"):
        _write(tmp_path / f"{patient}_0.png", _image(0))
        _write(tmp_path / "masks" / f"{patient}_0.png", _mask())
    pairs = find_slice_pairs(tmp_path, "{patient}_{name}", "masks/{patient}_{name}")
    assert pairs["patient"].tolist() == ["p1", "p2"]


def test_npy_and_tiff_slices_mixed(tmp_path):
    _write(tmp_path / "image" / "p" / "1.npy", _image(1).astype(np.int16) - 1024)
    _write(tmp_path / "label" / "p" / "1.tif", _mask())
    manifest = convert_slice_folder(tmp_path, tmp_path / "out", intensity="hu")
    np.testing.assert_array_equal(read_hu_png(manifest["image_path"].iloc[0]), _image(1) - 1024.0)


def test_sixteen_bit_png_with_hu_offset(tmp_path):
    stored = np.full((SIDE, SIDE), 1024, np.uint16)  # 0 HU
    stored[:4] = 24  # -1000 HU: air
    stored[-2:] = 1024 + 700  # bone
    _write(tmp_path / "image" / "p" / "1.png", stored)
    _write(tmp_path / "label" / "p" / "1.png", _mask())
    assert read_slice_file(tmp_path / "image" / "p" / "1.png").dtype == np.uint16
    manifest = convert_slice_folder(tmp_path, tmp_path / "out",
                                    intensity={"kind": "hu", "slope": 1, "intercept": -1024})
    hu = read_hu_png(manifest["image_path"].iloc[0])
    assert hu[0, 0] == -1000 and hu[8, 8] == 0 and hu[-1, 0] == 700
    info = json.loads((tmp_path / "out" / DATASET_INFO_NAME).read_text())
    assert info["intensity"]["intercept"] == -1024 and "exact" in info["intensity"]["description"]


def test_intensity_map_presets_and_refusals():
    assert intensity_map("display8").approximate and not intensity_map("hu").approximate
    assert intensity_map(IntensityMap("unit", 2.0, 1.0)).slope == 2.0
    assert "HU ~ 17.2 x value - 3010" in intensity_map("display8").describe()
    with pytest.raises(ValueError, match="unknown"):
        intensity_map("window")
    with pytest.raises(ValueError, match="non-zero slope"):
        intensity_map({"kind": "hu", "slope": 0})
    with pytest.raises(ValueError, match="kind"):
        intensity_map({"kind": "rgb"})


# -- mask rule ------------------------------------------------------------------------------------------------------


def test_anti_aliased_mask_edges_split_at_127_and_explicit_threshold(tmp_path):
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[2:6, 2:6] = 255
    mask[6, 2:6] = 200  # outer anti-aliased ring: near the inside
    mask[7, 2:6] = 127  # exactly half: outside by the rule "> 127"
    mask[8, 2:6] = 40
    _write(tmp_path / "image" / "p" / "1.png", _image())
    _write(tmp_path / "label" / "p" / "1.png", mask)
    default = convert_slice_folder(tmp_path, tmp_path / "default")
    assert default["tumour_area_px"].iloc[0] == 20
    explicit = convert_slice_folder(tmp_path, tmp_path / "explicit", mask_threshold=30)
    assert explicit["tumour_area_px"].iloc[0] == 28
    written = read_png(explicit["mask_path"].iloc[0])
    np.testing.assert_array_equal(written > 0, mask > 30)
    assert json.loads((tmp_path / "explicit" / DATASET_INFO_NAME).read_text())["mask_rule"] == "mask > 30"
    np.testing.assert_array_equal(binarise_mask(np.array([0.2, 0.5, 0.7])), [0, 0, 1])


def test_zero_one_mask_pngs_are_not_read_as_empty(tmp_path):
    # many exports store masks as 0/1 in an 8-bit PNG; "half the dtype range" would erase every tumour
    mask = (_mask() > 0).astype(np.uint8)
    for name in ("1", "2"):
        _write(tmp_path / "image" / "p" / f"{name}.png", _image())
        _write(tmp_path / "label" / "p" / f"{name}.png", mask)
    manifest = convert_slice_folder(tmp_path, tmp_path / "out")
    assert manifest["tumour_area_px"].tolist() == [20, 20]
    rule = json.loads((tmp_path / "out" / DATASET_INFO_NAME).read_text())["mask_rule"]
    assert "0/1" in rule


# -- bad input: each names the offending file -------------------------------------------------------------------------


def test_mask_without_image(tmp_path):
    _tree(tmp_path)
    orphan = tmp_path / "label" / "p1" / "3.png"
    _write(orphan, _mask())
    with pytest.raises(SliceSourceError, match="mask without an image") as error:
        convert_slice_folder(tmp_path, tmp_path / "out")
    _error_naming(error, orphan)
    assert not (tmp_path / "out").exists()


def test_image_without_mask(tmp_path):
    _tree(tmp_path)
    orphan = tmp_path / "image" / "p2" / "7.png"
    _write(orphan, _image())
    with pytest.raises(SliceSourceError, match="image without a mask") as error:
        find_slice_pairs(tmp_path)
    _error_naming(error, orphan)
    assert "label/p2/7" in str(error.value)  # and says where the mask was expected


def test_image_and_mask_of_different_sizes(tmp_path):
    _tree(tmp_path)
    _write(tmp_path / "label" / "p2" / "2.png", _mask(side=SIDE * 2))
    with pytest.raises(SliceSourceError, match="differs from its mask") as error:
        convert_slice_folder(tmp_path, tmp_path / "out")
    assert "image/p2/2.png" in str(error.value)
    assert not (tmp_path / "out").exists()
    assert not staging_dir(tmp_path / "out").exists()


def test_hu_out_of_range_names_the_file_and_leaves_no_staging(tmp_path):
    # a 16-bit slice declared as an 8-bit display rendering: HU far beyond what the kit can store
    _tree(tmp_path)
    wrong = np.full((SIDE, SIDE), 60000, np.uint16)
    _write(tmp_path / "image" / "p2" / "2.png", wrong)
    with pytest.raises(SliceSourceError, match="outside") as error:
        convert_slice_folder(tmp_path, tmp_path / "out", intensity="display8")
    assert "image/p2/2.png" in str(error.value)
    assert not (tmp_path / "out").exists()
    assert not staging_dir(tmp_path / "out").exists()  # failing mid-write leaves no half-written folder behind


def test_empty_patient_folder(tmp_path):
    _tree(tmp_path)
    empty = tmp_path / "image" / "p3"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a slice")
    with pytest.raises(SliceSourceError, match="patient folder without slices") as error:
        find_slice_pairs(tmp_path)
    _error_naming(error, empty)


def test_truncated_png(tmp_path):
    _tree(tmp_path)
    broken = tmp_path / "image" / "p1" / "2.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(SliceSourceError, match="not a readable image") as error:
        convert_slice_folder(tmp_path, tmp_path / "out")
    _error_naming(error, broken)
    assert not (tmp_path / "out").exists()


def test_colour_image_with_differing_channels(tmp_path):
    grey = _image()
    path = tmp_path / "rgb.png"
    _write(path, np.stack([grey, grey, grey], -1))
    np.testing.assert_array_equal(read_slice_file(path), grey)  # grey stored as RGB is fine
    colour = np.stack([grey, grey, 255 - grey], -1)
    _write(path, colour)
    with pytest.raises(SliceSourceError, match="colour image with differing channels") as error:
        read_slice_file(path)
    _error_naming(error, path)


def test_npy_with_object_array_or_nan(tmp_path):
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([[1, None], [2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(SliceSourceError) as error:
        read_slice_file(objects)
    _error_naming(error, objects)
    nan = tmp_path / "nan.npy"
    values = np.zeros((SIDE, SIDE), np.float32)
    values[3, 4] = np.nan
    np.save(nan, values)
    with pytest.raises(SliceSourceError, match="NaN") as error:
        read_slice_file(nan)
    _error_naming(error, nan)
    cube = tmp_path / "cube.npy"
    np.save(cube, np.zeros((2, SIDE, SIDE)))
    with pytest.raises(SliceSourceError, match="2-D") as error:
        read_slice_file(cube)
    _error_naming(error, cube)


def _npz(path, images, masks, **extra):
    np.savez_compressed(path, images=images, masks=masks, **extra)
    return path


def test_npz_missing_masks_key(tmp_path):
    path = tmp_path / "patches.npz"
    np.savez(path, images=np.zeros((2, SIDE, SIDE), np.float32), labels=np.zeros((2, SIDE, SIDE), np.uint8))
    with pytest.raises(SliceSourceError, match="missing array") as error:
        convert_array_files(path, tmp_path / "out")
    _error_naming(error, path)
    assert "'labels'" in str(error.value)  # and lists what the file does hold
    # another key name is one argument away
    manifest = convert_array_files(path, tmp_path / "out", mask_key="labels")
    assert len(manifest) == 2


def test_npz_images_and_masks_of_different_shapes(tmp_path):
    path = _npz(tmp_path / "p.npz", np.zeros((3, SIDE, SIDE), np.float32), np.zeros((3, SIDE, SIDE + 1), np.uint8))
    with pytest.raises(SliceSourceError, match="one shape") as error:
        convert_array_files(path, tmp_path / "out")
    _error_naming(error, path)


def test_npz_channel_axis_and_patients(tmp_path):
    images = np.random.default_rng(0).random((4, SIDE, SIDE, 1)).astype(np.float32)
    masks = np.zeros((4, SIDE, SIDE, 1), np.uint8)
    masks[1, 2:5, 2:5] = 1
    path = _npz(tmp_path / "p.npz", images, masks, patients=np.array(["a", "a", "b", "c"]))
    manifest = convert_array_files(path, tmp_path / "out")
    assert manifest["patient"].tolist() == ["a", "a", "b", "c"]
    assert manifest["source_row"].tolist() == [0, 1, 2, 3]
    assert manifest["tumour_area_px"].tolist() == [0, 9, 0, 0]
    np.testing.assert_allclose(read_hu_png(manifest["image_path"].iloc[0]), np.rint(images[0, ..., 0] * 1400 - 1000))


def test_npz_patients_of_wrong_length(tmp_path):
    path = _npz(tmp_path / "p.npz", np.zeros((3, SIDE, SIDE), np.float32), np.zeros((3, SIDE, SIDE), np.uint8),
                patients=np.array(["a", "b"]))
    with pytest.raises(SliceSourceError, match="2 entries for 3 slices") as error:
        convert_array_files(path, tmp_path / "out")
    _error_naming(error, path)


def test_npz_with_nan_rows_named(tmp_path):
    images = np.zeros((4, SIDE, SIDE), np.float32)
    images[2, 0, 0] = np.inf
    path = _npz(tmp_path / "p.npz", images, np.zeros((4, SIDE, SIDE), np.uint8))
    with pytest.raises(SliceSourceError, match=r"row\(s\) \[2\]") as error:
        convert_array_files(path, tmp_path / "out")
    _error_naming(error, path)
    masks = np.zeros((4, SIDE, SIDE), np.float32)
    masks[1, 0, 0] = np.nan
    path = _npz(tmp_path / "m.npz", np.zeros((4, SIDE, SIDE), np.float32), masks)
    with pytest.raises(SliceSourceError, match=r"'masks' at row\(s\) \[1\]") as error:
        convert_array_files(path, tmp_path / "out")
    _error_naming(error, path)


def test_plain_npy_or_garbage_given_as_array_file(tmp_path):
    single = tmp_path / "images.npy"
    np.save(single, np.zeros((2, SIDE, SIDE), np.float32))
    with pytest.raises(SliceSourceError, match="one array") as error:
        convert_array_files(single, tmp_path / "out")
    _error_naming(error, single)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(SliceSourceError, match="unreadable") as error:
        convert_array_files(garbage, tmp_path / "out")
    _error_naming(error, garbage)


def test_missing_sources(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        convert_slice_folder(missing, tmp_path / "out")
    _error_naming(error, missing)
    with pytest.raises(FileNotFoundError) as error:
        convert_array_files({"train": missing / "a.npz"}, tmp_path / "out")
    _error_naming(error, missing / "a.npz")
    with pytest.raises(ValueError, match="unknown split"):
        convert_array_files({"training": missing / "a.npz"}, tmp_path / "out")


def test_root_with_too_many_files(tmp_path):
    _tree(tmp_path, patients=("p1", "p2", "p3"), names=("1", "2", "3"))  # 18 files + 8 folders
    with pytest.raises(SliceSourceError, match="more than 5 files") as error:
        find_slice_pairs(tmp_path, max_files=5)
    _error_naming(error, tmp_path)
    with pytest.raises(SliceSourceError, match="more than 5 files"):
        convert_slice_folder(tmp_path, tmp_path / "out", max_files=5)
    assert len(find_slice_pairs(tmp_path, max_files=18)) == 9  # folders do not count, the files just fit


def test_no_matching_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("x")
    with pytest.raises(SliceSourceError, match="no image files") as error:
        find_slice_pairs(tmp_path)
    _error_naming(error, tmp_path)


# -- atomicity ------------------------------------------------------------------------------------------------------


def test_conversion_is_atomic_and_reruns_return_the_finished_folder(tmp_path):
    source = tmp_path / "source"
    _tree(source)
    out = tmp_path / "out"
    first = convert_slice_folder(source, out)
    assert (out / COMPLETE_MARKER).is_file() and not staging_dir(out).exists()
    stamp = (out / "manifest.csv").stat().st_mtime_ns
    # a rerun with another source returns the finished folder untouched (the source is not even read)
    again = convert_slice_folder(tmp_path / "gone", out)
    pd.testing.assert_frame_equal(first, again)
    assert (out / "manifest.csv").stat().st_mtime_ns == stamp
    # overwrite rebuilds from the (changed) source
    _write(source / "image" / "p3" / "1.png", _image())
    _write(source / "label" / "p3" / "1.png", _mask())
    rebuilt = convert_slice_folder(source, out, overwrite=True)
    assert len(rebuilt) == 5 and "p3" in set(rebuilt["patient"])
    assert len(read_manifest(out)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"]  # no staging or old copy left


def test_failed_conversion_leaves_no_out_dir_and_an_unfinished_one_is_not_returned(tmp_path):
    source = tmp_path / "source"
    _tree(source)
    out = tmp_path / "out"
    (source / "label" / "p1" / "2.png").unlink()
    with pytest.raises(SliceSourceError):
        convert_slice_folder(source, out)
    assert not out.exists()
    # a folder without the COMPLETE marker is not mistaken for a result
    out.mkdir()
    (out / "stray.txt").write_text("x")
    _write(source / "label" / "p1" / "2.png", _mask())
    with pytest.raises(FileExistsError, match=str(out)):
        convert_slice_folder(source, out)
    assert len(convert_slice_folder(source, out, overwrite=True)) == 4


# -- patient-wise split of a converted folder -------------------------------------------------------------------------


def test_converted_folder_splits_by_patient(tmp_path):
    _tree(tmp_path, patients=("p1", "p2", "p3", "p4"), names=("1", "2", "3"))
    manifest = convert_slice_folder(tmp_path, tmp_path / "out")
    split = assign_patient_splits(manifest, test_patients=["p4"], val_fraction=0.34, seed=1)
    per_patient = split.groupby("patient")["split"].agg(set)
    assert all(len(s) == 1 for s in per_patient)
    assert per_patient["p4"] == {"test"}
    assert (split["split"] == "val").sum() == 3
    text = describe_patient_split(split)
    assert text.startswith("by patient:") and "test 1 patient(s) (3 slices: p4)" in text
