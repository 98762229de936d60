"""The run's LUNA16 kit dataset for paper 003: built when missing, nodule windows derived from it, read back.

:mod:`lungkit.data.luna16` reads a LUNA16 folder and converts it; this module decides *which* conversion a run uses
(phantom or real folder, 1 mm in-plane, the slab slice rule, full-diameter box prompts, a seeded split by series),
keeps it idempotent, and derives the U-Net baseline's windows from it. It is the LUNA16 counterpart of
:mod:`lungkit.data.prepare` (the Lung-RADS datasets); the experiments in :mod:`lungkit.experiments` call it.

- :func:`prepare_luna16_dataset`: a LUNA16 folder (or, without one, the LUNA16-layout phantom of
  :mod:`lungkit.data.phantom_volumes` written into the run) -> ``<run_dir>/luna16_kit``: the kit dataset of every
  slice each annotated nodule spans, resampled to 1 mm in-plane, with a box prompt per slice
  (:func:`lungkit.data.luna16.convert_luna16_to_kit`). Splits are by series (a LUNA16 series is one patient's scan).
  LUNA16 has no masks, so masks are discs from the annotated diameters, flagged ``disc_from_diameter``.
- :func:`write_nodule_windows`: the same rows as 64 x 64 px windows centred on each box prompt (the U-Net's data).
- :func:`read_slices`, :func:`nodule_table`, :func:`mask_source_flag`: reading such a dataset back.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit.data.export import move_into_place, write_text_atomic
from lungkit.profiles import Profile, get_profile

LUNA16_PHANTOM_DIR = "luna16_phantom"
LUNA16_KIT_DIR = "luna16_kit"
LUNA16_WINDOWS_DIR = "luna16_windows"
#: Series split (train, val, test). A quarter of the series for test, so the classifier's test set holds more than
#: a handful of nodules on the phantom.
LUNA16_SPLIT_FRACTIONS = (0.6, 0.15, 0.25)
#: In-plane spacing of the kit slices (paper 003 resamples to a common spacing, Eqs. 1-4; it prints no value).
KIT_SPACING_MM = 1.0
#: Slices a nodule spans: every slice whose slab the sphere enters (see lungkit.data.nodule_slices).
SLICE_RULE = "slab"
#: One full-diameter box per nodule on every slice, as paper 003's Figure 6 computes one radius per nodule.
BOX_SIZE = "nodule"
#: Side of the U-Net's windows around each box centre, in kit pixels (1 mm).
WINDOW_PX = 64
DISC_MASK_FLAG = (
    "MASKS FROM DIAMETERS: LUNA16 has no nodule masks; the targets are the discs a sphere of the annotated diameter "
    "shows on each slice (mask_source disc_from_diameter), not traced outlines."
)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _profile(profile: str | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def split_description(seed: int, fractions=LUNA16_SPLIT_FRACTIONS) -> str:
    """The protocol's ``split`` line for LUNA16 kit datasets (by series, seeded)."""
    train, val, test = (round(100 * f) for f in fractions)
    return (
        f"by series (one LUNA16 series = one patient's scan), seeded ({seed}): {train}/{val}/{test} % of the series "
        "for train/val/test; every slice of a nodule stays with its series"
    )


def read_slices(dataset_dir: str | Path, split: str | None = "test"):
    """The slices of one split at their stored size (sizes may differ between series).

    Args:
        dataset_dir: a finished kit dataset with a ``prompt_box`` column.
        split: ``train`` / ``val`` / ``test``, or None for all rows.

    Returns:
        ``(hu, masks, boxes, manifest)``: lists of float32 HU and bool masks, float32 boxes ``(n, 4)``
        (``x0, y0, x1, y1`` in pixels) and the manifest rows in the same order.

    Raises:
        ValueError: if the dataset has no ``prompt_box`` column (not a LUNA16 kit dataset).
    """
    from lungkit.data.export import read_hu_png, read_png
    from lungkit.data.kit_dataset import read_manifest
    from lungkit.data.nodule_slices import parse_box

    manifest = read_manifest(dataset_dir, split).reset_index(drop=True)
    if "prompt_box" not in manifest.columns:
        raise ValueError(f"{dataset_dir}: manifest has no prompt_box column; expected a LUNA16 kit dataset")
    hu = [read_hu_png(path) for path in manifest["image_path"]]
    masks = [read_png(path) > 0 for path in manifest["mask_path"]]
    boxes = np.stack([parse_box(text) for text in manifest["prompt_box"]]) if len(manifest) else np.zeros((0, 4))
    return hu, masks, boxes.astype(np.float32), manifest


def lung_window(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] in the lung window [-1000, 400] (for figures)."""
    return np.clip((np.asarray(hu, np.float32) + 1000.0) / 1400.0, 0.0, 1.0)


def phantom_volume_count(profile: str | Profile) -> int:
    """Volumes of the LUNA16-layout phantom for a profile (``Profile.phantom_volumes``)."""
    return int(_profile(profile).phantom_volumes)


def prepare_luna16_dataset(
    luna16_dir: str | Path | None, run_dir: str | Path, profile: str | Profile, seed: int = 0, progress: bool = False
) -> Path:
    """Return the run's LUNA16 kit dataset ``<run_dir>/luna16_kit``, building it when missing or stale.

    Without ``luna16_dir`` the LUNA16-layout phantom (:func:`lungkit.data.phantom_volumes.write_phantom_luna16`,
    ``phantom_volume_count(profile)`` volumes, seeded) is written to ``<run_dir>/luna16_phantom`` first. The
    conversion resamples in-plane to 1 mm, keeps every slice a nodule spans (``SLICE_RULE``), gives each slice the
    nodule's full-diameter box (``BOX_SIZE``, paper 003 Figure 6) and a disc mask from the diameter (LUNA16 has no
    masks; the phantom's label volumes are deliberately not used, so the phantom run takes the real data's path),
    and splits by series (``LUNA16_SPLIT_FRACTIONS``). Both steps are atomic (built beside, renamed in) and
    idempotent: a finished dataset with the same source and settings is returned at once; one with other settings
    is rebuilt. ``dataset.json`` records ``data_source`` (``phantom`` or ``luna16``) and ``split_description``.

    Args:
        luna16_dir: LUNA16 root (``subset*/``, ``annotations.csv``, optionally ``malignancy.csv``); None or ""
            for the phantom.
        run_dir: the run's folder.
        profile: run profile (phantom size and count).
        seed: phantom and split seed.
        progress: show a progress bar over the series.

    Returns:
        The kit dataset folder.

    Raises:
        FileNotFoundError / ValueError: from the LUNA16 reader, naming the file and row at fault.
    """
    from lungkit.data.export import DATASET_INFO_NAME
    from lungkit.data.kit_dataset import is_complete
    from lungkit.data.luna16 import convert_luna16_to_kit
    from lungkit.data.phantom_volumes import COMPLETE_MARKER, write_phantom_luna16

    run_dir = Path(run_dir)
    profile = _profile(profile)
    phantom = None
    if luna16_dir:
        root, data_source = Path(luna16_dir).expanduser(), "luna16"
    else:
        root, data_source = run_dir / LUNA16_PHANTOM_DIR, "phantom"
        n_volumes = phantom_volume_count(profile)
        marker = root / COMPLETE_MARKER
        stale = marker.is_file() and f" seed={seed} volumes={n_volumes} " not in marker.read_text()
        write_phantom_luna16(root, profile, n_volumes=n_volumes, seed=seed, overwrite=stale)
        phantom = {"generator": "lungkit.data.phantom_volumes", "marker": marker.read_text().strip()}

    kit_dir = run_dir / LUNA16_KIT_DIR
    settings = {
        "source": str(root.resolve()),
        "seed": seed,
        "split_fractions": list(LUNA16_SPLIT_FRACTIONS),
        "spacing_mm": KIT_SPACING_MM,
        "slice_rule": SLICE_RULE,
        "box_size": BOX_SIZE,
    }
    info_path = kit_dir / DATASET_INFO_NAME
    info = _read_json(info_path) if is_complete(kit_dir) else {}
    stale = bool(info) and (
        any(info.get(key) != value for key, value in settings.items()) or info.get("phantom") != phantom
    )
    convert_luna16_to_kit(
        root,
        kit_dir,
        spacing_mm=KIT_SPACING_MM,
        slice_rule=SLICE_RULE,
        box_size=BOX_SIZE,
        split_fractions=LUNA16_SPLIT_FRACTIONS,
        seed=seed,
        overwrite=stale,
        progress=progress,
    )
    info = _read_json(info_path)
    wanted = {"data_source": data_source, "phantom": phantom, "split_description": split_description(seed)}
    if any(info.get(key) != value for key, value in wanted.items()):
        write_text_atomic(info_path, json.dumps({**info, **wanted}, indent=2))
    return kit_dir


def write_nodule_windows(kit_dir: str | Path, out_dir: str | Path, window_px: int = WINDOW_PX) -> Path:
    """A kit dataset of ``window_px`` square windows centred on each row's box prompt (the U-Net baseline's data).

    Every row of ``kit_dir`` becomes one row here (same id and split): HU and mask cropped around the box centre
    (air, -1024 HU, where the window leaves the slice), the box shifted into the window (``prompt_box``), and
    ``window_x0`` / ``window_y0`` (where the window's top-left pixel sits in the slice). The U-Net thus gets the
    prompt's location, as SAM does, but not its size. Atomic (built in ``<out_dir>.partial``, renamed in) and
    idempotent: reused while the source manifest and window size are unchanged.

    Args:
        kit_dir: a LUNA16 kit dataset (:func:`prepare_luna16_dataset`).
        out_dir: folder to write.
        window_px: side of the window in pixels.

    Returns:
        ``out_dir``.
    """
    from lungkit.data import kit_dataset
    from lungkit.data.export import DATASET_INFO_NAME, read_hu_png, read_png, staging_dir, tumour_statistics, write_png
    from lungkit.data.nodule_slices import extract_nodule_crops, format_box, parse_box
    from lungkit.evaluation import data_fingerprint

    kit_dir, out_dir = Path(kit_dir), Path(out_dir)
    identity = {
        "derived_from": str(kit_dir.resolve()),
        "source_fingerprint": data_fingerprint(kit_dir),
        "window_px": int(window_px),
    }
    if kit_dataset.is_complete(out_dir):
        info = _read_json(out_dir / DATASET_INFO_NAME)
        if all(info.get(key) == value for key, value in identity.items()):
            return out_dir
    source_info = _read_json(kit_dir / DATASET_INFO_NAME)
    manifest = kit_dataset.read_manifest(kit_dir)
    staging = staging_dir(out_dir)
    if staging.exists():
        shutil.rmtree(staging)
    for folder in (kit_dataset.IMAGE_DIR, kit_dataset.MASK_DIR, kit_dataset.LUNG_DIR):
        (staging / folder).mkdir(parents=True)
    ones = np.full((window_px, window_px), 255, dtype=np.uint8)
    half = window_px // 2
    rows = []
    for _, record in manifest.iterrows():  # one slice at a time: a real LUNA16 export has thousands
        box = parse_box(record["prompt_box"])
        centre_yx = ((box[1] + box[3]) / 2.0, (box[0] + box[2]) / 2.0)
        hu = extract_nodule_crops(read_hu_png(record["image_path"]), [centre_yx], window_px, fill_value=-1024.0)[0]
        mask = extract_nodule_crops((read_png(record["mask_path"]) > 0).astype(np.uint8), [centre_yx], window_px,
                                    fill_value=0)[0]
        # extract_nodule_crops puts the pixel holding the centre (rounded half up) at (half, half)
        top, left = (int(math.floor(v + 0.5)) - half for v in centre_yx)
        paths = {
            "image_path": f"{kit_dataset.IMAGE_DIR}/{record['id']}.png",
            "mask_path": f"{kit_dataset.MASK_DIR}/{record['id']}.png",
            "lung_path": f"{kit_dataset.LUNG_DIR}/{record['id']}.png",
        }
        write_png(kit_dataset.hu_to_png16(hu), staging / paths["image_path"])
        write_png(mask.astype(np.uint8) * 255, staging / paths["mask_path"])
        write_png(ones, staging / paths["lung_path"])
        row = record.to_dict()
        row.update(paths)
        row.update(height=window_px, width=window_px, window_x0=left, window_y0=top)
        row.update(tumour_statistics(mask, record["pixel_spacing_mm"]))
        row["prompt_box"] = format_box(box - np.array([left, top, left, top], dtype=np.float32))
        rows.append(row)
    frame = pd.DataFrame(rows)
    write_text_atomic(staging / kit_dataset.MANIFEST_NAME, frame.to_csv(index=False))
    info = {
        "data_source": source_info.get("data_source", "luna16"),
        "split_description": source_info.get("split_description", ""),
        "phantom": source_info.get("phantom"),
        **identity,
        "n_slices": int(len(frame)),
        "mask_source_counts": {str(k): int(v) for k, v in frame["mask_source"].value_counts().items()},
    }
    write_text_atomic(staging / DATASET_INFO_NAME, json.dumps(info, indent=2))
    write_text_atomic(staging / kit_dataset.COMPLETE_MARKER, "")
    move_into_place(staging, out_dir, overwrite=True)  # windows are derived data: a rebuild replaces them
    return out_dir


def mask_source_flag(dataset_dir: str | Path) -> str:
    """``DISC_MASK_FLAG`` when any mask of the dataset was drawn from a diameter, else ``""``."""
    from lungkit.data.kit_dataset import read_manifest

    manifest = read_manifest(dataset_dir)
    if "mask_source" in manifest.columns and (manifest["mask_source"] == "disc_from_diameter").any():
        return DISC_MASK_FLAG
    return ""


def mask_sources(manifest: pd.DataFrame) -> str:
    """The manifest's mask sources, sorted and joined by ``+`` (e.g. ``disc_from_diameter``), for protocols."""
    sources = sorted(set(manifest.get("mask_source", pd.Series(["unknown"])).astype(str)))
    return "+".join(sources)


def nodule_table(dataset_dir: str | Path) -> pd.DataFrame:
    """One row per nodule of a LUNA16 kit dataset: series, split, diameter, malignancy, label, slices spanned."""
    from lungkit.data.kit_dataset import read_manifest

    manifest = read_manifest(dataset_dir)
    grouped = manifest.groupby(["seriesuid", "nodule_index"], sort=True)
    table = grouped.agg(
        split=("split", "first"),
        diameter_mm=("diameter_mm", "first"),
        malignancy=("malignancy", "first"),
        label=("label1", "first"),
        slices=("id", "size"),
    )
    return table.reset_index()


__all__ = [
    "BOX_SIZE",
    "DISC_MASK_FLAG",
    "KIT_SPACING_MM",
    "LUNA16_KIT_DIR",
    "LUNA16_PHANTOM_DIR",
    "LUNA16_SPLIT_FRACTIONS",
    "LUNA16_WINDOWS_DIR",
    "SLICE_RULE",
    "WINDOW_PX",
    "lung_window",
    "mask_source_flag",
    "mask_sources",
    "nodule_table",
    "phantom_volume_count",
    "prepare_luna16_dataset",
    "read_slices",
    "split_description",
    "write_nodule_windows",
]
