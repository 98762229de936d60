"""LUNA16 tables, nodule slices, the phantom volumes and the export to the kit format."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungkit.data import kit_dataset
from lungkit.data.luna16 import (
    EXTRA_MANIFEST_COLUMNS,
    convert_luna16_to_kit,
    find_luna16_series,
    malignancy_to_label,
    nodule_slices,
    read_annotations,
    read_candidates,
    read_malignancy,
    split_series,
)
from lungkit.data.nodule_slices import (
    box_around_disc,
    disc_mask,
    extract_nodule_crops,
    nodule_slice_indices,
    parse_box,
    sphere_section_radius_mm,
)
from lungkit.data.phantom_volumes import malignancy_proxy, write_phantom_luna16
from lungkit.data.volumes import (
    nearest_voxel_zyx,
    read_volume,
    read_volume_with_label,
    resample_volume,
    world_to_index,
)

SAMPLE_UID = "1.3.6.1.4.1.14519.5.2.1.9999.0000.000000000000000000000000000001"


# ----------------------------------------------------------------------------------------------- tables


def test_annotation_columns_and_rows_are_checked(tmp_path):
    good = tmp_path / "annotations.csv"
    good.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,3,4.5\nb,1,2,3,6\na,0,0,0,3\n")
    table = read_annotations(good)
    assert table["nodule_index"].tolist() == [0, 0, 1]
    assert table["source_row"].tolist() == [0, 1, 2]
    assert table["diameter_mm"].dtype == float

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("seriesuid,x,y,z,diameter_mm\na,1,2,3,4\n")
    with pytest.raises(ValueError, match=r"wrong\.csv: missing columns \['coordX', 'coordY', 'coordZ'\].*"
                                         r"seriesuid', 'coordX', 'coordY', 'coordZ', 'diameter_mm"):
        read_annotations(wrong)
    bad = tmp_path / "bad.csv"
    bad.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,3,4\na,1,two,3,4\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 1 \(line 3\): column 'coordY' = 'two'"):
        read_annotations(bad)
    bad.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,3,0\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 0 \(line 2\): diameter_mm = 0.0 must be > 0"):
        read_annotations(bad)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_annotations(tmp_path / "missing.csv")


def test_candidate_class_is_checked(tmp_path):
    path = tmp_path / "candidates.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,class\na,1,2,3,1\na,1,2,3,0\n")
    assert read_candidates(path)["class"].tolist() == [1, 0]
    path.write_text("seriesuid,coordX,coordY,coordZ,class\na,1,2,3,2\n")
    with pytest.raises(ValueError, match=r"candidates\.csv: row 0 \(line 2\): class = '2'"):
        read_candidates(path)


def test_malignancy_rule_drops_three():
    assert [malignancy_to_label(s) for s in (1, 2, 2.75, 3, 3.25, 4, 5)] == [0, 0, 0, None, 1, 1, 1]
    assert malignancy_to_label(None) is None and malignancy_to_label(float("nan")) is None
    with pytest.raises(ValueError, match="outside 1..5"):
        malignancy_to_label(6)


def test_split_is_by_series_and_seeded():
    uids = [f"uid{i}" for i in range(10)]
    first, again = split_series(uids, seed=3), split_series(list(reversed(uids)), seed=3)
    other = split_series(uids, seed=4)
    assert first == again
    assert first != other
    counts = pd.Series(first).value_counts()
    assert counts.to_dict() == {"train": 6, "val": 2, "test": 2}  # round(1.5) = 2, half up
    small = split_series(["a", "b", "c"])
    assert sorted(small.values()) == ["test", "train", "val"]
    assert set(split_series(["a"]).values()) == {"train"}


# ----------------------------------------------------------------------------------------------- geometry


def test_slice_rules_by_hand():
    # LUNA16 sample: centre z index 33.2, 11.99 mm, 5 mm slices: r = 1.199 slices
    assert nodule_slice_indices(33.2, 11.99, 5.0, 48).tolist() == [32, 33, 34]  # |k - 33.2| < 1.699
    assert nodule_slice_indices(33.2, 11.99, 5.0, 48, rule="plane").tolist() == [33, 34]  # ceil(32.001)..floor(34.399)
    assert nodule_slice_indices(33.2, 11.99, 5.0, 48, rule="paper_fig6").tolist() == [32, 33, 34]  # 33 +- 1
    # z 10.5, 10 mm, 2.5 mm slices: r = 2. slab: |k - 10.5| < 2.5 -> 9..12 (8 and 13 only touch);
    # plane: 8.5..12.5 -> 9..12; paper: round(10.5) = 11 (half up), 11 +- 2 -> 9..13
    assert nodule_slice_indices(10.5, 10.0, 2.5, 40).tolist() == [9, 10, 11, 12]
    assert nodule_slice_indices(10.5, 10.0, 2.5, 40, rule="plane").tolist() == [9, 10, 11, 12]
    assert nodule_slice_indices(10.5, 10.0, 2.5, 40, rule="paper_fig6").tolist() == [9, 10, 11, 12, 13]
    # a pole exactly on a slice plane counts for "plane" (inclusive); clipping at both ends of the volume
    assert nodule_slice_indices(2.0, 10.0, 2.5, 40, rule="plane").tolist() == [0, 1, 2, 3, 4]
    assert nodule_slice_indices(2.0, 10.0, 2.5, 40).tolist() == [0, 1, 2, 3, 4]  # |k - 2| < 2.5
    assert nodule_slice_indices(1.0, 10.0, 1.0, 4).tolist() == [0, 1, 2, 3]
    # thinner than a slice: slab finds the slice it sits in; plane keeps the nearest slice rather than none
    assert nodule_slice_indices(7.4, 1.0, 5.0, 20).tolist() == [7]
    assert nodule_slice_indices(7.4, 1.0, 5.0, 20, rule="plane").tolist() == [7]
    assert nodule_slice_indices(7.45, 1.0, 5.0, 20).tolist() == [7, 8]  # 7.45 + 0.1 reaches into slab 8


def test_section_radius_plane_and_slab():
    assert sphere_section_radius_mm(10.0, 3.0) == pytest.approx(4.0)  # 3-4-5
    assert sphere_section_radius_mm(10.0, -6.0) == 0.0
    assert sphere_section_radius_mm(10.0, 4.0, slab_thickness_mm=2.0) == pytest.approx(4.0)  # nearest point 3 mm
    assert sphere_section_radius_mm(10.0, 0.5, slab_thickness_mm=2.0) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="slice rule"):
        nodule_slice_indices(1.0, 1.0, 1.0, 4, rule="other")


def test_disc_and_box():
    mask = disc_mask((101, 121), (60.3, 50.6), 10.0)
    assert abs(mask.sum() - math.pi * 100) / (math.pi * 100) < 0.03
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (41, 60, 51, 70)  # ceil(50.6-10)..floor(50.6+10)
    x0, y0, x1, y1 = box_around_disc((60.3, 50.6), 10.0)
    assert (x0, y0, x1, y1) == pytest.approx((50.3, 40.6, 70.3, 60.6))
    assert x0 <= cols.min() and cols.max() <= x1 and y0 <= rows.min() and rows.max() <= y1
    assert box_around_disc((2.0, 3.0), (5.0, 4.0), shape=(50, 60)) == (0.0, 0.0, 7.0, 7.0)
    tiny = disc_mask((10, 10), (4.4, 6.6), 0.1)
    assert tiny.sum() == 1 and tiny[7, 4]
    np.testing.assert_allclose(parse_box("1.00 2.50 3.00 4.25"), [1, 2.5, 3, 4.25])
    with pytest.raises(ValueError, match="four numbers"):
        parse_box("1 2 3")


def test_nodule_slices_by_hand():
    from lungkit.data.volumes import Volume, index_to_world

    volume = Volume(np.zeros((20, 40, 50), np.int16), spacing=(0.5, 0.5, 2.0), origin=(10.0, -20.0, -100.0))
    centre = index_to_world(volume, (20.3, 15.6, 9.4))
    records = nodule_slices(volume, centre, 8.0)
    # slab rule: r = 8 / 2 / 2 = 2 slices, |k - 9.4| < 2.5 -> 7..11
    assert [r.z_index for r in records] == [7, 8, 9, 10, 11]
    middle = records[2]
    assert middle.centre_xy == pytest.approx((20.3, 15.6)) and middle.centre_z_index == pytest.approx(9.4)
    # slice 9 is 0.8 mm from the centre plane: inside its 2 mm slab, so the full 4 mm radius = 8 px
    assert middle.section_diameter_mm == pytest.approx(8.0)
    assert middle.box == pytest.approx((12.3, 7.6, 28.3, 23.6))
    # slice 11: 3.2 mm away, nearest slab point 2.2 mm: radius sqrt(16 - 4.84) = 3.34 mm = 6.68 px
    assert records[4].section_diameter_mm == pytest.approx(2 * np.sqrt(16 - 2.2**2))
    assert abs(records[4].mask.sum() - np.pi * (np.sqrt(16 - 2.2**2) / 0.5) ** 2) < 0.1 * records[4].mask.sum()
    assert records[4].box == pytest.approx(
        (20.3 - 2 * np.sqrt(16 - 2.2**2), 15.6 - 2 * np.sqrt(16 - 2.2**2), 20.3 + 2 * np.sqrt(16 - 2.2**2),
         15.6 + 2 * np.sqrt(16 - 2.2**2))
    )
    assert all(r.mask_source == "disc_from_diameter" for r in records)
    # box_size="nodule": the full-diameter box on every slice
    for record in nodule_slices(volume, centre, 8.0, box_size="nodule"):
        assert record.box == pytest.approx((12.3, 7.6, 28.3, 23.6))
    # with a label volume: the label value under the centre, near the nodule only
    label_array = np.zeros_like(volume.array, dtype=np.uint8)
    label_array[9, 14:18, 19:23] = 3
    label_array[9, 30:35, 40:45] = 5  # another object on the same slice
    label = Volume(label_array, volume.spacing, volume.origin)
    from_label = nodule_slices(volume, centre, 8.0, label=label)
    assert from_label[2].mask.sum() == 16 and from_label[0].mask.sum() == 0
    assert from_label[2].mask_source == "label_volume"
    boxed = nodule_slices(volume, centre, 8.0, label=label, box_size="mask")
    assert boxed[2].box == (19.0, 14.0, 22.0, 17.0)  # first / last pixel centres of the label square
    assert boxed[0].box == pytest.approx(records[0].box)  # empty mask: the disc's box
    # outside the volume: nothing
    assert nodule_slices(volume, index_to_world(volume, (60.0, 10.0, 5.0)), 8.0) == []


def test_crops_are_centred_and_padded():
    volume = np.arange(3 * 20 * 30, dtype=np.int16).reshape(3, 20, 30)
    crops = extract_nodule_crops(volume, [(1, 10, 15), (2.4, 0.2, 28.6)], crop_size=8)
    assert crops.shape == (2, 8, 8) and crops.dtype == np.int16
    assert crops[0, 4, 4] == volume[1, 10, 15]
    np.testing.assert_array_equal(crops[0], volume[1, 6:14, 11:19])
    # centre rounds to slice 2, row 0, column 29 (the last): rows above 0 and columns past 29 are padding
    assert crops[1, 4, 4] == volume[2, 0, 29]
    np.testing.assert_array_equal(crops[1, 4:, :5], volume[2, 0:4, 25:30])
    assert np.all(crops[1, :4] == -1024) and np.all(crops[1, :, 5:] == -1024)
    flat = extract_nodule_crops(volume[0].astype(np.float32), [(10, 15)], crop_size=5, fill_value=np.nan)
    assert flat.shape == (1, 5, 5) and flat[0, 2, 2] == volume[0, 10, 15]
    with pytest.raises(ValueError, match="outside the volume"):
        extract_nodule_crops(volume, [(5, 1, 1)], crop_size=4)


# ----------------------------------------------------------------------------------------------- phantom


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "luna16"
    return write_phantom_luna16(root, "smoke", n_volumes=3, seed=7, depth=40, side=96)


def test_phantom_layout_and_geometry(phantom_root):
    series = find_luna16_series(phantom_root)
    assert len(series) == 3
    annotations = read_annotations(phantom_root / "annotations.csv")
    candidates = read_candidates(phantom_root / "candidates.csv")
    malignancy = read_malignancy(phantom_root / "malignancy.csv")
    assert set(annotations["seriesuid"]) == set(series)
    assert set(candidates["class"]) == {0, 1}
    assert len(malignancy) == len(annotations)
    for uid, path in series.items():
        image, label = read_volume_with_label(path, phantom_root / "labels" / f"{uid}.nrrd")
        assert image.array.dtype == np.int16
        assert image.spacing[2] == 2.5 and image.spacing[0] != 1.0 and min(map(abs, image.origin)) > 0
        for nodule in annotations[annotations["seriesuid"] == uid].itertuples():
            centre = nearest_voxel_zyx(world_to_index(image, (nodule.coordX, nodule.coordY, nodule.coordZ)))
            assert label.array[centre] == nodule.nodule_index + 1  # the annotated centre is inside its nodule
            assert image.array[centre] > -700  # nodule, not lung
            # the label's in-plane extent through the centre matches the annotated diameter (within 2 voxels;
            # spiculated ones reach further)
            row = label.array[centre[0], centre[1]] == nodule.nodule_index + 1
            width_mm = row.sum() * image.spacing[0]
            assert width_mm >= nodule.diameter_mm - 2 * image.spacing[0]
    scores = malignancy.merge(pd.read_csv(phantom_root / "malignancy.csv"), on=["seriesuid", "nodule_index"])
    for record in scores.itertuples():
        assert record.malignancy_x == malignancy_proxy(record.diameter_mm, bool(record.spiculated))


def test_phantom_is_seeded(phantom_root, tmp_path):
    again = write_phantom_luna16(tmp_path / "again", "smoke", n_volumes=1, seed=7, depth=40, side=96)
    first_rows = pd.read_csv(phantom_root / "annotations.csv")
    second_rows = pd.read_csv(again / "annotations.csv")
    uid = second_rows["seriesuid"].iloc[0]
    pd.testing.assert_frame_equal(
        first_rows[first_rows["seriesuid"] == uid].reset_index(drop=True), second_rows.reset_index(drop=True)
    )
    for name in (f"subset0/{uid}.mhd", f"subset0/{uid}.raw", f"labels/{uid}.nrrd"):
        assert (again / name).read_bytes() == (phantom_root / name).read_bytes()  # byte-identical
    assert write_phantom_luna16(again, "smoke", n_volumes=5, seed=1) == again  # complete: reused, not rewritten
    assert len(find_luna16_series(again)) == 1
    foreign = tmp_path / "real_luna16"
    foreign.mkdir()
    (foreign / "annotations.csv").write_text("precious\n")
    with pytest.raises(FileExistsError, match="not a lungkit phantom folder"):
        write_phantom_luna16(foreign, "smoke", n_volumes=1, overwrite=True)
    assert (foreign / "annotations.csv").read_text() == "precious\n"
    with pytest.raises(ValueError, match="its own folder"):
        convert_luna16_to_kit(again, again)


def malignancy_table_with_shape(root):
    return pd.read_csv(root / "malignancy.csv")[["seriesuid", "nodule_index", "spiculated"]]


def test_phantom_export_to_kit(phantom_root, tmp_path):
    manifest = convert_luna16_to_kit(phantom_root, tmp_path / "kit", spacing_mm=1.0, split_fractions=(1 / 3,) * 3)
    pd.testing.assert_frame_equal(manifest, kit_dataset.read_manifest(tmp_path / "kit"))
    assert list(manifest.columns) == kit_dataset.MANIFEST_COLUMNS + EXTRA_MANIFEST_COLUMNS
    assert (manifest["mask_source"] == "disc_from_diameter").all()
    assert manifest.groupby("seriesuid")["split"].nunique().max() == 1  # a patient never crosses splits
    assert set(manifest["split"]) == {"train", "val", "test"}
    annotations = read_annotations(phantom_root / "annotations.csv")
    malignancy = read_malignancy(phantom_root / "malignancy.csv")
    assert manifest.groupby(["seriesuid", "nodule_index"]).ngroups == len(annotations)

    series = find_luna16_series(phantom_root)
    resampled = {uid: resample_volume(read_volume(path), (1.0, 1.0, None)) for uid, path in series.items()}
    for row in manifest.itertuples():
        volume = resampled[row.seriesuid]
        nodule = annotations.set_index(["seriesuid", "nodule_index"]).loc[(row.seriesuid, row.nodule_index)]
        # slices are exactly the span rule applied to the centre's z index
        centre = world_to_index(volume, (nodule.coordX, nodule.coordY, nodule.coordZ))
        spanned = nodule_slice_indices(centre[2], nodule.diameter_mm, 2.5, volume.array.shape[0])
        assert row.z_index in spanned
        # the image PNG is the resampled slice, HU rounded
        hu = kit_dataset.png16_to_hu(np.array(Image.open(row.image_path)))
        np.testing.assert_array_equal(hu, np.rint(volume.array[row.z_index]))
        mask = np.array(Image.open(row.mask_path)) > 0
        assert mask.sum() == row.tumour_area_px > 0
        # the prompt box encloses the disc (pixel centres), and the disc is the sphere's cut
        x0, y0, x1, y1 = parse_box(row.prompt_box)
        rows, cols = np.nonzero(mask)
        assert x0 - 1e-3 <= cols.min() and cols.max() <= x1 + 1e-3
        assert y0 - 1e-3 <= rows.min() and rows.max() <= y1 + 1e-3
        offset = max(abs(row.z_index - centre[2]) * 2.5 - 1.25, 0)  # nearest point of the 2.5 mm slab
        expected_area = math.pi * max(nodule.diameter_mm**2 / 4 - offset**2, 0)
        assert abs(row.tumour_area_px - expected_area) <= max(0.2 * expected_area, 6)
        score = malignancy.set_index(["seriesuid", "nodule_index"]).loc[(row.seriesuid, row.nodule_index), "malignancy"]
        assert row.malignancy == score
        expected_label = malignancy_to_label(score)
        assert (pd.isna(row.label_binary) if expected_label is None else row.label_binary == expected_label)
    per_nodule = manifest.groupby(["seriesuid", "nodule_index"])["z_index"].apply(list)
    for (uid, index), slices in per_nodule.items():
        nodule = annotations[(annotations.seriesuid == uid) & (annotations.nodule_index == index)].iloc[0]
        centre = world_to_index(resampled[uid], (nodule.coordX, nodule.coordY, nodule.coordZ))
        assert slices == nodule_slice_indices(centre[2], nodule.diameter_mm, 2.5, 40).tolist()

    # masks from the label volumes instead of discs: same rows, overlapping masks
    from_labels = convert_luna16_to_kit(phantom_root, tmp_path / "kit_labels", label_dir=phantom_root / "labels")
    assert (from_labels["mask_source"] == "label_volume").all()
    assert from_labels["id"].tolist() == manifest["id"].tolist()
    # The phantom rasterised its labels on its own voxel grid; the discs come from world coordinates read back
    # from disk and a resampled grid. For plain spheres they must agree on every slice.
    spheres = manifest.merge(malignancy_table_with_shape(phantom_root), on=["seriesuid", "nodule_index"])
    plain = (spheres["spiculated"] == 0).to_numpy()
    assert plain.sum() >= 3
    dice = []
    for disc_path, label_path in zip(manifest.loc[plain, "mask_path"], from_labels.loc[plain, "mask_path"]):
        disc, label = np.array(Image.open(disc_path)) > 0, np.array(Image.open(label_path)) > 0
        dice.append(2 * (disc & label).sum() / (disc.sum() + label.sum()))
    assert np.median(dice) > 0.9 and min(dice) > 0.5


def test_export_is_atomic_and_reused(phantom_root, tmp_path):
    out = tmp_path / "kit"
    manifest = convert_luna16_to_kit(phantom_root, out, spacing_mm=None, slice_rule="paper_fig6", box_size="nodule")
    assert kit_dataset.is_complete(out)
    assert not list(out.rglob(".*tmp*")) and not list(tmp_path.glob("*.partial"))
    assert manifest["pixel_spacing_mm"].iloc[0] != 1.0  # spacing kept
    assert (manifest["slice_rule"] == "paper_fig6").all()
    # box_size="nodule": one full-diameter box per nodule on every slice
    assert manifest.groupby(["seriesuid", "nodule_index"])["prompt_box"].nunique().max() == 1
    before = (out / kit_dataset.MANIFEST_NAME).stat().st_mtime_ns
    assert len(convert_luna16_to_kit(phantom_root, out)) == len(manifest)  # complete: left alone
    assert (out / kit_dataset.MANIFEST_NAME).stat().st_mtime_ns == before
    # an unfinished folder (no COMPLETE) is refused by readers and not silently replaced
    (out / kit_dataset.COMPLETE_MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        kit_dataset.read_manifest(out)
    with pytest.raises(FileExistsError, match="not a finished kit dataset"):
        convert_luna16_to_kit(phantom_root, out, spacing_mm=3.0)
    again = convert_luna16_to_kit(phantom_root, out, spacing_mm=3.0, overwrite=True)
    assert (again["pixel_spacing_mm"] == 3.0).all() and kit_dataset.is_complete(out)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.old-*"))


def test_missing_series_are_reported(phantom_root, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(phantom_root, root)
    uid = sorted(find_luna16_series(root))[0]
    (root / "subset0" / f"{uid}.mhd").unlink()
    manifest = convert_luna16_to_kit(root, tmp_path / "kit", spacing_mm=2.0)
    info = json.loads((tmp_path / "kit" / "dataset.json").read_text())
    assert info["series_missing"] == [uid] and info["data_source"] == "luna16"
    assert uid not in set(manifest["seriesuid"])
    assert set(info["series_split"]) == set(manifest["seriesuid"])


# ----------------------------------------------------------------------------------------------- real sample


def test_luna16_sample_centre_and_slices(luna16_sample, pyradiomics_sample, tmp_path):
    series = find_luna16_series(luna16_sample)
    assert list(series) == [SAMPLE_UID]
    nodule = read_annotations(luna16_sample / "annotations.csv").iloc[0]
    centre_world = (nodule.coordX, nodule.coordY, nodule.coordZ)
    volume = read_volume(series[SAMPLE_UID])
    _, label = read_volume_with_label(pyradiomics_sample / "lung1_image.nrrd", pyradiomics_sample / "lung1_label.nrrd")
    assert volume.array.shape == label.array.shape

    import SimpleITK as sitk

    reference = sitk.ReadImage(str(series[SAMPLE_UID])).TransformPhysicalPointToContinuousIndex(centre_world)
    centre = world_to_index(volume, centre_world)
    np.testing.assert_allclose(centre, reference, atol=1e-9)
    assert label.array[nearest_voxel_zyx(centre)] == 1  # the annotated centre lies in the real tumour label

    # the slices the rule picks are exactly the slices the real label occupies
    label_slices = np.nonzero(label.array.any(axis=(1, 2)))[0].tolist()
    depth = volume.array.shape[0]
    assert nodule_slice_indices(centre[2], nodule.diameter_mm, volume.spacing[2], depth).tolist() == label_slices

    # resampling to 1 mm keeps the nodule's physical size within one voxel
    label_1mm = resample_volume(label, 1.0, interpolation="nearest")
    for axis, spacing_before in ((2, label.spacing[0]), (1, label.spacing[1]), (0, label.spacing[2])):
        other = tuple(a for a in range(3) if a != axis)
        before = np.nonzero(label.array.any(axis=other))[0]
        after = np.nonzero(label_1mm.array.any(axis=other))[0]
        assert abs((np.ptp(after) + 1) * 1.0 - (np.ptp(before) + 1) * spacing_before) <= 1.0

    # export with the real label as mask: three rows, on those slices, overlapping the disc from the diameter
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(pyradiomics_sample / "lung1_label.nrrd", labels / f"{SAMPLE_UID}.nrrd")
    with_label = convert_luna16_to_kit(luna16_sample, tmp_path / "a", label_dir=labels)
    with_disc = convert_luna16_to_kit(luna16_sample, tmp_path / "b")
    assert with_label["z_index"].tolist() == with_disc["z_index"].tolist() == label_slices
    assert (with_label["width"] == 292).all()  # 512 x 0.5703 mm -> 292 px at 1 mm
    middle = with_disc["z_index"].tolist().index(33)
    disc = np.array(Image.open(with_disc["mask_path"].iloc[middle])) > 0
    real = np.array(Image.open(with_label["mask_path"].iloc[middle])) > 0
    assert 2 * (disc & real).sum() / (disc.sum() + real.sum()) > 0.7
    assert abs(with_label["equivalent_diameter_mm"].iloc[middle] - nodule.diameter_mm) < 1.0
