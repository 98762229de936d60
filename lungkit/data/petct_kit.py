"""Lung-PET-CT-Dx (real or phantom) -> the kit dataset with a second image channel (PET SUV), and reading it back.

Layout (:mod:`lungkit.data.kit_dataset`'s, plus ``pet/``)::

    <dataset_dir>/images/<id>.png   16-bit CT: HU + HU_OFFSET
    <dataset_dir>/pet/<id>.png      16-bit PET: round(SUVbw * PET_SUV_SCALE), clipped to [0, 65535] (SUV 0..65.535);
                                    absent for slices of CT-only studies (``has_pet`` 0, ``pet_path`` empty)
    <dataset_dir>/masks/<id>.png    8-bit tumour mask from the boxes (``mask_method``; flag: ``mask_flag``)
    <dataset_dir>/lungs/<id>.png    all 255 (the collection has no lung masks)
    <dataset_dir>/manifest.csv      the kit columns + ``EXTRA_MANIFEST_COLUMNS`` (boxes, patient, histology, ...)
    <dataset_dir>/dataset.json      provenance: source, mask method and flag, PET encoding, problem counts, split

``label1`` is the histology letter (A, B, E, G); ``patient`` the subject, and the split is by subject, stratified
by histology (:func:`split_by_subject`). Pixels outside the PET field of view are SUV 0 and counted per slice
(``pet_coverage``).

The conversion is atomic and resumable: it writes into ``<out_dir>.partial/`` (each PNG through a temporary name),
records each finished subject in ``subjects/<subject>.json`` (its rows and problem counts) so a rerun after an
interruption skips the subjects already done without reading their DICOM again, and renames the folder only after
``manifest.csv``, ``dataset.json`` and ``COMPLETE`` are written. With ``strict=True`` the first file-level problem
stops it and ``out_dir`` is never created.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit.data import kit_dataset
from lungkit.data.export import (
    DATASET_INFO_NAME,
    HU_ROUNDING_RULE,
    move_into_place,
    prepare_staging,
    read_hu_png,
    read_png,
    staging_dir,
    tumour_statistics,
    write_png,
    write_text_atomic,
)
from lungkit.data.petct import (
    DEFAULT_MASK_METHOD,
    HISTOLOGY,
    MASK_METHODS,
    ProblemLog,
    format_boxes,
    index_collection,
    iter_subject_slices,
    mask_flag,
    masks_from_boxes,
    parse_boxes,
)
from lungkit.progress import progress_bar

PET_DIR = "pet"
#: PET PNGs store round(SUV * PET_SUV_SCALE): 0.001 SUV steps, SUV up to 65.535 (FDG tumours rarely pass 40).
PET_SUV_SCALE = 1000
PET_ENCODING = (
    f"16-bit PNG, stored = round(SUVbw * {PET_SUV_SCALE}), clipped to [0, 65535] (SUV 0..{65535 / PET_SUV_SCALE:g}); "
    "SUV 0 outside the PET field of view (see pet_coverage)"
)
PETCT_KIT_DIR = "petct_kit"
PETCT_PHANTOM_DIR = "petct_phantom"
#: Subject split fractions: test, then validation of the rest (per histology letter).
TEST_FRACTION, VAL_FRACTION = 0.2, 0.15
_SUBJECTS_DIR = "subjects"

EXTRA_MANIFEST_COLUMNS = [
    "patient",
    "histology",
    "histology_name",
    "boxes",
    "n_boxes",
    "mask_method",
    "mask_source",
    "has_pet",
    "pet_path",
    "pet_coverage",
    "pet_suv_max",
    "pet_clipped_px",
    "annotated_modality",
    "study_uid",
    "series_uid",
    "sop_uid",
    "annotation_file",
    "slice_position_mm",
    "pixel_spacing_y_mm",
    "pet_series_uid",
    "suv_decay_factor",
]


def suv_to_png16(suv: np.ndarray) -> tuple[np.ndarray, int]:
    """Encode SUV as uint16 (``round(SUV * PET_SUV_SCALE)``, clipped); returns the array and how many pixels were
    clipped (negative or above 65.535).

    Raises:
        ValueError: for NaN or infinite SUV.
    """
    suv = np.asarray(suv, dtype=np.float64)
    if not np.all(np.isfinite(suv)):
        raise ValueError("PET slice holds NaN or infinite SUV; cannot encode it as PNG")
    scaled = np.rint(suv * PET_SUV_SCALE)
    clipped = int(np.count_nonzero((scaled < 0) | (scaled > 65535)))
    return np.clip(scaled, 0, 65535).astype(np.uint16), clipped


def png16_to_suv(stored: np.ndarray) -> np.ndarray:
    """Inverse of :func:`suv_to_png16` (float32 SUV)."""
    return stored.astype(np.float32) / np.float32(PET_SUV_SCALE)


def split_by_subject(manifest: pd.DataFrame, test_fraction: float = TEST_FRACTION, val_fraction: float = VAL_FRACTION,
                     seed: int = 0) -> pd.DataFrame:
    """Patient-wise split, stratified by histology letter.

    Each letter's subjects go through :func:`lungkit.data.splits.assign_patient_splits` on their own, so a rare
    histology (the collection has few E subjects) is not left out of test by chance; a letter with one subject
    goes to train.

    Returns:
        A copy of the manifest with ``split`` set; every subject on one side only.
    """
    from lungkit.data.splits import assign_patient_splits

    parts = []
    for offset, (_, rows) in enumerate(manifest.groupby("histology", sort=True)):
        rows = rows.assign(split="train")
        parts.append(assign_patient_splits(rows, test_fraction=test_fraction, val_fraction=val_fraction,
                                           seed=seed + offset, patient_column="patient"))
    if not parts:
        return manifest.copy()
    return pd.concat(parts).loc[manifest.index]


def _request(root: Path, annotation_dir, mask_method: str, seed: int, test_fraction: float, val_fraction: float) -> dict:
    return {"source": str(root.resolve()), "annotation_dir": str(annotation_dir) if annotation_dir else None,
            "mask_method": mask_method, "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
            "pet_suv_scale": PET_SUV_SCALE}



def _convert_subject(index, subject: str, staging: Path, mask_method: str, strict: bool) -> dict:
    """Write one subject's slices into the staging folder; returns its rows and problem log (as a dict)."""
    problems = ProblemLog(strict=strict)
    rows = []
    max_rounding = 0.0  # CT HU are integers, except CT resampled onto an annotated PET image
    for item in iter_subject_slices(index, subject, problems):
        max_rounding = max(max_rounding, float(np.abs(np.rint(item.ct_hu) - item.ct_hu).max(initial=0.0)))
        provenance = item.provenance
        slice_id = f"{subject}_{provenance['sop_uid'].replace('.', '-')}"
        paths = {
            "image_path": f"{kit_dataset.IMAGE_DIR}/{slice_id}.png",
            "mask_path": f"{kit_dataset.MASK_DIR}/{slice_id}.png",
            "lung_path": f"{kit_dataset.LUNG_DIR}/{slice_id}.png",
            "pet_path": f"{PET_DIR}/{slice_id}.png" if item.pet_suv is not None else "",
        }
        mask, source = masks_from_boxes(item.boxes, mask_method, ct_hu=item.ct_hu, pet_suv=item.pet_suv)
        try:
            write_png(kit_dataset.hu_to_png16(item.ct_hu), staging / paths["image_path"])
            write_png(mask.astype(np.uint8) * 255, staging / paths["mask_path"])
            write_png(np.full(mask.shape, 255, np.uint8), staging / paths["lung_path"])
            clipped, suv_max, coverage = 0, float("nan"), float("nan")
            if item.pet_suv is not None:
                encoded, clipped = suv_to_png16(item.pet_suv)
                write_png(encoded, staging / paths["pet_path"])
                inside_boxes = np.zeros(mask.shape, bool)
                for box in item.boxes:
                    inside_boxes[box[1]: box[3] + 1, box[0]: box[2] + 1] = True
                suv_max = float(item.pet_suv[inside_boxes].max())
                coverage = float(item.pet_coverage.mean())
        except ValueError as error:
            raise ValueError(f"{provenance['source_file']}: {error}") from error
        spacing_x, spacing_y = item.pixel_spacing_mm
        height, width = item.ct_hu.shape
        rows.append({
            "id": slice_id,
            "split": "train",
            "label1": item.histology,
            "source_file": provenance["source_file"],
            "source_row": -1 if provenance["instance_number"] is None else int(provenance["instance_number"]),
            "height": height,
            "width": width,
            "pixel_spacing_mm": spacing_x,
            **tumour_statistics(mask, spacing_x),
            "image_path": paths["image_path"],
            "mask_path": paths["mask_path"],
            "lung_path": paths["lung_path"],
            "patient": item.subject,
            "histology": item.histology,
            "histology_name": HISTOLOGY[item.histology],
            "boxes": format_boxes(item.boxes),
            "n_boxes": int(len(item.boxes)),
            "mask_method": mask_method,
            "mask_source": source,
            "has_pet": int(item.pet_suv is not None),
            "pet_path": paths["pet_path"],
            "pet_coverage": coverage,
            "pet_suv_max": suv_max,
            "pet_clipped_px": clipped,
            "annotated_modality": item.annotated_modality,
            "study_uid": provenance["study_uid"],
            "series_uid": provenance["series_uid"],
            "sop_uid": provenance["sop_uid"],
            "annotation_file": provenance["annotation_file"],
            "slice_position_mm": provenance["slice_position_mm"],
            "pixel_spacing_y_mm": spacing_y,
            "pet_series_uid": provenance["partner_series_uid"] if item.pet_suv is not None else "",
            "suv_decay_factor": provenance.get("suv", {}).get("decay_factor", float("nan")),
        })
    return {"subject": subject, "rows": rows, "problems": problems.as_dict(), "max_hu_rounding": max_rounding}


def convert_petct_to_kit(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    mask_method: str = DEFAULT_MASK_METHOD,
    *,
    annotation_dir: str | os.PathLike | None = None,
    test_fraction: float = TEST_FRACTION,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
    metadata: dict | None = None,
) -> pd.DataFrame:
    """Convert a Lung-PET-CT-Dx folder (real or phantom) into a kit dataset with a PET channel.

    Every annotated CT (or PET) image becomes one row (see the module docstring for the layout): CT HU, PET SUV
    resampled onto it (when the study has a PET in the same frame of reference), the mask from its boxes by
    ``mask_method`` (:func:`lungkit.data.petct.masks_from_boxes`), the boxes, subject and histology letter.
    Problems (unparsable or refused XML, missing SOPs, unreadable series, PET in another frame, unnamed or
    ``Q`` boxes...) are counted per kind in ``dataset.json`` (``problems``) with their messages; ``strict`` raises
    at the first file-level one instead.

    Args:
        root: the collection folder (``metadata.csv`` and/or ``Lung-PET-CT-Dx/``, ``Annotation/``).
        out_dir: the kit dataset folder to create (not inside ``root``'s series folders).
        mask_method: one of :data:`lungkit.data.petct.MASK_METHODS`.
        annotation_dir: the ``Annotation`` folder when not ``<root>/Annotation``.
        test_fraction, val_fraction: subject shares per histology (:func:`split_by_subject`).
        seed: split seed.
        overwrite: rebuild a finished dataset; without it a finished ``out_dir`` is returned as is.
        strict: stop at the first file-level problem (nothing is moved into ``out_dir``).
        progress: progress bar over subjects.
        metadata: extra provenance for ``dataset.json`` (data source, profile, phantom marker).

    Returns:
        The manifest as read back by :func:`read_petct_manifest` (absolute paths, ``pet_path`` included).

    Raises:
        ValueError: for an unknown mask method, or when no annotated slice could be read (with the problem counts).
        FileNotFoundError: when the folder or its annotations are missing.
        lungkit.data.petct.PetCtError: with ``strict``, naming the file and tag or row at fault.
        FileExistsError: if ``out_dir`` exists, is not a finished dataset and ``overwrite`` is False.
    """
    if mask_method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {mask_method!r}; expected one of {MASK_METHODS}")
    root, out_dir = Path(root).expanduser(), Path(out_dir)
    if kit_dataset.is_complete(out_dir) and not overwrite:
        return read_petct_manifest(out_dir)
    index = index_collection(root, annotation_dir=annotation_dir, strict=strict)
    staging = staging_dir(out_dir)
    prepare_staging(staging, _request(root, annotation_dir, mask_method, seed, test_fraction, val_fraction),
                    extra_dirs=(PET_DIR, _SUBJECTS_DIR))
    problems = ProblemLog()
    problems.merge(index.problems)
    subjects = sorted(index.annotations["subject"].unique())
    rows = []
    max_rounding = 0.0
    for subject in progress_bar(subjects, desc="Lung-PET-CT-Dx subjects", unit="subject", disable=not progress):
        record_path = staging / _SUBJECTS_DIR / f"{subject}.json"
        record = None
        if record_path.is_file():  # written atomically after the subject's PNGs: a resumed run skips it
            try:
                record = json.loads(record_path.read_text())
            except ValueError:
                record = None
        if record is None:
            record = _convert_subject(index, subject, staging, mask_method, strict)
            write_text_atomic(record_path, json.dumps(record, default=float))
        rows.extend(record["rows"])
        max_rounding = max(max_rounding, float(record.get("max_hu_rounding", 0.0)))
        problems.merge(record["problems"])
    if not rows:
        raise ValueError(f"{root}: no annotated slice could be read from {len(subjects)} annotated subject(s); "
                         f"problems: {problems.as_dict()['counts']}")
    manifest = pd.DataFrame(rows, columns=kit_dataset.MANIFEST_COLUMNS + EXTRA_MANIFEST_COLUMNS)
    manifest = split_by_subject(manifest, test_fraction, val_fraction, seed)
    write_text_atomic(staging / kit_dataset.MANIFEST_NAME, manifest.to_csv(index=False))
    from lungkit.data.splits import describe_patient_split

    info = {
        "data_source": "lung-pet-ct-dx",
        "source": str(root.resolve()),
        "index_source": index.source,
        "mask_method": mask_method,
        "mask_flag": mask_flag(mask_method),
        "mask_source_counts": {k: int(v) for k, v in manifest["mask_source"].value_counts().items()},
        "pet_channel": {"dir": PET_DIR, "units": "SUVbw", "scale": PET_SUV_SCALE, "encoding": PET_ENCODING,
                        "slices_with_pet": int(manifest["has_pet"].sum()),
                        "slices_ct_only": int((manifest["has_pet"] == 0).sum()),
                        "clipped_px": int(manifest["pet_clipped_px"].sum())},
        "hu_rounding": {"rule": HU_ROUNDING_RULE, "rounded": max_rounding > 0, "max_abs_error_hu": max_rounding},
        "n_slices": int(len(manifest)),
        "n_subjects": int(manifest["patient"].nunique()),
        "histology_counts": {k: int(v) for k, v in manifest.groupby("histology")["patient"].nunique().items()},
        "split_counts": {k: int(v) for k, v in manifest["split"].value_counts().items()},
        "split_description": "stratified by histology letter; " + describe_patient_split(manifest),
        "seed": seed,
        "problems": problems.as_dict(),
        **dict(metadata or {}),
    }
    write_text_atomic(staging / DATASET_INFO_NAME, json.dumps(info, indent=2, default=str))
    write_text_atomic(staging / kit_dataset.COMPLETE_MARKER, "")
    move_into_place(staging, out_dir, overwrite)
    return read_petct_manifest(out_dir)


def prepare_petct_dataset(
    petct_dir: str | os.PathLike | None,
    run_dir: str | os.PathLike,
    profile,
    seed: int = 0,
    mask_method: str = DEFAULT_MASK_METHOD,
    progress: bool = False,
) -> Path:
    """The run's Lung-PET-CT-Dx kit dataset ``<run_dir>/petct_kit``, built when missing or stale.

    Without ``petct_dir`` the phantom collection (:func:`lungkit.data.phantom_petct.write_phantom_petct`, sized by
    the profile, seeded) is written to ``<run_dir>/petct_phantom`` first and read by the same reader as the real
    collection. A finished dataset with the same source, mask method and seed is reused; another is rebuilt.

    Args:
        petct_dir: the real collection folder; None or "" for the phantom.
        run_dir: the run's folder.
        profile: profile name or :class:`~lungkit.profiles.Profile` (phantom size).
        seed: phantom and split seed.
        mask_method: see :func:`lungkit.data.petct.masks_from_boxes`.
        progress: progress bar over subjects.

    Returns:
        The kit dataset folder.
    """
    from lungkit.data.phantom_petct import COMPLETE_MARKER, write_phantom_petct
    from lungkit.profiles import get_profile

    run_dir = Path(run_dir)
    profile = get_profile(profile) if isinstance(profile, str) else profile
    phantom = None
    if petct_dir:
        root, data_source = Path(petct_dir).expanduser(), "lung-pet-ct-dx"
    else:
        root, data_source = run_dir / PETCT_PHANTOM_DIR, "phantom"
        write_phantom_petct(root, profile, seed=seed)
        phantom = (root / COMPLETE_MARKER).read_text().strip()
    kit_dir = run_dir / PETCT_KIT_DIR
    wanted = {"source": str(root.resolve()), "mask_method": mask_method, "seed": seed, "phantom": phantom}
    stale = False
    if kit_dataset.is_complete(kit_dir):
        try:
            info = json.loads((kit_dir / DATASET_INFO_NAME).read_text())
        except (OSError, ValueError):
            info = {}
        stale = any(info.get(key) != value for key, value in wanted.items())
    convert_petct_to_kit(root, kit_dir, mask_method, seed=seed, overwrite=stale, progress=progress,
                         metadata={"data_source": data_source, "phantom": phantom, "profile": profile.name})
    return kit_dir


def read_petct_info(dataset_dir: str | os.PathLike) -> dict:
    """The dataset's ``dataset.json``."""
    return json.loads((Path(dataset_dir) / DATASET_INFO_NAME).read_text())


def mask_source_flag(dataset_dir: str | os.PathLike) -> str:
    """``MASKS FROM BOXES (<method>): ...`` for a Lung-PET-CT-Dx kit dataset (every result on it carries this),
    ``""`` for datasets whose masks are not derived from boxes."""
    try:
        info = read_petct_info(dataset_dir)
    except (OSError, ValueError):  # no dataset.json: not a Lung-PET-CT-Dx kit dataset
        return ""
    method = info.get("mask_method")
    return mask_flag(method) if method in MASK_METHODS else ""


def read_petct_row(row) -> dict:
    """One manifest row's arrays: ``ct_hu``, ``pet_suv`` (None for CT-only), ``mask`` (bool), ``boxes``."""
    pet_path = row["pet_path"]
    has_pet = bool(int(row["has_pet"])) and isinstance(pet_path, str) and bool(pet_path)
    return {
        "ct_hu": read_hu_png(row["image_path"]),
        "pet_suv": png16_to_suv(read_png(pet_path)) if has_pet else None,
        "mask": read_png(row["mask_path"]) > 0,
        "boxes": parse_boxes(row["boxes"]),
    }


def read_petct_manifest(dataset_dir: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """The manifest (:func:`~lungkit.data.kit_dataset.read_manifest`) with ``pet_path`` made absolute too."""
    manifest = kit_dataset.read_manifest(dataset_dir, split)
    manifest["pet_path"] = absolute_pet_paths(manifest, dataset_dir)
    return manifest


def absolute_pet_paths(manifest: pd.DataFrame, dataset_dir: str | os.PathLike) -> list[str]:
    """The manifest's ``pet_path`` column made absolute; "" for a slice without PET (a CT-only study)."""
    dataset_dir = Path(dataset_dir)
    return [str(dataset_dir / p) if isinstance(p, str) and p else "" for p in manifest["pet_path"].fillna("")]


def histology_table(dataset_dir: str | os.PathLike) -> pd.DataFrame:
    """Subjects and slices per histology and split (with and without PET)."""
    manifest = read_petct_manifest(dataset_dir)
    grouped = manifest.groupby(["histology", "split"])
    table = grouped.agg(subjects=("patient", "nunique"), slices=("id", "size"), slices_with_pet=("has_pet", "sum"))
    table = table.reset_index()
    table.insert(1, "histology_name", table["histology"].map(HISTOLOGY))
    return table


def compare_mask_methods(dataset_dir: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """Per mask method: how much of the boxes it fills and how often it falls back to the filled box.

    Every row's masks are recomputed from its boxes and stored channels by each method of
    :data:`lungkit.data.petct.MASK_METHODS`; the stored mask is one of them (the dataset's ``mask_method``).

    Returns:
        One row per method: ``slices``, ``mean_fill_of_boxes`` (mask pixels / box pixels), ``fallback_slices``
        (slices where a box fell back to the filled box: no soft tissue, or no PET) and ``dice_with_box``.
    """
    from lungkit.data.petct import box_mask

    manifest = read_petct_manifest(dataset_dir, split)
    stats = {method: {"fill": [], "fallback": 0, "dice": []} for method in MASK_METHODS}
    for _, row in manifest.iterrows():
        arrays = read_petct_row(row)
        boxes = np.zeros(arrays["ct_hu"].shape, dtype=bool)
        for box in arrays["boxes"]:
            boxes |= box_mask(boxes.shape, box)
        for method in MASK_METHODS:
            mask, source = masks_from_boxes(arrays["boxes"], method, ct_hu=arrays["ct_hu"], pet_suv=arrays["pet_suv"])
            stats[method]["fill"].append(mask.sum() / max(boxes.sum(), 1))
            stats[method]["dice"].append(2 * (mask & boxes).sum() / max(mask.sum() + boxes.sum(), 1))
            stats[method]["fallback"] += int("fallback" in source)
    return pd.DataFrame([
        {"method": method, "slices": len(manifest), "mean_fill_of_boxes": float(np.mean(v["fill"])) if v["fill"] else
         float("nan"), "fallback_slices": v["fallback"],
         "dice_with_box": float(np.mean(v["dice"])) if v["dice"] else float("nan")}
        for method, v in stats.items()
    ])


def problem_table(dataset_dir: str | os.PathLike) -> pd.DataFrame:
    """The conversion's problems (``dataset.json``): one row per kind, its count and first message."""
    log = ProblemLog()
    log.merge(read_petct_info(dataset_dir).get("problems", {}))
    return log.table()


__all__ = [
    "EXTRA_MANIFEST_COLUMNS",
    "PETCT_KIT_DIR",
    "PETCT_PHANTOM_DIR",
    "PET_DIR",
    "PET_ENCODING",
    "PET_SUV_SCALE",
    "absolute_pet_paths",
    "compare_mask_methods",
    "convert_petct_to_kit",
    "histology_table",
    "mask_source_flag",
    "png16_to_suv",
    "prepare_petct_dataset",
    "problem_table",
    "read_petct_info",
    "read_petct_manifest",
    "read_petct_row",
    "split_by_subject",
    "suv_to_png16",
]
