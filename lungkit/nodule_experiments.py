"""Paper 003 end to end: LUNA16 nodule slices -> box-prompted SAM (zero-shot) beside a trained U-Net; nodule crops
-> DenseNet-121 benign / malignant.

The notebooks ``30_sam_box_prompts`` and ``31_densenet_classifier`` call this module; every step lives here.

Data (both notebooks):

- :func:`prepare_luna16_dataset`: a LUNA16 folder (or, without one, the LUNA16-layout phantom of
  :mod:`lungkit.data.phantom_volumes` written into the run) -> ``<run_dir>/luna16_kit``: the kit dataset of every
  slice each annotated nodule spans, resampled to 1 mm in-plane, with a box prompt per slice
  (:func:`lungkit.data.luna16.convert_luna16_to_kit`). Splits are by series (a LUNA16 series is one patient's scan).
  LUNA16 has no masks, so masks are discs from the annotated diameters, flagged ``disc_from_diameter``.
- :func:`write_nodule_windows`: the same rows as 64 x 64 px windows centred on each box prompt (the U-Net's data).

Segmentation (notebook 30), all on the test series:

- SAM (v1, keras-hub; SAM2 has no Keras port) with the box prompts, zero-shot (:func:`segment_split_with_sam`,
  :func:`write_sam_result`). Without a local preset the run uses a tiny random-initialised SAM and its result is
  ``status = "wiring_only"``: it checks the plumbing and never shows a number.
- the box's inscribed ellipse, no model (:func:`write_box_ellipse_result`): box and disc mask come from the same
  annotation, so this is what a Dice against discs gives for free.
- a kit U-Net trained on the nodule windows (:class:`LunaUNetBaseline`).

Classification (notebook 31): :class:`ClassifierExperiment`: crops around nodule centres (LIDC malignancy > 3
malignant, < 3 benign, 3 dropped; or the documented Lung-RADS proxy), DenseNet-121 by paper 003's recipe capped by
the profile, rotation / flip / zoom augmentation and class balancing on the training split only, metrics through
:func:`lungkit.evaluation.evaluate_classification`, results for Table 3.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit import papers
from lungkit.data.export import move_into_place, write_text_atomic
from lungkit.experiment import SegmentationExperiment
from lungkit.profiles import Profile, get_profile

PAPER_ID = "paper003"
SAM_RESULT_KEY = "sam_luna16"
UNET_RESULT_KEY = "unet_luna16"
ELLIPSE_RESULT_KEY = "box_ellipse_luna16"
CLASSIFIER_RESULT_KEY = "densenet121_classifier"

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

SAM_STAND_IN = (
    "SAM (v1) from keras-hub standing in for SAM2: keras-hub has SAM and SAM3 but no SAM2, and no Keras port of SAM2 "
    "exists"
)
DISC_MASK_FLAG = (
    "MASKS FROM DIAMETERS: LUNA16 has no nodule masks; the targets are the discs a sphere of the annotated diameter "
    "shows on each slice (mask_source disc_from_diameter), not traced outlines."
)
NO_SAM_WEIGHTS_MESSAGE = (
    "No SAM weights given (sam_preset_dir is empty): running a tiny random-initialised SAM to check the wiring. Its "
    "masks mean nothing; the result is written with status 'wiring_only' and no report shows its numbers.\n"
    "To run the real zero-shot evaluation: "
)
LABEL_SOURCES = ("malignancy", "lungrads_proxy")
#: The Lung-RADS proxy for benign / malignant (not biology: Lung-RADS grades suspicion, mostly by size).
LUNGRADS_PROXY_LABELS = {"LR2": 0, "LR3": 0, "LR4A": 1, "LR4B": 1}
LUNGRADS_PROXY_NAME = (
    "Lung-RADS PROXY labels, not malignancy: LR2/LR3 = benign-like (0), LR4A/LR4B = suspicious (1)"
)
MALIGNANCY_RULE = "malignancy > 3 malignant (1), < 3 benign (0), 3 dropped (paper 003, lines 390-394)"
CLASS_NAMES = ("benign", "malignant")


# ============================================================================================== small helpers


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


# ============================================================================================== data: LUNA16


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


def _mask_source(manifest: pd.DataFrame) -> str:
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


def plot_prompt_examples(dataset_dir: str | Path, n: int = 4, seed: int = 0):
    """A few nodule slices (lung window) with the box prompt (yellow) and the target mask (green outline).

    One slice each from ``n`` nodules drawn at random (seeded), alternating the nodule's central slice and its
    outermost slice, where the full-diameter box is much larger than the disc the sphere shows.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from lungkit.data.export import read_hu_png, read_png
    from lungkit.data.kit_dataset import read_manifest
    from lungkit.data.nodule_slices import parse_box

    manifest = read_manifest(dataset_dir)
    rng = np.random.default_rng(seed)
    nodules = manifest.groupby(["seriesuid", "nodule_index"]).groups
    keys = list(nodules)
    picks = []
    for number, key in enumerate(rng.permutation(len(keys))[:n]):
        rows = manifest.loc[nodules[keys[key]]]
        offsets = rows["slice_offset_mm"].abs()
        picks.append(int(offsets.idxmin() if number % 2 == 0 else offsets.idxmax()))
    figure, axes = plt.subplots(1, len(picks), figsize=(3.3 * len(picks), 3.6), squeeze=False)
    for axis, index in zip(axes[0], picks):
        row = manifest.loc[index]
        x0, y0, x1, y1 = parse_box(row["prompt_box"])
        mask = read_png(row["mask_path"]) > 0
        axis.imshow(lung_window(read_hu_png(row["image_path"])), cmap="gray", vmin=0, vmax=1)
        axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.2))
        if mask.any():
            axis.contour(mask, levels=[0.5], colors="lime", linewidths=1.0)
        axis.set_title(
            f"d {row['diameter_mm']:.1f} mm, offset {row['slice_offset_mm']:+.1f} mm\n"
            f"section {row['section_diameter_mm']:.1f} mm ({row['mask_source']})",
            fontsize=8,
        )
        axis.axis("off")
    figure.suptitle("box prompt (yellow) and target mask (green)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return figure


# ============================================================================================== SAM, zero-shot


@dataclass
class SamSetup:
    """The SAM model of a run and what it is.

    Args:
        model: a ``keras_hub.models.SAMImageSegmenter``.
        status: ``"reproduced"`` (pretrained preset) or ``"wiring_only"`` (tiny random-initialised SAM).
        preset_dir: the local preset folder, or None.
        variant: one line for the protocol.
        batch_size: slices per forward pass (SAM-B at 1024 px needs about 1 GB of activations per slice).
    """

    model: object
    status: str
    preset_dir: str | None
    variant: str
    batch_size: int = 4

    @property
    def frame_size(self) -> int:
        from lungkit.models.sam import sam_frame_size

        return sam_frame_size(self.model)


def load_sam_setup(sam_preset_dir: str | Path | None = "", tiny_frame_size: int = 64, seed: int = 0,
                   verbose: bool = True) -> SamSetup:
    """SAM from a local keras-hub preset folder, or, without one, the tiny random SAM for a wiring check.

    Args:
        sam_preset_dir: folder of a keras-hub SAM preset (``config.json``, ``model.weights.h5`` ...); "" or None
            for none.
        tiny_frame_size: frame side of the tiny SAM (multiple of 32).
        seed: initialisation seed of the tiny SAM.
        verbose: print what to download and where to put it when no preset is given.

    Returns:
        A :class:`SamSetup`.

    Raises:
        FileNotFoundError: when ``sam_preset_dir`` is given but holds no preset (the message says what to get).
    """
    from lungkit.models.sam import SAM_DOWNLOAD_HELP, build_tiny_sam, load_sam

    if sam_preset_dir:
        preset = Path(sam_preset_dir).expanduser().resolve()
        model = load_sam(preset)
        return SamSetup(model, "reproduced", str(preset), f"{SAM_STAND_IN}; preset {preset.name}", batch_size=4)
    if verbose:
        print(NO_SAM_WEIGHTS_MESSAGE + SAM_DOWNLOAD_HELP)
    model = build_tiny_sam(image_size=tiny_frame_size, seed=seed)
    # Batches of more than 8 crash the process (heap corruption inside keras-hub's SAM prompt encoder on CPU with
    # keras-hub 0.32 / TF 2.21, seen with the tiny SAM); 8 is safe and fast enough.
    return SamSetup(model, "wiring_only", None, "tiny random-initialised SAM (v1 architecture): wiring check only",
                    batch_size=8)


@dataclass
class SlicePredictions:
    """Per-slice probabilities of one model on one split (slices may differ in size).

    Args:
        hu, masks, probabilities: lists of 2-D arrays in manifest order.
        boxes: prompts used, ``(n, 4)``.
        manifest: the split's manifest rows.
        per_image: :func:`lungkit.evaluation.evaluate_segmentation` rows, one per slice.
    """

    hu: list
    masks: list
    probabilities: list
    boxes: np.ndarray
    manifest: pd.DataFrame
    per_image: pd.DataFrame


def score_slices(probabilities, masks, manifest: pd.DataFrame) -> pd.DataFrame:
    """Per-slice metrics for slices of different sizes: one :func:`evaluate_segmentation` call per slice."""
    from lungkit.evaluation import evaluate_segmentation

    manifest = manifest.reset_index(drop=True)
    rows = [
        evaluate_segmentation(np.asarray(p, np.float32)[None], np.asarray(m, np.uint8)[None], manifest.iloc[[i]])
        for i, (p, m) in enumerate(zip(probabilities, masks))
    ]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def segment_split_with_sam(
    setup: SamSetup,
    dataset_dir: str | Path,
    split: str = "test",
    jitter_fraction: float = 0.0,
    seed: int = 0,
    batch_size: int | None = None,
    max_slices: int | None = None,
) -> SlicePredictions:
    """Zero-shot SAM on every slice of a split with its box prompt, scored against the dataset's masks.

    Slices keep their stored (1 mm) resolution; :func:`lungkit.models.sam.segment_with_boxes` maps each slice and
    box into SAM's square frame (min-max to 0-255, paper 003 Eq. 5) and the mask back.

    Args:
        setup: :func:`load_sam_setup`.
        dataset_dir: a LUNA16 kit dataset.
        split: which split.
        jitter_fraction: box jitter (each side moves by up to this fraction of the box size), seeded.
        seed: jitter seed.
        batch_size: slices per SAM forward pass (default ``setup.batch_size``).
        max_slices: evaluate only the first ``max_slices`` slices (None = all).

    Returns:
        :class:`SlicePredictions`.
    """
    from lungkit.models.sam import segment_with_boxes

    hu, masks, boxes, manifest = read_slices(dataset_dir, split)
    if max_slices is not None:
        hu, masks, boxes, manifest = hu[:max_slices], masks[:max_slices], boxes[:max_slices], manifest.iloc[:max_slices]
    if not hu:
        raise ValueError(f"{dataset_dir}: split {split!r} has no slices")
    probabilities = segment_with_boxes(
        setup.model, hu, boxes, batch_size=batch_size or setup.batch_size, jitter_fraction=jitter_fraction, seed=seed
    )
    per_image = score_slices(probabilities, masks, manifest)
    return SlicePredictions(hu, masks, probabilities, boxes, manifest.reset_index(drop=True), per_image)


def prompt_sensitivity(
    setup: SamSetup,
    dataset_dir: str | Path,
    fractions=(0.0, 0.1, 0.2, 0.3),
    split: str = "test",
    seed: int = 0,
    batch_size: int | None = None,
    max_slices: int | None = None,
) -> pd.DataFrame:
    """Dice and IoU of SAM as the box prompts get sloppier (box jitter, :func:`lungkit.models.sam.jitter_box`).

    Returns:
        One row per fraction: ``jitter_fraction``, ``dice_mean``, ``dice_ci_low``, ``dice_ci_high``, ``iou_mean``,
        ``n``. The numbers of a wiring-only SAM mean nothing; :func:`write_sam_result` never writes them.
    """
    from lungkit.evaluation import bootstrap_ci

    rows = []
    for fraction in fractions:
        result = segment_split_with_sam(setup, dataset_dir, split, float(fraction), seed, batch_size, max_slices)
        dice_mean, low, high = bootstrap_ci(result.per_image["dice"], seed=seed)
        rows.append({"jitter_fraction": float(fraction), "dice_mean": dice_mean, "dice_ci_low": low,
                     "dice_ci_high": high, "iou_mean": float(result.per_image["iou"].mean()),
                     "n": int(len(result.per_image))})
    return pd.DataFrame(rows)


def plot_prompt_sensitivity(sensitivity: pd.DataFrame, title: str = ""):
    """Dice (95% CI) against box jitter."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.8, 3.4))
    x = sensitivity["jitter_fraction"].to_numpy()
    axis.errorbar(x, sensitivity["dice_mean"], yerr=[sensitivity["dice_mean"] - sensitivity["dice_ci_low"],
                  sensitivity["dice_ci_high"] - sensitivity["dice_mean"]], marker="o", capsize=3)
    axis.set_xlabel("box jitter (fraction of box size per side)")
    axis.set_ylabel("mean Dice (95% CI)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.set_title(title or "SAM's sensitivity to the box prompt", fontsize=10)
    figure.tight_layout()
    return figure


def _common_display_arrays(predictions: SlicePredictions, size: int = 128) -> dict:
    """Slices, masks and probabilities resized to one square size, for ``predictions.npz`` (report galleries)."""
    import cv2

    def resize(array, interpolation):
        return cv2.resize(np.asarray(array, np.float32), (size, size), interpolation=interpolation)

    return {
        "images": np.stack([resize(lung_window(h), cv2.INTER_AREA) for h in predictions.hu]).astype(np.float16),
        "masks": np.stack([resize(m, cv2.INTER_NEAREST) for m in predictions.masks]).astype(np.uint8),
        "probabilities": np.stack([resize(p, cv2.INTER_LINEAR) for p in predictions.probabilities]).astype(np.float16),
        "dice": predictions.per_image["dice"].to_numpy(np.float32),
    }


def _zero_shot_protocol(profile: str, dataset_dir: Path, seed: int, image_size, model_scale: str, notes: str,
                        **extra) -> dict:
    from lungkit.data.prepare import read_dataset_info
    from lungkit.evaluation import data_fingerprint

    info = read_dataset_info(dataset_dir)
    return {
        "profile": profile,
        "data_source": info.get("data_source", "unknown"),
        "split": info.get("split_description", "not recorded"),
        "image_size": image_size,
        "epochs": None,
        "seed": seed,
        "model_scale": model_scale,
        "loss": "none (zero-shot, no training)",
        "optimizer": "none (zero-shot, no training)",
        "postprocess": "none",
        "data_fingerprint": data_fingerprint(dataset_dir),
        **extra,
        "notes": notes,
    }


def write_sam_result(
    setup: SamSetup,
    predictions: SlicePredictions,
    dataset_dir: str | Path,
    run_dir: str | Path,
    profile: str,
    seed: int = 0,
    sensitivity: pd.DataFrame | None = None,
    wall_time_s: float | None = None,
) -> Path:
    """Write ``results/paper003/sam_luna16`` (Table 2, row "Ours", LUNA16).

    With pretrained weights: ``per_image.csv``, ``summary.json`` (means with bootstrap CIs, per class of
    ``label1``), ``predictions.npz`` and ``prompt_sensitivity.csv``. Wiring only (tiny SAM): ``status =
    "wiring_only"``, a summary without metrics and a ``per_image.csv`` with only ids and mask areas (proof that
    every slice went through), so no number of a random model can reach a report.

    Returns:
        Path of ``summary.json``.
    """
    from lungkit.evaluation import summarize, write_results

    dataset_dir = Path(dataset_dir)
    results_dir = Path(run_dir) / "results" / PAPER_ID / SAM_RESULT_KEY
    rows = papers.find_rows_for_result(PAPER_ID, SAM_RESULT_KEY)
    setup_notes = papers.get_zero_shot(PAPER_ID, SAM_RESULT_KEY)["notes"]
    wiring = setup.status == "wiring_only"
    notes = " ".join(x for x in (
        mask_source_flag(dataset_dir),
        "WIRING ONLY: tiny random-initialised SAM, no weights; numbers withheld." if wiring else "",
        f"{SAM_STAND_IN}.",
        "Box prompts: paper 003 Figure 6's rule, one full-diameter box per nodule on every slice it spans; slices at "
        "1 mm in-plane, min-max scaled (Eq. 5) and resized into SAM's square frame; SAM's single-mask output, "
        "threshold 0.5.",
        setup_notes,
    ) if x)
    protocol = _zero_shot_protocol(
        profile, dataset_dir, seed, setup.frame_size, "tiny (random init)" if wiring else "pretrained preset", notes,
        sam_variant=setup.variant, sam_preset=setup.preset_dir, prompt="box", box_size=BOX_SIZE,
        mask_source=_mask_source(predictions.manifest),
    )
    if wiring:
        per_image = pd.DataFrame({
            "id": predictions.manifest["id"],
            "label1": predictions.manifest["label1"],
            "target_area_px": [int(np.count_nonzero(m)) for m in predictions.masks],
            "predicted_area_px": [int(np.count_nonzero(np.asarray(p) >= 0.5)) for p in predictions.probabilities],
        })
        summary = {"n_images": len(per_image), "metrics": {}, "pooled": {}, "per_class": {}}
    else:
        per_image = predictions.per_image
        summary = summarize(per_image, seed=seed)
    path = write_results(
        results_dir, per_image, summary, paper=PAPER_ID, tables=sorted({r["table"] for r in rows}),
        row=rows[0]["row"], model="sam", task="segmentation", protocol=protocol,
        status="wiring_only" if wiring else "reproduced", dataset_dir=dataset_dir, wall_time_s=wall_time_s,
    )
    if not wiring:
        np.savez_compressed(results_dir / "predictions.npz", **_common_display_arrays(predictions))
        if sensitivity is not None:
            write_text_atomic(results_dir / "prompt_sensitivity.csv", sensitivity.to_csv(index=False))
    return path


def box_ellipse_predictions(masks, boxes) -> list:
    """The ellipse inscribed in each box, as a 0/1 float mask the size of its slice (no model)."""
    from lungkit.data.nodule_slices import disc_mask

    predictions = []
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        centre = ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
        radii = (max((x1 - x0) / 2.0, 1e-6), max((y1 - y0) / 2.0, 1e-6))
        predictions.append(disc_mask(np.shape(mask), centre, radii).astype(np.float32))
    return predictions


def write_box_ellipse_result(dataset_dir: str | Path, run_dir: str | Path, profile: str, seed: int = 0,
                             split: str = "test") -> tuple[Path, SlicePredictions]:
    """Score the box's inscribed ellipse against the masks of a split and write ``results/paper003/box_ellipse_luna16``.

    Returns:
        ``(summary path, predictions)``.
    """
    from lungkit.evaluation import summarize, write_results

    start = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    hu, masks, boxes, manifest = read_slices(dataset_dir, split)
    probabilities = box_ellipse_predictions(masks, boxes)
    per_image = score_slices(probabilities, masks, manifest)
    predictions = SlicePredictions(hu, masks, probabilities, boxes, manifest, per_image)
    baseline = papers.get_paper(PAPER_ID).BASELINES[ELLIPSE_RESULT_KEY]
    notes = " ".join(x for x in (mask_source_flag(dataset_dir), baseline["notes"]) if x)
    protocol = _zero_shot_protocol(profile, dataset_dir, seed, "native (1 mm pixels)", "none (no model)", notes,
                                   prompt="box", box_size=BOX_SIZE, mask_source=_mask_source(manifest))
    path = write_results(
        Path(run_dir) / "results" / PAPER_ID / ELLIPSE_RESULT_KEY,
        per_image, summarize(per_image, seed=seed), paper=PAPER_ID, tables=[baseline["table"]], row=baseline["row"],
        model="box_ellipse", task="segmentation", protocol=protocol, dataset_dir=dataset_dir,
        wall_time_s=time.perf_counter() - start,
    )
    return path, predictions


def plot_slice_predictions(predictions: SlicePredictions, n: int = 4, title: str = "", show_scores: bool = True):
    """Slices with the box (yellow), target (green) and prediction (red), best -> worst by Dice.

    Args:
        show_scores: print each slice's Dice in its title (False for a wiring-only model).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    dice = predictions.per_image["dice"].to_numpy()
    order = np.argsort(-np.nan_to_num(dice, nan=-1.0))
    picks = [int(order[int(round(k))]) for k in np.linspace(0, len(order) - 1, min(n, len(order)))]
    figure, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4), squeeze=False)
    for axis, index in zip(axes[0], picks):
        x0, y0, x1, y1 = predictions.boxes[index]
        axis.imshow(lung_window(predictions.hu[index]), cmap="gray", vmin=0, vmax=1)
        axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.0))
        if predictions.masks[index].any():
            axis.contour(predictions.masks[index], levels=[0.5], colors="lime", linewidths=1.0)
        predicted = np.asarray(predictions.probabilities[index]) >= 0.5
        if predicted.any():
            axis.contour(predicted, levels=[0.5], colors="red", linewidths=1.0)
        axis.set_title(f"Dice {dice[index]:.2f}" if show_scores else "wiring only", fontsize=9)
        axis.axis("off")
    figure.suptitle(title or "box (yellow), target (green), prediction (red)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return figure


# ============================================================================================== U-Net baseline


class LunaUNetBaseline(SegmentationExperiment):
    """The kit U-Net trained on the LUNA16 nodule windows: paper 003's lungkit-added baseline beside SAM.

    A :class:`~lungkit.experiment.SegmentationExperiment` whose recipe is ``paper003.BASELINES[result_key]`` (not a
    row of the paper, so not in ``RECIPES``) and whose data is a windows dataset (:func:`write_nodule_windows`).
    Construct with ``LunaUNetBaseline("paper003", "unet_luna16", profile, run_dir, seed=seed,
    dataset_dir=windows_dir)``. Its summary goes to ``results/paper003/unet_luna16`` with the LUNA16 split line and
    the disc-mask flag in the protocol.
    """

    def __post_init__(self):
        from lungkit.training import Recipe

        if self.dataset_dir is None:
            raise ValueError("LunaUNetBaseline needs dataset_dir= a LUNA16 windows dataset (write_nodule_windows)")
        self.run_dir = Path(self.run_dir)
        self.dataset_dir = Path(self.dataset_dir)
        self.settings = get_profile(self.profile)
        baselines = getattr(papers.get_paper(self.paper_id), "BASELINES", {})
        if self.result_key not in baselines or baselines[self.result_key].get("recipe") is None:
            raise ValueError(f"{self.paper_id} has no trained baseline {self.result_key!r}; it has {sorted(baselines)}")
        baseline = baselines[self.result_key]
        source = f"lungkit/papers/{self.paper_id}.py: BASELINES[{self.result_key!r}]['recipe']"
        self.paper_recipe = Recipe.from_dict(baseline["recipe"], source=source)
        self.recipe = self.paper_recipe.for_profile(self.settings)
        self.rows = [{"table": baseline["table"], "row": baseline["row"]}]
        self.postprocess = "none"
        self.training_data = "converted"

    def evaluate(self, model, robustness: bool = False, notes: str = ""):
        """Score the test windows (see the parent); the protocol gets the LUNA16 split line (from the dataset's
        ``dataset.json``), the mask source and the window size.

        ``robustness`` defaults to False here: paper 003 has no intensity-robustness metric.
        """
        flag = mask_source_flag(self.dataset_dir)
        return super().evaluate(model, robustness=robustness, notes=" ".join(x for x in (flag, notes) if x))

    def _protocol_extra(self, dataset_dir: Path) -> dict:
        from lungkit.data.kit_dataset import read_manifest
        from lungkit.data.prepare import read_dataset_info

        return {
            "mask_source": _mask_source(read_manifest(dataset_dir, "test")),
            "window_px": read_dataset_info(dataset_dir).get("window_px"),
        }


def comparison_table(run_dir: str | Path) -> pd.DataFrame:
    """The LUNA16 segmentation results of a run side by side (Dice / IoU / recall with 95% CIs, status).

    Wiring-only results show their status and no numbers.
    """
    from lungkit.reports import metric_from_summary, read_summary

    labels = {SAM_RESULT_KEY: "SAM, zero-shot, box prompt", UNET_RESULT_KEY: "U-Net trained on the windows",
              ELLIPSE_RESULT_KEY: "ellipse inscribed in the box (no model)"}
    rows = []
    for key, label in labels.items():
        path = Path(run_dir) / "results" / PAPER_ID / key / "summary.json"
        if not path.is_file():
            rows.append({"result": label, "status": "not run"})
            continue
        summary = read_summary(path)
        row = {"result": label, "status": summary["status"], "n": summary["n_images"]}
        if summary["status"] == "reproduced":
            for metric in ("dice", "iou", "recall"):
                value = metric_from_summary(summary, metric)
                if value is not None:
                    row[metric] = f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows).set_index("result")


# ============================================================================================== classifier: data


@dataclass
class NoduleCrops:
    """Square crops around nodule centres with binary labels, and where each came from.

    Args:
        images: float32 HU ``(n, crop, crop)`` (for figures).
        scaled: float32 ``(n, crop, crop)`` in [0, 1]: paper 003's Eq. 5 (min-max) over the whole source slice,
            then cropped (what the model gets, see :func:`scaled_crop`).
        table: one row per crop: ``id``, ``case_id`` (the nodule; one case = one nodule), ``patient``, ``split``,
            ``label`` (0/1), ``label_name``, ``role`` (``"centre"``: the nodule's central slice, the only crop of
            a validation / test case; ``"near_centre"``: another slice used for training), plus source columns.
        label_source: ``"malignancy"`` or ``"lungrads_proxy"``.
        label_rule: how labels were made (for the protocol).
        dropped: cases left out, by reason.
        dataset_dir: the kit dataset the crops come from.
        data_source: ``phantom``, ``luna16``, ``lungrads`` ...
        split_description: the split line for the protocol.
        crop_size: side of the crops in pixels.
    """

    images: np.ndarray
    scaled: np.ndarray
    table: pd.DataFrame
    label_source: str
    label_rule: str
    dropped: dict
    dataset_dir: Path
    data_source: str
    split_description: str
    crop_size: int

    def select(self, split: str, centre_only: bool = False, hu: bool = False):
        """``(crops, labels, table)`` of one split: scaled crops (``hu=True``: HU crops); ``centre_only`` keeps one
        crop per case."""
        keep = (self.table["split"] == split).to_numpy()
        if centre_only:
            keep = keep & (self.table["role"] == "centre").to_numpy()
        table = self.table[keep].reset_index(drop=True)
        return (self.images if hu else self.scaled)[keep], table["label"].to_numpy(np.int64), table

    def counts(self) -> pd.DataFrame:
        """Cases (one per nodule) and crops per split and class."""
        centre = self.table[self.table["role"] == "centre"]
        cases = centre.groupby(["split", "label_name"]).size().rename("cases")
        crops = self.table.groupby(["split", "label_name"]).size().rename("crops")
        return pd.concat([cases, crops], axis=1).fillna(0).astype(int)


def crops_from_luna16(dataset_dir: str | Path, crop_size: int = 32, train_section_fraction: float = 0.8) -> NoduleCrops:
    """Nodule crops from a LUNA16 kit dataset, labelled by paper 003's malignancy rule.

    One case per nodule with a malignancy score (``malignancy.csv`` beside ``annotations.csv``; > 3 malignant,
    < 3 benign, 3 dropped). Validation and test cases get one crop: the nodule's central slice. Training cases
    also get the other slices whose cross-section is at least ``train_section_fraction`` of the diameter (a
    nodule's near-central slices look like it; its caps look like a smaller nodule and would teach the wrong size).
    Crops are centred on the annotated centre, padded with air.

    Args:
        dataset_dir: a LUNA16 kit dataset (:func:`prepare_luna16_dataset`).
        crop_size: side of the crops in kit pixels (1 mm).
        train_section_fraction: see above.

    Raises:
        ValueError: when no nodule has a malignancy score (the message says how to provide one), or none is left
            after the rule.
    """
    from lungkit.data.kit_dataset import read_manifest
    from lungkit.data.prepare import read_dataset_info

    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    info = read_dataset_info(dataset_dir)
    if manifest["malignancy"].isna().all():
        raise ValueError(
            f"{dataset_dir}: no nodule has a malignancy score, so there are no benign/malignant labels. LUNA16 itself "
            "has none: put a malignancy.csv (seriesuid, nodule_index, malignancy 1-5 from LIDC-IDRI, e.g. made with "
            "lungkit.data.lidc) beside annotations.csv and rebuild, or use label_source='lungrads_proxy'."
        )
    manifest["case_id"] = [f"{uid}_n{int(i):02d}" for uid, i in zip(manifest["seriesuid"], manifest["nodule_index"])]
    dropped = {
        "malignancy 3 (indeterminate)": int(manifest.loc[manifest["malignancy"] == 3, "case_id"].nunique()),
        "no malignancy score": int(manifest.loc[manifest["malignancy"].isna(), "case_id"].nunique()),
    }
    labelled = manifest[manifest["label_binary"].notna()].copy()
    if labelled.empty:
        raise ValueError(f"{dataset_dir}: every nodule was dropped by the label rule ({MALIGNANCY_RULE})")
    labelled["distance"] = (labelled["z_index"] - labelled["centre_z_index"]).abs()
    centre_rows = labelled.groupby("case_id")["distance"].idxmin()
    labelled["role"] = np.where(labelled.index.isin(centre_rows.to_numpy()), "centre", "near_centre")
    near = labelled["section_diameter_mm"] >= train_section_fraction * labelled["diameter_mm"]
    keep = (labelled["role"] == "centre") | ((labelled["split"] == "train") & near)
    chosen = labelled[keep].reset_index(drop=True)
    images, scaled = _crop_slices(chosen["image_path"], zip(chosen["centre_y_px"], chosen["centre_x_px"]), crop_size)
    label = chosen["label_binary"].astype(int).to_numpy()
    table = pd.DataFrame({
        "id": chosen["id"], "case_id": chosen["case_id"], "patient": chosen["seriesuid"], "split": chosen["split"],
        "label": label, "label_name": [CLASS_NAMES[v] for v in label], "role": chosen["role"],
        "malignancy": chosen["malignancy"], "diameter_mm": chosen["diameter_mm"], "z_index": chosen["z_index"],
    })
    return NoduleCrops(
        images, scaled, table, "malignancy", MALIGNANCY_RULE, dropped, dataset_dir, info.get("data_source", "luna16"),
        info.get("split_description", "by series"), int(crop_size),
    )


def crops_from_lungrads(dataset_dir: str | Path, crop_size: int = 32) -> NoduleCrops:
    """Tumour crops from a Lung-RADS kit dataset, labelled by the Lung-RADS PROXY (``LUNGRADS_PROXY_LABELS``).

    One case per slice with a tumour, cropped around the centre of the tumour mask's bounding box. The data has no
    patient id: the split is the dataset's own (its test split) with validation carved from train in class blocks.
    """
    from lungkit.data.export import DATASET_INFO_NAME
    from lungkit.data.kit_dataset import read_manifest
    from lungkit.experiment import SPLIT_DESCRIPTION

    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    info = _read_json(dataset_dir / DATASET_INFO_NAME)
    unknown = sorted(set(manifest["label1"]) - set(LUNGRADS_PROXY_LABELS))
    if unknown:
        raise ValueError(
            f"{dataset_dir}: label1 values {unknown} are not Lung-RADS classes {list(LUNGRADS_PROXY_LABELS)}"
        )
    with_tumour = manifest[manifest["tumour_area_px"] > 0].reset_index(drop=True)
    dropped = {"slices without a tumour": int(len(manifest) - len(with_tumour))}
    centres = np.stack([(with_tumour["bbox_y0"] + with_tumour["bbox_y1"] - 1) / 2.0,
                        (with_tumour["bbox_x0"] + with_tumour["bbox_x1"] - 1) / 2.0], axis=1)
    images, scaled = _crop_slices(with_tumour["image_path"], centres, crop_size)
    label = with_tumour["label1"].map(LUNGRADS_PROXY_LABELS).astype(int).to_numpy()
    table = pd.DataFrame({
        "id": with_tumour["id"], "case_id": with_tumour["id"], "patient": "unknown (no patient id in the data)",
        "split": with_tumour["split"], "label": label,
        "label_name": ["benign-like (LR2/LR3)" if v == 0 else "suspicious (LR4A/LR4B)" for v in label],
        "role": "centre", "lungrads": with_tumour["label1"], "diameter_mm": with_tumour["equivalent_diameter_mm"],
    })
    split = info.get("split_description") or (
        SPLIT_DESCRIPTION + "; no patient id exists, so one patient's slices may sit in both train and validation"
    )
    return NoduleCrops(images, scaled, table, "lungrads_proxy", LUNGRADS_PROXY_NAME, dropped, dataset_dir,
                       info.get("data_source", "lungrads"), split, int(crop_size))


def balanced_indices(labels, seed: int = 0) -> np.ndarray:
    """Indices that balance the classes by oversampling: every class is filled up to the largest class's count.

    All original indices are kept; each smaller class gets extra indices drawn from itself with replacement
    (seeded). Used on the training split only, where on-the-fly augmentation makes the repeats differ (paper 003
    balances its classes with rotations and flips, lines 234-244).

    Args:
        labels: class label per example (any hashable values).
        seed: sampling seed.

    Returns:
        int array of indices into ``labels``, sorted (so the order does not encode the class).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    target = counts.max()
    parts = []
    for value, count in zip(classes, counts):
        members = np.flatnonzero(labels == value)
        parts.append(members)
        if count < target:
            parts.append(rng.choice(members, size=target - count, replace=True))
    return np.sort(np.concatenate(parts)).astype(np.int64)


def scaled_crop(slice_hu: np.ndarray, centre_yx, crop_size: int) -> np.ndarray:
    """Paper 003's Eq. 5 on the whole slice (min-max to [0, 1], i.e. 0-255 / 255), then a crop around the centre.

    Scaling the slice rather than the crop keeps one intensity mapping for every crop of a scan: a crop of lung
    only and one that includes the chest wall or air see the same value for the same HU. Where the crop leaves the
    slice it is padded with 0 (the slice's minimum).
    """
    from lungkit.data.nodule_slices import extract_nodule_crops
    from lungkit.preprocess import minmax

    return extract_nodule_crops(minmax(slice_hu), [centre_yx], crop_size, fill_value=0.0)[0].astype(np.float32)


def _crop_slices(image_paths, centres_yx, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """HU crops (air-padded) and Eq. 5-scaled crops of the slices at ``image_paths``, one centre per slice."""
    from lungkit.data.export import read_hu_png
    from lungkit.data.nodule_slices import extract_nodule_crops

    hu_crops, scaled = [], []
    for path, centre in zip(image_paths, centres_yx):
        hu = read_hu_png(path)
        hu_crops.append(extract_nodule_crops(hu, [centre], crop_size)[0])
        scaled.append(scaled_crop(hu, centre, crop_size))
    return np.stack(hu_crops).astype(np.float32), np.stack(scaled).astype(np.float32)


def crops_to_inputs(crops: np.ndarray, image_size: int, channels: int = 3) -> np.ndarray:
    """Scaled crops in [0, 1] -> model inputs: bilinear resize to ``image_size``, grey repeated to ``channels``.

    Returns:
        float32 ``(n, image_size, image_size, channels)``.
    """
    import tensorflow as tf

    crops = np.asarray(crops, np.float32)
    if crops.size == 0:
        return np.zeros((0, image_size, image_size, channels), np.float32)
    resized = crops[..., None]
    if crops.shape[1:] != (image_size, image_size):
        resized = tf.image.resize(resized, (image_size, image_size), method="bilinear").numpy()
    return np.repeat(np.clip(resized, 0.0, 1.0), channels, axis=-1).astype(np.float32)


def crop_augmenter(seed: int = 0, max_angle_deg: float = 15.0, zoom: float = 0.1):
    """Paper 003's augmentation (rotations, flips, scaling; Figure 7) for one crop ``(s, s, c)`` in [0, 1].

    Quarter turns and flips (the 8 symmetries of a square: exact, nothing to fill; a nodule has no orientation),
    then a small rotation (up to ``max_angle_deg``, "small angle rotations", line 242) and a zoom in or out by up to
    ``zoom`` (small enough to keep the size that separates the classes), both filling the thin border they uncover
    by reflection. Large free rotations are avoided on purpose: their empty corners would make training crops look
    unlike the validation and test crops.

    Args:
        seed: seeds of the random draws.
        max_angle_deg: largest small-angle rotation in degrees.
        zoom: largest relative zoom.

    Returns:
        A function ``image -> augmented image`` (TensorFlow ops and Keras layers; usable in ``tf.data.map``).
    """
    import keras
    import tensorflow as tf

    flip = keras.layers.RandomFlip("horizontal_and_vertical", seed=seed)
    rotate = keras.layers.RandomRotation(max_angle_deg / 360.0, fill_mode="reflect", seed=seed + 1)
    scale = keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2)

    def augment(image):
        quarter_turns = tf.random.uniform([], 0, 4, dtype=tf.int32, seed=seed + 3)
        image = tf.image.rot90(image, quarter_turns)
        image = scale(rotate(flip(image, training=True), training=True), training=True)
        return tf.clip_by_value(image, 0.0, 1.0)

    return augment


def make_crop_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool = False,
                      augment: bool = False, seed: int = 0):
    """Batched ``(image, label)`` tf.data pipeline; augmentation (per crop) only when asked: the training split.

    Returns:
        ``tf.data.Dataset`` of float32 images ``(b, s, s, c)`` and float32 labels ``(b, 1)``.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), labels.astype(np.float32)[:, None]))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if augment:
        augmenter = crop_augmenter(seed)
        dataset = dataset.map(lambda x, y: (augmenter(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ============================================================================================== classifier: run


@dataclass
class ClassifierEvaluation:
    """What :meth:`ClassifierExperiment.evaluate` produced: per-case table, summary and its path."""

    per_case: pd.DataFrame
    summary: dict
    summary_path: Path

    def table(self) -> pd.DataFrame:
        """Metrics with 95% CIs (over cases) as a small table."""
        rows = [{"metric": key, **{k: block.get(k) for k in ("mean", "ci_low", "ci_high", "n")}}
                for key, block in self.summary["metrics"].items()]
        return pd.DataFrame(rows).set_index("metric")


@dataclass
class ClassifierExperiment:
    """Paper 003's DenseNet-121 benign / malignant classifier (Table 3, row "Proposed Model") under a run profile.

    Args:
        profile: ``smoke``, ``quick`` or ``paper``.
        run_dir: the run's folder.
        seed: data, balancing, augmentation, weights and shuffling seed.
        crop_size: side of the nodule crops in source pixels (1 mm for LUNA16). With ImageNet weights they are
            resized to the recipe's input size (224, capped by the profile); without, to at most ``crop_size``.
        label_source: ``"malignancy"`` (LUNA16 / LIDC scores, or the phantom's proxy score) or
            ``"lungrads_proxy"`` (the run's Lung-RADS kit dataset, LR2/LR3 vs LR4A/LR4B).
        luna16_dir: LUNA16 root for ``"malignancy"`` ("" = the run's phantom).
        data_dir: Lung-RADS pickles for ``"lungrads_proxy"`` ("" = the run's phantom).
        densenet_weights: local DenseNet-121 ImageNet "notop" weights (paper scale only; "" = random init).
        train_section_fraction: see :func:`crops_from_luna16`.
    """

    profile: str
    run_dir: Path
    seed: int = 0
    crop_size: int = 32
    label_source: str = "malignancy"
    luna16_dir: str = ""
    data_dir: str = ""
    densenet_weights: str = ""
    train_section_fraction: float = 0.8
    result_key: str = CLASSIFIER_RESULT_KEY
    crops: NoduleCrops | None = field(default=None, init=False)

    def __post_init__(self):
        from lungkit.training import Recipe

        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}")
        if int(self.crop_size) < 8:
            raise ValueError(f"crop_size must be at least 8 pixels, got {self.crop_size}")
        self.run_dir = Path(self.run_dir)
        self.settings = get_profile(self.profile)
        source = f"lungkit/papers/{PAPER_ID}.py: RECIPES[{self.result_key!r}]"
        self.paper_recipe = Recipe.from_dict(papers.get_recipe(PAPER_ID, self.result_key), source=source)
        self.recipe = self.paper_recipe.for_profile(self.settings)
        if not self.densenet_weights and int(self.crop_size) < self.recipe.image_size:
            # The recipe's 224 px is DenseNet's ImageNet input size; without ImageNet weights upsampling a crop
            # adds no information, only compute. Recorded as a cap in the protocol.
            capped = dict(self.recipe.capped)
            capped["image_size"] = {"recipe": self.paper_recipe.image_size, "used": int(self.crop_size),
                                    "why": "random init: crops are not upsampled to the ImageNet size"}
            self.recipe = dataclasses.replace(self.recipe, image_size=int(self.crop_size), capped=capped)
        self.rows = papers.find_rows_for_result(PAPER_ID, self.result_key)

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "models" / PAPER_ID / self.result_key

    @property
    def results_dir(self) -> Path:
        return self.run_dir / "results" / PAPER_ID / self.result_key

    @property
    def figures_dir(self) -> Path:
        path = self.run_dir / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def recipe_table(self) -> pd.DataFrame:
        """The paper's settings beside the ones this profile uses."""
        keys = ("image_size", "input_channels", "preprocessing", "optimizer", "learning_rate", "momentum",
                "lr_schedule", "loss", "batch_size", "epochs", "monitor", "augment_on_the_fly")
        rows = [
            {"setting": key, "paper": str(getattr(self.paper_recipe, key)), "this run": str(getattr(self.recipe, key))}
            for key in keys
        ]
        rows.append({"setting": "model_scale", "paper": "paper (DenseNet-121)", "this run": self.recipe.model_scale})
        rows.append({"setting": "crop size (px)", "paper": "not printed", "this run": str(self.crop_size)})
        rows.append({"setting": "labels", "paper": MALIGNANCY_RULE,
                     "this run": MALIGNANCY_RULE if self.label_source == "malignancy" else LUNGRADS_PROXY_NAME})
        return pd.DataFrame(rows).set_index("setting")

    # -- data -----------------------------------------------------------------------------------------------------
    def prepare_data(self) -> NoduleCrops:
        """Build (or reuse) the run's kit dataset and cut the labelled crops."""
        if self.label_source == "malignancy":
            kit_dir = prepare_luna16_dataset(self.luna16_dir or None, self.run_dir, self.settings, self.seed)
            self.crops = crops_from_luna16(kit_dir, self.crop_size, self.train_section_fraction)
        else:
            from lungkit.data.prepare import prepare_lungrads_dataset

            kit_dir = prepare_lungrads_dataset(self.data_dir or None, self.run_dir, self.profile, self.seed)
            self.crops = crops_from_lungrads(kit_dir, self.crop_size)
        for split in ("train", "val", "test"):
            if not (self.crops.table["split"] == split).any():
                raise ValueError(f"{kit_dir}: no labelled {split} case; use more data (or another seed)")
        return self.crops

    def training_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The balanced training set (HU crops, labels): all training crops plus oversampled minority crops."""
        crops = self.crops or self.prepare_data()
        images, labels, _ = crops.select("train")
        index = balanced_indices(labels, self.seed)
        return images[index], labels[index]

    def datasets(self):
        """``(train, validation, steps_per_epoch)``: balanced + augmented training batches, plain validation batches."""
        crops = self.crops or self.prepare_data()
        size, channels = self.recipe.image_size, self.recipe.input_channels
        train_images, train_labels = self.training_arrays()
        val_images, val_labels, _ = crops.select("val", centre_only=True)
        train = make_crop_dataset(crops_to_inputs(train_images, size, channels), train_labels, self.recipe.batch_size,
                                  shuffle=True, augment=self.recipe.augment_on_the_fly, seed=self.seed)
        validation = make_crop_dataset(crops_to_inputs(val_images, size, channels), val_labels, self.recipe.batch_size)
        steps = math.ceil(len(train_labels) / self.recipe.batch_size)
        if self.recipe.max_steps_per_epoch:
            steps = min(steps, self.recipe.max_steps_per_epoch)
        return train, validation, steps

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self, steps_per_epoch: int):
        """DenseNet at the profile's scale with one sigmoid unit (= the paper's two-way softmax), compiled with the
        recipe's SGD, schedule and binary cross entropy; metrics accuracy and AUC.

        Compiled here rather than by :func:`lungkit.training.build_for_training`, whose metrics are segmentation
        metrics (Dice, IoU); optimizer and loss come from the same recipe helpers.
        """
        import keras
        import tensorflow as tf

        from lungkit.models import build_model
        from lungkit.training import configure_precision, make_loss, make_optimizer

        keras.utils.set_random_seed(self.seed)
        strategy = tf.distribute.get_strategy()
        precision = configure_precision(strategy)
        overrides = {"num_classes": 1}
        if self.densenet_weights:
            overrides["weights"] = self.densenet_weights
        shape = (self.recipe.image_size, self.recipe.image_size, self.recipe.input_channels)
        with strategy.scope():
            model = build_model(self.recipe.model, scale=self.recipe.model_scale or "paper", input_shape=shape,
                                **overrides)
            model.compile(
                optimizer=make_optimizer(self.recipe, steps_per_epoch),
                loss=make_loss(self.recipe),
                metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")],
                jit_compile=precision.jit_compile,
            )
        return model

    def train(self, model, train_ds, validation_ds, steps_per_epoch: int, verbose="auto"):
        """Fit by the recipe through :func:`lungkit.training.train` (checkpoint on val_loss, resumable)."""
        from lungkit.training import train

        self.fit = train(model, self.recipe, train_ds, validation_ds, self.model_dir,
                         steps_per_epoch=steps_per_epoch, verbose=verbose)
        return self.fit

    # -- evaluation -----------------------------------------------------------------------------------------------
    def predict(self, model, split: str = "test") -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """``(labels, malignancy probabilities, table)`` of one split, one crop per case."""
        crops = self.crops or self.prepare_data()
        images, labels, table = crops.select(split, centre_only=True)
        inputs = crops_to_inputs(images, self.recipe.image_size, self.recipe.input_channels)
        scores = np.asarray(model.predict(inputs, batch_size=self.recipe.batch_size, verbose=0), np.float64)[:, 0]
        return labels, scores, table

    def evaluate(self, model, notes: str = "") -> ClassifierEvaluation:
        """Score the test cases and write ``per_image.csv`` (one row per case) and ``summary.json`` for Table 3."""
        from lungkit.evaluation import evaluate_classification, load_summary, write_results

        start = time.perf_counter()
        crops = self.crops or self.prepare_data()
        labels, scores, table = self.predict(model, "test")
        per_case, summary = evaluate_classification(labels, scores, ids=table["case_id"].tolist(), seed=self.seed)
        for column in ("patient", "label_name", "malignancy", "lungrads", "diameter_mm"):
            if column in table.columns:
                per_case[column] = table[column].to_numpy()
        fit = getattr(self, "fit", None)
        counts = crops.counts().reset_index()
        train_labels = self.training_arrays()[1]
        label_note = (f"Labels: {MALIGNANCY_RULE}." if crops.label_source == "malignancy"
                      else f"Labels: {LUNGRADS_PROXY_NAME}; the Lung-RADS data has no malignancy, so Table 3 is "
                           "compared with a PROXY task here.")
        if crops.data_source == "phantom" and crops.label_source == "malignancy":
            label_note += " The phantom's malignancy is itself a proxy (size and spiculation), not biology."
        protocol = {
            **self.recipe.protocol(),
            "data_source": crops.data_source,
            "split": crops.split_description + (
                "; one test/validation case per nodule (its central-slice crop), training crops from near-central "
                "slices" if crops.label_source == "malignancy" else "; one case per tumour slice"
            ) + "; classes balanced by oversampling and augmentation (flips, quarter turns, +-15 degree rotations, "
              "+-10 % zoom) on train only",
            "seed": self.seed,
            "epochs": int(fit.epochs_completed) if fit is not None else self.recipe.epochs,
            "epochs_recipe": self.paper_recipe.epochs,
            "postprocess": "none",
            "label_source": crops.label_source,
            "label_rule": crops.label_rule,
            "crop_size_px": crops.crop_size,
            "intensity": "paper 003 Eq. 5: min-max over the whole slice, then the crop (scaled_crop)",
            "cases": {f"{r['split']}/{r['label_name']}": int(r["cases"]) for _, r in counts.iterrows()},
            "train_after_balancing": {CLASS_NAMES[v] if crops.label_source == "malignancy" else str(v): int(n)
                                      for v, n in zip(*np.unique(train_labels, return_counts=True))},
            "dropped": crops.dropped,
            "pretrained": self.densenet_weights or "none (random init; lungkit downloads no weights)",
            "threshold": 0.5,
            "training_wall_time_s": round(fit.wall_time_s, 1) if fit is not None else None,
            "environment": fit.environment if fit is not None else None,
            "notes": " ".join(x for x in (label_note, notes, self.recipe.notes) if x),
        }
        from lungkit.evaluation import data_fingerprint

        protocol["data_fingerprint"] = data_fingerprint(crops.dataset_dir)
        path = write_results(
            self.results_dir, per_case, summary, paper=PAPER_ID, tables=sorted({r["table"] for r in self.rows}),
            row=self.rows[0]["row"], model=self.recipe.model, task="classification", protocol=protocol,
            dataset_dir=crops.dataset_dir,
            wall_time_s=time.perf_counter() - start + (fit.wall_time_s if fit is not None else 0.0),
        )
        return ClassifierEvaluation(per_case, load_summary(path), path)


# ============================================================================================== classifier: figures


def plot_crop_examples(crops: NoduleCrops, n_per_class: int = 4, seed: int = 0):
    """Central-slice crops per class (lung window), with diameter and label."""
    import matplotlib.pyplot as plt

    centre = crops.table[crops.table["role"] == "centre"]
    rng = np.random.default_rng(seed)
    classes = sorted(centre["label"].unique())
    figure, axes = plt.subplots(len(classes), n_per_class, figsize=(2.2 * n_per_class, 2.4 * len(classes)),
                                squeeze=False)
    for row_axes, label in zip(axes, classes):
        members = centre.index[centre["label"] == label].to_numpy()
        picks = rng.permutation(members)[:n_per_class]
        for axis, index in zip(row_axes, picks):
            record = crops.table.loc[index]
            axis.imshow(lung_window(crops.images[index]), cmap="gray", vmin=0, vmax=1)
            diameter = record.get("diameter_mm", np.nan)
            axis.set_title(f"{record['label_name']}\n{diameter:.0f} mm" if np.isfinite(diameter)
                           else record["label_name"], fontsize=8)
        for axis in row_axes:
            axis.axis("off")
    figure.tight_layout()
    return figure


def plot_augmentation_preview(crop: np.ndarray, image_size: int, n: int = 6, seed: int = 0):
    """One scaled training crop and ``n`` augmented versions of it (what the classifier sees during training)."""
    import matplotlib.pyplot as plt

    inputs = crops_to_inputs(np.repeat(np.asarray(crop, np.float32)[None], n, axis=0), image_size, 1)
    augmenter = crop_augmenter(seed)
    augmented = np.stack([np.asarray(augmenter(image)) for image in inputs])
    figure, axes = plt.subplots(1, n + 1, figsize=(2.0 * (n + 1), 2.3))
    axes[0].imshow(inputs[0, ..., 0], cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("crop", fontsize=8)
    for axis, image in zip(axes[1:], augmented):
        axis.imshow(np.clip(image[..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
        axis.set_title("augmented", fontsize=8)
    for axis in axes:
        axis.axis("off")
    figure.tight_layout()
    return figure


def plot_classifier_curves(history: pd.DataFrame):
    """Loss, accuracy and AUC per epoch, training vs validation."""
    import matplotlib.pyplot as plt

    epochs = history["epoch"] + 1 if "epoch" in history else np.arange(1, len(history) + 1)
    keys = [key for key in ("loss", "accuracy", "auc") if key in history]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for axis, key in zip(axes[0], keys):
        axis.plot(epochs, history[key], marker="o", markersize=3, label=f"train {key}")
        if f"val_{key}" in history:
            axis.plot(epochs, history[f"val_{key}"], marker="o", markersize=3, label=f"validation {key}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_confusion_matrix(per_case: pd.DataFrame, class_names=CLASS_NAMES, title: str = ""):
    """Confusion matrix of the test cases (rows: truth, columns: prediction), counts."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axis = plt.subplots(figsize=(3.8, 3.4))
    ConfusionMatrixDisplay.from_predictions(
        per_case["y_true"], per_case["y_pred"], labels=[0, 1], display_labels=list(class_names), ax=axis,
        colorbar=False, cmap="Blues",
    )
    axis.set_title(title or f"test cases (n = {len(per_case)})", fontsize=10)
    figure.tight_layout()
    return figure


__all__ = [
    "ClassifierEvaluation",
    "ClassifierExperiment",
    "LunaUNetBaseline",
    "NoduleCrops",
    "SamSetup",
    "SlicePredictions",
    "balanced_indices",
    "box_ellipse_predictions",
    "comparison_table",
    "crop_augmenter",
    "crops_from_lungrads",
    "crops_from_luna16",
    "crops_to_inputs",
    "load_sam_setup",
    "make_crop_dataset",
    "mask_source_flag",
    "nodule_table",
    "phantom_volume_count",
    "plot_augmentation_preview",
    "plot_classifier_curves",
    "plot_confusion_matrix",
    "plot_crop_examples",
    "plot_prompt_examples",
    "plot_prompt_sensitivity",
    "plot_slice_predictions",
    "prepare_luna16_dataset",
    "prompt_sensitivity",
    "read_slices",
    "score_slices",
    "segment_split_with_sam",
    "split_description",
    "write_box_ellipse_result",
    "write_nodule_windows",
    "write_sam_result",
]
