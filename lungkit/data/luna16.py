"""LUNA16: series files, annotation tables, nodule slices and export to the kit dataset format.

LUNA16 layout (Setio et al. 2017; paper 003's LUNA16 data)::

    <root>/subset0/<seriesuid>.mhd + .raw   ... subset9/
    <root>/annotations.csv    seriesuid, coordX, coordY, coordZ, diameter_mm      (world mm; one row per nodule)
    <root>/candidates.csv     seriesuid, coordX, coordY, coordZ, class            (1 = nodule, 0 = not)

LUNA16 has no masks. :func:`convert_luna16_to_kit` therefore draws, on every slice a nodule spans, the disc
a sphere of the annotated diameter shows on that slice, and flags those rows ``mask_source =
"disc_from_diameter"``. Where real label volumes exist (``label_dir``), they are used instead
(``mask_source = "label_volume"``). Each row also carries the box prompt SAM gets (``prompt_box``).

Malignancy: LUNA16 itself has none (it comes from LIDC-IDRI's reader scores 1-5). An optional
``malignancy.csv`` (seriesuid, nodule_index, malignancy) adds it; paper 003's rule
(:func:`malignancy_to_label`) makes it binary.

Splits are by series (one series = one patient scan in LUNA16), seeded, so a patient never crosses splits.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit.data import kit_dataset
from lungkit.data.export import (
    DATASET_INFO_NAME,
    move_into_place,
    staging_dir,
    tumour_statistics,
    write_png,
    write_text_atomic,
)
from lungkit.data.nodule_slices import (
    box_around_disc,
    disc_mask,
    format_box,
    nodule_slice_indices,
    sphere_section_radius_mm,
)
from lungkit.data.volumes import (
    VOLUME_SUFFIXES,
    Volume,
    check_same_geometry,
    nearest_voxel_zyx,
    read_volume,
    resample_volume,
    world_to_index,
)
from lungkit.progress import progress_bar

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
MALIGNANCY_COLUMNS = ("seriesuid", "nodule_index", "malignancy")
#: Columns the LUNA16 export adds to ``kit_dataset.MANIFEST_COLUMNS``.
EXTRA_MANIFEST_COLUMNS = [
    "prompt_box",
    "mask_source",
    "seriesuid",
    "nodule_index",
    "z_index",
    "diameter_mm",
    "centre_x_px",
    "centre_y_px",
    "centre_z_index",
    "slice_offset_mm",
    "section_diameter_mm",
    "malignancy",
    "label_binary",
    "slice_rule",
    "pixel_spacing_y_mm",
    "slice_spacing_mm",
]
BOX_SIZES = ("section", "nodule", "mask")


# ----------------------------------------------------------------------------------------------- tables


def _read_table(path: Path, expected: tuple[str, ...], kind: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {kind} file not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in expected if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; a {kind} file needs the columns {list(expected)} "
            f"(found {list(table.columns)})"
        )
    return table


def _parse_number(path: Path, row: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        # row is 0-based over data rows; line counts the header as line 1.
        raise ValueError(f"{path}: row {row} (line {row + 2}): column {column!r} = {text!r} is not a finite number")
    return value


def _parse_coordinates(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    parsed = pd.DataFrame({"seriesuid": table["seriesuid"].str.strip()})
    for row, uid in enumerate(parsed["seriesuid"]):
        if not uid:
            raise ValueError(f"{path}: row {row} (line {row + 2}): empty seriesuid")
    for column in ("coordX", "coordY", "coordZ"):
        parsed[column] = [_parse_number(path, row, column, text) for row, text in enumerate(table[column])]
    return parsed


def read_annotations(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a LUNA16 ``annotations.csv``.

    Args:
        path: the CSV file; columns ``ANNOTATION_COLUMNS`` (extra columns are kept as text).

    Returns:
        DataFrame with the columns above as numbers, plus ``nodule_index`` (0-based order of the nodule among its
        series' rows in the file) and ``source_row`` (0-based data row in the file).

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming the file, and the row and column where a value is bad (missing columns, a
            non-numeric coordinate, a diameter <= 0, an empty seriesuid).
    """
    path = Path(path)
    table = _read_table(path, ANNOTATION_COLUMNS, "LUNA16 annotations")
    parsed = _parse_coordinates(path, table)
    diameters = [_parse_number(path, row, "diameter_mm", text) for row, text in enumerate(table["diameter_mm"])]
    for row, diameter in enumerate(diameters):
        if diameter <= 0:
            raise ValueError(f"{path}: row {row} (line {row + 2}): diameter_mm = {diameter} must be > 0")
    parsed["diameter_mm"] = diameters
    for column in table.columns:
        if column not in ANNOTATION_COLUMNS:
            parsed[column] = table[column]
    parsed["source_row"] = np.arange(len(parsed))
    parsed["nodule_index"] = parsed.groupby("seriesuid", sort=False).cumcount()
    return parsed


def read_candidates(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a LUNA16 ``candidates.csv`` (or ``candidates_V2.csv``).

    Args:
        path: the CSV file; columns ``CANDIDATE_COLUMNS``.

    Returns:
        DataFrame with numeric coordinates, ``class`` as int (0 or 1) and ``source_row``.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming the file, row and column of a bad value (class must be 0 or 1).
    """
    path = Path(path)
    table = _read_table(path, CANDIDATE_COLUMNS, "LUNA16 candidates")
    parsed = _parse_coordinates(path, table)
    classes = []
    for row, text in enumerate(table["class"]):
        value = _parse_number(path, row, "class", text)
        if value not in (0.0, 1.0):
            raise ValueError(f"{path}: row {row} (line {row + 2}): class = {text!r}; expected 0 or 1")
        classes.append(int(value))
    parsed["class"] = classes
    parsed["source_row"] = np.arange(len(parsed))
    return parsed


def read_malignancy(path: str | os.PathLike) -> pd.DataFrame:
    """Read a malignancy table: ``seriesuid, nodule_index, malignancy`` (score 1-5, may be a mean of readers).

    ``nodule_index`` is the 0-based order of the nodule among its series' rows in ``annotations.csv``.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: naming file, row and column of a bad value.
    """
    path = Path(path)
    table = _read_table(path, MALIGNANCY_COLUMNS, "malignancy")
    rows = []
    for row, record in table.iterrows():
        index = _parse_number(path, row, "nodule_index", record["nodule_index"])
        score = _parse_number(path, row, "malignancy", record["malignancy"])
        if index < 0 or not float(index).is_integer():
            raise ValueError(f"{path}: row {row} (line {row + 2}): nodule_index = {index} is not an index >= 0")
        if not 1.0 <= score <= 5.0:
            raise ValueError(f"{path}: row {row} (line {row + 2}): malignancy = {score} is outside 1..5")
        rows.append((record["seriesuid"].strip(), int(index), score))
    return pd.DataFrame(rows, columns=list(MALIGNANCY_COLUMNS))


def malignancy_to_label(score) -> int | None:
    """Paper 003's rule: malignant (1) if score > 3, benign (0) if score < 3, dropped (None) at exactly 3.

    Args:
        score: malignancy 1-5 (a single reader's score or the mean over readers); None or NaN = unknown.

    Returns:
        1, 0, or None for 3 and for unknown scores.

    Raises:
        ValueError: for a score outside [1, 5].
    """
    if score is None:
        return None
    score = float(score)
    if math.isnan(score):
        return None
    if not 1.0 <= score <= 5.0:
        raise ValueError(f"malignancy score {score} is outside 1..5")
    if score > 3.0:
        return 1
    if score < 3.0:
        return 0
    return None


def _label_name(score) -> str:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return "unknown"
    return {1: "malignant", 0: "benign", None: "indeterminate"}[malignancy_to_label(score)]


# ----------------------------------------------------------------------------------------------- files


def find_luna16_series(root: str | os.PathLike) -> dict[str, Path]:
    """Map every ``subset*/<seriesuid>.mhd`` under ``root`` to its path.

    Raises:
        FileNotFoundError: if ``root`` is missing or holds no ``subset*/*.mhd``.
        ValueError: if one seriesuid appears in two subsets.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LUNA16 folder not found")
    series: dict[str, Path] = {}
    for path in sorted(root.glob("subset*/*.mhd")):
        uid = path.name[: -len(".mhd")]
        if uid in series:
            raise ValueError(f"series {uid} appears twice: {series[uid]} and {path}")
        series[uid] = path
    if not series:
        raise FileNotFoundError(f"{root}: no subset*/<seriesuid>.mhd files; expected the LUNA16 layout")
    return series


def split_series(uids, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """Assign whole series to train / val / test, seeded.

    The sorted uids are shuffled with ``numpy.random.default_rng(seed)``; test takes the first
    ``round(n * f_test)``, val the next ``round(n * f_val)``, train the rest. With at least three series, every
    split with a non-zero fraction gets at least one.

    Args:
        uids: series ids (duplicates are ignored).
        fractions: ``(train, val, test)``, summing to 1.
        seed: shuffle seed.

    Returns:
        ``{seriesuid: split}``.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be (train, val, test) >= 0 summing to 1, got {fractions}")
    uids = sorted(set(uids))
    order = [uids[i] for i in np.random.default_rng(seed).permutation(len(uids))]
    n = len(order)
    n_test = int(math.floor(n * fractions[2] + 0.5))
    n_val = int(math.floor(n * fractions[1] + 0.5))
    if n >= 3:
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        if fractions[0] > 0:
            while n - n_test - n_val < 1:
                if n_val >= n_test and n_val > 0:
                    n_val -= 1
                else:
                    n_test -= 1
    n_test = min(n_test, n)
    n_val = min(n_val, n - n_test)
    assignment = {}
    for position, uid in enumerate(order):
        assignment[uid] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return assignment


def _find_label_volume(label_dir: Path, uid: str) -> Path | None:
    for suffix in VOLUME_SUFFIXES:
        candidate = label_dir / f"{uid}{suffix}"
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------- nodule slices


@dataclass
class NoduleSlice:
    """One axial slice of one nodule, ready for export or for SAM.

    Attributes:
        z_index: slice index in the (resampled) volume.
        hu: float32 HU slice ``(height, width)``.
        mask: bool nodule mask on this slice.
        box: prompt box ``(x0, y0, x1, y1)`` in continuous pixel coordinates.
        centre_xy: continuous pixel position of the nodule centre.
        centre_z_index: continuous slice index of the nodule centre.
        offset_mm: signed distance (mm) of this slice's centre plane from the nodule centre.
        section_diameter_mm: diameter of the sphere's cross-section seen on this slice.
        mask_source: ``"disc_from_diameter"`` or ``"label_volume"``.
    """

    z_index: int
    hu: np.ndarray
    mask: np.ndarray
    box: tuple[float, float, float, float]
    centre_xy: tuple[float, float]
    centre_z_index: float
    offset_mm: float
    section_diameter_mm: float
    mask_source: str


def nodule_slices(
    volume: Volume,
    centre_world_xyz,
    diameter_mm: float,
    slice_rule: str = "slab",
    box_size: str = "section",
    label: Volume | None = None,
) -> list[NoduleSlice]:
    """Cut one nodule (world centre + diameter) out of a volume slice by slice.

    The centre goes through :func:`~lungkit.data.volumes.world_to_index` (paper 003 Eq. 6, any direction). Slices
    come from :func:`~lungkit.data.nodule_slices.nodule_slice_indices`. On each slice the mask is the disc the
    sphere shows there (:func:`~lungkit.data.nodule_slices.sphere_section_radius_mm`: the largest cut within the
    slice's slab, or with ``slice_rule="plane"`` the cut by the slice's centre plane; at least the centre pixel),
    or, with ``label``, the label voxels near the nodule (the label value at the centre voxel when non-zero, else
    any non-zero value, within ``1.5 x`` the nodule radius of the centre).

    Args:
        volume: CT volume (any spacing; assumes orthonormal direction so slice planes are ``z_spacing`` apart).
        centre_world_xyz: nodule centre in world mm.
        diameter_mm: nodule diameter.
        slice_rule: ``"slab"``, ``"plane"`` or ``"paper_fig6"``.
        box_size: ``"section"``: the box encloses this slice's disc; ``"nodule"``: the full-diameter box on every
            slice (as paper 003's Figure 6 computes one radius per nodule); ``"mask"``: the first and last pixel
            centres of this slice's mask (MedSAM's box from a ground-truth mask; the disc's box when it is empty).
        label: optional label volume on the same grid as ``volume``.

    Returns:
        One :class:`NoduleSlice` per spanned slice (empty if the nodule lies outside the volume).
    """
    if box_size not in BOX_SIZES:
        raise ValueError(f"unknown box_size {box_size!r}; expected one of {BOX_SIZES}")
    if label is not None:
        check_same_geometry(volume, label)
    spacing_x, spacing_y, spacing_z = volume.spacing
    depth, height, width = volume.array.shape
    index_x, index_y, index_z = world_to_index(volume, centre_world_xyz)
    if not (-0.5 <= index_x < width - 0.5 and -0.5 <= index_y < height - 0.5 and -0.5 <= index_z < depth - 0.5):
        return []
    label_value = 0
    if label is not None:
        label_value = int(label.array[nearest_voxel_zyx((index_x, index_y, index_z))])
    radius_mm = diameter_mm / 2.0
    # Thick slices show the nodule wherever it enters the slab (partial volume); the plane rule looks at planes.
    slab_thickness = 0.0 if slice_rule == "plane" else spacing_z
    records = []
    for z in nodule_slice_indices(index_z, diameter_mm, spacing_z, depth, rule=slice_rule):
        offset_mm = (z - index_z) * spacing_z
        section_mm = sphere_section_radius_mm(diameter_mm, offset_mm, slab_thickness)
        section_px = (section_mm / spacing_x, section_mm / spacing_y)
        if label is None:
            mask = disc_mask((height, width), (index_x, index_y), section_px)
            source = "disc_from_diameter"
        else:
            reach_px = (1.5 * radius_mm / spacing_x, 1.5 * radius_mm / spacing_y)
            window = disc_mask((height, width), (index_x, index_y), reach_px)
            plane = label.array[z]
            mask = (plane == label_value if label_value else plane > 0) & window
            source = "label_volume"
        box_radius = (radius_mm / spacing_x, radius_mm / spacing_y) if box_size == "nodule" else section_px
        box = box_around_disc((index_x, index_y), box_radius, shape=(height, width))
        if box_size == "mask" and mask.any():
            rows, cols = np.nonzero(mask)
            box = (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
        records.append(
            NoduleSlice(
                z_index=int(z),
                hu=volume.array[z].astype(np.float32),
                mask=mask,
                box=box,
                centre_xy=(float(index_x), float(index_y)),
                centre_z_index=float(index_z),
                offset_mm=float(offset_mm),
                section_diameter_mm=float(2 * section_mm),
                mask_source=source,
            )
        )
    return records


# ----------------------------------------------------------------------------------------------- export


def convert_luna16_to_kit(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    spacing_mm: float | None = 1.0,
    *,
    z_spacing_mm: float | None = None,
    slice_rule: str = "slab",
    box_size: str = "section",
    annotations_csv: str | os.PathLike | None = None,
    malignancy_csv: str | os.PathLike | None = None,
    label_dir: str | os.PathLike | None = None,
    split_fractions=(0.7, 0.15, 0.15),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Export every annotated nodule's slices of a LUNA16 folder to the kit dataset format.

    Per series: read the ``.mhd``, resample in-plane to ``spacing_mm`` (paper 003, Eqs. 1-4; linear for the CT,
    nearest for labels), then for each nodule write one row per spanned slice (see :func:`nodule_slices`): the HU
    slice as 16-bit PNG, the mask (disc from the diameter, or the label volume's voxels), an all-255 lung mask
    (LUNA16 has none here), and manifest columns ``kit_dataset.MANIFEST_COLUMNS + EXTRA_MANIFEST_COLUMNS``.

    Atomic like :func:`lungkit.data.export.convert_lungrads_to_kit`: everything is written into
    ``<out_dir>.partial/`` (each PNG through a temporary name), then ``manifest.csv``, ``dataset.json`` (provenance:
    settings, split per series, skipped series) and ``COMPLETE``, and only then is the folder renamed to
    ``out_dir``. Series named in the annotations but absent from the folder are skipped and listed in
    ``dataset.json`` (``series_missing``). A rerun after an interruption starts the staging folder afresh (the
    volumes have to be read again anyway).

    Args:
        root: LUNA16 folder (``subset*/``, ``annotations.csv``).
        out_dir: kit dataset folder to write.
        spacing_mm: in-plane pixel size after resampling; None keeps each series' own spacing.
        z_spacing_mm: slice spacing after resampling; None keeps the original slices (the paper resamples only
            in-plane, Eqs. 1-4).
        slice_rule: ``"slab"``, ``"plane"`` or ``"paper_fig6"``
            (see :func:`~lungkit.data.nodule_slices.nodule_slice_indices`).
        box_size: ``"section"``, ``"nodule"`` or ``"mask"`` (see :func:`nodule_slices`).
        annotations_csv: defaults to ``root/annotations.csv``.
        malignancy_csv: optional ``seriesuid, nodule_index, malignancy`` table; ``root/malignancy.csv`` is used
            when it exists and this is None.
        label_dir: optional folder of label volumes named ``<seriesuid>.nrrd`` (or any reader ending); used as
            masks where present.
        split_fractions: ``(train, val, test)`` over series, see :func:`split_series`.
        seed: split seed.
        overwrite: rewrite a folder that already holds a complete conversion (otherwise it is returned as is).
        progress: show a tqdm progress bar over the series.

    Returns:
        The manifest as read back by :func:`~lungkit.data.kit_dataset.read_manifest` (absolute paths).

    Raises:
        FileNotFoundError: if the folder, its annotation file or a series file is missing.
        FileExistsError: if ``out_dir`` exists, is not a finished dataset and ``overwrite`` is False.
        ValueError: for bad tables (file, row, column named) or when no annotated series is present.
    """
    root, out_dir = Path(root), Path(out_dir)
    if out_dir.resolve() == root.resolve():
        raise ValueError(f"{out_dir}: the kit dataset needs its own folder, not the LUNA16 folder itself")
    if kit_dataset.is_complete(out_dir) and not overwrite:
        return kit_dataset.read_manifest(out_dir)
    series_paths = find_luna16_series(root)
    annotations = read_annotations(annotations_csv or root / "annotations.csv")
    if malignancy_csv is None and (root / "malignancy.csv").is_file():
        malignancy_csv = root / "malignancy.csv"
    scores = {}
    if malignancy_csv is not None:
        for record in read_malignancy(malignancy_csv).itertuples(index=False):
            scores[(record.seriesuid, record.nodule_index)] = float(record.malignancy)
    label_dir = Path(label_dir) if label_dir is not None else None

    annotated = [uid for uid in dict.fromkeys(annotations["seriesuid"]) if uid in series_paths]
    missing = sorted(set(annotations["seriesuid"]) - set(series_paths))
    if not annotated:
        raise ValueError(f"{root}: none of the {annotations['seriesuid'].nunique()} annotated series is present")
    splits = split_series(annotated, split_fractions, seed)

    staging = staging_dir(out_dir)
    if staging.exists():
        shutil.rmtree(staging)
    for folder in (kit_dataset.IMAGE_DIR, kit_dataset.MASK_DIR, kit_dataset.LUNG_DIR):
        (staging / folder).mkdir(parents=True)

    rows = []
    outside = []
    for uid in progress_bar(annotated, desc="LUNA16 series", unit="series", disable=not progress):
        volume = read_volume(series_paths[uid])
        label = None
        if label_dir is not None:
            label_path = _find_label_volume(label_dir, uid)
            if label_path is not None:
                label = read_volume(label_path)
                check_same_geometry(volume, label)
        if spacing_mm is not None or z_spacing_mm is not None:
            new_spacing = (spacing_mm, spacing_mm, z_spacing_mm)
            volume = resample_volume(volume, new_spacing, interpolation="linear")
            if label is not None:
                label = resample_volume(label, new_spacing, interpolation="nearest")
        spacing_x, spacing_y, spacing_z = volume.spacing
        height, width = volume.array.shape[1:]
        ones = np.full((height, width), 255, dtype=np.uint8)
        for nodule in annotations[annotations["seriesuid"] == uid].itertuples(index=False):
            score = scores.get((uid, int(nodule.nodule_index)))
            binary = malignancy_to_label(score)
            records = nodule_slices(
                volume,
                (nodule.coordX, nodule.coordY, nodule.coordZ),
                nodule.diameter_mm,
                slice_rule=slice_rule,
                box_size=box_size,
                label=label,
            )
            if not records:
                outside.append({"seriesuid": uid, "nodule_index": int(nodule.nodule_index)})
            for record in records:
                slice_id = f"{uid}_n{int(nodule.nodule_index):02d}_z{record.z_index:04d}"
                image_rel = f"{kit_dataset.IMAGE_DIR}/{slice_id}.png"
                mask_rel = f"{kit_dataset.MASK_DIR}/{slice_id}.png"
                lung_rel = f"{kit_dataset.LUNG_DIR}/{slice_id}.png"
                write_png(kit_dataset.hu_to_png16(record.hu), staging / image_rel)
                write_png(record.mask.astype(np.uint8) * 255, staging / mask_rel)
                write_png(ones, staging / lung_rel)
                row = {
                    "id": slice_id,
                    "split": splits[uid],
                    "label1": _label_name(score),
                    "source_file": str(series_paths[uid]),
                    "source_row": int(nodule.source_row),
                    "height": height,
                    "width": width,
                    "pixel_spacing_mm": spacing_x,
                    **tumour_statistics(record.mask, spacing_x),
                    "image_path": image_rel,
                    "mask_path": mask_rel,
                    "lung_path": lung_rel,
                    "prompt_box": format_box(record.box),
                    "mask_source": record.mask_source,
                    "seriesuid": uid,
                    "nodule_index": int(nodule.nodule_index),
                    "z_index": record.z_index,
                    "diameter_mm": float(nodule.diameter_mm),
                    "centre_x_px": record.centre_xy[0],
                    "centre_y_px": record.centre_xy[1],
                    "centre_z_index": record.centre_z_index,
                    "slice_offset_mm": record.offset_mm,
                    "section_diameter_mm": record.section_diameter_mm,
                    "malignancy": score if score is not None else np.nan,
                    "label_binary": binary if binary is not None else pd.NA,
                    "slice_rule": slice_rule,
                    "pixel_spacing_y_mm": spacing_y,
                    "slice_spacing_mm": spacing_z,
                }
                rows.append(row)

    manifest = pd.DataFrame(rows, columns=kit_dataset.MANIFEST_COLUMNS + EXTRA_MANIFEST_COLUMNS)
    manifest["label_binary"] = manifest["label_binary"].astype("Int64")
    write_text_atomic(staging / kit_dataset.MANIFEST_NAME, manifest.to_csv(index=False))
    info = {
        "data_source": "luna16",
        "source": str(root.resolve()),
        "spacing_mm": spacing_mm,
        "z_spacing_mm": z_spacing_mm,
        "slice_rule": slice_rule,
        "box_size": box_size,
        "seed": seed,
        "split_fractions": list(split_fractions),
        "series_split": splits,
        "series_missing": missing,
        "nodules_outside_volume": outside,
        "label_dir": str(label_dir) if label_dir is not None else None,
        "malignancy_csv": str(malignancy_csv) if malignancy_csv is not None else None,
        "n_slices": int(len(manifest)),
        "split_counts": {k: int(v) for k, v in manifest["split"].value_counts().items()},
        "mask_source_counts": {k: int(v) for k, v in manifest["mask_source"].value_counts().items()},
    }
    write_text_atomic(staging / DATASET_INFO_NAME, json.dumps(info, indent=2))
    write_text_atomic(staging / kit_dataset.COMPLETE_MARKER, "")
    move_into_place(staging, out_dir, overwrite)
    return kit_dataset.read_manifest(out_dir)
