"""Segment, then classify: paper 002's second step (segmented tumour -> benign / malignant).

Paper 002's slides plan a classification network on the segmented images (lines 98-120) and print no result. On the
Lung-RADS data there is no malignancy, only Lung-RADS classes, so the label is a PROXY: a named rule of
:data:`LABEL_RULES` (default ``lr23_vs_lr4``: LR2/LR3 benign-like, LR4A/LR4B suspicious, the kit's usual proxy).

What runs, all on the run's Lung-RADS kit dataset and its given split:

- **Crops** of ``crop_size`` pixels around the tumour at the segmentation's pixel scale, centred on the bounding box
  of the mask. Three views, compared: ``image`` (the CT crop, HU window [-1000, 400] -> [0, 1]), ``mask`` (the
  binary mask crop: shape only) and ``image_x_mask`` (the CT inside the mask, zero outside).
- **A small CNN** (``crop_cnn_classifier``) per view, trained on ground-truth crops of the *training* split only
  (validation: the validation split), classes balanced by oversampling, flips / rotations / small zooms.
- **A transfer model** (``mobilenetv2_classifier``: ``keras.applications`` MobileNetV2, the crop upsampled inside
  the model, ImageNet weights only from a local file, else from scratch, recorded), trained the same way on the same
  crops, with its recipe's frozen-then-unfrozen schedule when the encoder is pretrained. The notebook trains it on
  one view, the one where the small CNN reached the lowest validation loss (:meth:`SegmentThenClassify.best_view`,
  chosen on the validation split, never on the test split), to keep the quick profile cheap.
- **Two test inputs**: crops around the *predicted* masks of a segmentation result of this run (``predictions.npz``
  of ``50_mobilenet_unet`` or ``51_cnn_from_scratch``: the end-to-end pipeline) and around the ground-truth masks
  (the upper bound). A test slice whose predicted mask is empty is cropped around the highest tumour probability,
  with an empty mask view; such misses are counted in the protocol.
- **A size-only baseline**: the equivalent diameter 2 sqrt(area / pi) of the mask, thresholded at the value that
  maximises balanced accuracy on the training split's ground-truth masks. Lung-RADS classes are largely size
  classes: a classifier that does not beat this baseline has learned nothing beyond size.

Results go to ``results/paper002/<key>/`` as lungkit rows (table ``lungkit_classification``) with the protocol.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit import papers
from lungkit.profiles import get_profile

PAPER_ID = "paper002"
CLASSIFIER_KEY = "crop_cnn_classifier"
TRANSFER_KEY = "mobilenetv2_classifier"
CLASSIFIER_KEYS = (CLASSIFIER_KEY, TRANSFER_KEY)
#: Result keys: ``<prefix>_<view>_<source>`` under ``results/paper002/``; and the name in the rows.
RESULT_PREFIXES = {CLASSIFIER_KEY: "crop_cnn", TRANSFER_KEY: "mobilenetv2"}
CLASSIFIER_NAMES = {CLASSIFIER_KEY: "Crop CNN", TRANSFER_KEY: "MobileNetV2 transfer model"}
SEGMENTATION_KEYS = ("mobilenetv2_unet", "cnn_from_scratch")
CLASSIFICATION_TABLE = "lungkit_classification"

#: Named 0/1 label rules. The Lung-RADS rules are benign (0) / malignant (1) PROXY labels on Lung-RADS classes:
#: Lung-RADS grades suspicion, mostly by nodule size, not biology. ``adenocarcinoma_vs_other`` is a HISTOLOGY rule on
#: Lung-PET-CT-Dx's histology letters (:data:`lungkit.data.petct.HISTOLOGY`), where every subject has cancer: it
#: separates cancer types, not benign from malignant.
LABEL_RULES = {
    "lr23_vs_lr4": {"LR2": 0, "LR3": 0, "LR4A": 1, "LR4B": 1},
    "lr234a_vs_lr4b": {"LR2": 0, "LR3": 0, "LR4A": 0, "LR4B": 1},
    "adenocarcinoma_vs_other": {"A": 1, "B": 0, "E": 0, "G": 0},
}
DEFAULT_LABEL_RULE = "lr23_vs_lr4"
LABEL_RULE_TEXT = {
    "lr23_vs_lr4": "Lung-RADS PROXY: LR2/LR3 = benign-like (0), LR4A/LR4B = suspicious (1)",
    "lr234a_vs_lr4b": "Lung-RADS PROXY: LR2/LR3/LR4A = 0, LR4B = suspicious (1)",
    "adenocarcinoma_vs_other": (
        "HISTOLOGY, not malignancy (Lung-PET-CT-Dx: every subject has cancer): A adenocarcinoma = 1; B small cell, "
        "E large cell and G squamous cell carcinoma = 0"
    ),
}
#: What each rule's keys are, and so which kit dataset it belongs to: ``lungrads`` (the Lung-RADS kit dataset's
#: ``label1``) or ``histology`` (the Lung-PET-CT-Dx kit dataset's ``label1``, the subject's histology letter).
LABEL_RULE_KINDS = {
    "lr23_vs_lr4": "lungrads",
    "lr234a_vs_lr4b": "lungrads",
    "adenocarcinoma_vs_other": "histology",
}
_KIND_NAMES = {
    "lungrads": "Lung-RADS classes (the Lung-RADS kit dataset)",
    "histology": "Lung-PET-CT-Dx histology letters (the Lung-PET-CT-Dx kit dataset)",
}
CROP_INPUTS = ("image", "mask", "image_x_mask")
MASK_SOURCES = ("ground_truth", "predicted")
SIZE_BASELINE = "size_baseline"


def _require_rule(rule: str) -> None:
    """Raise ValueError for a rule :data:`LABEL_RULES` does not name."""
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; rules: {sorted(LABEL_RULES)}")


def is_histology_rule(rule: str) -> bool:
    """Whether a label rule maps Lung-PET-CT-Dx histology letters (else Lung-RADS classes).

    Raises:
        ValueError: for an unknown rule.
    """
    _require_rule(rule)
    return LABEL_RULE_KINDS[rule] == "histology"


def lungrads_labels(lungrads, rule: str = DEFAULT_LABEL_RULE) -> np.ndarray:
    """0/1 labels of a kit dataset's ``label1`` values by a named rule.

    The name predates the histology rule: ``lungrads`` holds Lung-RADS classes for a Lung-RADS rule and histology
    letters for a histology rule (:data:`LABEL_RULE_KINDS`).

    Args:
        lungrads: Lung-RADS class (``LR2`` ... ``LR4B``) or histology letter (``A``, ``B``, ``E``, ``G``) per case.
        rule: a key of :data:`LABEL_RULES`.

    Returns:
        int64 array.

    Raises:
        ValueError: unknown rule, or a value the rule does not map (e.g. a Lung-RADS rule on histology letters):
            the message names the rule, what it maps and what it found.
    """
    _require_rule(rule)
    mapping = LABEL_RULES[rule]
    unknown = sorted(set(lungrads) - set(mapping))
    if unknown:
        kind = LABEL_RULE_KINDS[rule]
        others = sorted(name for name, other in LABEL_RULE_KINDS.items() if other != kind)
        raise ValueError(
            f"label rule {rule!r} maps {_KIND_NAMES[kind]} {sorted(mapping)}, not {unknown}; is this the other "
            f"dataset? Its rules: {others}"
        )
    return np.asarray([mapping[value] for value in lungrads], dtype=np.int64)


def equivalent_diameter_px(masks) -> np.ndarray:
    """Diameter of the disc with the mask's area, ``2 sqrt(area / pi)``, in pixels, per mask.

    Args:
        masks: ``(n, h, w)`` binary masks (nonzero = tumour).

    Returns:
        float64 ``(n,)``; 0 for an empty mask.
    """
    masks = np.asarray(masks)
    areas = (masks.reshape(len(masks), -1) > 0).sum(axis=1).astype(np.float64)
    return 2.0 * np.sqrt(areas / math.pi)


def fit_size_threshold(diameters, labels) -> float:
    """The diameter threshold (predict 1 when ``diameter >= threshold``) with the best balanced accuracy.

    Candidates are the observed diameters (and one above the largest, i.e. "always 0"); ties go to the smallest
    threshold. Balanced accuracy = (sensitivity + specificity) / 2, so a class imbalance does not pull the
    threshold to one side.

    Args:
        diameters: training diameters.
        labels: their 0/1 labels; both classes must occur.

    Returns:
        The threshold.

    Raises:
        ValueError: on mismatched lengths or a single class.
    """
    diameters = np.asarray(diameters, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if diameters.shape != labels.shape:
        raise ValueError(f"{len(diameters)} diameters but {len(labels)} labels")
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError("fitting a size threshold needs both classes in the training labels")
    candidates = np.append(np.unique(diameters), np.inf)
    best, best_score = candidates[0], -1.0
    for threshold in candidates:
        predicted = diameters >= threshold
        sensitivity = predicted[labels == 1].mean()
        specificity = (~predicted[labels == 0]).mean()
        score = (sensitivity + specificity) / 2.0
        if score > best_score + 1e-12:
            best, best_score = threshold, score
    return float(best)


def mask_centres(masks, probabilities=None) -> tuple[np.ndarray, np.ndarray]:
    """Crop centres: the centre of each mask's bounding box.

    Args:
        masks: ``(n, h, w)`` binary masks.
        probabilities: ``(n, h, w)`` tumour probabilities; an empty mask is centred on its slice's highest
            probability. Without them, on the slice centre.

    Returns:
        ``(centres, found)``: float ``(n, 2)`` (row, column) and bool ``(n,)`` (the mask had foreground).
    """
    masks = np.asarray(masks) > 0
    centres = np.zeros((len(masks), 2), dtype=np.float64)
    found = masks.reshape(len(masks), -1).any(axis=1)
    for index, mask in enumerate(masks):
        if found[index]:
            rows, cols = np.nonzero(mask)
            centres[index] = ((rows.min() + rows.max()) / 2.0, (cols.min() + cols.max()) / 2.0)
        elif probabilities is not None:
            centres[index] = np.unravel_index(int(np.argmax(probabilities[index])), mask.shape)
        else:
            centres[index] = ((mask.shape[0] - 1) / 2.0, (mask.shape[1] - 1) / 2.0)
    return centres, found


def crop_views(images, masks, centres, crop_size: int, view: str) -> np.ndarray:
    """One view of the crops around ``centres``.

    Args:
        images: ``(n, h, w)`` slices in [0, 1].
        masks: ``(n, h, w)`` binary masks (ground truth or predicted).
        centres: ``(n, 2)`` crop centres.
        crop_size: side in pixels.
        view: ``image``, ``mask`` or ``image_x_mask`` (see the module docstring).

    Returns:
        float32 ``(n, crop_size, crop_size, 1)``; outside the slice 0.

    Raises:
        ValueError: for an unknown view.
    """
    from lungkit.data.nodule_slices import extract_nodule_crops

    if view not in CROP_INPUTS:
        raise ValueError(f"unknown crop view {view!r}; views: {CROP_INPUTS}")
    out = np.zeros((len(images), crop_size, crop_size), dtype=np.float32)
    for index, (image, mask, centre) in enumerate(zip(images, masks, centres)):
        image_crop = extract_nodule_crops(np.asarray(image, np.float32), [centre], crop_size, fill_value=0.0)[0]
        mask_crop = extract_nodule_crops((np.asarray(mask) > 0).astype(np.float32), [centre], crop_size,
                                         fill_value=0.0)[0]
        out[index] = {"image": image_crop, "mask": mask_crop, "image_x_mask": image_crop * mask_crop}[view]
    return out[..., None]


@dataclass
class TumourSlices:
    """The slices of one split that hold a ground-truth tumour, with their labels.

    Args:
        ids: slice ids (the manifest's ``id``).
        lungrads: the manifest's ``label1`` per slice: the Lung-RADS class, or on a Lung-PET-CT-Dx kit dataset the
            histology letter.
        labels: 0/1 by the label rule.
        images: ``(n, s, s)`` in [0, 1] (HU window [-1000, 400]).
        masks: ground-truth masks ``(n, s, s)``.
        probabilities: the segmentation's tumour probabilities (test split only), else None.
        patients: the manifest's ``patient`` per slice where it has that column (Lung-PET-CT-Dx), else None.
    """

    ids: list
    lungrads: np.ndarray
    labels: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    probabilities: np.ndarray | None = None
    patients: list | None = None

    def predicted_masks(self) -> np.ndarray:
        if self.probabilities is None:
            raise ValueError("no predicted masks: only the test split carries the segmentation's predictions")
        return (self.probabilities >= 0.5).astype(np.uint8)


def load_tumour_slices(dataset_dir, split: str, slice_size: int, label_rule: str = DEFAULT_LABEL_RULE,
                       probabilities=None) -> TumourSlices:
    """The slices of one split of a kit dataset that hold a ground-truth tumour.

    Works on the Lung-RADS kit dataset and on the Lung-PET-CT-Dx one (:mod:`lungkit.data.petct_kit`), of which only
    the CT channel is read (the PET channel is left out: the crops are CT crops either way).

    Args:
        dataset_dir: a Lung-RADS or Lung-PET-CT-Dx kit dataset (phantom or real).
        split: ``train``, ``val`` or ``test``.
        slice_size: side the slices are resized to (the segmentation's pixel scale).
        label_rule: a key of :data:`LABEL_RULES` that maps this dataset's ``label1`` values.
        probabilities: ``(n, s, s)`` tumour probabilities of every slice of the split (manifest order), kept for
            the slices with a tumour; None for none.

    Returns:
        :class:`TumourSlices` with images in [0, 1] (HU window [-1000, 400]).

    Raises:
        ValueError: for a label rule that does not map the dataset's ``label1`` values (see :func:`lungrads_labels`),
            or an empty split.
    """
    from lungkit.pipeline import load_split_arrays

    images, masks, manifest = load_split_arrays(dataset_dir, split, "hu_window_unit", slice_size, 1)
    images, masks = images[..., 0], (masks[..., 0] > 0.5).astype(np.uint8)
    keep = masks.reshape(len(masks), -1).any(axis=1)
    lungrads = manifest["label1"].astype(str).to_numpy()[keep]
    return TumourSlices(
        ids=manifest["id"].astype(str).to_numpy()[keep].tolist(), lungrads=lungrads,
        labels=lungrads_labels(lungrads, label_rule), images=images[keep], masks=masks[keep],
        probabilities=None if probabilities is None else np.asarray(probabilities)[keep],
        patients=manifest["patient"].astype(str).to_numpy()[keep].tolist() if "patient" in manifest else None,
    )


@dataclass
class SegmentThenClassify:
    """Paper 002's classification of segmented tumours, as lungkit rows.

    Args:
        profile: ``smoke``, ``quick`` or ``paper``.
        run_dir: the run's folder; it must hold the test predictions of ``segmentation_key`` (run its notebook).
        seed: balancing, augmentation, weights and bootstrap seed.
        data_dir: Lung-RADS pickles ("" = the run's phantom), as for the segmentation notebooks.
        segmentation_key: ``mobilenetv2_unet`` or ``cnn_from_scratch``: whose predicted masks are classified.
        label_rule: a key of :data:`LABEL_RULES`.
        crop_size: crop side in pixels at the segmentation's pixel scale.
        mobilenet_weights: the local MobileNetV2 ImageNet notop ``.h5`` file of the transfer model (or its folder);
            "" trains its encoder from scratch (recorded in the protocol).
    """

    profile: str
    run_dir: Path
    seed: int = 0
    data_dir: str = ""
    segmentation_key: str = "mobilenetv2_unet"
    label_rule: str = DEFAULT_LABEL_RULE
    crop_size: int = 32
    mobilenet_weights: str = ""
    splits: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        from lungkit.training import Recipe

        if self.segmentation_key not in SEGMENTATION_KEYS:
            raise ValueError(f"segmentation_key must be one of {SEGMENTATION_KEYS}, got {self.segmentation_key!r}")
        if is_histology_rule(self.label_rule):  # raises for an unknown rule
            # this experiment classifies Lung-RADS crops; histology is paper 000's self-supervised task
            raise ValueError(f"label rule {self.label_rule!r} is a histology rule (Lung-PET-CT-Dx); segment-then-"
                             f"classify runs on the Lung-RADS kit dataset: use {DEFAULT_LABEL_RULE!r} or another "
                             "Lung-RADS rule")
        self.run_dir = Path(self.run_dir)
        self.settings = get_profile(self.profile)
        baselines = papers.get_paper(PAPER_ID).BASELINES
        #: each classifier's recipe for this profile and crop size (the crop CNN's is also ``self.recipe``)
        self.recipes = {}
        for key in CLASSIFIER_KEYS:
            source = f"lungkit/papers/{PAPER_ID}.py: BASELINES[{key!r}]['recipe']"
            paper_recipe = Recipe.from_dict(baselines[key]["recipe"], source=source)
            recipe = paper_recipe.for_profile(self.settings, patches=False)
            # the crop side is the classifier's input: set here, recorded like a cap
            capped = dict(recipe.capped)
            if int(self.crop_size) != recipe.image_size:
                capped["image_size"] = {"recipe": paper_recipe.image_size, "used": int(self.crop_size)}
            self.recipes[key] = dataclasses.replace(recipe, image_size=int(self.crop_size), capped=capped)
        self.recipe = self.recipes[CLASSIFIER_KEY]
        segmentation_recipe = Recipe.from_dict(baselines[self.segmentation_key]["recipe"])
        self.slice_size = segmentation_recipe.for_profile(self.settings).image_size

    # -- data -----------------------------------------------------------------------------------------------------
    def prepare_data(self) -> dict:
        """Tumour slices of train / val / test at the segmentation's pixel scale, the test split with the
        segmentation's predicted probabilities.

        Raises:
            FileNotFoundError: the segmentation result has no predictions in this run.
            ValueError: the predictions do not belong to this dataset's test split, or a split has no tumour of
                some class.
        """
        from lungkit.data.prepare import prepare_lungrads_dataset
        from lungkit.experiments.segmentation import load_predictions
        from lungkit.pipeline import load_split_arrays

        self.dataset_dir = prepare_lungrads_dataset(self.data_dir or None, self.run_dir, self.profile, self.seed)
        predictions = load_predictions(self.run_dir, PAPER_ID, self.segmentation_key)
        for split in ("train", "val", "test"):
            probabilities = None
            if split == "test":
                _, masks, _ = load_split_arrays(self.dataset_dir, split, "hu", self.slice_size, 1)
                if predictions["masks"].shape != masks.shape[:-1] or not np.array_equal(
                        predictions["masks"] > 0, masks[..., 0] > 0.5):
                    raise ValueError(
                        f"the test predictions of {PAPER_ID}/{self.segmentation_key} in {self.run_dir} do not match "
                        "this dataset's test split (another profile, data or image size?); rerun its notebook"
                    )
                probabilities = predictions["probabilities"].astype(np.float32)
            self.splits[split] = load_tumour_slices(self.dataset_dir, split, self.slice_size, self.label_rule,
                                                    probabilities)
            # training (threshold, classifier) and testing (sensitivity, specificity, AUC) need both classes; the
            # validation split only picks checkpoints by its loss (the smoke phantom's has a single class)
            classes = len(set(self.splits[split].labels.tolist()))
            if (split != "val" and classes < 2) or not self.splits[split].ids:
                raise ValueError(f"{self.dataset_dir}: the {split} split lacks one class under {self.label_rule!r}")
        return self.splits

    def counts(self) -> pd.DataFrame:
        """Tumour slices per split and Lung-RADS class, and per label."""
        splits = self.splits or self.prepare_data()
        rows = [{"split": name, "lungrads": value, "label": label}
                for name, part in splits.items() for value, label in zip(part.lungrads, part.labels)]
        return pd.crosstab([pd.Series([r["split"] for r in rows], name="split"),
                            pd.Series([r["label"] for r in rows], name="label")],
                           pd.Series([r["lungrads"] for r in rows], name="Lung-RADS"))

    def views(self, split: str, source: str, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(crops, labels, found)`` of one split; ``source`` ``predicted`` only for the test split."""
        if source not in MASK_SOURCES:
            raise ValueError(f"source must be one of {MASK_SOURCES}, got {source!r}")
        part = (self.splits or self.prepare_data())[split]
        masks = part.masks if source == "ground_truth" else part.predicted_masks()
        centres, found = mask_centres(masks, part.probabilities if source == "predicted" else None)
        return crop_views(part.images, masks, centres, self.crop_size, view), part.labels, found

    def training_ids(self) -> list:
        """Ids of every slice a classifier or the size threshold is fitted on (training split only)."""
        return list((self.splits or self.prepare_data())["train"].ids)

    # -- the size baseline ------------------------------------------------------------------------------------------
    def size_threshold(self) -> float:
        """The diameter threshold fitted on the training split's ground-truth masks."""
        train = (self.splits or self.prepare_data())["train"]
        return fit_size_threshold(equivalent_diameter_px(train.masks), train.labels)

    def evaluate_size_baseline(self, source: str):
        """Score the size-only baseline on the test masks of ``source``; writes ``results/paper002/size_baseline_
        <source>``. Returns ``(per_case, summary)``."""
        test = (self.splits or self.prepare_data())["test"]
        masks = test.masks if source == "ground_truth" else test.predicted_masks()
        threshold = self.size_threshold()
        diameters = equivalent_diameter_px(masks)
        per_case, summary = evaluate_scores(test, diameters, threshold, self.seed)
        per_case["diameter_px"] = diameters
        protocol = self._protocol(source, view="mask (area only)", extra={
            "size_threshold_px": threshold,
            "notes": ("Size-only baseline: equivalent diameter 2 sqrt(area / pi) of the mask, class 1 when it is at "
                      f"least {threshold:.2f} px (fitted for balanced accuracy on the training split's ground-truth "
                      "masks). AUC ranks by diameter."),
        })
        self._write(f"{SIZE_BASELINE}_{source}", per_case, summary, protocol, SIZE_BASELINE,
                    f"Size-only baseline on {source.replace('_', '-')} masks (lungkit; no number in the slides)")
        return per_case, summary

    # -- the classifiers ------------------------------------------------------------------------------------------
    def datasets(self, view: str, model_key: str = CLASSIFIER_KEY):
        """``(train, validation, steps_per_epoch)`` of ground-truth crops for ``model_key``'s recipe: train
        balanced and augmented."""
        from lungkit.experiments.classification import balanced_indices, make_crop_dataset

        recipe = self.recipes[model_key]
        train_x, train_y, _ = self.views("train", "ground_truth", view)
        index = balanced_indices(train_y, self.seed)
        val_x, val_y, _ = self.views("val", "ground_truth", view)
        batch = recipe.batch_size
        train = make_crop_dataset(train_x[index], train_y[index], batch, shuffle=True,
                                  augment=recipe.augment_on_the_fly, seed=self.seed)
        validation = make_crop_dataset(val_x, val_y, batch)
        steps = math.ceil(len(index) / batch)
        if recipe.max_steps_per_epoch:
            steps = min(steps, recipe.max_steps_per_epoch)
        return train, validation, steps

    def train_classifier(self, view: str, verbose="auto", model_key: str = CLASSIFIER_KEY):
        """Train a classifier on one view (ground-truth training crops only). Returns ``(model, fit)``.

        Args:
            view: a crop view of :data:`CROP_INPUTS`.
            verbose: Keras' fit verbosity.
            model_key: ``crop_cnn_classifier`` (the small CNN) or ``mobilenetv2_classifier`` (the transfer model:
                ImageNet encoder from ``mobilenet_weights`` when given, trained by its recipe's fine-tuning
                schedule; from scratch in one phase otherwise, see :func:`lungkit.training.train_in_phases`).
        """
        from lungkit.models import build_model, encoder_weights_status
        from lungkit.training import compile_model, seed_run, train_in_phases

        if model_key not in CLASSIFIER_KEYS:
            raise ValueError(f"model_key must be one of {CLASSIFIER_KEYS}, got {model_key!r}")
        train_ds, validation_ds, steps = self.datasets(view, model_key)
        recipe = self.recipes[model_key].with_step_budget(steps)
        seed_run(self.seed, self.settings.deterministic)
        overrides = {"weights": self.mobilenet_weights} if model_key == TRANSFER_KEY and self.mobilenet_weights else {}
        model = build_model(model_key, scale=recipe.model_scale or "paper",
                            input_shape=(self.crop_size, self.crop_size, 1), **overrides)
        pretrained = encoder_weights_status(model_key, model)
        compile_model(model, recipe, steps, jit_compile=False, metrics=classifier_metrics)
        model_dir = self.run_dir / "models" / PAPER_ID / f"{model_key}_{self.segmentation_key}_{view}"
        fit = train_in_phases(model, recipe, train_ds, validation_ds, model_dir,
                              pretrained=bool((pretrained or {}).get("pretrained")), steps_per_epoch=steps,
                              jit_compile=False, metrics=classifier_metrics, verbose=verbose, tensorboard=False)
        self._fits = {**getattr(self, "_fits", {}), (model_key, view): (recipe, fit, pretrained)}
        return model, fit

    def best_view(self, model_key: str = CLASSIFIER_KEY) -> str:
        """The view on which ``model_key`` reached the lowest validation loss, among the views trained in this
        session: chosen on the validation split, never on the test split.

        Raises:
            ValueError: no view of ``model_key`` was trained yet.
        """
        losses = {view: float(fit.history["val_loss"].min())
                  for (key, view), (_, fit, _) in getattr(self, "_fits", {}).items() if key == model_key}
        if not losses:
            raise ValueError(f"no view of {model_key} has been trained yet: call train_classifier first")
        return min(losses, key=losses.get)

    def evaluate_classifier(self, model, view: str, source: str):
        """Score a trained classifier on the test crops of ``source``; writes ``results/paper002/<prefix>_<view>_
        <source>`` (prefix ``crop_cnn`` or ``mobilenetv2``, by the model's name). Returns ``(per_case, summary)``."""
        model_key = model.name
        if model_key not in CLASSIFIER_KEYS:
            raise ValueError(f"not a crop classifier of {PAPER_ID}: model {model_key!r}; classifiers: {CLASSIFIER_KEYS}")
        recipe, fit, pretrained = getattr(self, "_fits", {}).get((model_key, view), (self.recipes[model_key], None, None))
        x, _, found = self.views("test", source, view)
        test = self.splits["test"]
        scores = np.asarray(model.predict(x, batch_size=recipe.batch_size, verbose=0), np.float64)[:, 0]
        per_case, summary = evaluate_scores(test, scores, 0.5, self.seed)
        per_case["mask_found"] = found
        extra = {"threshold": 0.5}
        if pretrained is not None:
            extra["pretrained_encoder"] = pretrained
        phases = (fit.environment or {}).get("phases") if fit is not None else None
        if phases:
            # the optimizer line must show the schedule that actually ran (as the segmentation protocol does)
            extra["optimizer"] = "; then ".join(phases)
        protocol = self._protocol(source, view, recipe=recipe, fit=fit, extra=extra)
        name = CLASSIFIER_NAMES[model_key]
        self._write(f"{RESULT_PREFIXES[model_key]}_{view}_{source}", per_case, summary, protocol, model_key,
                    f"{name} on {view} crops of {source.replace('_', '-')} masks (lungkit; no number in the slides)")
        return per_case, summary

    # -- writing --------------------------------------------------------------------------------------------------
    def _protocol(self, source: str, view: str, recipe=None, fit=None, extra: dict | None = None) -> dict:
        from lungkit.data.prepare import read_dataset_info
        from lungkit.evaluation import data_fingerprint

        info = read_dataset_info(self.dataset_dir)
        test = self.splits["test"]
        missed = int((~test.predicted_masks().reshape(len(test.ids), -1).any(axis=1)).sum())
        if recipe is None:  # the size baseline: no network, no training
            trained = {"profile": self.settings.name, "model": SIZE_BASELINE, "model_scale": None,
                       "loss": "none (no training: one threshold fitted on the training split)", "optimizer": "none"}
        else:
            trained = recipe.protocol()
        protocol = {
            **trained,
            "data_source": info.get("data_source", "unknown"),
            "split": ("the dataset's given train / test split, validation carved from train; classifiers and the size "
                      "threshold are fitted on training-split ground-truth crops only; one test case per tumour slice"),
            "image_size": self.crop_size,
            "slice_size": self.slice_size,
            "epochs": int(fit.epochs_completed) if fit is not None else None,
            "seed": self.seed,
            "data_fingerprint": data_fingerprint(self.dataset_dir),
            "label_rule": f"{self.label_rule}: {LABEL_RULE_TEXT[self.label_rule]}",
            "mask_source": source,
            "segmentation": f"{PAPER_ID}/{self.segmentation_key} test predictions (probability >= 0.5)",
            "predicted_masks_empty": f"{missed} of {len(test.ids)} test tumour slices (cropped at the highest "
                                     "probability, empty mask view)",
            "crop": f"{self.crop_size} px around the mask's bounding-box centre, view {view}",
            "postprocess": "none",
            "training_wall_time_s": round(fit.wall_time_s, 1) if fit is not None else None,
        }
        protocol.update(extra or {})
        protocol["notes"] = " ".join(x for x in (protocol.get("notes", ""), LABEL_RULE_TEXT[self.label_rule] +
                                                  "; the Lung-RADS data has no malignancy.") if x)
        return protocol

    def _write(self, key: str, per_case, summary, protocol, model_name: str, row: str):
        from lungkit.evaluation import write_results

        start = time.perf_counter()
        write_results(self.run_dir / "results" / PAPER_ID / key, per_case, summary, paper=PAPER_ID,
                      tables=[CLASSIFICATION_TABLE], row=row, model=model_name, task="classification",
                      protocol=protocol, dataset_dir=self.dataset_dir, wall_time_s=time.perf_counter() - start)


def classifier_metrics(recipe) -> list:
    """Training metrics of the crop classifiers (their recipes' ``from_logits`` is False): accuracy at 0.5 and AUC."""
    import keras

    return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]


def evaluate_scores(test: TumourSlices, scores, threshold: float, seed: int):
    """:func:`lungkit.evaluation.evaluate_classification` of one test split's scores, per Lung-RADS class too."""
    from lungkit.evaluation import evaluate_classification

    per_case, summary = evaluate_classification(test.labels, scores, threshold=threshold, ids=test.ids,
                                                labels=list(test.lungrads), seed=seed)
    return per_case, summary


__all__ = [
    "CLASSIFIER_KEYS",
    "CROP_INPUTS",
    "DEFAULT_LABEL_RULE",
    "LABEL_RULES",
    "LABEL_RULE_KINDS",
    "MASK_SOURCES",
    "SegmentThenClassify",
    "TRANSFER_KEY",
    "TumourSlices",
    "classifier_metrics",
    "crop_views",
    "equivalent_diameter_px",
    "fit_size_threshold",
    "is_histology_rule",
    "load_tumour_slices",
    "lungrads_labels",
    "mask_centres",
]
