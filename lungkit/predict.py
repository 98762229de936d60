"""``lungkit predict``: apply a trained model (a folder with ``model.keras`` + ``model_card.json``) to new scans.

Inputs, each recognised by what it is:

- a CT volume file: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mhd``, ``.mha``);
- a DICOM series folder: every DICOM image in it must belong to one series; GDCM (through SimpleITK) sorts the
  slices by their position along the slice normal, and the positions must be evenly spaced (a gap means missing
  slices, and a mask on a regular grid would then sit at the wrong places; the check is
  :func:`lungkit.data.volumes.uneven_slice_gaps`, shared with :mod:`lungkit.data.petct`);
- a folder of 2-D slices (PNG, TIFF, JPEG or NPY files) or one such file; what the pixel values mean is declared
  with ``intensity`` (``hu``, ``display8`` or ``unit``, see :class:`lungkit.data.slices.IntensityMap`), never guessed;
- a Lung-RADS pickle (read by the kit's restricted unpickler; the unclipped ``hu_array_old`` column is the input).

DICOM is read here with SimpleITK's series reader, which gives the whole volume with its geometry in one call;
:mod:`lungkit.data.petct` reads DICOM with pydicom instead, because it needs each image's SOPInstanceUID, single
annotated slices and per-file PET rescaling.

Volumes must have an orthogonal direction matrix whose third index axis runs along the patient's z axis (axial
slices), because the models were trained on axial slices and predict slice by slice. Every slice goes through
:func:`lungkit.inference.predict_hu_slices` with the card's settings (its slice size, preprocessing, sliding window),
batched, with a progress bar. The probabilities are thresholded (the card's threshold unless ``threshold`` is
given), optionally restricted to the lungs found from HU (:func:`lungkit.postprocess.restrict_to_lungs`) and
post-processed as the card's result was. Several model folders make an ensemble (``lungkit predict MODEL_DIR
--ensemble-with OTHER_DIR ...``, as nnU-Net ensembles its folds): each model predicts by its own card and the
probabilities are averaged before the threshold (:func:`ensemble_probabilities`).

Outputs, in ``out_dir``, one folder per input (named after it) plus two files for all of them::

    <case>/mask<suffix>        the mask in the input's form and exact geometry (uint8 0/1): .nrrd for .nrrd,
                               .nii.gz for .nii.gz, .mhd + .raw for .mhd, ...; .nrrd for a DICOM series (it keeps
                               DICOM's double-precision origin exactly, which NIfTI's float32 header cannot)
    <case>/masks/<file>        slice folders: one mask per slice file, same name (PNG 0/255, NPY 0/1; TIFF and
                               JPEG inputs get <name>.png)
    <case>/predicted_masks.pkl Lung-RADS pickles: the source rows' label1 and a predicted_mask column (uint8 0/1)
    <case>/overlays/*.png      the slices with tumour, lung window, tumour in red
    <case>/tumours.csv         one row per connected tumour component (3-D for volumes, 2-D per slice otherwise)
    <case>/prediction.json     what was done: input, model card excerpt, settings, timings
    tumours.csv                every case's components, with a ``case`` column
    prediction.json            the run: model folder (every member of an ensemble), options, inputs, versions

Everything is written into a staging folder beside ``out_dir`` and renamed to ``out_dir`` only when every input
is done, so a crash or a refused input leaves no folder that looks finished (the staging folder is removed on
an error; a killed process leaves one whose name ends in ``.partial-<pid>``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit.data.volumes import uneven_slice_gaps, volume_suffix

#: Lung-RADS v1.1 size criterion for solid nodules: [low, high) mean diameter in mm -> category. Size alone: a
#: Lung-RADS category also depends on the nodule's type, growth and other findings, which a mask cannot tell.
LUNGRADS_SIZE_CLASSES_MM = (("LR2", 0.0, 6.0), ("LR3", 6.0, 8.0), ("LR4A", 8.0, 15.0), ("LR4B", 15.0, math.inf))
#: Margin (px) the lungs found from HU are grown by under ``lung_only`` (the real-data benchmark's value).
DEFAULT_LUNG_MARGIN_PX = 10
#: Largest |cos| between two index axes still called orthogonal, and smallest |z component| of the slice axis
#: still called axial.
ORTHOGONALITY_TOLERANCE = 1e-4
AXIAL_MIN_COSINE = 0.95
#: Relative spread of DICOM slice gaps tolerated (scanners round positions to ~0.01 mm).
SLICE_GAP_TOLERANCE = 0.01
#: File endings of a pickle input.
PICKLE_SUFFIXES = (".pkl", ".pickle")
#: The mask written for each volume suffix (the input's own form; .nhdr's detached data becomes one .nrrd).
MASK_SUFFIX_FOR = {".nii.gz": ".nii.gz", ".nii": ".nii", ".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mhd": ".mhd",
                   ".mha": ".mha"}
TUMOUR_COLUMNS = [
    "case", "component", "file", "slice_first", "slice_last", "n_slices", "voxels", "area_mm2", "volume_mm3",
    "equivalent_diameter_mm", "largest_axial_diameter_mm", "centroid_x", "centroid_y", "centroid_z", "world_x",
    "world_y", "world_z", "lungrads_size_class", "mean_probability",
]


class PredictInputError(ValueError):
    """An input ``lungkit predict`` cannot use; the message names the file or folder and what was expected."""


@dataclass
class PredictionCase:
    """One input read into HU slices, with what is needed to write its outputs back in its own form.

    Args:
        name: the output folder's name.
        kind: ``volume``, ``dicom``, ``slices`` or ``pickle``.
        source: the input path.
        hu: ``(N, H, W)`` float32 HU (volumes and series: ``[z, y, x]``); slices of one shape (see ``groups``).
        volume: the geometry of a volume or series (``lungkit.data.volumes.Volume``), else None.
        mask_suffix: the mask file's ending (volumes and series).
        files: slice files (``slices``), in natural order.
        pixel_spacing_mm: in-plane spacing of 2-D inputs when declared.
        frame: the pickle's rows (``pickle``).
        note: what was declared or assumed about the input, for the record.
    """

    name: str
    kind: str
    source: Path
    hu: list = field(default_factory=list)
    volume: object = None
    mask_suffix: str = ""
    files: list = field(default_factory=list)
    pixel_spacing_mm: float | None = None
    frame: object = None
    note: str = ""


# -- recognising and reading inputs -------------------------------------------------------------------------------


def input_kind(path: str | Path) -> str:
    """What an input is: ``volume``, ``dicom``, ``slices`` or ``pickle``.

    Raises:
        PredictInputError: for a missing path, a lone DICOM file, or a file of another kind.
    """
    from lungkit.data.slices import SLICE_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise PredictInputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = [child for child in path.iterdir() if child.is_file()]
        if any(child.suffix.lower() in SLICE_SUFFIXES for child in files):
            return "slices"
        return "dicom"
    if volume_suffix(path):
        return "volume"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "pickle"
    if path.suffix.lower() in SLICE_SUFFIXES:
        return "slices"
    if path.suffix.lower() == ".dcm":
        raise PredictInputError(f"{path}: a single DICOM file; pass the folder of its series ({path.parent})")
    raise PredictInputError(
        f"{path}: not an input lungkit predict reads; expected a volume (.nii, .nii.gz, .nrrd, .nhdr, .mhd, .mha), "
        "a DICOM series folder, a folder of PNG/TIFF/JPEG/NPY slices, or a Lung-RADS pickle (.pkl)"
    )


def check_axial_geometry(volume, source: str | Path) -> None:
    """Refuse a volume whose direction matrix is not orthogonal or whose slices are not axial.

    Raises:
        PredictInputError: naming the file and the matrix.
    """
    direction = np.asarray(volume.direction, np.float64)
    gram = direction.T @ direction
    if not np.allclose(gram, np.eye(3), atol=ORTHOGONALITY_TOLERANCE):
        raise PredictInputError(
            f"{source}: the direction matrix {np.round(direction, 6).tolist()} is not orthogonal (sheared or skewed "
            "voxel axes, e.g. a gantry-tilted acquisition); resample it onto an orthogonal grid first"
        )
    if abs(direction[2, 2]) < AXIAL_MIN_COSINE:
        raise PredictInputError(
            f"{source}: the slices are not axial (the slice axis points along {np.round(direction[:, 2], 4).tolist()} "
            "in patient space); the models were trained on axial slices: reorient the volume to axial first"
        )


def canonical_axial_view(direction) -> tuple:
    """How to show a volume's axial slices the way the training slices were stored, and how to undo it.

    The kit's training slices (Lung-RADS pickles, DICOM, LUNA16) are stored with the column index running to the
    patient's left and the row index to the posterior (DICOM's LPS with an identity in-plane direction). A NIfTI
    written by a RAS tool, or any volume with flipped or swapped in-plane axes, holds the same slice mirrored or
    turned; a 2-D model would see it so. This finds the transpose and flips that bring the in-plane axes to +x
    (left) and +y (posterior).

    Args:
        direction: the volume's 3x3 direction matrix (orthogonal, axial: see :func:`check_axial_geometry`).

    Returns:
        ``(to_canonical, from_canonical, description)``: two functions of a ``(N, H, W)`` stack and a note (empty
        when the volume is stored canonically already).
    """
    in_plane = np.asarray(direction, np.float64)[:2, :2]
    transpose = abs(in_plane[0, 0]) < abs(in_plane[1, 0])  # the column axis runs along world y: rows and columns swap
    if transpose:
        in_plane = in_plane[:, ::-1]
    flip_rows, flip_columns = in_plane[1, 1] < 0, in_plane[0, 0] < 0

    def to_canonical(stack):
        stack = np.swapaxes(stack, 1, 2) if transpose else stack
        if flip_rows:
            stack = stack[:, ::-1]
        if flip_columns:
            stack = stack[:, :, ::-1]
        return np.ascontiguousarray(stack)

    def from_canonical(stack):
        if flip_columns:
            stack = stack[:, :, ::-1]
        if flip_rows:
            stack = stack[:, ::-1]
        return np.ascontiguousarray(np.swapaxes(stack, 1, 2) if transpose else stack)

    steps = [step for step, done in (("rows and columns swapped", transpose), ("rows flipped", flip_rows),
                                     ("columns flipped", flip_columns)) if done]
    note = f"slices shown to the model in the training orientation ({', '.join(steps)}), masks written back" if steps \
        else ""
    return to_canonical, from_canonical, note


def read_dicom_series(folder: str | Path):
    """A DICOM series folder -> a :class:`lungkit.data.volumes.Volume` in HU, slices sorted by geometry.

    Raises:
        PredictInputError: when the folder holds no DICOM series, more than one series, or unevenly spaced slices.
    """
    import SimpleITK as sitk

    from lungkit.data.volumes import Volume

    folder = Path(folder)
    files = dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise PredictInputError(f"{folder}: SimpleITK could not read the series: {str(error).strip()}") from error
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    volume = Volume.from_sitk(image, source_path=str(folder))
    volume.array = volume.array.astype(np.float32)
    return volume


def dicom_series_files(folder: str | Path) -> list[str]:
    """The files of the one DICOM series in ``folder``, sorted by position along the slice normal (headers only).

    Raises:
        PredictInputError: when the folder holds no DICOM series, more than one series, or unevenly spaced slices.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        from lungkit.data.slices import SLICE_SUFFIXES

        below = sorted({str(path.parent) for path in folder.rglob("*.dcm")})[:5]
        slices_below = next((path.parent for path in folder.rglob("*") if path.suffix.lower() in SLICE_SUFFIXES), None)
        hint = (f"; DICOM files lie in subfolders, pass one series folder, e.g. {below[0]}" if below
                else f"; slice files lie in subfolders, pass one folder of slices, e.g. {slices_below}"
                if slices_below else "")
        count = sum(1 for child in folder.iterdir() if child.is_file())
        raise PredictInputError(f"{folder}: no DICOM series found ({count} file(s), none a DICOM image){hint}")
    if len(series_ids) > 1:
        counts = {uid: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in series_ids}
        listing = ", ".join(f"{uid} ({n} files)" for uid, n in counts.items())
        raise PredictInputError(
            f"{folder}: mixed series in one folder: {len(series_ids)} SeriesInstanceUIDs: {listing}; put each series "
            "in its own folder"
        )
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    _check_slice_positions(folder, files)
    return files


def _check_slice_positions(folder: Path, files: list[str]) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal (missing or duplicated slices)."""
    import pydicom

    if len(files) < 3:
        return
    positions = []
    for name in files:
        try:
            header = pydicom.dcmread(name, stop_before_pixels=True)
            orientation = np.asarray(header.ImageOrientationPatient, np.float64)
            position = np.asarray(header.ImagePositionPatient, np.float64)
        except (AttributeError, ValueError, OSError, pydicom.errors.InvalidDicomError) as error:
            raise PredictInputError(
                f"{name}: no usable ImageOrientationPatient / ImagePositionPatient ({error}); the slices of a series "
                "are placed by these tags"
            ) from error
        normal = np.cross(orientation[:3], orientation[3:])
        positions.append(float(np.dot(normal, position)))
    gaps, typical, uneven = uneven_slice_gaps(positions, SLICE_GAP_TOLERANCE)
    if typical == 0.0 or uneven.size:
        raise PredictInputError(
            f"{folder}: slices are not evenly spaced along their normal (gaps {np.round(gaps, 3).tolist()} mm): "
            "missing or duplicated slices; a mask on a regular grid would misplace them"
        )


def _case_name(path: Path, taken: set) -> str:
    suffix = volume_suffix(path)
    stem = path.name[: -len(suffix)] if suffix else (path.stem if path.is_file() else path.name)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "input"
    name, number = stem, 2
    while name in taken:
        name, number = f"{stem}_{number}", number + 1
    taken.add(name)
    return name


def check_input(path: str | Path, intensity=None) -> str:
    """Refuse an input before any pixel is read or anything written: its kind, and what headers can tell.

    Volumes: SimpleITK reads the header only (3-D, one component, orthogonal axial geometry). DICOM folders: one
    series, evenly spaced, orthogonal axial orientation (headers only). Slice folders: at least one slice file and a
    declared intensity. Pickles: only the kind (the restricted loader checks the rest when the case is read; a
    failure then still leaves nothing, the outputs being staged).

    Returns:
        The input's kind.

    Raises:
        PredictInputError: naming the input and what is wrong.
    """
    import SimpleITK as sitk

    from lungkit.data.slices import SLICE_SUFFIXES

    path = Path(path)
    kind = input_kind(path)
    if kind == "volume":
        if volume_suffix(path) == ".mhd":
            from lungkit.data.volumes import _check_metaimage_data_file

            try:
                _check_metaimage_data_file(path)
            except (ValueError, FileNotFoundError) as error:
                raise PredictInputError(str(error)) from error
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise PredictInputError(f"{path}: SimpleITK could not read this file: {str(error).strip()}") from error
        if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
            raise PredictInputError(f"{path}: expected a 3-D volume with one value per voxel, got "
                                    f"{reader.GetDimension()}-D with {reader.GetNumberOfComponents()} component(s)")
        check_axial_geometry(_Geometry(np.array(reader.GetDirection()).reshape(3, 3)), path)
    elif kind == "dicom":
        import pydicom

        files = dicom_series_files(path)
        try:
            orientation = np.asarray(pydicom.dcmread(files[0], stop_before_pixels=True).ImageOrientationPatient, float)
        except (AttributeError, ValueError, OSError, pydicom.errors.InvalidDicomError) as error:
            raise PredictInputError(f"{files[0]}: no usable ImageOrientationPatient ({error})") from error
        row, column = orientation[:3], orientation[3:]
        check_axial_geometry(_Geometry(np.column_stack([row, column, np.cross(row, column)])), path)
    elif kind == "slices":
        if intensity is None:
            raise PredictInputError(
                f"{path}: slice files need their intensity declared (--intensity hu|display8|unit): what a pixel "
                "value means in HU is never guessed"
            )
        if path.is_dir() and not any(child.suffix.lower() in SLICE_SUFFIXES for child in path.iterdir()):
            raise PredictInputError(f"{path}: no slice files ({', '.join(SLICE_SUFFIXES)})")
    return kind


@dataclass
class _Geometry:
    """The direction alone, for :func:`check_axial_geometry` on a header."""

    direction: np.ndarray


def read_case(path: str | Path, name: str, intensity=None, pixel_spacing_mm: float | None = None) -> PredictionCase:
    """Read one input into a :class:`PredictionCase`.

    Args:
        path: the input.
        name: its output folder's name.
        intensity: for slice files: ``hu``, ``display8``, ``unit`` or an :class:`~lungkit.data.slices.IntensityMap`.
        pixel_spacing_mm: in-plane spacing of slice files and pickles (for mm sizes), if known.

    Raises:
        PredictInputError: for anything the input lacks (see the module docstring).
    """
    from lungkit.data.volumes import read_volume

    path = Path(path)
    kind = input_kind(path)
    case = PredictionCase(name=name, kind=kind, source=path, pixel_spacing_mm=pixel_spacing_mm)
    if kind in ("volume", "dicom"):
        if kind == "volume":
            try:
                volume = read_volume(path)
            except (ValueError, FileNotFoundError) as error:
                raise PredictInputError(str(error)) from error
            case.mask_suffix = MASK_SUFFIX_FOR[volume_suffix(path)]
        else:
            volume = read_dicom_series(path)
            case.mask_suffix = ".nrrd"
        check_axial_geometry(volume, path)
        case.volume = volume
        case.hu = [np.asarray(volume.array, np.float32)]
        case.note = "HU as stored" if kind == "volume" else "HU from the series' rescale slope and intercept"
    elif kind == "slices":
        _read_slice_files(case, intensity)
    else:
        _read_pickle(case)
    return case


def _read_slice_files(case: PredictionCase, intensity) -> None:
    from lungkit.data.slices import (
        SLICE_SUFFIXES,
        SliceSourceError,
        _natural_key,
        calibrate_display_map,
        intensity_map,
        read_slice_file,
    )

    path = case.source
    files = [path] if path.is_file() else sorted(
        (child for child in path.iterdir() if child.is_file() and child.suffix.lower() in SLICE_SUFFIXES),
        key=lambda child: _natural_key(child.name),
    )
    if intensity is None:
        raise PredictInputError(
            f"{path}: slice files need their intensity declared (--intensity hu|display8|unit): what a pixel value "
            "means in HU is never guessed"
        )
    mapping = intensity_map(intensity)
    raw = []
    for file in files:
        try:
            raw.append(read_slice_file(file))
        except SliceSourceError as error:
            raise PredictInputError(str(error)) from error
    integer_values = [values.ravel() for values in raw if values.dtype.kind in "iu"]
    if mapping.kind == "display8" and integer_values:
        # as the slice-folder conversion does for each patient (a folder here is one patient's slices): display
        # renderings differ in window between exports, so the map is estimated from the folder's own histogram
        mapping = calibrate_display_map(np.concatenate(integer_values), mapping)
    case.files, case.hu = files, [mapping.to_hu(values) for values in raw]
    case.note = f"intensity {mapping.describe()}"


def _read_pickle(case: PredictionCase) -> None:
    from lungkit.data.lungrads import load_lungrads_pickle

    try:
        frame = load_lungrads_pickle(case.source)
    except Exception as error:  # the safe loader raises its own error kinds, each naming the file
        raise PredictInputError(f"{case.source}: {error}") from error
    case.frame = frame
    case.hu = [np.asarray(value, np.float32) for value in frame["hu_array_old"]]
    case.note = "HU from the unclipped hu_array_old column"


# -- measuring tumours --------------------------------------------------------------------------------------------


def lungrads_size_class(diameter_mm: float) -> str:
    """The Lung-RADS v1.1 solid-nodule size category of a diameter (``unknown`` when it is NaN)."""
    if diameter_mm is None or not math.isfinite(diameter_mm):
        return "unknown"
    return next(label for label, low, high in LUNGRADS_SIZE_CLASSES_MM if low <= diameter_mm < high)


def tumour_table(mask: np.ndarray, probabilities: np.ndarray, volume=None, pixel_spacing_mm: float | None = None,
                 files: list | None = None) -> pd.DataFrame:
    """One row per connected tumour component of a mask.

    With a ``volume`` the components are 3-D (26-connected) and measured in its geometry: ``volume_mm3`` (voxels x
    voxel volume), ``equivalent_diameter_mm`` (the sphere of equal volume), ``largest_axial_diameter_mm`` (the circle
    of equal area on the component's largest axial cross-section, what a reader measures on a slice, and what the
    Lung-RADS size class is taken from), centroid as continuous index ``(x, y, z)`` and in world mm. Without a volume
    every slice is its own image and components are 2-D (8-connected): ``area_mm2`` and both diameters are those of
    the circle of equal area (NaN without ``pixel_spacing_mm``), no world position.

    Args:
        mask: ``(N, H, W)`` 0/1 (``[z, y, x]`` for a volume); for 2-D inputs also a list of 2-D masks of any sizes.
        probabilities: the probabilities of the same shape(s).
        volume: the geometry (:class:`lungkit.data.volumes.Volume`) of a volume or series.
        pixel_spacing_mm: in-plane spacing of 2-D inputs.
        files: the slice file of each slice (2-D inputs), for the ``file`` column.

    Returns:
        A DataFrame with :data:`TUMOUR_COLUMNS` except ``case``.
    """
    from scipy import ndimage

    rows = []
    if volume is not None:
        mask = np.asarray(mask) > 0
        spacing_x, spacing_y, spacing_z = volume.spacing
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        for component, region in enumerate(ndimage.find_objects(labels), start=1):
            inside = labels[region] == component
            zs, ys, xs = np.nonzero(inside)
            zs, ys, xs = zs + region[0].start, ys + region[1].start, xs + region[2].start
            voxels = int(inside.sum())
            volume_mm3 = voxels * spacing_x * spacing_y * spacing_z
            largest_area = float(inside.sum(axis=(1, 2)).max()) * spacing_x * spacing_y
            axial_diameter = 2.0 * math.sqrt(largest_area / math.pi)
            centroid = np.array([xs.mean(), ys.mean(), zs.mean()])
            from lungkit.data.volumes import index_to_world

            world = index_to_world(volume, centroid)
            rows.append({
                "component": component, "file": "", "slice_first": int(zs.min()), "slice_last": int(zs.max()),
                "n_slices": int(zs.max() - zs.min() + 1), "voxels": voxels, "area_mm2": largest_area,
                "volume_mm3": volume_mm3, "equivalent_diameter_mm": (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0),
                "largest_axial_diameter_mm": axial_diameter, "centroid_x": centroid[0], "centroid_y": centroid[1],
                "centroid_z": centroid[2], "world_x": world[0], "world_y": world[1], "world_z": world[2],
                "lungrads_size_class": lungrads_size_class(axial_diameter),
                "mean_probability": float(probabilities[labels == component].mean()),
            })
    else:
        spacing = float("nan") if pixel_spacing_mm is None else float(pixel_spacing_mm)
        number = 0
        for index, (slice_mask, slice_probabilities) in enumerate(zip(mask, probabilities)):
            slice_probabilities = np.asarray(slice_probabilities)
            labels, count = ndimage.label(np.asarray(slice_mask) > 0, structure=np.ones((3, 3), bool))
            for component in range(1, count + 1):
                inside = labels == component
                ys, xs = np.nonzero(inside)
                number += 1
                area_mm2 = float(inside.sum()) * spacing * spacing
                diameter = 2.0 * math.sqrt(area_mm2 / math.pi) if math.isfinite(area_mm2) else float("nan")
                rows.append({
                    "component": number, "file": str(files[index]) if files else "", "slice_first": index,
                    "slice_last": index, "n_slices": 1, "voxels": int(inside.sum()), "area_mm2": area_mm2,
                    "volume_mm3": float("nan"), "equivalent_diameter_mm": diameter,
                    "largest_axial_diameter_mm": diameter, "centroid_x": xs.mean(), "centroid_y": ys.mean(),
                    "centroid_z": float(index), "world_x": float("nan"), "world_y": float("nan"),
                    "world_z": float("nan"), "lungrads_size_class": lungrads_size_class(diameter),
                    "mean_probability": float(slice_probabilities[inside].mean()),
                })
    return pd.DataFrame(rows, columns=[column for column in TUMOUR_COLUMNS if column != "case"])


# -- writing ------------------------------------------------------------------------------------------------------


def overlay_image(hu: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A BGR uint8 picture of one slice in the lung window [-1000, 400] HU with the tumour tinted red and outlined."""
    import cv2

    grey = (np.clip((np.asarray(hu, np.float32) + 1000.0) / 1400.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    picture = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    inside = np.asarray(mask) > 0
    picture[inside] = 0.6 * picture[inside] + 0.4 * np.array([0.0, 0.0, 255.0], np.float32)
    picture = picture.astype(np.uint8)
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, (0, 0, 255), 1)
    return picture


def _write_image(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    path.write_bytes(encoded.tobytes())


def _slice_output_names(file: Path) -> tuple[str, str]:
    """``(mask name, overlay name)`` of a slice file: a PNG keeps its name, an NPY mask stays NPY, TIFF and JPEG
    inputs get lossless PNG masks (a JPEG mask would blur its edge); names stay distinct for distinct inputs."""
    suffix = file.suffix.lower()
    if suffix == ".png":
        return file.name, file.name
    if suffix == ".npy":
        return file.name, f"{file.name}.png"
    return f"{file.name}.png", f"{file.name}.png"


def _write_case_masks(case: PredictionCase, case_dir: Path, masks: list) -> list[str]:
    """Write the masks in the input's own form; returns the written paths, relative to ``case_dir``."""
    from lungkit.data.volumes import with_array, write_volume

    if case.kind in ("volume", "dicom"):
        target = case_dir / f"mask{case.mask_suffix}"
        write_volume(with_array(case.volume, masks[0].astype(np.uint8)), target)
        return [target.name]
    if case.kind == "slices":
        folder = case_dir / "masks"
        folder.mkdir()
        written = []
        for file, mask in zip(case.files, masks):
            target = folder / _slice_output_names(file)[0]
            if file.suffix.lower() == ".npy":
                np.save(target, mask.astype(np.uint8))
            else:
                _write_image(target, (mask > 0).astype(np.uint8) * 255)
            written.append(f"masks/{target.name}")
        return written
    frame = pd.DataFrame({"label1": case.frame["label1"].to_numpy(),
                          "predicted_mask": [mask.astype(np.uint8) for mask in masks]}, index=case.frame.index)
    frame.to_pickle(case_dir / "predicted_masks.pkl", protocol=4)
    return ["predicted_masks.pkl"]


def _write_overlays(case: PredictionCase, case_dir: Path, masks: list) -> int:
    folder = case_dir / "overlays"
    folder.mkdir()
    written = 0
    for stack_index, (hu_stack, mask_stack) in enumerate(zip(case.hu, masks)):
        hu_stack, mask_stack = np.asarray(hu_stack), np.asarray(mask_stack)
        if hu_stack.ndim == 2:
            hu_stack, mask_stack = hu_stack[None], mask_stack[None]
        for index in np.flatnonzero(mask_stack.reshape(len(mask_stack), -1).any(axis=1)):
            if case.kind == "slices":
                name = _slice_output_names(case.files[stack_index])[1]
            elif case.kind == "pickle":
                name = f"row{case.frame.index[stack_index]}.png"
            else:
                name = f"slice{int(index):04d}.png"
            _write_image(folder / name, overlay_image(hu_stack[index], mask_stack[index]))
            written += 1
    return written


# -- the command --------------------------------------------------------------------------------------------------


def select_device(device: str) -> str:
    """Make TensorFlow use ``cpu``, ``gpu`` or (``auto``) whatever it finds; returns the device used.

    Raises:
        ValueError: for ``gpu`` on a machine where TensorFlow sees none, or an unknown name.
    """
    import tensorflow as tf

    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, got {device!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ValueError("--device gpu: TensorFlow sees no GPU on this machine (use --device cpu)")
    if device == "cpu" and gpus:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError as error:  # devices already initialised in this process
            raise ValueError(f"--device cpu: TensorFlow has already started on the GPU ({error})") from error
    return "gpu" if device != "cpu" and gpus else "cpu"


def _postprocess_method(card: dict) -> str:
    used = card["postprocessing"].get("used", "none")
    return {"dense_crf": "auto", "scipy_fallback": "fallback"}.get(used, "none")


def _staging_for(out_dir: Path) -> Path:
    return out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")


def ensemble_probabilities(members: list, hu_slices: np.ndarray, batch_size: int = 8, progress: bool = False,
                           description: str = "predict") -> np.ndarray:
    """The mean of several models' probabilities for the same HU slices, each model predicting by its own settings.

    Args:
        members: ``(model, settings)`` pairs (:func:`lungkit.model_card.inference_settings` for each model's card).
        hu_slices: ``(N, H, W)`` slices in Hounsfield units.
        batch_size, progress, description: as :func:`lungkit.inference.predict_hu_slices` (one progress bar per
            model).

    Returns:
        float32 ``(N, H, W)`` averaged probabilities (a running sum: one model's output in memory at a time).
    """
    from lungkit import inference

    total = None
    for index, (model, settings) in enumerate(members):
        probabilities = inference.predict_hu_slices(model, hu_slices, settings, batch_size=batch_size,
                                                    progress=progress,
                                                    description=f"{description} [model {index + 1}/{len(members)}]")
        total = probabilities if total is None else total + probabilities
    return (total / len(members)).astype(np.float32)


def predict(
    model_dir: str | Path | list,
    inputs: list,
    out_dir: str | Path,
    *,
    threshold: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
    lung_only: bool = False,
    lung_margin_px: int = DEFAULT_LUNG_MARGIN_PX,
    intensity=None,
    pixel_spacing_mm: float | None = None,
    postprocess: bool = True,
    flips: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Apply the model in ``model_dir`` (or an ensemble of models) to every input and write masks, overlays and tumour
    tables to ``out_dir``.

    Args:
        model_dir: folder with ``model.keras`` and ``model_card.json``; or a list of such folders, an ensemble (as
            nnU-Net ensembles its folds): each model predicts every slice by its own card (slice size, preprocessing,
            window) and their probabilities are averaged on the input's grid before the threshold and
            post-processing. The cards must agree on the threshold (or pass ``threshold``) and on the post-processing
            (or pass ``postprocess=False``).
        inputs: volume files, DICOM series folders, slice folders or files, Lung-RADS pickles.
        out_dir: output folder; must not exist unless ``overwrite``.
        threshold: probability threshold; the card's when None.
        batch_size: slices (or windows) per forward pass.
        device: ``auto``, ``cpu`` or ``gpu``.
        overwrite: replace an existing ``out_dir`` (only once everything else has succeeded).
        lung_only: keep predictions only inside the lungs found from HU, grown by ``lung_margin_px``.
        lung_margin_px: see ``lung_only``.
        intensity: what slice files' values mean (required for slice inputs).
        pixel_spacing_mm: in-plane spacing of slice files and pickles, for sizes in mm and the size class.
        postprocess: apply the card's post-processing (dense CRF or its fallback) when it has one.
        flips: test-time flips.
        progress: show progress bars.

    Returns:
        Every case's tumour components (the table written to ``out_dir/tumours.csv``).

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False (checked before anything is read).
        lungkit.model_card.ModelCardError: a model folder without a usable card.
        PredictInputError: an input that cannot be used (every input's header is checked before the model loads;
            a failure found later, while reading pixels, still leaves nothing: the outputs are staged).
        ValueError: a threshold outside (0, 1), a non-positive batch size, an unavailable device; an ensemble whose
            cards disagree on the threshold or the post-processing (without ``threshold`` / ``postprocess=False``),
            or that names one folder twice.
    """
    from lungkit import inference
    from lungkit.model_card import inference_settings, load_model_card, load_model_with_card

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: output folder exists; choose another --out or pass --overwrite")
    if not inputs:
        raise PredictInputError("no input given")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    model_dirs = [Path(folder) for folder in ([model_dir] if isinstance(model_dir, (str, Path)) else model_dir)]
    if not model_dirs:
        raise ValueError("no model folder given")
    resolved = [folder.resolve() for folder in model_dirs]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"an ensemble names the same model folder twice: {[str(f) for f in model_dirs]}")
    # a folder without a usable card, or cards that cannot be averaged, are refused before any input is read
    cards = [load_model_card(folder) for folder in model_dirs]
    if threshold is None and len({float(card["threshold"]) for card in cards}) > 1:
        raise ValueError("the ensemble's cards give different thresholds ("
                         + ", ".join(f"{folder}: {card['threshold']}" for folder, card in zip(model_dirs, cards))
                         + "); pass --threshold")
    methods = [_postprocess_method(card) for card in cards]
    if postprocess and len(set(methods)) > 1:
        raise ValueError("the ensemble's cards give different post-processing ("
                         + ", ".join(f"{folder}: {method}" for folder, method in zip(model_dirs, methods))
                         + "); pass --no-postprocess to threshold the averaged probabilities")
    for path in inputs:  # headers only: a bad input is refused before the model loads or anything is written
        check_input(path, intensity)
    taken: set = set()
    names = [_case_name(Path(path), taken) for path in inputs]
    device_used = select_device(device)
    members = []
    for folder in model_dirs:
        model, card = load_model_with_card(folder)
        members.append((model, card, inference_settings(card, flips=flips)))
    model, card, settings = members[0]
    threshold = float(card["threshold"] if threshold is None else threshold)
    method = _postprocess_method(card) if postprocess else "none"
    if len(members) == 1:
        predict_fn = inference.predict_hu_slices
    else:
        pairs = [(member_model, member_settings) for member_model, _, member_settings in members]

        def predict_fn(_model, hu_slices, _settings, batch_size, progress, description):
            return ensemble_probabilities(pairs, hu_slices, batch_size=batch_size, progress=progress,
                                          description=description)

    staging = _staging_for(out_dir)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        tables = []
        records = []
        for path, name in zip(inputs, names):
            # one case in memory at a time: a long list of CT volumes needs the memory of the largest, not the sum
            case = read_case(path, name, intensity, pixel_spacing_mm)
            table, record = _predict_case(case, model, settings, staging / case.name, threshold=threshold,
                                          batch_size=batch_size, lung_only=lung_only, lung_margin_px=lung_margin_px,
                                          method=method, progress=progress, predict_fn=predict_fn)
            del case
            tables.append(table)
            records.append(record)
        everything = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=TUMOUR_COLUMNS)
        everything.to_csv(staging / "tumours.csv", index=False)
        run = {
            "model_dir": str(model_dirs[0].resolve()),
            "model": card["model"], "model_input": card["input"], "protocol_line": card["result"]["protocol_line"],
            "threshold": threshold, "lung_only": bool(lung_only),
            "lung_margin_px": int(lung_margin_px) if lung_only else None, "batch_size": batch_size,
            "device": device_used, "inference": settings.describe(), "cases": records,
            "ensemble": None if len(members) == 1 else {
                "combination": f"mean of {len(members)} models' probabilities, then the threshold",
                "members": [{"model_dir": str(folder.resolve()), "model": member_card["model"],
                             "protocol_line": member_card["result"]["protocol_line"],
                             "inference": member_settings.describe()}
                            for folder, (_, member_card, member_settings) in zip(model_dirs, members)],
            },
            "wall_time_s": round(time.perf_counter() - started, 2),
            "lungkit_version": _lungkit_version(),
        }
        (staging / "prediction.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
        _move_into_place(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return everything


def _lungkit_version() -> str:
    import lungkit

    return lungkit.__version__


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir}: appeared while predicting; the results are not moved over it")
        trash = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, trash)
        os.replace(staging, out_dir)
        shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
        return
    os.replace(staging, out_dir)


def _predict_case(case: PredictionCase, model, settings, case_dir: Path, *, threshold: float, batch_size: int,
                  lung_only: bool, lung_margin_px: int, method: str, progress: bool, predict_fn):
    """Predict, post-process and write one case; returns ``(tumour table, record)``.

    Slices of a 2-D input are predicted in stacks of equal shape (one stack per slice size), so they are batched
    like a volume's.
    """
    from lungkit.postprocess import refine_batch, restrict_to_lungs

    case_dir.mkdir()
    started = time.perf_counter()
    if case.kind in ("volume", "dicom"):
        groups = [[0]]
        stacks = [np.asarray(case.hu[0], np.float32)]
    else:
        by_shape: dict = {}
        for index, hu in enumerate(case.hu):
            by_shape.setdefault(np.shape(hu), []).append(index)
        groups = list(by_shape.values())
        stacks = [np.stack([case.hu[index] for index in group]) for group in groups]
    masks, probabilities, unrestricted, method_used = [None] * len(case.hu), [None] * len(case.hu), 0, "none"
    orientation_note = ""
    if case.volume is not None:
        to_canonical, from_canonical, orientation_note = canonical_axial_view(case.volume.direction)
    else:  # 2-D inputs carry no orientation: they are taken as stored
        to_canonical = from_canonical = np.asarray
    for group, stack in zip(groups, stacks):
        stack_probabilities = from_canonical(predict_fn(model, to_canonical(stack), settings, batch_size=batch_size,
                                                        progress=progress, description=case.name))
        if lung_only:
            stack_probabilities, missed = restrict_to_lungs(stack_probabilities, stack, int(lung_margin_px))
            unrestricted += missed
        if method == "none":
            stack_masks = (stack_probabilities >= threshold).astype(np.uint8)
        else:
            display = np.clip((stack + 1000.0) / 1400.0, 0.0, 1.0)  # the lung window evaluation refines on
            stack_masks, method_used = refine_batch(stack_probabilities, display, method=method, t=threshold,
                                                    intensity_range=(0.0, 1.0))
        if case.kind in ("volume", "dicom"):
            masks, probabilities = [stack_masks], [stack_probabilities]
        else:
            for position, index in enumerate(group):
                masks[index], probabilities[index] = stack_masks[position], stack_probabilities[position]
    seconds = time.perf_counter() - started
    slices = sum(len(stack) for stack in stacks)
    written = _write_case_masks(case, case_dir, masks)
    if case.kind in ("volume", "dicom"):
        table = tumour_table(masks[0], probabilities[0], volume=case.volume)
    else:
        names = ([file.name for file in case.files] if case.kind == "slices"
                 else [f"row {index}" for index in case.frame.index])
        table = tumour_table(masks, probabilities, pixel_spacing_mm=case.pixel_spacing_mm, files=names)
    overlays = _write_overlays(case, case_dir, masks)
    table.insert(0, "case", case.name)
    table.to_csv(case_dir / "tumours.csv", index=False)
    record = {
        "case": case.name, "input": str(case.source.resolve()), "kind": case.kind,
        "input_note": "; ".join(note for note in (case.note, orientation_note) if note),
        "slices": slices, "slices_with_tumour": overlays, "components": len(table), "masks": written,
        "postprocess": method_used,
        "lung_restriction": (f"inside the lungs from HU grown by {int(lung_margin_px)} px; {unrestricted} slice(s) "
                             "without a plausible lung left unrestricted") if lung_only else "none",
        "prediction_seconds": round(seconds, 2), "slices_per_second": round(slices / seconds, 2) if seconds else None,
    }
    if case.volume is not None:
        record["geometry"] = {"size_xyz": list(case.volume.size_xyz), "spacing": list(case.volume.spacing),
                              "origin": list(case.volume.origin), "direction": case.volume.direction.ravel().tolist()}
    (case_dir / "prediction.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return table, record


__all__ = [
    "LUNGRADS_SIZE_CLASSES_MM",
    "PredictInputError",
    "PredictionCase",
    "canonical_axial_view",
    "check_axial_geometry",
    "check_input",
    "dicom_series_files",
    "ensemble_probabilities",
    "input_kind",
    "lungrads_size_class",
    "overlay_image",
    "predict",
    "read_case",
    "read_dicom_series",
    "select_device",
    "tumour_table",
]
