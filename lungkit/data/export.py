"""Lung-RADS pickles (real or phantom) -> the kit dataset folder (see :mod:`lungkit.data.kit_dataset`).

The conversion is atomic and resumable. Everything is written into ``<out_dir>.partial/``: each PNG through a
temporary name and ``os.replace`` (so a PNG that exists is whole), then ``manifest.csv``, ``dataset.json`` and
the ``COMPLETE`` marker, and only then is the folder renamed to ``<out_dir>``. A killed conversion therefore never
leaves a folder that :func:`~lungkit.data.kit_dataset.read_manifest` accepts; rerunning it skips the slices whose
PNGs are already there. (The pickles still have to be loaded again: a pickle cannot be read from the middle.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lungkit.data.kit_dataset import (
    COMPLETE_MARKER,
    IMAGE_DIR,
    LUNG_DIR,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    MASK_DIR,
    SPLITS,
    hu_to_png16,
    is_complete,
    png16_to_hu,
    read_manifest,
)
from lungkit.data.lungrads import LungRadsSlice, frame_slices, load_lungrads_pickle
from lungkit.progress import progress_bar

#: Sidecar with the provenance of a converted dataset (source files, spacing, plus the caller's metadata).
DATASET_INFO_NAME = "dataset.json"
#: Written at the start of a conversion into the staging folder; a resume with other inputs starts afresh.
_CONVERSION_NAME = "conversion.json"
_STAGING_SUFFIX = ".partial"
#: How the conversion stores HU (recorded in ``dataset.json`` under ``hu_rounding``).
HU_ROUNDING_RULE = "nearest 1 HU: the 16-bit PNG stores round(HU) + HU_OFFSET (exact for integer HU)"


def staging_dir(out_dir: str | Path) -> Path:
    """The folder an unfinished conversion of ``out_dir`` lives in (``<out_dir>.partial``)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + _STAGING_SUFFIX)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (temp file + ``os.replace``), creating the parent folder if needed."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes atomically (temp file + ``os.replace``), creating the parent folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(data, path)


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_png(array: np.ndarray, path: str | Path) -> None:
    """Write a 2-D uint8 or uint16 array as a grey PNG, atomically (temp file + ``os.replace``).

    Args:
        array: 2-D uint8 or uint16 array.
        path: destination ``.png``.

    Raises:
        ValueError: for other dtypes or shapes, or when encoding fails.
    """
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected a 2-D uint8 or uint16 array, found {array.dtype} {array.shape}")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    _atomic_write_bytes(encoded.tobytes(), Path(path))


def read_png(path: str | Path) -> np.ndarray:
    """Read a grey PNG exactly as stored (uint8 or uint16).

    Raises:
        FileNotFoundError: if the file is missing or unreadable as PNG.
    """
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise FileNotFoundError(f"{path}: missing or not a readable PNG")
    return array


def read_hu_png(path: str | Path) -> np.ndarray:
    """Read a kit 16-bit image PNG back to float32 HU."""
    return png16_to_hu(read_png(path))


def tumour_statistics(mask: np.ndarray, pixel_spacing_mm: float | None) -> dict[str, float | int]:
    """Area, equivalent diameter and bounding box of a tumour mask (manifest columns).

    Args:
        mask: 2-D mask, non-zero = tumour.
        pixel_spacing_mm: in-plane spacing, or None / NaN when unknown.

    Returns:
        ``tumour_area_px``, ``equivalent_diameter_px`` (diameter of the circle of equal area),
        ``equivalent_diameter_mm`` (NaN when the spacing is unknown) and ``bbox_y0, bbox_x0, bbox_y1, bbox_x1``
        (inclusive-exclusive; all -1 for an empty mask).
    """
    inside = np.asarray(mask) != 0
    area = int(np.count_nonzero(inside))
    diameter_px = 2.0 * math.sqrt(area / math.pi)
    spacing = float("nan") if pixel_spacing_mm is None else float(pixel_spacing_mm)
    if area:
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        bbox = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    else:
        bbox = (-1, -1, -1, -1)
    return {
        "tumour_area_px": area,
        "equivalent_diameter_px": diameter_px,
        "equivalent_diameter_mm": diameter_px * spacing,
        "bbox_y0": bbox[0],
        "bbox_x0": bbox[1],
        "bbox_y1": bbox[2],
        "bbox_x1": bbox[3],
    }


def _conversion_request(pickles: Mapping[str, Path], pixel_spacing_mm: float | None) -> dict:
    """What identifies a conversion's inputs; a staging folder made from other inputs is not resumed."""
    files = {}
    for split, path in pickles.items():
        stat = path.stat()
        files[split] = {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"pickles": files, "pixel_spacing_mm": pixel_spacing_mm}


def prepare_staging(staging: Path, request: dict, extra_dirs: tuple[str, ...] = ()) -> None:
    """Make a resumable conversion's staging folder: kept when it was started with the same ``request`` (recorded
    in its ``conversion.json``), emptied otherwise; the kit's sub-folders plus ``extra_dirs`` exist afterwards."""
    record = staging / _CONVERSION_NAME
    if staging.exists():
        try:
            previous = json.loads(record.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != request:
            shutil.rmtree(staging)
    for sub in (IMAGE_DIR, MASK_DIR, LUNG_DIR, *extra_dirs):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    if not record.exists():
        _atomic_write_bytes(json.dumps(request, indent=2).encode(), record)
    # an interrupted run may have left a marker or manifest from a previous finish attempt: they are rewritten last
    (staging / COMPLETE_MARKER).unlink(missing_ok=True)


def _write_slice(item: LungRadsSlice, staging: Path, slice_id: str) -> dict[str, str]:
    paths = {
        "image_path": f"{IMAGE_DIR}/{slice_id}.png",
        "mask_path": f"{MASK_DIR}/{slice_id}.png",
        "lung_path": f"{LUNG_DIR}/{slice_id}.png",
    }
    arrays = {
        "image_path": lambda: hu_to_png16(item.hu),
        "mask_path": lambda: (item.mask * np.uint8(255)).astype(np.uint8),
        "lung_path": lambda: (item.lung_mask * np.uint8(255)).astype(np.uint8),
    }
    for key, relative in paths.items():
        target = staging / relative
        if not target.exists():  # written atomically, so an existing file is complete: resume skips it
            try:
                write_png(arrays[key](), target)
            except ValueError as error:
                raise ValueError(f"{item.source_file}: row {item.source_row}: {error}") from error
    return paths


def _rounding_error(hu: np.ndarray) -> float:
    """Largest |round(HU) - HU| of a slice: what a 16-bit PNG of whole HU loses (0.0 for CT's integer HU)."""
    hu = np.asarray(hu, dtype=np.float64)
    return float(np.abs(np.rint(hu) - hu).max(initial=0.0))


def move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished staging folder to ``out_dir``, replacing an old one only when asked to."""
    if out_dir.exists():
        if overwrite:
            trash = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, trash)
            shutil.rmtree(trash)
        elif out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        else:
            raise FileExistsError(
                f"{out_dir}: exists and is not a finished kit dataset; delete it or pass overwrite=True "
                f"(the finished conversion is waiting in {staging})"
            )
    os.replace(staging, out_dir)


def convert_lungrads_to_kit(
    pickles: Mapping[str, str | Path],
    out_dir: str | Path,
    pixel_spacing_mm: float | None = None,
    overwrite: bool = False,
    finalize_manifest: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    metadata: Mapping | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Convert Lung-RADS pickles into a kit dataset folder (PNG slices + ``manifest.csv``).

    Per slice: ``images/<id>.png`` (16-bit, HU + ``HU_OFFSET`` from ``hu_array_old``), ``masks/<id>.png`` (tumour,
    0/255) and ``lungs/<id>.png`` (the lung mask implied by ``hu_array``, 0/255). Ids are ``<split>_<row:06d>``,
    e.g. ``test_000123``, row being the position in the source pickle.

    HU are stored rounded to the nearest 1 HU (the slice's float32 HU, as :class:`~lungkit.data.lungrads.LungRadsSlice`
    holds them). CT stores integer HU, so for the real pickles and the phantom this is exact; a pickle of resampled
    or rescaled CT loses at most 0.5 HU. ``dataset.json`` records which: ``hu_rounding`` = ``{"rule": ...,
    "rounded": <any HU not an integer>, "max_abs_error_hu": <largest |PNG - HU| over all slices>}``.

    Args:
        pickles: split name -> pickle path, e.g. ``{"train": ..., "test": ...}`` from
            :func:`~lungkit.data.lungrads.find_lungrads_pickles`.
        out_dir: the dataset folder to create.
        pixel_spacing_mm: in-plane spacing when known (the phantom's); None for the real Lung-RADS pickles,
            which do not store it: ``pixel_spacing_mm`` and ``equivalent_diameter_mm`` are then NaN.
        overwrite: replace an existing finished dataset. Without it, a finished ``out_dir`` is returned as is.
        finalize_manifest: applied to the manifest before it is written (e.g. carving the validation split with
            :func:`~lungkit.data.splits.assign_validation_split`), so the ``COMPLETE`` marker covers it.
        metadata: extra provenance stored in ``dataset.json`` (e.g. data source, profile, seed).
        progress: show a tqdm progress bar per pickle.

    Returns:
        The manifest as read back by :func:`~lungkit.data.kit_dataset.read_manifest` (absolute paths).

    Raises:
        ValueError: for an unknown split name, or a slice that cannot be encoded (names the file and row).
        FileNotFoundError: for a missing pickle.
        FileExistsError: if ``out_dir`` exists, is not a finished dataset and ``overwrite`` is False.
        Errors of :func:`~lungkit.data.lungrads.load_lungrads_pickle` for unsafe, corrupt or invalid pickles.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir) and not overwrite:
        return read_manifest(out_dir)
    unknown = [s for s in pickles if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected among {SPLITS}")
    sources = {split: Path(path) for split, path in pickles.items()}
    for path in sources.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected a Lung-RADS pickle)")
    staging = staging_dir(out_dir)
    prepare_staging(staging, _conversion_request(sources, pixel_spacing_mm))
    spacing = float("nan") if pixel_spacing_mm is None else float(pixel_spacing_mm)
    records = []
    max_rounding_error = 0.0
    for split, path in sources.items():
        frame = load_lungrads_pickle(path)
        slices = frame_slices(frame, path.name)
        bar = progress_bar(slices, total=len(frame), desc=f"{split}: {path.name}", unit="slice", disable=not progress)
        for item in bar:
            slice_id = f"{split}_{item.source_row:06d}"
            relative_paths = _write_slice(item, staging, slice_id)
            # computed from the slice, not the PNG, so a resumed conversion that skips existing PNGs records it too
            max_rounding_error = max(max_rounding_error, _rounding_error(item.hu))
            height, width = item.hu.shape
            records.append(
                {
                    "id": slice_id,
                    "split": split,
                    "label1": item.label1,
                    "source_file": item.source_file,
                    "source_row": item.source_row,
                    "height": height,
                    "width": width,
                    "pixel_spacing_mm": spacing,
                    **tumour_statistics(item.mask, pixel_spacing_mm),
                    **relative_paths,
                }
            )
        bar.close()
        # the train pickle is ~4 GiB in memory: drop every reference to it before loading the next pickle
        del frame, slices, bar
    manifest = pd.DataFrame.from_records(records, columns=MANIFEST_COLUMNS)
    if finalize_manifest is not None:
        manifest = finalize_manifest(manifest)
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"finalize_manifest dropped the manifest columns {missing}")
    _atomic_write_bytes(manifest.to_csv(index=False).encode(), staging / MANIFEST_NAME)
    info = {
        "pickles": {split: str(path.resolve()) for split, path in sources.items()},
        "pixel_spacing_mm": pixel_spacing_mm,
        "n_slices": int(len(manifest)),
        "split_counts": {k: int(v) for k, v in manifest["split"].value_counts().items()},
        "hu_rounding": {
            "rule": HU_ROUNDING_RULE,
            "rounded": max_rounding_error > 0,
            "max_abs_error_hu": max_rounding_error,
        },
        **dict(metadata or {}),
    }
    _atomic_write_bytes(json.dumps(info, indent=2, default=str).encode(), staging / DATASET_INFO_NAME)
    _atomic_write_bytes(b"", staging / COMPLETE_MARKER)
    move_into_place(staging, out_dir, overwrite)
    return read_manifest(out_dir)


__all__ = [
    "DATASET_INFO_NAME",
    "HU_ROUNDING_RULE",
    "convert_lungrads_to_kit",
    "read_hu_png",
    "read_png",
    "staging_dir",
    "tumour_statistics",
    "write_png",
]
