"""Box-prompted segmentation, zero-shot: paper 003's SAM on LUNA16 nodule slices, beside the no-model baseline.

All on the test series of the run's LUNA16 kit dataset (:func:`lungkit.data.luna16_kit.prepare_luna16_dataset`):

- SAM (v1, keras-hub; SAM2 has no Keras port) with the box prompts, zero-shot (:func:`segment_split_with_sam`,
  :func:`write_sam_result`), and how its Dice falls as the boxes get sloppier (:func:`prompt_sensitivity`).
  Without a local preset the run uses a tiny random-initialised SAM and its result is ``status = "wiring_only"``:
  it checks the plumbing and never shows a number.
- the box's inscribed ellipse, no model (:func:`write_box_ellipse_result`): box and disc mask come from the same
  annotation, so this is what a Dice against discs gives for free.
- :func:`comparison_table`: both beside the trained U-Net
  (:class:`lungkit.experiments.segmentation.LunaUNetBaseline`).

Notebook ``30_sam_box_prompts`` calls this module; its figures are in :mod:`lungkit.figures`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit import papers
from lungkit.data.export import write_text_atomic
from lungkit.data.luna16_kit import BOX_SIZE, lung_window, mask_source_flag, mask_sources, read_slices
from lungkit.experiments.segmentation import UNET_RESULT_KEY

PAPER_ID = "paper003"
SAM_RESULT_KEY = "sam_luna16"
ELLIPSE_RESULT_KEY = "box_ellipse_luna16"

SAM_STAND_IN = (
    "SAM (v1) from keras-hub standing in for SAM2: keras-hub has SAM and SAM3 but no SAM2, and no Keras port of SAM2 "
    "exists"
)
NO_SAM_WEIGHTS_MESSAGE = (
    "No SAM weights given (sam_preset_dir is empty): running a tiny random-initialised SAM to check the wiring. Its "
    "masks mean nothing; the result is written with status 'wiring_only' and no report shows its numbers.\n"
    "To run the real zero-shot evaluation: "
)


@dataclass
class SamSetup:
    """The SAM model of a run and what it is.

    Args:
        model: a ``keras_hub.models.SAMImageSegmenter``.
        status: ``"measured"`` (pretrained preset: its numbers are results) or ``"wiring_only"`` (tiny
            random-initialised SAM), the ``status`` its summary.json gets.
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
        return SamSetup(model, "measured", str(preset), f"{SAM_STAND_IN}; preset {preset.name}", batch_size=4)
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
        mask_source=mask_sources(predictions.manifest),
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
        status="wiring_only" if wiring else "measured", dataset_dir=dataset_dir, wall_time_s=wall_time_s,
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
                                   prompt="box", box_size=BOX_SIZE, mask_source=mask_sources(manifest))
    path = write_results(
        Path(run_dir) / "results" / PAPER_ID / ELLIPSE_RESULT_KEY,
        per_image, summarize(per_image, seed=seed), paper=PAPER_ID, tables=[baseline["table"]], row=baseline["row"],
        model="box_ellipse", task="segmentation", protocol=protocol, dataset_dir=dataset_dir,
        wall_time_s=time.perf_counter() - start,
    )
    return path, predictions


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
        if summary["status"] == "measured":  # read_summary reads the older "reproduced" as "measured"
            for metric in ("dice", "iou", "recall"):
                value = metric_from_summary(summary, metric)
                if value is not None:
                    row[metric] = f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows).set_index("result")


__all__ = [
    "ELLIPSE_RESULT_KEY",
    "PAPER_ID",
    "SAM_RESULT_KEY",
    "SAM_STAND_IN",
    "SamSetup",
    "SlicePredictions",
    "box_ellipse_predictions",
    "comparison_table",
    "load_sam_setup",
    "prompt_sensitivity",
    "score_slices",
    "segment_split_with_sam",
    "write_box_ellipse_result",
    "write_sam_result",
]
