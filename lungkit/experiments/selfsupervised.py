"""Self-supervised tumour classifier (paper 000's abstract): SimCLR pretraining, then few labels.

Paper 000 names a "self-supervised" benign / malignant classifier of the segmented tumours and prints nothing about
it. lungkit builds the standard one, in the style of keras-io's "Semi-supervised image classification using
contrastive pretraining with SimCLR":

1. **Pretraining without labels** (:class:`ContrastiveModel`): two random augmentations of each training crop
   (flips, shifts, zooms, brightness, noise) pass through the encoder (the crop CNN without its last unit) and a
   two-layer projection head; the NT-Xent loss (:func:`nt_xent_loss`) pulls the two views of a crop together and
   pushes the other crops of the batch away. Only ground-truth tumour crops of the **training split** are used.
2. **Few labels**: with 10 %, 50 % and 100 % of the training labels (a stratified, seeded subset), a **linear
   probe** (pretrained encoder frozen, one sigmoid unit trained), **fine-tuning** (the pretrained encoder trains
   too) and the **same network from scratch**; each scored on the test split's ground-truth crops.

Two tasks, chosen by the label rule (:data:`lungkit.experiments.segment_classify.LABEL_RULES`):

- **Lung-RADS** (default ``lr23_vs_lr4``): the Lung-RADS kit dataset and its given split, with the Lung-RADS PROXY
  label, because the Lung-RADS data has no malignancy. Results ``results/paper000/ssl_<mode>_<percent>pct``.
- **Histology** (``adenocarcinoma_vs_other``): the paper's own data, Lung-PET-CT-Dx, has no benign class at all, so
  there the task is the documented alternative, adenocarcinoma vs the other histologies (the subject's letter), on
  the Lung-PET-CT-Dx kit dataset (:func:`lungkit.data.petct_kit.prepare_petct_dataset`; its phantom without data):
  CT crops only (no PET channel), its split by patient, stratified by histology. Results
  ``results/paper000/ssl_histology_<mode>_<percent>pct`` in their own lungkit table; they measure histology, never
  benign / malignant. A test split with one class only (the smoke phantom has four subjects, one in test) measures
  nothing: its rows are written as ``wiring_only``.

Settings: ``paper000.SELF_SUPERVISED`` (its ``histology`` entry for the histology task).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungkit import papers
from lungkit.profiles import get_profile

PAPER_ID = "paper000"
MODES = ("linear_probe", "fine_tune", "from_scratch")


def nt_xent_loss(z1, z2, temperature: float = 0.1):
    """SimCLR's normalised temperature-scaled cross entropy of two batches of projections.

    The 2N projections are L2-normalised; each one's logits are its cosine similarities to the other 2N - 1 divided
    by ``temperature``, and its target is the other view of the same image. The loss is the mean over all 2N.

    Args:
        z1, z2: ``(N, d)`` projections of the first and second views (row i of both = the same image).
        temperature: the softmax temperature.

    Returns:
        A scalar tensor.
    """
    from keras import ops

    z = ops.concatenate([z1, z2], axis=0)
    z = z / ops.maximum(ops.sqrt(ops.sum(ops.square(z), axis=1, keepdims=True)), 1e-12)
    n = ops.shape(z1)[0]
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    # a projection is not its own negative: its self-similarity is removed from the softmax
    logits = logits - 1e9 * ops.eye(2 * n, dtype=logits.dtype)
    targets = ops.concatenate([ops.arange(n) + n, ops.arange(n)], axis=0)
    log_probabilities = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    picked = ops.take_along_axis(log_probabilities, ops.expand_dims(targets, 1), axis=1)
    return -ops.mean(picked)


def contrastive_augmenter(seed: int = 0):
    """The two-view augmentation of grey crops in [0, 1]: flips, shifts and zooms of up to 20 %, brightness of up to
    +-0.2 and Gaussian noise (0.05), filling by reflection (keras-io's SimCLR uses colour jitter instead of
    brightness; CT crops have one channel)."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomTranslation(0.2, 0.2, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom((-0.2, 0.2), fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomBrightness(0.2, value_range=(0.0, 1.0), seed=seed + 3),
        keras.layers.GaussianNoise(0.05, seed=seed + 4),
    ], name="contrastive_augmenter")


def crop_encoder(crop_size: int, scale: str, name: str = "encoder"):
    """The crop CNN up to its global pooling: ``(N, s, s, 1) -> (N, features)``."""
    import keras

    from lungkit.models import build_model

    classifier = build_model("crop_cnn_classifier", scale=scale, input_shape=(crop_size, crop_size, 1), dropout=0.0)
    return keras.Model(classifier.input, classifier.get_layer("pool").output, name=name)


def make_contrastive_model(encoder, projection_width: int, temperature: float, seed: int = 0):
    """A :class:`ContrastiveModel` (built lazily so that importing this module does not import Keras)."""
    import keras
    import tensorflow as tf

    class ContrastiveModel(keras.Model):
        """Encoder + projection head trained with NT-Xent on two augmented views (keras-io's SimCLR)."""

        def __init__(self):
            super().__init__(name="simclr")
            self.encoder = encoder
            self.augmenter = contrastive_augmenter(seed)
            self.projection_head = keras.Sequential([
                keras.Input((encoder.output.shape[-1],)),
                keras.layers.Dense(projection_width, activation="relu"),
                keras.layers.Dense(projection_width),
            ], name="projection_head")
            self.temperature = float(temperature)
            self.loss_tracker = keras.metrics.Mean(name="contrastive_loss")

        @property
        def metrics(self):
            return [self.loss_tracker]

        def call(self, images, training=False):
            return self.projection_head(self.encoder(images, training=training), training=training)

        def train_step(self, data):
            images = data[0] if isinstance(data, (tuple, list)) else data
            first = self.augmenter(images, training=True)
            second = self.augmenter(images, training=True)
            with tf.GradientTape() as tape:
                loss = nt_xent_loss(self(first, training=True), self(second, training=True), self.temperature)
            variables = self.encoder.trainable_weights + self.projection_head.trainable_weights
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            self.loss_tracker.update_state(loss)
            return {"contrastive_loss": self.loss_tracker.result()}

    return ContrastiveModel()


def label_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """A stratified, seeded subset of indices: ``ceil(fraction x count)`` of each class (at least one).

    Args:
        labels: class per example.
        fraction: in (0, 1].
        seed: sampling seed.

    Returns:
        Sorted int64 indices.

    Raises:
        ValueError: for a fraction outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        count = max(1, math.ceil(fraction * len(members)))
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


@dataclass
class SelfSupervisedClassifier:
    """SimCLR pretraining on training crops, then linear probe / fine-tuning / from scratch with few labels.

    Args:
        profile: ``smoke``, ``quick`` or ``paper``; the step budgets are capped by the profile's ``max_steps``.
        run_dir: the run's folder.
        seed: subset, augmentation, weights and bootstrap seed.
        data_dir: Lung-RADS pickles ("" = the run's phantom); read for a Lung-RADS rule.
        label_rule: a key of ``segment_classify.LABEL_RULES``; a histology rule (``adenocarcinoma_vs_other``) runs
            the histology task on the Lung-PET-CT-Dx kit dataset.
        petct_data_dir: the Lung-PET-CT-Dx collection folder ("" = the run's phantom); read for a histology rule.

    Raises:
        ValueError: for an unknown label rule.
    """

    profile: str
    run_dir: Path
    seed: int = 0
    data_dir: str = ""
    label_rule: str = "lr23_vs_lr4"
    petct_data_dir: str = ""
    splits: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        from lungkit.experiments.segment_classify import is_histology_rule

        self.histology = is_histology_rule(self.label_rule)  # raises for an unknown rule
        self.run_dir = Path(self.run_dir)
        self.settings = get_profile(self.profile)
        base = dict(papers.get_paper(PAPER_ID).SELF_SUPERVISED)
        task_settings = base.pop("histology")
        # the histology task shares the recipe; its table, row, notes and result keys are its own
        self.config = {**base, **task_settings} if self.histology else base
        self.result_prefix = self.config.get("result_prefix", "ssl")
        # per split: the label1 value (Lung-RADS class or histology letter) and the patient of each crop
        self.source_classes, self.patients = {}, {}
        self.test_single_class = False
        cap = self.settings.max_steps
        self.pretraining_steps = min(self.config["pretraining_steps"], cap) if cap else self.config["pretraining_steps"]
        self.downstream_steps = min(self.config["downstream_steps"], cap) if cap else self.config["downstream_steps"]
        self.batch_size = min(self.config["downstream_batch_size"], self.settings.batch_size or 10**9)
        # SimCLR's negatives are the rest of the batch, so its batch is larger than a classifier's; a small profile
        # still caps it (4 x the profile's batch): at 64 the quick profile's 400 steps took 2.5 CPU minutes
        profile_cap = 4 * self.settings.batch_size if self.settings.batch_size else 10**9
        self.pretraining_batch_size = min(self.config["pretraining_batch_size"], profile_cap)
        self.slice_size = min(self.config["slice_size"], self.settings.max_slice_size or 10**9)
        self.crop_size = int(self.config["crop_size"])
        self.scale = self.settings.model_scale

    # -- data -----------------------------------------------------------------------------------------------------
    def prepare_data(self) -> dict:
        """Ground-truth tumour crops (``image`` view, CT only) of train / val / test: ``{split: (crops, labels, ids)}``.

        A Lung-RADS rule reads the Lung-RADS kit dataset; a histology rule the Lung-PET-CT-Dx kit dataset (built from
        ``petct_data_dir`` or the phantom), whose split is by patient. An empty split (the smoke phantom of
        Lung-PET-CT-Dx has no validation subject) gives no crops; nothing here trains on the validation split.

        Raises:
            ValueError: when the training split lacks a class, or (Lung-RADS) the test split does.
        """
        from lungkit.data import kit_dataset
        from lungkit.experiments.segment_classify import crop_views, load_tumour_slices, mask_centres

        if self.histology:
            from lungkit.data.petct_kit import prepare_petct_dataset

            self.dataset_dir = prepare_petct_dataset(self.petct_data_dir or None, self.run_dir, self.profile,
                                                     self.seed)
        else:
            from lungkit.data.prepare import prepare_lungrads_dataset

            self.dataset_dir = prepare_lungrads_dataset(self.data_dir or None, self.run_dir, self.profile, self.seed)
        for split in ("train", "val", "test"):
            if kit_dataset.read_manifest(self.dataset_dir, split).empty:
                empty = np.zeros((0, self.crop_size, self.crop_size, 1), np.float32)
                self.splits[split] = (empty, np.zeros(0, np.int64), [])
                self.source_classes[split], self.patients[split] = np.array([], str), []
                continue
            part = load_tumour_slices(self.dataset_dir, split, self.slice_size, self.label_rule)
            centres, _ = mask_centres(part.masks)
            crops = crop_views(part.images, part.masks, centres, self.crop_size, "image")
            self.splits[split] = (crops, part.labels, part.ids)
            self.source_classes[split], self.patients[split] = part.lungrads, part.patients or []
        if len(set(self.splits["train"][1].tolist())) < 2:
            raise ValueError(f"{self.dataset_dir}: the train split lacks one class under {self.label_rule!r}")
        self.test_single_class = len(set(self.splits["test"][1].tolist())) < 2
        if self.test_single_class and not self.histology:
            raise ValueError(f"{self.dataset_dir}: the test split lacks one class under {self.label_rule!r}")
        # a split by patient with few patients can leave one class out of test: the rows are then wiring only
        return self.splits

    def pretraining_images(self) -> tuple[np.ndarray, list]:
        """``(crops, ids)`` the contrastive pretraining sees: the training split's crops, without labels."""
        crops, _, ids = (self.splits or self.prepare_data())["train"]
        return crops, list(ids)

    # -- pretraining ----------------------------------------------------------------------------------------------
    def pretrain(self, verbose=0):
        """SimCLR on the training crops for the step budget; the encoder is saved and reused on a rerun.

        Returns:
            ``(encoder, losses)``: the pretrained encoder and the contrastive loss per logged epoch (empty when
            reused).
        """
        import keras
        import tensorflow as tf

        from lungkit.training import seed_run

        # the histology task pretrains on other crops: its encoder must never be reused for the Lung-RADS task
        folder = self.run_dir / "models" / PAPER_ID / ("simclr_histology" if self.histology else "simclr")
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / (f"encoder_{self.pretraining_steps}steps_batch{self.pretraining_batch_size}_seed{self.seed}"
                            ".weights.h5")
        seed_run(self.seed, self.settings.deterministic)
        encoder = crop_encoder(self.crop_size, self.scale)
        if weights.is_file():
            encoder.load_weights(weights)
            self.pretraining_losses = []
            return encoder, []
        crops, _ = self.pretraining_images()
        batch = min(self.pretraining_batch_size, len(crops))
        dataset = (tf.data.Dataset.from_tensor_slices(crops).shuffle(len(crops), seed=self.seed)
                   .batch(batch, drop_remainder=True).repeat())
        model = make_contrastive_model(encoder, self.config["projection_width"], self.config["temperature"],
                                       self.seed)
        model.compile(optimizer=keras.optimizers.Adam(self.config["pretraining_learning_rate"]), jit_compile=False)
        steps_per_epoch = min(self.pretraining_steps, 50)
        epochs = math.ceil(self.pretraining_steps / steps_per_epoch)
        start = time.perf_counter()
        history = model.fit(dataset, steps_per_epoch=steps_per_epoch, epochs=epochs, verbose=verbose)
        self.pretraining_seconds = time.perf_counter() - start
        encoder.save_weights(weights)
        self.pretraining_losses = [float(v) for v in history.history["contrastive_loss"]]
        return encoder, self.pretraining_losses

    # -- downstream -----------------------------------------------------------------------------------------------
    def train_downstream(self, mode: str, fraction: float, pretrained_encoder=None, verbose=0):
        """One classifier: ``mode`` in :data:`MODES`, trained on a stratified ``fraction`` of the training labels.

        The training crops' ids are kept in ``downstream_ids[(mode, fraction)]`` (the leakage tests read them).

        Returns:
            The trained ``keras.Model`` (crops -> probability of class 1).

        Raises:
            ValueError: unknown mode, or a pretrained mode without ``pretrained_encoder``.
        """
        import keras

        from lungkit.experiments.classification import balanced_indices, make_crop_dataset
        from lungkit.training import seed_run

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "from_scratch" and pretrained_encoder is None:
            raise ValueError(f"mode {mode!r} needs the pretrained encoder")
        crops, labels, ids = (self.splits or self.prepare_data())["train"]
        subset = label_subset(labels, fraction, self.seed)
        index = subset[balanced_indices(labels[subset], self.seed)]
        seed_run(self.seed, self.settings.deterministic)
        encoder = crop_encoder(self.crop_size, self.scale, name=f"encoder_{mode}")
        if mode != "from_scratch":
            encoder.set_weights(pretrained_encoder.get_weights())
        encoder.trainable = mode != "linear_probe"
        inputs = keras.Input((self.crop_size, self.crop_size, 1))
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(encoder(inputs))
        model = keras.Model(inputs, outputs, name=f"ssl_{mode}")
        model.compile(optimizer=keras.optimizers.Adam(self.config["downstream_learning_rate"]),
                      loss="binary_crossentropy", jit_compile=False)
        dataset = make_crop_dataset(crops[index], labels[index], self.batch_size, shuffle=True, augment=True,
                                    seed=self.seed).repeat()
        steps_per_epoch = min(self.downstream_steps, 50)
        model.fit(dataset, steps_per_epoch=steps_per_epoch, epochs=math.ceil(self.downstream_steps / steps_per_epoch),
                  verbose=verbose)
        self.labels_used = {**getattr(self, "labels_used", {}), (mode, fraction): int(len(subset))}
        self.downstream_ids = {**getattr(self, "downstream_ids", {}), (mode, fraction): [ids[i] for i in index]}
        return model

    @property
    def status(self) -> str:
        """``measured``, or ``wiring_only`` for a histology test split with one class (nothing can be measured)."""
        return "wiring_only" if self.histology and self.test_single_class else "measured"

    def result_key(self, mode: str, fraction: float) -> str:
        """``ssl_<mode>_<percent>pct`` (Lung-RADS) or ``ssl_histology_<mode>_<percent>pct`` (histology)."""
        return f"{self.result_prefix}_{mode}_{int(round(100 * fraction))}pct"

    def evaluate(self, model, mode: str, fraction: float):
        """Score one classifier on the test crops; writes ``results/paper000/<result_key>`` (:meth:`result_key`).

        The histology task scores per histology letter too (``per_class``); when its test split holds one class
        only, the result is written with status ``wiring_only`` (no report shows its numbers).

        Returns:
            ``(per_case, summary)``.
        """
        from lungkit.data.prepare import read_dataset_info
        from lungkit.evaluation import data_fingerprint, evaluate_classification, write_results
        from lungkit.experiments.segment_classify import LABEL_RULE_TEXT

        crops, labels, ids = self.splits["test"]
        scores = np.asarray(model.predict(crops, batch_size=self.batch_size, verbose=0), np.float64)[:, 0]
        per_case, summary = evaluate_classification(
            labels, scores, ids=ids, seed=self.seed,
            labels=list(self.source_classes["test"]) if self.histology else None)
        percent = int(round(100 * fraction))
        labelled = (f"{self.labels_used.get((mode, fraction))} labelled training crops ({percent}%, stratified, "
                    "balanced by oversampling); one test case per tumour slice")
        if self.histology:
            test_patients = sorted(set(self.patients["test"]))
            split = ("the Lung-PET-CT-Dx kit dataset's split BY PATIENT (subject), stratified by histology letter: no "
                     "patient on two sides; pretraining on unlabelled training-split crops only; "
                     f"{labelled}, from {len(test_patients)} test patient(s); CT crops only")
        else:
            split = ("the dataset's given train / test split; pretraining on unlabelled training-split crops only; "
                     + labelled)
        rule_text = f"{self.label_rule}: {LABEL_RULE_TEXT[self.label_rule]}"
        notes = self.config["notes"]
        if self.histology:
            from lungkit.data.petct_kit import mask_source_flag

            # protocol_line prints the notes, not label_rule: the rule and the box-derived masks go there too
            notes = " ".join(x for x in (f"Label rule {rule_text}.", mask_source_flag(self.dataset_dir), notes) if x)
            if self.test_single_class:
                notes = ("WIRING ONLY: the test split holds one class only "
                         f"({sorted(set(self.source_classes['test'].tolist()))}), so no number here measures "
                         "anything. " + notes)
        protocol = {
            "profile": self.profile,
            "model": f"crop_cnn_classifier encoder, {mode}" + (", CT crops only" if self.histology else ""),
            "model_scale": self.scale,
            "data_source": read_dataset_info(self.dataset_dir).get("data_source", "unknown"),
            "split": split,
            "image_size": self.crop_size,
            "epochs": None,
            "seed": self.seed,
            "data_fingerprint": data_fingerprint(self.dataset_dir),
            "loss": f"binary cross entropy downstream; NT-Xent (temperature {self.config['temperature']}) pretraining",
            "optimizer": (f"adam lr={self.config['downstream_learning_rate']:g}, {self.downstream_steps} steps, last "
                          f"weights; pretraining adam lr={self.config['pretraining_learning_rate']:g}, "
                          f"{self.pretraining_steps} steps of batch {self.pretraining_batch_size}"
                          if mode != "from_scratch" else
                          f"adam lr={self.config['downstream_learning_rate']:g}, {self.downstream_steps} steps, last "
                          "weights, no pretraining"),
            "label_rule": rule_text,
            "label_fraction": fraction,
            "postprocess": "none",
            "notes": notes,
        }
        row = self.config["row"].format(mode=mode.replace("_", " "), percent=percent)
        write_results(self.run_dir / "results" / PAPER_ID / self.result_key(mode, fraction), per_case, summary,
                      paper=PAPER_ID, tables=[self.config["table"]], row=row, model="crop_cnn_classifier",
                      task="classification", protocol=protocol, status=self.status, dataset_dir=self.dataset_dir)
        return per_case, summary

    def run(self, fractions=None, modes=MODES, verbose=0):
        """The whole experiment: pretraining, then every mode at every label fraction, each scored and written.

        Args:
            fractions: label fractions; None for the settings' ``label_fractions``.
            modes: a subset of :data:`MODES`.
            verbose: Keras verbosity.

        Returns:
            One row per classifier: labels, labelled crops, mode, result key, status, AUC (with its 95% CI),
            accuracy, sensitivity and specificity.
        """
        import pandas as pd

        if not self.splits:
            self.prepare_data()
        encoder, _ = self.pretrain(verbose=verbose)
        rows = []
        for fraction in fractions or self.config["label_fractions"]:
            for mode in modes:
                model = self.train_downstream(mode, fraction, pretrained_encoder=encoder, verbose=verbose)
                _, summary = self.evaluate(model, mode, fraction)
                metrics = summary["metrics"]
                rows.append({
                    "labels": f"{fraction:.0%}", "labelled crops": self.labels_used[(mode, fraction)], "mode": mode,
                    "result": self.result_key(mode, fraction),
                    "status": self.status,
                    "auc": metrics["roc_auc"]["mean"],
                    "auc 95% CI": (metrics["roc_auc"]["ci_low"], metrics["roc_auc"]["ci_high"]),
                    "accuracy": metrics["accuracy"]["mean"], "sensitivity": metrics["sensitivity"]["mean"],
                    "specificity": metrics["specificity"]["mean"],
                })
        return pd.DataFrame(rows)


__all__ = [
    "MODES",
    "SelfSupervisedClassifier",
    "contrastive_augmenter",
    "crop_encoder",
    "label_subset",
    "make_contrastive_model",
    "nt_xent_loss",
]
