"""Tiny kit datasets written straight to disk, for tests that must not depend on the readers.

``write_kit_dataset`` draws simple CT-like slices (air outside an elliptic body, two dark lungs, a round nodule in
one lung, padding values in the corners) and writes them in the kit format with the helpers of
:mod:`lungkit.data.kit_dataset`: 16-bit image PNGs, 0/255 mask and lung PNGs, ``manifest.csv`` and ``COMPLETE``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lungkit.data import kit_dataset


def synthetic_slice(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CT-like slice: (HU float32, tumour mask uint8 0/1, lung mask uint8 0/1), all ``size`` x ``size``."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2
    body = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.47 * size)) ** 2 <= 1
    lungs = np.zeros((size, size), bool)
    for side in (-1, 1):
        lungs |= ((yy - c) / (0.28 * size)) ** 2 + ((xx - c - side * 0.2 * size) / (0.13 * size)) ** 2 <= 1
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body] = 40.0
    hu[lungs] = -850.0
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    hu[:3, :3] = -2048.0  # scanner padding, outside the lung window
    radius = rng.uniform(0.04, 0.08) * size
    cy = c + rng.uniform(-0.1, 0.1) * size
    cx = c + rng.choice([-1, 1]) * 0.2 * size
    tumour = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & lungs
    hu[tumour] = 30.0 + rng.normal(0, 10, int(tumour.sum()))
    return np.rint(hu).astype(np.float32), tumour.astype(np.uint8), lungs.astype(np.uint8)


def write_kit_dataset(
    root: Path, counts: dict[str, int] | None = None, size: int = 64, seed: int = 0, empty_mask_ids: tuple = ()
) -> Path:
    """Write a finished kit dataset under ``root`` and return ``root``.

    Args:
        root: output folder (created).
        counts: rows per split, default ``{"train": 6, "val": 2, "test": 3}``.
        size: slice side in pixels.
        seed: seed of the synthetic slices.
        empty_mask_ids: ids whose tumour mask is left empty.
    """
    counts = counts or {"train": 6, "val": 2, "test": 3}
    rng = np.random.default_rng(seed)
    root = Path(root)
    for folder in (kit_dataset.IMAGE_DIR, kit_dataset.MASK_DIR, kit_dataset.LUNG_DIR):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    labels = kit_dataset.LUNGRADS_LABELS
    for split, count in counts.items():
        for index in range(count):
            slice_id = f"{split}_{index:03d}"
            hu, tumour, lungs = synthetic_slice(size, rng)
            if slice_id in empty_mask_ids:
                tumour[:] = 0
            paths = {
                "image_path": f"{kit_dataset.IMAGE_DIR}/{slice_id}.png",
                "mask_path": f"{kit_dataset.MASK_DIR}/{slice_id}.png",
                "lung_path": f"{kit_dataset.LUNG_DIR}/{slice_id}.png",
            }
            cv2.imwrite(str(root / paths["image_path"]), kit_dataset.hu_to_png16(hu))
            cv2.imwrite(str(root / paths["mask_path"]), tumour * 255)
            cv2.imwrite(str(root / paths["lung_path"]), lungs * 255)
            area = int(tumour.sum())
            ys, xs = np.nonzero(tumour)
            box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) if area else (-1, -1, -1, -1)
            rows.append(
                {
                    "id": slice_id,
                    "split": split,
                    "label1": labels[index % len(labels)],
                    "source_file": "synthetic",
                    "source_row": len(rows),
                    "height": size,
                    "width": size,
                    "pixel_spacing_mm": 0.7,
                    "tumour_area_px": area,
                    "equivalent_diameter_px": float(np.sqrt(4 * area / np.pi)),
                    "equivalent_diameter_mm": float(np.sqrt(4 * area / np.pi)) * 0.7,
                    "bbox_y0": box[0],
                    "bbox_x0": box[1],
                    "bbox_y1": box[2],
                    "bbox_x1": box[3],
                    **paths,
                }
            )
    pd.DataFrame(rows, columns=kit_dataset.MANIFEST_COLUMNS).to_csv(root / kit_dataset.MANIFEST_NAME, index=False)
    (root / kit_dataset.COMPLETE_MARKER).write_text("complete\n")
    return root


def read_hu(path) -> np.ndarray:
    """HU of a kit image PNG, read independently of lungkit's pipeline (OpenCV)."""
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored is not None and stored.dtype == np.uint16, path
    return kit_dataset.png16_to_hu(stored)


def read_binary(path) -> np.ndarray:
    """A kit mask PNG as uint8 0/1."""
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored is not None and stored.dtype == np.uint8, path
    return (stored > 0).astype(np.uint8)


def disc_slices(count: int, size: int, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` noisy images with one bright disc each, and the disc masks: float32 ``(count, size, size,
    channels)`` and ``(count, size, size, 1)``. The overfitting checks of the model tests train on these."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    masks = []
    for _ in range(count):
        radius = rng.uniform(size / 8, size / 4)
        centre_row, centre_col = rng.uniform(radius, size - radius, 2)
        masks.append((rows - centre_row) ** 2 + (cols - centre_col) ** 2 <= radius**2)
    masks = np.stack(masks)[..., None].astype("float32")
    images = masks + rng.normal(0.0, 0.2, masks.shape).astype("float32")
    return np.repeat(images, channels, axis=-1), masks


def save_legacy_h5_weights(model, path) -> None:
    """Write weights in the Keras 2 HDF5 layout of the keras.applications files (Keras 3's ``save_weights``
    only writes ``.weights.h5``): a stand-in for a local ImageNet file in the pretrained-encoder tests."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


def assert_refuses_missing_mobilenet_weights(build, tmp_path: Path, file_name: str, url: str) -> str:
    """The MobileNetV2 models' refusals (``build(scale, weights=...)``): a missing file names itself, its URL and
    ``weights=None``; a folder without the file names the file; ``"imagenet"`` is never downloaded; a width with no
    ImageNet file is refused. Returns the first message (for model-specific checks)."""
    import pytest

    missing = tmp_path / "weights" / file_name
    with pytest.raises(FileNotFoundError) as error:
        build("tiny", weights=missing)
    message = str(error.value)
    assert str(missing) in message and url in message and "weights=None" in message
    with pytest.raises(FileNotFoundError, match=file_name):  # a folder without the file names the file
        build("tiny", weights=tmp_path)
    with pytest.raises(ValueError, match="never does"):
        build("tiny", weights="imagenet")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build("tiny", alpha=0.6, weights=tmp_path)
    return message


def assert_overfits(model, images, masks, optimizer, steps: int, loss=None, save_to: Path | None = None) -> list:
    """Train ``model`` on one batch for ``steps`` steps and check that the training loss falls below 40% of its
    first value (the wiring check of every model test). With ``save_to`` the model is also saved there, reloaded
    and checked to predict the same. Returns the losses."""
    import keras

    model.compile(optimizer, loss or keras.losses.BinaryCrossentropy(), jit_compile=False)
    losses = [float(model.train_on_batch(images, masks)) for _ in range(steps)]
    assert losses[-1] < 0.4 * losses[0], losses
    if save_to is not None:
        model.save(save_to)
        reloaded = keras.saving.load_model(save_to)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(reloaded(images)), keras.ops.convert_to_numpy(model(images)), atol=1e-6
        )
    return losses
