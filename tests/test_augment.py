"""Paper 001 augmentation: image and mask stay aligned, HU-aware intensity changes, offline expansion of train."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from kit_fixtures import read_binary, read_hu, write_kit_dataset

from lungkit import augment as aug
from lungkit import figures
from lungkit import preprocess as pp
from lungkit.data import kit_dataset

SIZE = 48


def square_slice(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Air everywhere, a +300 HU rectangle exactly where the mask is."""
    hu = np.full((size, size), -1000.0, np.float32)
    mask = np.zeros((size, size), np.uint8)
    mask[int(0.34 * size) : int(0.6 * size), int(0.4 * size) : int(0.7 * size)] = 1
    hu[mask == 1] = 300.0
    return hu, mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def test_image_and_mask_stay_aligned_and_mask_binary():
    hu, mask = square_slice()
    # Every geometric transform on, so each seed exercises rotation and elastic warping together.
    compose = aug.build_train_augmentation(96, seed=0, p_rotate=1.0, p_elastic=1.0, p_brightness_contrast=1.0)
    for seed in range(25):
        out_hu, out_mask, _ = aug.apply_augmentation(compose, hu, mask, seed)
        assert out_hu.shape == out_mask.shape == (96, 96)
        assert out_mask.dtype == np.uint8 and set(np.unique(out_mask)) <= {0, 1}
        assert out_mask.sum() > 0
        # Brightness / contrast moves both levels; threshold halfway between background and rectangle.
        bright = out_hu > (out_hu.min() + out_hu.max()) / 2
        # Bilinear image vs nearest-neighbour mask differ by boundary pixels only (IoU about 0.96); a 2-pixel
        # misalignment would drop the IoU to about 0.87.
        assert iou(bright, out_mask == 1) > 0.93, f"seed {seed}: image and mask drifted apart"


def test_lung_mask_is_warped_with_the_tumour_mask():
    hu, mask = square_slice()
    compose = aug.build_train_augmentation(SIZE, seed=1, p_rotate=1.0, p_elastic=1.0)
    for seed in range(5):
        out_hu, out_mask, out_lung = aug.apply_augmentation(compose, hu, mask, seed, lung_mask=mask)
        np.testing.assert_array_equal(out_lung, out_mask)


def test_flips_are_drawn_independently():
    # albumentations 2.0.8 gives every transform of A.Compose(seed=s) the same seed, which makes the two flips
    # fire together; with our per-transform seeds all four corners must be reached.
    hu = np.full((32, 32), -1000.0, np.float32)
    mask = np.zeros((32, 32), np.uint8)
    mask[:8, :8] = 1
    compose = aug.build_train_augmentation(32, seed=0, p_rotate=0, p_elastic=0, p_brightness_contrast=0)
    corners = set()
    for seed in range(40):
        _, out_mask, _ = aug.apply_augmentation(compose, hu, mask, seed)
        corners.add((bool(out_mask[0].any()), bool(out_mask[:, 0].any())))
    assert corners == {(True, True), (True, False), (False, True), (False, False)}


def test_rotation_fills_with_air_and_stays_within_limit():
    hu = np.full((40, 40), 40.0, np.float32)
    mask = np.zeros((40, 40), np.uint8)
    compose = aug.build_train_augmentation(40, seed=0, p_rotate=1.0, p_elastic=0, p_brightness_contrast=0)
    out_hu, _, _ = aug.apply_augmentation(compose, hu, mask, seed=3)
    assert out_hu[0, 0] == pytest.approx(aug.AIR_HU)  # an uncovered corner
    assert out_hu[20, 20] == pytest.approx(40.0)
    rotation = compose.transforms[3]
    assert tuple(rotation.limit) == (-30.0, 30.0)


def test_hu_brightness_contrast_formula_without_clipping():
    transform = aug.HUBrightnessContrast(p=1.0)
    hu = np.array([[-2048.0, -1000.0], [40.0, 1500.0]], np.float32)
    out = transform.apply(hu, alpha=1.1, beta=0.1)
    # Hand-computed: (HU + 1000) * 1.1 + 0.1 * 1400 - 1000; air moves by the brightness step only.
    expected = np.array([[-2012.8, -860.0], [284.0, 1890.0]], np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_same_seed_same_result_different_seed_differs():
    hu, mask = square_slice()
    first = aug.apply_augmentation(aug.build_train_augmentation(SIZE, 0), hu, mask, seed=7)
    again = aug.apply_augmentation(aug.build_train_augmentation(SIZE, 99), hu, mask, seed=7)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    compose = aug.build_train_augmentation(SIZE, 0)
    outputs = {aug.apply_augmentation(compose, hu, mask, s)[0].tobytes() for s in range(8)}
    assert len(outputs) > 4


def test_unknown_setting_is_rejected():
    with pytest.raises(ValueError, match="unknown augmentation settings"):
        aug.build_train_augmentation(64, p_rotation=1.0)


def test_tf_augment_fn_is_deterministic_under_parallel_map():
    hu, mask = square_slice()
    images = np.stack([hu, np.roll(hu, 5, axis=1), np.roll(hu, -4, axis=0)])[..., None]
    masks = np.stack([mask, np.roll(mask, 5, axis=1), np.roll(mask, -4, axis=0)])[..., None]
    element_seeds = np.array([11, -5, 2**40], np.int64)
    augment = aug.tf_augment_fn(SIZE, seed=3)

    def run(parallel):
        dataset = tf.data.Dataset.from_tensor_slices((images, masks, element_seeds)).repeat(4)
        return list(dataset.map(augment, num_parallel_calls=parallel).as_numpy_iterator())

    sequential, parallel = run(None), run(4)
    assert sequential[0][0].shape == (SIZE, SIZE, 1) and sequential[0][1].dtype == np.uint8
    for (image_a, mask_a), (image_b, mask_b) in zip(sequential, parallel):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)
    # The tf.data function is the numpy augmentation with seed derive_seed(seed, element_seed).
    compose = aug.build_train_augmentation(SIZE, seed=3)
    expected, expected_mask, _ = aug.apply_augmentation(compose, hu, mask, aug.derive_seed(3, 11))
    np.testing.assert_array_equal(sequential[0][0][..., 0], expected)
    np.testing.assert_array_equal(sequential[0][1][..., 0], expected_mask)


# ---- offline expansion of the train split -------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_kit_dataset(tmp_path_factory.mktemp("source"), size=64, empty_mask_ids=("train_002",))


@pytest.fixture(scope="module")
def expanded(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("expanded") / "augmented"
    return out, aug.expand_training_split(source, out, target_count=17, image_size=32, seed=5)


def _file_bytes(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_expansion_counts_and_split_hygiene(source, expanded):
    out, manifest = expanded
    original = kit_dataset.read_manifest(source)
    counts = manifest["split"].value_counts()
    assert counts["train"] == 17 and counts["val"] == 2 and counts["test"] == 3
    augmented = manifest[manifest["augmented_from"] != ""]
    assert len(augmented) == 17 - 6 and set(augmented["split"]) == {"train"}
    # Copies cycle through the originals evenly and only through train originals.
    per_original = augmented["augmented_from"].value_counts()
    assert set(per_original.index) <= set(original.loc[original["split"] == "train", "id"])
    assert per_original.max() - per_original.min() <= 1 and len(per_original) == 6
    assert manifest.loc[manifest["augmented_from"] == "", "augmentation_seed"].isna().all()
    assert augmented["augmentation_seed"].notna().all() and augmented["augmentation_seed"].is_unique
    assert kit_dataset.is_complete(out) and manifest["id"].is_unique


def test_val_and_test_are_only_resized(source, expanded):
    out, manifest = expanded
    original = kit_dataset.read_manifest(source).set_index("id")
    for row in manifest[manifest["split"] != "train"].itertuples():
        source_row = original.loc[row.id]
        resized_hu = pp.resize_image(read_hu(source_row.image_path), 32)
        expected_hu = kit_dataset.png16_to_hu(kit_dataset.hu_to_png16(resized_hu))
        np.testing.assert_array_equal(read_hu(row.image_path), expected_hu)
        np.testing.assert_array_equal(read_binary(row.mask_path), pp.resize_mask(read_binary(source_row.mask_path), 32))
        np.testing.assert_array_equal(read_binary(row.lung_path), pp.resize_mask(read_binary(source_row.lung_path), 32))


def test_geometry_columns_recomputed(expanded):
    _, manifest = expanded
    assert (manifest["height"] == 32).all() and (manifest["width"] == 32).all()
    np.testing.assert_allclose(manifest["pixel_spacing_mm"], 0.7 * 64 / 32)
    for row in manifest.itertuples():
        mask = read_binary(row.mask_path)
        assert mask.shape == (32, 32) and row.tumour_area_px == mask.sum()
        assert row.equivalent_diameter_mm == pytest.approx(np.sqrt(4 * mask.sum() / np.pi) * 1.4)
        if mask.any():
            ys, xs = np.nonzero(mask)
            box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            assert (row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1) == box
        else:
            assert (row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1) == (-1, -1, -1, -1)
    # The empty-mask original and its copies stay empty.
    assert (manifest.loc[manifest["id"].str.startswith("train_002"), "tumour_area_px"] == 0).all()


def test_expansion_is_reproducible_seeded_and_resumable(source, expanded, tmp_path):
    out, manifest = expanded
    reference = _file_bytes(out)
    again = tmp_path / "again"
    aug.expand_training_split(source, again, target_count=17, image_size=32, seed=5)
    assert _file_bytes(again) == reference

    other_seed = tmp_path / "other_seed"
    aug.expand_training_split(source, other_seed, target_count=17, image_size=32, seed=6)
    copy_path = "images/train_000_aug001.png"
    assert _file_bytes(other_seed)[copy_path] != reference[copy_path]

    # Simulate an interrupted run: no marker, no manifest, some images missing, a stale temporary file.
    (again / kit_dataset.COMPLETE_MARKER).unlink()
    (again / kit_dataset.MANIFEST_NAME).unlink()
    for name in ("images/train_001_aug001.png", "masks/test_002.png", "lungs/val_000.png"):
        (again / name).unlink()
    (again / "images" / ".train_003.png.12345.tmp").write_bytes(b"partial")
    kept = again / "images" / "train_004.png"
    kept_mtime = os.stat(kept).st_mtime_ns
    resumed = aug.expand_training_split(source, again, target_count=17, image_size=32, seed=5)
    assert _file_bytes(again) == reference
    assert os.stat(kept).st_mtime_ns == kept_mtime  # finished files are not rewritten
    pd.testing.assert_frame_equal(
        resumed.drop(columns=["image_path", "mask_path", "lung_path"]),
        manifest.drop(columns=["image_path", "mask_path", "lung_path"]),
    )

    # A finished folder with the same settings is returned as is; other settings are refused.
    aug.expand_training_split(source, again, target_count=17, image_size=32, seed=5)
    with pytest.raises(ValueError, match="target_count"):
        aug.expand_training_split(source, again, target_count=20, image_size=32, seed=5)


def test_expansion_rejects_bad_requests(source, tmp_path):
    with pytest.raises(ValueError, match="below the 6 original train rows"):
        aug.expand_training_split(source, tmp_path / "small", target_count=5, image_size=32)
    with pytest.raises(ValueError, match="must differ"):
        aug.expand_training_split(source, source, target_count=10, image_size=32)


def test_augmentation_preview_grid(source):
    figure = figures.plot_slice_augmentation_preview(source, n=2, seed=0, image_size=32, versions=3)
    try:
        assert len(figure.axes) == 2 * 4
        assert figure.axes[0].get_title().endswith("original")
    finally:
        matplotlib.pyplot.close(figure)


def test_pet_moves_with_the_ct_geometry_and_keeps_its_suv():
    """Paper 000's second channel: the same flips, rotation and warp as the CT, no HU intensity change, SUV 0 fill."""
    hu, mask = square_slice()
    pet = mask.astype(np.float32) * 7.5 + 0.5  # SUV 8 on the tumour, 0.5 elsewhere
    compose = aug.build_train_augmentation(128, seed=0, p_hflip=0.5, p_vflip=0.5, p_rotate=1.0, p_elastic=1.0,
                                           p_brightness_contrast=1.0)
    for seed in range(6):
        out_hu, out_mask, _, out_pet = aug.apply_augmentation(compose, hu, mask, seed, pet=pet)
        # nearest sampling and fill 0: only the input SUVs and the border fill; never a brightness-shifted value
        assert set(np.unique(out_pet)) <= {0.0, 0.5, 8.0}
        # the PET's hot spot is exactly the warped tumour mask: the same geometry, pixel for pixel
        np.testing.assert_array_equal(out_pet == 8.0, out_mask == 1)
        # the CT still gets its own changes (the same call without PET gives the same CT and mask)
        alone_hu, alone_mask, _ = aug.apply_augmentation(compose, hu, mask, seed)
        np.testing.assert_array_equal(alone_hu, out_hu)
        np.testing.assert_array_equal(alone_mask, out_mask)
    with pytest.raises(ValueError, match="PET shape"):
        aug.apply_augmentation(compose, hu, mask, 0, pet=pet[:64])
    with pytest.raises(ValueError, match="PET slice contains NaN"):
        aug.apply_augmentation(compose, hu, mask, 0, pet=np.where(mask == 1, np.nan, pet))


def test_tf_augment_fn_carries_a_pet_channel():
    hu, mask = square_slice(64)
    image = np.stack([hu, mask * 4.0 + 1.0], axis=-1).astype(np.float32)
    augment = aug.tf_augment_fn(64, seed=3)
    out_image, out_mask = augment(tf.constant(image), tf.constant(mask[..., None]), tf.constant(11, tf.int64))
    assert out_image.shape == (64, 64, 2) and out_mask.shape == (64, 64, 1)
    np.testing.assert_array_equal(out_image.numpy()[..., 1] == 5.0, out_mask.numpy()[..., 0] == 1)
