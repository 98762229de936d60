"""Folders of image/mask files and arrays of slices -> the kit dataset, with the patient of every slice.

Many public lung CT sets come as 2-D slices: a folder of image files with a parallel folder of mask files
(LIDC-IDRI exports, Kaggle sets), or numpy arrays of images and masks (patch sets such as the Medical Segmentation
Decathlon's). This module reads both into the same kit dataset the Lung-RADS pickles become
(:mod:`lungkit.data.kit_dataset`), with a ``patient`` column so that splits can keep each patient on one side.

What the pixels mean is declared, never guessed: an :class:`IntensityMap` says how stored values become Hounsfield
units (``hu = slope * value + intercept``) and whether that is exact (``hu``: CT stored as HU, possibly with an
offset) or an approximation (``display8``: an 8-bit display rendering; ``unit``: values already normalised to
[0, 1]). The approximation is recorded in ``dataset.json`` and in every result's protocol.

Masks are binarised by a stated rule: ``mask > mask_threshold``. The default is half the mask's largest possible
value (127 for 8-bit files, 32767 for 16-bit), because anti-aliased mask PNGs have grey edges; when every mask of a
source holds only 0 and 1 (0/1 PNGs, label arrays), the default is 0.5 whatever the dtype, since "> 127" would erase
every tumour.

Layout of a slice folder (the default; others by ``image_pattern`` / ``mask_pattern``)::

    <root>/image/<patient>/<name>.png     (PNG, TIFF, JPEG or NPY)
    <root>/label/<patient>/<name>.png     the mask of the same slice, same name

The conversion is atomic, as every kit conversion: it writes into ``<out_dir>.partial`` and renames at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lungkit.data.export import (
    DATASET_INFO_NAME,
    move_into_place,
    staging_dir,
    tumour_statistics,
    write_png,
    write_text_atomic,
)
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
    read_manifest,
)

#: File endings read as slices.
SLICE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")
#: Label written to ``label1`` for sources without Lung-RADS classes.
NO_CLASS_LABEL = "nodule"
#: The patient column every folder or array source adds to the manifest.
PATIENT_COLUMN = "patient"
#: Largest slice side accepted (a larger "slice" is a mistake or a hostile file, not CT).
MAX_SLICE_SIDE = 4096


class SliceSourceError(ValueError):
    """A folder or array source breaks its expected layout; the message names the file and what was expected."""


@dataclass(frozen=True)
class IntensityMap:
    """How stored pixel values become Hounsfield units: ``hu = slope * value + intercept``.

    Args:
        kind: ``hu`` (values are HU, possibly with an offset: exact), ``display8`` (an 8-bit display rendering:
            approximate) or ``unit`` (values normalised to [0, 1]: approximate).
        slope: HU per stored unit.
        intercept: HU of a stored 0.
        note: where the map comes from; recorded with the data.
    """

    kind: str
    slope: float = 1.0
    intercept: float = 0.0
    note: str = ""

    def __post_init__(self):
        if self.kind not in INTENSITY_KINDS:
            raise ValueError(f"intensity kind {self.kind!r} unknown; expected one of {sorted(INTENSITY_KINDS)}")
        if not (math.isfinite(self.slope) and self.slope != 0 and math.isfinite(self.intercept)):
            raise ValueError(f"intensity map needs a finite non-zero slope and a finite intercept, got {self}")

    @property
    def approximate(self) -> bool:
        """True unless the stored values are HU (up to an exact offset)."""
        return self.kind != "hu"

    def to_hu(self, values: np.ndarray) -> np.ndarray:
        """Stored values -> float32 HU."""
        return (np.asarray(values, np.float64) * self.slope + self.intercept).astype(np.float32)

    def describe(self) -> str:
        """One line for protocols, e.g. ``display8: HU ~ 17.2 x value - 3010 (approximate)``."""
        sign = "-" if self.intercept < 0 else "+"
        exactness = "approximate" if self.approximate else "exact"
        text = f"{self.kind}: HU {'~' if self.approximate else '='} {self.slope:g} x value {sign} {abs(self.intercept):g}"
        return f"{text} ({exactness}{'; ' + self.note if self.note else ''})"


INTENSITY_KINDS = {"hu", "display8", "unit"}

#: Declared maps for the common cases. ``display8`` is the map measured on the LIDC-IDRI PNG exports (air ~117,
#: soft tissue ~175: HU ~ 17.2 x (value - 175)); ``unit`` reads [0, 1] as the lung window [-1000, 400] HU.
INTENSITY_PRESETS = {
    "hu": IntensityMap("hu", 1.0, 0.0, "stored values are HU"),
    "display8": IntensityMap(
        "display8", 17.2, -17.2 * 175.0, "8-bit display rendering; HU ~ 17.2 x (value - 175), measured on LIDC exports"
    ),
    "unit": IntensityMap("unit", 1400.0, -1000.0, "values in [0, 1] read as the lung window [-1000, 400] HU"),
}


def intensity_map(spec: str | IntensityMap | Mapping) -> IntensityMap:
    """An :class:`IntensityMap` from a preset name, a mapping of its fields, or a map itself.

    Raises:
        ValueError: for an unknown preset name or bad fields.
    """
    if isinstance(spec, IntensityMap):
        return spec
    if isinstance(spec, str):
        try:
            return INTENSITY_PRESETS[spec]
        except KeyError:
            raise ValueError(f"intensity {spec!r} unknown; expected one of {sorted(INTENSITY_PRESETS)} "
                             "or a dict with kind, slope, intercept") from None
    return IntensityMap(**dict(spec))


#: What the two histogram peaks of a display rendering are taken to be: the lungs (aerated parenchyma, about
#: -850 HU, mixed with air at -1000) and soft tissue (muscle, heart: about 0 HU).
CALIBRATION_AIR_HU = -900.0
CALIBRATION_TISSUE_HU = 0.0


def calibrate_display_map(values: np.ndarray, fallback: IntensityMap, min_separation: float = 20.0) -> IntensityMap:
    """Estimate a display rendering's map to HU from its own histogram: the lowest and highest major peaks.

    Exports of one collection do not share one display window (in the LIDC PNG sample one patient's air sits near
    10 and soft tissue near 95, the others' near 120 and 175), so one fixed map puts some patients hundreds of HU
    off. Every chest CT slice shows lung and soft tissue. Among the major peaks of the smoothed grey-level histogram
    (at least a third of the highest; the saturated 0 and maximum values left out), the highest major peak is soft
    tissue (``CALIBRATION_TISSUE_HU``) and the tallest peak in the lower half of the peaks' range is the lungs
    (``CALIBRATION_AIR_HU``; a smaller, darker peak of air outside the body is passed over). Still an
    approximation, recorded as such.

    Args:
        values: grey values of one patient's slices (any shape).
        fallback: the declared map, used when the peaks are not found or too close.
        min_separation: fewer grey levels than this between the peaks means no calibration.

    Returns:
        The calibrated map, or ``fallback`` (its note then says why).
    """
    from scipy.ndimage import gaussian_filter1d

    values = np.asarray(values).ravel()
    top = int(values.max(initial=0))
    if values.size == 0 or values.dtype.kind not in "iu" or top < 2 or top > 65535:
        return fallback
    histogram = np.bincount(values.astype(np.int64), minlength=top + 1).astype(np.float64)
    histogram[0] = histogram[top] = 0.0  # padding and saturation are not tissue
    smooth = gaussian_filter1d(histogram, sigma=max(1.0, (top + 1) / 85.0))
    inner = smooth[1:-1]
    peaks = np.flatnonzero((inner >= smooth[:-2]) & (inner >= smooth[2:]) & (inner >= smooth.max() / 3.0)) + 1
    if len(peaks) < 2 or peaks[-1] - peaks[0] < min_separation:
        return dataclasses.replace(fallback, note=fallback.note + "; calibration found no air/tissue peaks")
    lower = peaks[peaks <= (peaks[0] + peaks[-1]) / 2.0]
    air, tissue = float(lower[np.argmax(smooth[lower])]), float(peaks[-1])
    if tissue - air < min_separation:
        return dataclasses.replace(fallback, note=fallback.note + "; calibration found no lung/tissue peaks")
    slope = (CALIBRATION_TISSUE_HU - CALIBRATION_AIR_HU) / (tissue - air)
    return IntensityMap(
        "display8", slope, CALIBRATION_AIR_HU - slope * air,
        f"calibrated on this patient's histogram: lung peak {air:g} -> {CALIBRATION_AIR_HU:g} HU, "
        f"soft-tissue peak {tissue:g} -> {CALIBRATION_TISSUE_HU:g} HU",
    )


# -- reading single files -----------------------------------------------------------------------------------------


def read_slice_file(path: str | Path) -> np.ndarray:
    """One 2-D slice from a PNG / TIFF / JPEG (any bit depth; colour reduced to its first channel) or NPY file.

    Raises:
        SliceSourceError: when the file cannot be read, is not 2-D (or 2-D with identical colour channels), is
            empty, too large, or holds non-finite values. The message names the file.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise SliceSourceError(f"{path}: unreadable NPY ({error}); expected a 2-D numeric array") from error
        if array.dtype.kind not in "biuf":
            raise SliceSourceError(f"{path}: expected a numeric array, found dtype {array.dtype}")
        array = np.asarray(array)
    else:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise SliceSourceError(f"{path}: missing or not a readable image (expected PNG, TIFF or JPEG)")
        if array.ndim == 3:
            # colour files of grey CT (3 identical channels) are common; a truly colour image is not CT
            channels = array[..., :3]
            if not all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(1, channels.shape[-1])):
                raise SliceSourceError(f"{path}: colour image with differing channels; expected a grey CT slice")
            array = channels[..., 0]
    if array.ndim != 2:
        raise SliceSourceError(f"{path}: expected a 2-D slice, found shape {array.shape}")
    if min(array.shape) < 1 or max(array.shape) > MAX_SLICE_SIDE:
        raise SliceSourceError(f"{path}: slice shape {array.shape}; expected sides between 1 and {MAX_SLICE_SIDE}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise SliceSourceError(f"{path}: {int(np.count_nonzero(~np.isfinite(array)))} NaN/inf value(s)")
    return array


def _default_threshold(mask: np.ndarray) -> float:
    if mask.dtype == np.uint8:
        return 127.0
    if mask.dtype == np.uint16:
        return 32767.0
    return 0.5


def binarise_mask(mask: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """``mask > threshold`` as uint8 0/1; the default threshold is half the dtype's range (127 for uint8, 0.5 for
    0/1 arrays), which reads anti-aliased mask edges as the nearer side."""
    mask = np.asarray(mask)
    return (mask > (_default_threshold(mask) if threshold is None else threshold)).astype(np.uint8)


# -- the writer shared by both sources ----------------------------------------------------------------------------


@dataclass
class SourceSlice:
    """One slice before conversion: stored values, mask, and where it comes from."""

    values: np.ndarray
    mask: np.ndarray
    patient: str
    source_file: str
    source_row: int
    split: str | None = None


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def write_slice_dataset(
    slices: Sequence[SourceSlice],
    out_dir: str | Path,
    intensity: IntensityMap,
    pixel_spacing_mm: float | None = None,
    mask_threshold: float | None = None,
    metadata: Mapping | None = None,
    overwrite: bool = False,
    patient_maps: Mapping[str, IntensityMap] | None = None,
    finalize_manifest: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    describe_split: Callable[[pd.DataFrame], str] | None = None,
) -> pd.DataFrame:
    """Write slices as a kit dataset (``images/``, ``masks/``, ``lungs/``, ``manifest.csv`` with ``patient``).

    Splits: a slice's own ``split`` when set, else ``train`` (carve validation / test afterwards with
    :func:`lungkit.data.splits.assign_patient_splits`). The lung mask is unknown for these sources and written as
    all-foreground (the kit's convention for "no lung mask").

    Args:
        slices: the slices, in order.
        out_dir: the dataset folder to create.
        intensity: how stored values become HU.
        pixel_spacing_mm: in-plane spacing when known, else None (NaN in the manifest).
        mask_threshold: binarisation rule ``mask > threshold``; None: half the dtype's range (see
            :func:`binarise_mask`), or 0.5 when every mask holds only 0 and 1.
        metadata: extra provenance for ``dataset.json``.
        overwrite: replace a finished dataset at ``out_dir``; without it a finished one is returned as is.
        patient_maps: per-patient intensity maps that replace ``intensity`` for those patients.
        finalize_manifest: manifest -> manifest, applied before it is written (e.g. the patient-wise split of
            :func:`lungkit.data.splits.assign_patient_splits`).
        describe_split: manifest -> the protocol's split line, stored as ``split_description`` in ``dataset.json``.

    Returns:
        The manifest as read back (absolute paths).

    Raises:
        SliceSourceError: for an image and mask of different shapes, or no slices at all.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir) and not overwrite:
        return read_manifest(out_dir)
    if not slices:
        raise SliceSourceError(f"{out_dir}: no slices to write")
    staging = staging_dir(out_dir)
    if staging.exists():
        shutil.rmtree(staging)  # small sources: a fresh start is cheaper than checking what a killed run left
    for sub in (IMAGE_DIR, MASK_DIR, LUNG_DIR):
        (staging / sub).mkdir(parents=True)
    try:
        _write_staging(slices, staging, intensity, pixel_spacing_mm, mask_threshold, metadata, patient_maps,
                       finalize_manifest, describe_split)
    except BaseException:
        # every conversion starts afresh, so a half-written staging folder is only litter beside out_dir
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into_place(staging, out_dir, overwrite)
    return read_manifest(out_dir)


def _write_staging(slices, staging, intensity, pixel_spacing_mm, mask_threshold, metadata, patient_maps=None,
                   finalize_manifest=None, describe_split=None) -> None:
    spacing = float("nan") if pixel_spacing_mm is None else float(pixel_spacing_mm)
    if mask_threshold is None and all(float(np.max(item.mask, initial=0)) <= 1 for item in slices):
        # 0/1 masks in 8- or 16-bit containers: half the dtype's range would read every tumour as background
        mask_threshold, mask_rule = 0.5, "mask > 0.5 (every mask holds only 0/1)"
    elif mask_threshold is None:
        mask_rule = "mask > half the dtype range (127 for 8-bit, 32767 for 16-bit, 0.5 for floats)"
    else:
        mask_rule = f"mask > {mask_threshold:g}"
    records = []
    max_rounding = 0.0
    for index, item in enumerate(slices):
        where = f"{item.source_file}" + (f": row {item.source_row}" if item.source_row >= 0 else "")
        if item.values.shape != item.mask.shape:
            raise SliceSourceError(
                f"{where}: image shape {item.values.shape} differs from its mask's {item.mask.shape}; "
                "expected one shape per image/mask pair"
            )
        hu = (patient_maps or {}).get(item.patient, intensity).to_hu(item.values)
        max_rounding = max(max_rounding, float(np.abs(hu - np.rint(hu)).max(initial=0.0)))
        mask = binarise_mask(item.mask, mask_threshold)
        slice_id = f"{index:06d}"
        paths = {
            "image_path": f"{IMAGE_DIR}/{slice_id}.png",
            "mask_path": f"{MASK_DIR}/{slice_id}.png",
            "lung_path": f"{LUNG_DIR}/{slice_id}.png",
        }
        try:
            write_png(hu_to_png16(hu), staging / paths["image_path"])
        except ValueError as error:
            raise SliceSourceError(f"{where}: {error}") from error
        write_png(mask * np.uint8(255), staging / paths["mask_path"])
        write_png(np.full(mask.shape, 255, np.uint8), staging / paths["lung_path"])
        records.append({
            "id": slice_id,
            "split": item.split or "train",
            "label1": NO_CLASS_LABEL,
            "source_file": item.source_file,
            "source_row": item.source_row,
            "height": mask.shape[0],
            "width": mask.shape[1],
            "pixel_spacing_mm": spacing,
            **tumour_statistics(mask, pixel_spacing_mm),
            **paths,
            PATIENT_COLUMN: item.patient,
        })
    manifest = pd.DataFrame.from_records(records, columns=[*MANIFEST_COLUMNS, PATIENT_COLUMN])
    if finalize_manifest is not None:
        manifest = finalize_manifest(manifest)
    write_text_atomic(staging / MANIFEST_NAME, manifest.to_csv(index=False))
    info = {
        "data_source": (metadata or {}).get("data_source", "slices"),
        "intensity": {**asdict(intensity), "description": intensity.describe()},
        "intensity_per_patient": {patient: m.describe() for patient, m in sorted((patient_maps or {}).items())},
        "hu_rounding": f"stored to the nearest 1 HU (largest rounding {max_rounding:.2f} HU)",
        "mask_rule": mask_rule,
        "pixel_spacing_mm": pixel_spacing_mm,
        "n_slices": len(manifest),
        "n_patients": int(manifest[PATIENT_COLUMN].nunique()),
        "split_counts": {k: int(v) for k, v in manifest["split"].value_counts().items()},
        **({"split_description": describe_split(manifest)} if describe_split is not None else {}),
        **dict(metadata or {}),
    }
    write_text_atomic(staging / DATASET_INFO_NAME, json.dumps(info, indent=2, default=str))
    write_text_atomic(staging / COMPLETE_MARKER, "")


# -- folder source ------------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern:
    """``image/{patient}/{name}`` -> a regex with named groups (``{name}`` is the file name without ending)."""
    if "{name}" not in pattern:
        raise ValueError(f"pattern {pattern!r} must contain {{name}}")
    parts = re.split(r"(\{patient\}|\{name\})", pattern.strip("/"))
    regex = ""
    for part in parts:
        if part == "{patient}":
            regex += r"(?P<patient>[^/]+)"
        elif part == "{name}":
            regex += r"(?P<name>[^/]+?)"
        else:
            regex += re.escape(part)
    return re.compile(regex + r"(?P<suffix>\.[A-Za-z]+)$")


def find_slice_pairs(
    root: str | Path,
    image_pattern: str = "image/{patient}/{name}",
    mask_pattern: str = "label/{patient}/{name}",
    max_files: int = 200_000,
) -> pd.DataFrame:
    """Pair every image file with its mask file under ``root`` by the two layout patterns.

    Args:
        root: the dataset folder.
        image_pattern: where images are, relative to ``root``; ``{patient}`` (optional) and ``{name}`` (the file
            name without ending) are placeholders. Without ``{patient}`` every slice is its own patient, which
            the split then says.
        mask_pattern: the same for masks.
        max_files: stop with an error past this many files (a wrong ``root`` such as ``/``); folders do not
            count.

    Returns:
        One row per pair: ``patient``, ``name``, ``image``, ``mask`` (paths), in patient then natural name order.

    Raises:
        FileNotFoundError: if ``root`` is missing.
        SliceSourceError: for an image without a mask or a mask without an image, a patient folder without
            slices, or no pairs at all; every problem is listed with its file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (expected {image_pattern} and {mask_pattern} under it)")
    image_regex, mask_regex = _pattern_regex(image_pattern), _pattern_regex(mask_pattern)
    images, masks, problems = {}, {}, []
    patient_dirs: set[tuple[str, Path]] = set()
    files = []
    # count while walking: sorting rglob's answer first would list all of a wrong root (say "/") before the check
    for path in root.rglob("*"):
        if path.is_file():
            files.append(path)
            if len(files) > max_files:
                raise SliceSourceError(f"{root}: more than {max_files} files; is this the dataset folder?")
    for path in sorted(files):
        relative = path.relative_to(root).as_posix()
        for regex, found, kind in ((image_regex, images, "image"), (mask_regex, masks, "mask")):
            match = regex.fullmatch(relative)
            if match is None or match["suffix"].lower() not in SLICE_SUFFIXES:
                continue
            patient = match.groupdict().get("patient") or f"slice:{match['name']}"
            key = (patient, match["name"])
            if key in found:
                problems.append(f"{path}: a second {kind} for {key} (also {found[key]})")
            found[key] = path
    base, _, rest = image_pattern.strip("/").partition("{patient}")
    if rest.startswith("/") and (not base or base.endswith("/")):
        for patient_dir in sorted((root / base).glob("*")) if (root / base).is_dir() else []:
            if patient_dir.is_dir():
                patient_dirs.add((patient_dir.name, patient_dir))
    for key in sorted(set(images) - set(masks)):
        problems.append(f"{images[key]}: image without a mask (expected {mask_pattern.format(patient=key[0], name=key[1])}.*)")
    for key in sorted(set(masks) - set(images)):
        problems.append(f"{masks[key]}: mask without an image (expected {image_pattern.format(patient=key[0], name=key[1])}.*)")
    with_slices = {patient for patient, _ in images}
    for patient, patient_dir in sorted(patient_dirs):
        if patient not in with_slices:
            problems.append(f"{patient_dir}: patient folder without slices (expected {SLICE_SUFFIXES} files)")
    if problems:
        raise SliceSourceError(f"{root}: {len(problems)} problem(s) pairing images and masks:\n  - "
                               + "\n  - ".join(problems))
    if not images:
        raise SliceSourceError(f"{root}: no image files match {image_pattern} (endings {SLICE_SUFFIXES})")
    rows = [{"patient": p, "name": n, "image": str(images[(p, n)]), "mask": str(masks[(p, n)])} for p, n in images]
    rows.sort(key=lambda r: (r["patient"], _natural_key(r["name"])))
    return pd.DataFrame(rows)


def convert_slice_folder(
    root: str | Path,
    out_dir: str | Path,
    intensity: str | IntensityMap | Mapping = "hu",
    image_pattern: str = "image/{patient}/{name}",
    mask_pattern: str = "label/{patient}/{name}",
    mask_threshold: float | None = None,
    pixel_spacing_mm: float | None = None,
    metadata: Mapping | None = None,
    overwrite: bool = False,
    max_files: int = 200_000,
    calibrate_display: bool = True,
    finalize_manifest: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    describe_split: Callable[[pd.DataFrame], str] | None = None,
) -> pd.DataFrame:
    """A folder of image/mask files -> a kit dataset with a ``patient`` column (all rows ``train``).

    Args:
        root: the dataset folder.
        out_dir: the kit dataset to create.
        intensity: what the stored values mean: a preset name (``hu``, ``display8``, ``unit``), a dict of
            :class:`IntensityMap` fields, or a map.
        image_pattern, mask_pattern: the layout (see :func:`find_slice_pairs`).
        mask_threshold: ``mask > threshold`` is tumour (default half the dtype's range).
        pixel_spacing_mm: in-plane spacing when known.
        metadata: extra provenance for ``dataset.json``.
        overwrite: rebuild a finished ``out_dir``.
        max_files: see :func:`find_slice_pairs`.
        calibrate_display: with a ``display8`` intensity, estimate each patient's map from their own histogram
            (:func:`calibrate_display_map`) instead of one map for all; both are approximations.
        finalize_manifest, describe_split: see :func:`write_slice_dataset` (without them every row is ``train``).

    Returns:
        The manifest (see :func:`write_slice_dataset`).

    Raises:
        FileNotFoundError, SliceSourceError: see :func:`find_slice_pairs` and :func:`read_slice_file`; also for an
            image and mask of different shapes (naming both files).
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir) and not overwrite:
        return read_manifest(out_dir)
    root = Path(root).expanduser()
    pairs = find_slice_pairs(root, image_pattern, mask_pattern, max_files)
    slices = []
    for row in pairs.itertuples(index=False):
        values, mask = read_slice_file(row.image), read_slice_file(row.mask)
        if values.shape != mask.shape:
            # checked here, where the full paths are known (the manifest keeps paths relative to root)
            raise SliceSourceError(f"{row.image}: image shape {values.shape} differs from its mask's {mask.shape} "
                                   f"({row.mask}); expected one shape per image/mask pair")
        slices.append(SourceSlice(values, mask, row.patient, Path(row.image).relative_to(root).as_posix(), -1))
    declared = intensity_map(intensity)
    patient_maps = None
    if calibrate_display and declared.kind == "display8":
        patients = sorted({item.patient for item in slices})
        patient_maps = {
            patient: calibrate_display_map(np.concatenate([i.values.ravel() for i in slices if i.patient == patient]),
                                           declared)
            for patient in patients
        }
    return write_slice_dataset(
        slices, out_dir, declared, pixel_spacing_mm, mask_threshold,
        {"data_source": "slice_folder", "source_root": str(root.resolve()), "layout": [image_pattern, mask_pattern],
         **dict(metadata or {})},
        overwrite, patient_maps, finalize_manifest, describe_split,
    )


# -- array source -------------------------------------------------------------------------------------------------


def _load_arrays(path: Path, image_key: str, mask_key: str, patient_key: str) -> tuple:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise SliceSourceError(f"{path}: an NPY file holds one array; use an .npz with {image_key!r} and "
                                   f"{mask_key!r}")
        with data:
            keys = list(data.keys())
            missing = [k for k in (image_key, mask_key) if k not in keys]
            if missing:
                raise SliceSourceError(f"{path}: missing array(s) {missing}; found {keys}")
            images, masks = data[image_key], data[mask_key]
            patients = data[patient_key] if patient_key in keys else None
    except SliceSourceError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise SliceSourceError(f"{path}: unreadable npz ({error})") from error
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if images.ndim != 3 or masks.shape != images.shape:
        raise SliceSourceError(f"{path}: expected {image_key!r} and {mask_key!r} of one shape (N, H, W), found "
                               f"{images.shape} and {masks.shape}")
    if images.dtype.kind not in "biuf" or masks.dtype.kind not in "biuf":
        raise SliceSourceError(f"{path}: expected numeric arrays, found {images.dtype} and {masks.dtype}")
    if max(images.shape[1:]) > MAX_SLICE_SIDE or min(images.shape) < 1:
        raise SliceSourceError(f"{path}: slices of shape {images.shape[1:]}; expected sides 1..{MAX_SLICE_SIDE}")
    for key, array in ((image_key, images), (mask_key, masks)):
        # a NaN mask pixel would silently read as background
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))
            raise SliceSourceError(f"{path}: NaN/inf in {key!r} at row(s) {bad[:10].tolist()}")
    if patients is not None and len(patients) != len(images):
        raise SliceSourceError(f"{path}: {patient_key!r} has {len(patients)} entries for {len(images)} slices")
    return images, masks, patients


def convert_array_files(
    files: Mapping[str, str | Path] | str | Path,
    out_dir: str | Path,
    intensity: str | IntensityMap | Mapping = "unit",
    image_key: str = "images",
    mask_key: str = "masks",
    patient_key: str = "patients",
    mask_threshold: float | None = None,
    pixel_spacing_mm: float | None = None,
    metadata: Mapping | None = None,
    overwrite: bool = False,
    finalize_manifest: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    describe_split: Callable[[pd.DataFrame], str] | None = None,
) -> pd.DataFrame:
    """``.npz`` files of images and masks -> a kit dataset.

    Args:
        files: one file (all rows ``train``), or ``{split: file}`` (e.g. ``{"train": a, "test": b}`` when the files
            hold different patients, as the MSD patches do).
        out_dir: the kit dataset to create.
        intensity: as in :func:`convert_slice_folder` (default ``unit``: values in [0, 1]).
        image_key, mask_key: array names in each file, shapes (N, H, W) or (N, H, W, 1).
        patient_key: optional array of N patient ids. Without it the patient is unknown: each file is one
            "patient group" named after the file, and the split says so.
        mask_threshold, pixel_spacing_mm, metadata, overwrite, finalize_manifest, describe_split: as in
            :func:`convert_slice_folder`.

    Raises:
        SliceSourceError: for missing keys, mismatched shapes, non-finite values (names the file and rows).
        FileNotFoundError: for a missing file.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir) and not overwrite:
        return read_manifest(out_dir)
    if isinstance(files, (str, Path)):
        files = {"train": files}
    unknown = [s for s in files if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}; expected among {SPLITS}")
    slices, patients_known = [], True
    for split, file in files.items():
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected an .npz with {image_key!r} and {mask_key!r})")
        images, masks, patients = _load_arrays(path, image_key, mask_key, patient_key)
        patients_known &= patients is not None
        for row in range(len(images)):
            patient = str(patients[row]) if patients is not None else f"file:{path.name}"
            slices.append(SourceSlice(images[row], masks[row], patient, path.name, row, split))
    return write_slice_dataset(
        slices, out_dir, intensity_map(intensity), pixel_spacing_mm, mask_threshold,
        {"data_source": "arrays", "source_files": {s: str(Path(f).resolve()) for s, f in files.items()},
         "patients_known": bool(patients_known), **dict(metadata or {})},
        overwrite, None, finalize_manifest, describe_split,
    )


__all__ = [
    "INTENSITY_PRESETS",
    "IntensityMap",
    "NO_CLASS_LABEL",
    "PATIENT_COLUMN",
    "SliceSourceError",
    "SourceSlice",
    "binarise_mask",
    "convert_array_files",
    "convert_slice_folder",
    "find_slice_pairs",
    "intensity_map",
    "read_slice_file",
    "write_slice_dataset",
]
