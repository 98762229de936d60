"""Classification of nodule crops: paper 003's DenseNet-121 benign / malignant (Table 3).

:class:`ClassifierExperiment`: crops around nodule centres (LIDC malignancy > 3 malignant, < 3 benign, 3 dropped,
from the run's LUNA16 kit dataset; or the documented Lung-RADS proxy), DenseNet-121 by paper 003's recipe capped by
the profile, rotation / flip / zoom augmentation and class balancing on the training split only, metrics through
:func:`lungkit.evaluation.evaluate_classification`, results for Table 3.

Notebook ``31_densenet_classifier`` calls this module; its figures are in :mod:`lungkit.figures`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit import papers
from lungkit.data.luna16_kit import prepare_luna16_dataset
from lungkit.profiles import get_profile

PAPER_ID = "paper003"
CLASSIFIER_RESULT_KEY = "densenet121_classifier"

LABEL_SOURCES = ("malignancy", "lungrads_proxy")
#: The Lung-RADS proxy for benign / malignant (not biology: Lung-RADS grades suspicion, mostly by size).
LUNGRADS_PROXY_LABELS = {"LR2": 0, "LR3": 0, "LR4A": 1, "LR4B": 1}
LUNGRADS_PROXY_NAME = (
    "Lung-RADS PROXY labels, not malignancy: LR2/LR3 = benign-like (0), LR4A/LR4B = suspicious (1)"
)
MALIGNANCY_RULE = "malignancy > 3 malignant (1), < 3 benign (0), 3 dropped (paper 003, lines 390-394)"
CLASS_NAMES = ("benign", "malignant")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


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
        dataset_dir: a LUNA16 kit dataset (:func:`lungkit.data.luna16_kit.prepare_luna16_dataset`).
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
    from lungkit.data.splits import LUNGRADS_SPLIT_DESCRIPTION

    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    info = _read_json(dataset_dir / DATASET_INFO_NAME)
    unknown = sorted(set(manifest["label1"]) - set(LUNGRADS_PROXY_LABELS))
    if unknown:
        raise ValueError(
            f"{dataset_dir}: label1 values {unknown} are not Lung-RADS classes {list(LUNGRADS_PROXY_LABELS)}; the "
            "Lung-RADS proxy classifier needs the Lung-RADS pickles (or the phantom), not a slice folder or arrays"
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
        LUNGRADS_SPLIT_DESCRIPTION + "; no patient id exists, so one patient's slices may sit in both train and validation"
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
        # one call at a time: the augmenter draws from stateful random generators, so parallel calls would take
        # the draws in a different order each run (32 px crops: the parallelism bought nothing measurable)
        dataset = dataset.map(lambda x, y: (augmenter(x), y))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
        from lungkit.training import configure_precision, make_loss, make_optimizer, seed_run

        seed_run(self.seed, self.settings.deterministic)
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


__all__ = [
    "CLASSIFIER_RESULT_KEY",
    "CLASS_NAMES",
    "ClassifierEvaluation",
    "ClassifierExperiment",
    "LABEL_SOURCES",
    "LUNGRADS_PROXY_LABELS",
    "LUNGRADS_PROXY_NAME",
    "MALIGNANCY_RULE",
    "NoduleCrops",
    "PAPER_ID",
    "balanced_indices",
    "crop_augmenter",
    "crops_from_luna16",
    "crops_from_lungrads",
    "crops_to_inputs",
    "make_crop_dataset",
    "scaled_crop",
]
