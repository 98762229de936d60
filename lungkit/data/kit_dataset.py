"""The kit dataset format: the one on-disk layout every reader converts into.

Every source (Lung-RADS pickles, the phantom, LUNA16 / NRRD / NIfTI volumes, Lung-PET-CT-Dx DICOM) ends up as::

    <dataset_dir>/
        images/<id>.png      16-bit grey PNG: stored = HU + HU_OFFSET (lossless for integer HU in [-32768, 32767])
        masks/<id>.png       8-bit grey PNG, tumour mask as 0 / 255
        lungs/<id>.png       8-bit grey PNG, lung mask as 0 / 255 (where the source has one, else all 255)
        pet/<id>.png         Lung-PET-CT-Dx only: 16-bit PET channel, round(SUVbw * 1000) (see lungkit.data.petct_kit)
        manifest.csv         one row per slice, columns ``MANIFEST_COLUMNS`` (extra columns allowed)
        COMPLETE             written last; a folder without it is an unfinished conversion

HU are rounded to the nearest integer on export. CT scanners store integer HU (raw values times an integer slope
plus an integer intercept), so for real CT this is lossless; the float HU of the Lung-RADS pickles are integers
held in float64. The offset 32768 keeps padding values such as -2048 and -3024 representable.

Why PNG: students can open any slice in an image viewer, the format is lossless, and tf.data decodes it natively
(``tf.io.decode_png(..., dtype=tf.uint16)``).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

HU_OFFSET = 32768
IMAGE_DIR = "images"
MASK_DIR = "masks"
LUNG_DIR = "lungs"
MANIFEST_NAME = "manifest.csv"
COMPLETE_MARKER = "COMPLETE"

#: Columns every manifest has. ``bbox_*`` are inclusive-exclusive pixel bounds of the tumour mask
#: (all -1 when the mask is empty). ``split`` is one of ``SPLITS``.
MANIFEST_COLUMNS = [
    "id",
    "split",
    "label1",
    "source_file",
    "source_row",
    "height",
    "width",
    "pixel_spacing_mm",
    "tumour_area_px",
    "equivalent_diameter_px",
    "equivalent_diameter_mm",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "image_path",
    "mask_path",
    "lung_path",
]
SPLITS = ("train", "val", "test")
#: Lung-RADS classes in order of increasing suspicion (and nodule size).
LUNGRADS_LABELS = ("LR2", "LR3", "LR4A", "LR4B")


def hu_to_png16(hu: np.ndarray) -> np.ndarray:
    """Encode an HU slice as uint16 with ``HU_OFFSET``.

    Args:
        hu: 2-D array of Hounsfield units (any float or int dtype), finite.

    Returns:
        uint16 array of the same shape, ``round(hu) + HU_OFFSET``.

    Raises:
        ValueError: if the slice has non-finite values or values outside the representable range.
    """
    hu = np.asarray(hu)
    if not np.all(np.isfinite(hu)):
        raise ValueError("HU slice contains NaN or infinite values; cannot encode it as PNG")
    rounded = np.rint(hu).astype(np.int64)
    low, high = -HU_OFFSET, 65535 - HU_OFFSET
    if rounded.min(initial=0) < low or rounded.max(initial=0) > high:
        raise ValueError(f"HU values outside [{low}, {high}] cannot be stored with offset {HU_OFFSET}")
    return (rounded + HU_OFFSET).astype(np.uint16)


def png16_to_hu(stored: np.ndarray) -> np.ndarray:
    """Decode a uint16 PNG array back to float32 HU (inverse of :func:`hu_to_png16`)."""
    return stored.astype(np.float32) - np.float32(HU_OFFSET)


def is_complete(dataset_dir: str | Path) -> bool:
    """True when ``dataset_dir`` holds a finished conversion (its ``COMPLETE`` marker exists)."""
    return (Path(dataset_dir) / COMPLETE_MARKER).is_file()


def read_manifest(dataset_dir: str | Path, split: str | None = None) -> pd.DataFrame:
    """Read and check a kit dataset's manifest.

    Args:
        dataset_dir: folder holding ``manifest.csv``.
        split: keep only rows of this split (``train``, ``val`` or ``test``); all rows when None.

    Returns:
        The manifest as a DataFrame; the ``*_path`` columns are made absolute.

    Raises:
        FileNotFoundError: if the folder or its manifest is missing, or the conversion never finished.
        ValueError: if required columns are missing or ``split`` is unknown.
    """
    dataset_dir = Path(dataset_dir)
    manifest_path = dataset_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no kit manifest here; run the conversion (notebook 00_convert) first")
    if not is_complete(dataset_dir):
        raise FileNotFoundError(
            f"{dataset_dir}: conversion did not finish (no {COMPLETE_MARKER} marker); rerun it, it resumes"
        )
    manifest = pd.read_csv(manifest_path, dtype={"id": str, "label1": str, "split": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{manifest_path}: missing columns {missing}; expected at least {MANIFEST_COLUMNS}")
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        manifest = manifest[manifest["split"] == split].reset_index(drop=True)
    for column in ("image_path", "mask_path", "lung_path"):
        manifest[column] = [str(dataset_dir / p) for p in manifest[column]]
    return manifest


#: Manifest columns that may hold absolute paths of the files a dataset was converted from (LUNA16 volumes, DICOM
#: slices, annotation XML): the fingerprint reads them relative to their common folder.
SOURCE_PATH_COLUMNS = ("source_file", "annotation_file")


def manifest_fingerprint(dataset: str | Path) -> str:
    """First 12 hex digits of the sha256 of a kit dataset's ``manifest.csv``: names the exact data and split
    behind a result (every protocol line carries it).

    Absolute source paths (:data:`SOURCE_PATH_COLUMNS`) are hashed relative to their common folder, so the same data
    converted in another run folder or on another machine gets the same fingerprint; a manifest without absolute
    paths is hashed byte for byte.

    Args:
        dataset: the dataset folder or the manifest file itself.

    Raises:
        FileNotFoundError: if there is no manifest.
    """
    path = Path(dataset)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {MANIFEST_NAME} to fingerprint")
    raw = path.read_bytes()
    header = raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
    columns = [column for column in SOURCE_PATH_COLUMNS if column in header]
    if columns:  # parse only manifests that can hold source paths
        manifest = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
        relocated = False
        for column in columns:
            absolute = {value for value in manifest[column] if value and Path(value).is_absolute()}
            if not absolute:
                continue
            root = (Path(os.path.commonpath(sorted(absolute))) if len(absolute) > 1
                    else Path(next(iter(absolute))).parent)
            manifest[column] = [Path(value).relative_to(root).as_posix() if value in absolute else value
                                for value in manifest[column]]
            relocated = True
        if relocated:
            raw = manifest.to_csv(index=False).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()[:12]
