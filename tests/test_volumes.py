"""Volume reading, world <-> voxel geometry, resampling and min-max scaling (lungkit.data.volumes)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lungkit.data.volumes import (
    Volume,
    index_to_world,
    minmax_to_255,
    nearest_voxel_zyx,
    read_volume,
    read_volume_with_label,
    resample_volume,
    resampled_size,
    world_to_index,
    write_volume,
)


def _rotation(angle_deg: float, axis: str) -> np.ndarray:
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


@pytest.fixture
def oblique_volume() -> Volume:
    """Anisotropic, rotated and flipped grid with a non-zero origin: every term of the geometry matters."""
    rng = np.random.default_rng(0)
    direction = _rotation(30, "z") @ _rotation(-20, "x") @ np.diag([1.0, -1.0, 1.0])
    array = rng.integers(-1000, 400, size=(7, 9, 11)).astype(np.int16)
    return Volume(array, spacing=(0.7, 0.8, 2.5), origin=(-120.5, 33.25, -410.0), direction=direction)


@pytest.mark.parametrize("suffix", [".mhd", ".nrrd", ".nii.gz"])
def test_round_trip_keeps_array_and_geometry(tmp_path, oblique_volume, suffix):
    path = write_volume(oblique_volume, tmp_path / f"ct{suffix}")
    loaded = read_volume(path)
    np.testing.assert_array_equal(loaded.array, oblique_volume.array)
    assert loaded.array.dtype == np.int16
    np.testing.assert_allclose(loaded.spacing, oblique_volume.spacing, atol=1e-5)
    np.testing.assert_allclose(loaded.origin, oblique_volume.origin, atol=1e-4)
    np.testing.assert_allclose(loaded.direction, oblique_volume.direction, atol=1e-5)
    assert loaded.source_path == str(path)
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_world_to_index_matches_simpleitk(oblique_volume):
    image = oblique_volume.to_sitk()
    points = np.random.default_rng(1).uniform(-200, 100, size=(20, 3))
    ours = world_to_index(oblique_volume, points)
    theirs = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(world_to_index(oblique_volume, points[0]), theirs[0], atol=1e-9)
    np.testing.assert_allclose(index_to_world(oblique_volume, ours), points, atol=1e-9)
    # and the forward direction against SimpleITK as well
    index = [2.5, 1.25, 3.0]
    np.testing.assert_allclose(
        index_to_world(oblique_volume, index), image.TransformContinuousIndexToPhysicalPoint(index), atol=1e-9
    )


def test_axis_aligned_case_is_paper_eq6():
    volume = Volume(np.zeros((4, 4, 4), np.int16), spacing=(0.5, 0.5, 2.0), origin=(-100.0, -50.0, -300.0))
    world = (-90.0, -45.5, -293.0)
    expected = [(-90 + 100) / 0.5, (-45.5 + 50) / 0.5, (-293 + 300) / 2.0]  # (world - origin) / spacing
    np.testing.assert_allclose(world_to_index(volume, world), expected)
    assert nearest_voxel_zyx(expected) == (4, 9, 20)  # 3.5 -> 4: half rounds up
    assert nearest_voxel_zyx([2.5, -0.4, 0.49]) == (0, 0, 3)


def test_resampled_size_is_eqs_1_to_4():
    # H' = H x o/d, rounded: the LUNA16 sample (512 x 512 x 48 at 0.5703125 x 0.5703125 x 5 mm) at 1 mm.
    assert resampled_size((512, 512, 48), (0.5703125, 0.5703125, 5.0), (1.0, 1.0, 1.0)) == (292, 292, 240)
    assert resampled_size((100, 10, 3), (0.7, 1.0, 2.5), (1.0, 3.0, 1.0)) == (70, 3, 8)  # 7.5 rounds up to 8
    assert resampled_size((1, 1, 1), (0.1, 0.1, 0.1), (5.0, 5.0, 5.0)) == (1, 1, 1)


def test_linear_resampling_reproduces_a_linear_field(oblique_volume):
    """Linear interpolation of f(world) = a . world + b is exact; compare with f at the new voxel centres."""
    slope, offset = np.array([2.0, -1.0, 0.5]), 7.0
    depth, height, width = 12, 15, 18
    grid = Volume(np.zeros((depth, height, width), np.float32), (0.7, 0.8, 2.5), (-20.0, 10.0, -50.0),
                  direction=oblique_volume.direction)
    k, j, i = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    world = index_to_world(grid, np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    grid.array = (world @ slope + offset).reshape(depth, height, width).astype(np.float32)

    resampled = resample_volume(grid, (1.0, 1.0, 1.0))
    assert resampled.spacing == (1.0, 1.0, 1.0)
    assert resampled.origin == grid.origin
    np.testing.assert_allclose(resampled.direction, grid.direction)
    assert resampled.size_xyz == resampled_size(grid.size_xyz, grid.spacing, (1.0, 1.0, 1.0))
    # extent kept within one new voxel per axis
    assert np.all(np.abs(np.subtract(resampled.extent_mm, grid.extent_mm)) <= 1.0)
    # interior voxels (inside the old grid) carry exactly f at their world position
    k, j, i = np.meshgrid(*(np.arange(n) for n in resampled.array.shape), indexing="ij")
    index_new = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    world_new = index_to_world(resampled, index_new)
    index_old = world_to_index(grid, world_new)
    inside = np.all((index_old >= 0) & (index_old <= np.array(grid.size_xyz) - 1), axis=1)
    assert inside.sum() > 100
    np.testing.assert_allclose(resampled.array.ravel()[inside], (world_new @ slope + offset)[inside], atol=1e-3)
    # voxels beyond the old grid's far edge (more than half a voxel past the last centre) get air
    beyond = np.any(index_old > np.array(grid.size_xyz) - 0.5 + 1e-6, axis=1)
    assert beyond.sum() > 0
    assert np.all(resampled.array.ravel()[beyond] == -1024)


def test_nearest_resampling_keeps_labels():
    label = np.zeros((10, 20, 20), np.uint8)
    label[3:7, 5:15, 8:12] = 2
    volume = Volume(label, (0.7, 0.7, 2.5), (0.0, 0.0, 0.0))
    resampled = resample_volume(volume, (1.0, 1.0, None), interpolation="nearest")
    assert resampled.array.dtype == np.uint8
    assert set(np.unique(resampled.array)) == {0, 2}
    assert resampled.spacing == (1.0, 1.0, 2.5)
    assert resampled.array.shape == (10, 14, 14)
    # 10 px x 0.7 mm = 7 mm along y, 4 px x 0.7 mm = 2.8 mm along x: kept within one new voxel
    rows = np.nonzero(resampled.array[5].any(axis=1))[0]
    cols = np.nonzero(resampled.array[5].any(axis=0))[0]
    assert abs(len(rows) * 1.0 - 7.0) <= 1.0 and abs(len(cols) * 1.0 - 2.8) <= 1.0
    with pytest.raises(ValueError, match="interpolation"):
        resample_volume(volume, 1.0, interpolation="cubic")


def test_minmax_is_eq5():
    values = np.array([[-1000.0, 0.0], [500.0, 1000.0]])
    np.testing.assert_allclose(minmax_to_255(values), 255 * (values + 1000) / 2000)
    windowed = minmax_to_255(values, hu_window=(-500, 500))  # clip, then min-max of the clipped image
    np.testing.assert_allclose(windowed, [[0, 127.5], [255, 255]])
    assert minmax_to_255(np.full((3, 3), 42.0)).max() == 0
    with pytest.raises(ValueError, match="hu_window"):
        minmax_to_255(values, hu_window=(10, -10))


def test_missing_and_truncated_files_are_named(tmp_path, oblique_volume):
    with pytest.raises(FileNotFoundError, match="nothere.mhd"):
        read_volume(tmp_path / "nothere.mhd")
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "ct.png").write_bytes(b"x")
        read_volume(tmp_path / "ct.png")
    header = write_volume(oblique_volume, tmp_path / "ct.mhd")
    raw = tmp_path / "ct.raw"
    data = raw.read_bytes()
    raw.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ct\.raw: truncated.*needs 1386 bytes, the file has 693"):
        read_volume(header)
    raw.unlink()
    with pytest.raises(FileNotFoundError, match=r"ct\.raw.*ct\.mhd"):
        read_volume(header)
    (tmp_path / "garbage.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    with pytest.raises(ValueError, match="garbage.nrrd"):
        read_volume(tmp_path / "garbage.nrrd")


def test_label_geometry_is_checked(tmp_path, oblique_volume):
    image_path = write_volume(oblique_volume, tmp_path / "ct.nrrd")
    label = Volume((oblique_volume.array > 0).astype(np.uint8), oblique_volume.spacing, oblique_volume.origin,
                   oblique_volume.direction)
    label_path = write_volume(label, tmp_path / "label.nrrd")
    image, loaded = read_volume_with_label(image_path, label_path)
    assert loaded.array.dtype == np.uint8 and loaded.array.shape == image.array.shape

    shifted = Volume(label.array, label.spacing, (0.0, 0.0, 0.0), label.direction)
    with pytest.raises(ValueError, match=r"ct\.nrrd and .*shifted\.nrrd: different origin"):
        read_volume_with_label(image_path, write_volume(shifted, tmp_path / "shifted.nrrd"))
    small = Volume(label.array[:-1], label.spacing, label.origin, label.direction)
    with pytest.raises(ValueError, match="different sizes"):
        read_volume_with_label(image_path, write_volume(small, tmp_path / "small.nrrd"))


def test_pyradiomics_sample_through_generic_reader(pyradiomics_sample):
    image, label = read_volume_with_label(
        pyradiomics_sample / "lung1_image.nrrd", pyradiomics_sample / "lung1_label.nrrd"
    )
    assert image.array.shape == label.array.shape == (48, 512, 512)
    assert image.array.dtype == np.int16
    assert -1100 <= image.array.min() and image.array.max() <= 4000
    assert 100 < int(label.array.sum()) < 10_000
    assert all(0.3 < s < 6.0 for s in image.spacing)
    reference = sitk.ReadImage(str(pyradiomics_sample / "lung1_image.nrrd"))
    np.testing.assert_allclose(image.spacing, reference.GetSpacing())
    np.testing.assert_allclose(image.origin, reference.GetOrigin())
