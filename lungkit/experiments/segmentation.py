"""Segmentation experiments: one row of a paper's table = recipe + profile + data -> trained model -> per-image
results.

The model notebooks are short because this module strings the stages together, always the same way:

1. the paper's recipe (``lungkit.papers``) capped by the run profile (``lungkit.profiles``);
2. the run's kit dataset (converted, or paper 001's augmented one), built when missing;
3. tf.data for train and validation, the model from the registry, :func:`lungkit.training.train` (resumable);
4. test predictions, the paper's post-processing (dense CRF or its fallback, whichever actually ran is recorded),
   per-image metrics, intensity robustness, a summary with bootstrap CIs, written with the full protocol to
   ``<run_dir>/results/<paper>/<result_key>/`` together with ``predictions.npz`` for the report's gallery;
5. the evaluated model saved with its card (``model.keras`` + ``model_card.json`` in the model folder,
   :mod:`lungkit.model_card`), which ``lungkit predict`` and ``lungkit export`` read.

:class:`LunaUNetBaseline` is the same experiment on paper 003's LUNA16 nodule windows (the trained baseline beside
zero-shot SAM, :mod:`lungkit.experiments.prompted`). The figures of these results are in :mod:`lungkit.figures`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit import papers
from lungkit.data.splits import LUNGRADS_SPLIT_DESCRIPTION
from lungkit.profiles import get_profile

#: How the validation split is made (see :mod:`lungkit.data.splits`); part of every protocol line.


@dataclass
class EvaluationResult:
    """What :meth:`SegmentationExperiment.evaluate` produced.

    Args:
        per_image: one row per test slice with every metric.
        summary: the summary written to ``summary.json`` (load it back with :func:`lungkit.evaluation.load_summary`).
        summary_path: path of ``summary.json``.
        postprocess: the post-processing that actually ran (``dense_crf``, ``scipy_fallback`` or ``none``).
        hu: test slices in HU at the model's size (N, H, W).
        images: test images for display (HU window mapped to [0, 1]), (N, H, W).
        masks: ground-truth masks (N, H, W) in {0, 1}.
        probabilities: predicted probabilities (N, H, W).
        predicted_masks: the binary predictions that were scored (N, H, W).
    """

    per_image: pd.DataFrame
    summary: dict
    summary_path: Path
    postprocess: str
    hu: np.ndarray
    images: np.ndarray
    masks: np.ndarray
    probabilities: np.ndarray
    predicted_masks: np.ndarray

    def table(self) -> pd.DataFrame:
        """Mean and 95% CI of the main metrics, overall and per class, as a small table for the notebook."""
        rows = []
        for metric, block in self.summary["metrics"].items():
            rows.append({"group": "all", "metric": metric, **_block_values(block)})
        for label, blocks in self.summary.get("per_class", {}).items():
            for metric in ("dice", "iou", "recall"):
                if metric in blocks:
                    rows.append({"group": label, "metric": metric, **_block_values(blocks[metric])})
        return pd.DataFrame(rows)


def _block_values(block) -> dict:
    if not isinstance(block, dict):
        return {"mean": block, "ci_low": None, "ci_high": None, "n": None}
    return {key: block.get(key) for key in ("mean", "ci_low", "ci_high", "n")}

#: In a model's folder: what its masked-image pretraining did (``SegmentationExperiment.masked_pretraining_record``).
MASKED_PRETRAINING_FILE = "masked_pretraining.json"


def describe_model_setting(value):
    """A model build setting as the protocol records it: a path by its file or folder name (never the user's
    folders), tuples as lists, anything else JSON cannot hold as its ``str``."""
    if isinstance(value, Path) or (isinstance(value, str) and ("/" in value or "\\" in value)):
        return Path(value).name
    if isinstance(value, (tuple, list)):
        return [describe_model_setting(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass
class SegmentationExperiment:
    """A segmentation result of a paper, reproduced under a run profile.

    Args:
        paper_id: ``paper001`` ... (see :func:`lungkit.papers.all_paper_ids`).
        result_key: the result's key in the paper's ``RECIPES`` (e.g. ``attention_unet``), or in its ``BASELINES``
            (lungkit-run results no printed row holds, e.g. paper 002's ``mobilenetv2_unet``; they are filed under
            the baseline's own table and row name).
        profile: ``smoke``, ``quick`` or ``paper``.
        run_dir: the run's folder.
        data_dir: real Lung-RADS pickles; the phantom when None or empty.
        seed: seed of data, split, augmentation, weights and shuffling.
        dataset_dir: train on this finished kit dataset instead of the run's Lung-RADS one (e.g. LUNA16 slices).
    """

    paper_id: str
    result_key: str
    profile: str
    run_dir: Path
    data_dir: str | None = None
    seed: int = 0
    dataset_dir: Path | None = None
    paper_recipe: object = field(init=False)
    recipe: object = field(init=False)

    def __post_init__(self):
        from lungkit.training import Recipe

        self.run_dir = Path(self.run_dir)
        self.settings = get_profile(self.profile)
        module = papers.get_paper(self.paper_id)
        baseline = getattr(module, "BASELINES", {}).get(self.result_key)
        if self.result_key not in module.RECIPES and baseline is not None and baseline.get("recipe") is not None:
            source = f"lungkit/papers/{self.paper_id}.py: BASELINES[{self.result_key!r}]['recipe']"
            self.paper_recipe = Recipe.from_dict(baseline["recipe"], source=source)
            self.rows = [{"table": baseline["table"], "row": baseline["row"]}]
        else:
            source = f"lungkit/papers/{self.paper_id}.py: RECIPES[{self.result_key!r}]"
            self.paper_recipe = Recipe.from_dict(papers.get_recipe(self.paper_id, self.result_key), source=source)
            self.rows = papers.find_rows_for_result(self.paper_id, self.result_key)
        self.recipe = self.paper_recipe.for_profile(self.settings)
        if not self.rows:
            raise ValueError(f"no row of {self.paper_id}'s tables is reproduced by result {self.result_key!r}")
        self.postprocess = papers.get_postprocessing(self.paper_id, self.result_key)
        self.training_data = papers.get_training_data(self.paper_id, self.result_key)

    # -- where things go ------------------------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.run_dir / "models" / self.paper_id / self.result_key

    @property
    def results_dir(self) -> Path:
        return self.run_dir / "results" / self.paper_id / self.result_key

    @property
    def figures_dir(self) -> Path:
        path = self.run_dir / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- the recipe -----------------------------------------------------------------------------------------------
    def recipe_table(self) -> pd.DataFrame:
        """The paper's settings beside the ones this profile uses (capped values differ)."""
        keys = ("model", "image_size", "input_channels", "preprocessing", "optimizer", "learning_rate", "momentum",
                "lr_schedule", "loss", "loss_kwargs", "batch_size", "epochs", "min_epochs", "early_stopping_patience",
                "reduce_lr_patience", "min_lr", "monitor", "augment_on_the_fly")
        rows = [
            {"setting": key, "paper": str(getattr(self.paper_recipe, key)), "this run": str(getattr(self.recipe, key))}
            for key in keys
        ]
        rows.append({"setting": "model_scale", "paper": "paper", "this run": self.recipe.model_scale})
        rows.append({"setting": "training data", "paper": self.training_data, "this run": self.training_data})
        rows.append({"setting": "post-processing", "paper": self.postprocess, "this run": "(recorded after evaluation)"})
        return pd.DataFrame(rows).set_index("setting")

    # -- data -----------------------------------------------------------------------------------------------------
    def prepare_data(self) -> Path:
        """The kit dataset this experiment trains and tests on (built when missing; idempotent)."""
        from lungkit.data.prepare import prepare_augmented_dataset, prepare_lungrads_dataset

        if self.dataset_dir is not None:
            self.dataset_dir = Path(self.dataset_dir)
        elif self.training_data == "petct":
            from lungkit.data.petct_kit import prepare_petct_dataset

            # Lung-PET-CT-Dx (data_dir) or its DICOM phantom: CT + PET SUV slices, masks from boxes
            self.dataset_dir = prepare_petct_dataset(self.data_dir or None, self.run_dir, self.profile, self.seed)
        elif self.training_data == "augmented":
            self.dataset_dir = prepare_augmented_dataset(self.data_dir or None, self.run_dir, self.profile, self.seed)
        else:
            self.dataset_dir = prepare_lungrads_dataset(self.data_dir or None, self.run_dir, self.profile, self.seed)
        return self.dataset_dir

    def datasets(self):
        """``(train, validation)`` tf.data pipelines by the recipe (size, channels, preprocessing, batch).

        Under patch training (the recipe has a ``patch_size``): slices stay at ``image_size`` and are preprocessed
        whole; training draws endless patches (:class:`lungkit.pipeline.PatchSampler`, a third near tumour, flips
        and quarter turns, and nnU-Net's rotations, zooms and intensity changes when the profile's
        ``patch_augmentation`` is ``nnunet``); validation is a fixed set of patches of the validation slices. Otherwise whole slices
        resized to ``image_size``.
        """
        from lungkit.pipeline import make_dataset

        dataset_dir = self.dataset_dir or self.prepare_data()
        self._apply_step_budget()
        if self.recipe.patch_size:
            return self._patch_datasets(dataset_dir)
        common = dict(
            preprocessing=self.recipe.preprocessing,
            image_size=self.recipe.image_size,
            channels=self.recipe.input_channels,
            batch_size=self.recipe.batch_size,
            seed=self.seed,
        )
        train = make_dataset(dataset_dir, "train", shuffle=True, augment=self.recipe.augment_on_the_fly, **common)
        validation = make_dataset(dataset_dir, "val", shuffle=False, **common)
        return train, validation

    def _patch_datasets(self, dataset_dir: Path):
        import tensorflow as tf

        from lungkit.data.kit_dataset import read_manifest
        from lungkit.pipeline import PatchSampler, load_split_arrays, make_patch_dataset

        def arrays(split):
            return load_split_arrays(dataset_dir, split, self.recipe.preprocessing, self.recipe.image_size,
                                     self.recipe.input_channels)

        images, masks, _ = arrays("train")
        sampler = PatchSampler(images, masks, self.recipe.patch_size, seed=self.seed,
                               rotations_zooms_intensity=self.recipe.patch_augmentation == "nnunet")
        train = make_patch_dataset(sampler, self.recipe.batch_size, self.recipe.epochs * self.steps_per_epoch())
        self.validation_note = ""
        if (read_manifest(dataset_dir)["split"] == "val").any():
            val_images, val_masks, _ = arrays("val")
        else:
            # too few patients to spare one for validation: checkpoints are chosen on fixed patches of the
            # training patients (close to keeping the last epoch); the test patients stay unseen either way
            val_images, val_masks = images, masks
            self.validation_note = ("no validation patients: checkpoints chosen on fixed patches of the training "
                                    "patients")
        fixed = PatchSampler(val_images, val_masks, self.recipe.patch_size, flips_and_turns=False, seed=self.seed)
        validation = tf.data.Dataset.from_tensor_slices(fixed.fixed_set()).batch(self.recipe.batch_size)
        return train, validation

    def _apply_step_budget(self) -> int:
        """Set the recipe's epochs from its step budget (idempotent) and return the steps per epoch.

        Both :meth:`datasets` and :meth:`build_model` call it, in whichever order: the epochs decide how many batches
        of patches are planned, and the notebooks ask for the data before the model (when only the model applied it,
        a budget above the profile's replayed the profile's planned batches: paper 004's 400-step U-Net saw its first
        200 batches twice)."""
        steps = self.steps_per_epoch()
        self.recipe = self.recipe.with_step_budget(steps)
        return steps

    def steps_per_epoch(self) -> int:
        """Training steps of one epoch: one pass over the train split, capped by the profile. With patch training
        patches are drawn endlessly, so an epoch is only a checkpoint / validation interval: always the profile's
        ``max_steps_per_epoch`` (a small dataset's one-pass epochs would spend more time validating and saving than
        training)."""
        from lungkit.data.kit_dataset import read_manifest
        from lungkit.pipeline import steps_per_epoch

        if self.recipe.patch_size and self.recipe.max_steps_per_epoch:
            return int(self.recipe.max_steps_per_epoch)
        dataset_dir = self.dataset_dir or self.prepare_data()
        steps = steps_per_epoch(len(read_manifest(dataset_dir, "train")), self.recipe.batch_size)
        if self.recipe.max_steps_per_epoch:
            steps = min(steps, self.recipe.max_steps_per_epoch)
        return steps

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self, **overrides):
        """The recipe's registry model at the profile's scale, compiled (seeded first, so weights repeat).

        ``overrides`` go to the model's builder (e.g. ``weights=`` a local pretrained file or preset folder, see the
        model's file) and into the recipe's ``model_settings``, so the protocol names them and a run trained without
        them is not reused for this build.
        """
        from lungkit.training import build_for_training, seed_run

        if overrides:
            self.recipe = replace(
                self.recipe, model_settings={key: describe_model_setting(value) for key, value in overrides.items()})
        self._build_overrides = dict(overrides)  # a masked-image pretraining builds the same network
        seed_run(self.seed, self.settings.deterministic)
        # the step budget decides the epochs once the epoch length is known (small datasets get more epochs)
        steps = self._apply_step_budget()
        # the cosine schedule needs the number of optimizer steps in advance
        model = build_for_training(self.recipe, steps_per_epoch=steps, **overrides)
        # models with a pretrainable encoder (ResNet50-UNet, MobileNetV2 U-Net) record what it started from
        from lungkit.models import encoder_weights_status

        self.pretrained = encoder_weights_status(self.recipe.model, model)
        return model

    def train(self, model, train_ds=None, validation_ds=None, verbose="auto"):
        """Fit by the recipe; rerunning with the same ``run_dir`` resumes (or reuses a finished run).

        A recipe with a ``fine_tuning`` schedule trains in its phases (frozen encoder, then everything at the lower
        rate; one from-scratch phase when the encoder has no pretrained weights), see
        :func:`lungkit.training.train_in_phases`.
        """
        from lungkit.training import train_in_phases

        if train_ds is None or validation_ds is None:
            train_ds, validation_ds = self.datasets()
        if self.recipe.masked_pretraining_steps:
            self._masked_pretraining(model, train_ds, verbose)
        pretrained = bool((getattr(self, "pretrained", None) or {}).get("pretrained"))
        self.fit = train_in_phases(model, self.recipe, train_ds, validation_ds, self.model_dir, pretrained=pretrained,
                                   verbose=verbose,
                                   steps_per_epoch=self.steps_per_epoch() if self.recipe.patch_size else None)
        return self.fit

    def masked_pretraining_record(self) -> dict | None:
        """What this run's masked-image pretraining did (steps, seconds, loss per epoch), or None without one."""
        path = self.model_dir / MASKED_PRETRAINING_FILE
        if not self.recipe.masked_pretraining_steps or not path.is_file():
            return None
        return json.loads(path.read_text())

    def _masked_pretraining(self, model, train_ds, verbose) -> None:
        """The recipe's masked-image pretraining (:mod:`lungkit.masked_pretraining`) into ``model``, on the training
        stream. Skipped when the run folder already holds a started or finished training: its backup or best
        checkpoint replaces these weights anyway."""
        from lungkit.data.export import write_text_atomic
        from lungkit.inference import is_query_model
        from lungkit.masked_pretraining import pretrain_masked_images, transfer_weights
        from lungkit.models import build_model
        from lungkit.training import BACKUP_DIR, SUMMARY_FILE, seed_run

        if is_query_model(model):
            raise ValueError(f"{self.recipe.model}: masked-image pretraining regresses pixels; a query model (class "
                             "and mask heads) has no pixel output to pretrain")
        if (self.model_dir / SUMMARY_FILE).exists() or (self.model_dir / BACKUP_DIR).exists():
            return
        self.model_dir.mkdir(parents=True, exist_ok=True)
        seed_run(self.seed, self.settings.deterministic)
        shape = (self.recipe.input_size, self.recipe.input_size, self.recipe.input_channels)
        settings = {**getattr(self, "_build_overrides", {}), "output_activation": None}
        network = build_model(self.recipe.model, scale=self.recipe.model_scale or "paper", input_shape=shape,
                              **settings)
        result = pretrain_masked_images(network, train_ds, int(self.recipe.masked_pretraining_steps), seed=self.seed,
                                        steps_per_epoch=self.recipe.max_steps_per_epoch or 100, verbose=verbose)
        copied = transfer_weights(network, model)
        # kept beside the checkpoint: a reused run's protocol still has the pretraining's time and losses
        record = {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 1),
                  "loss_per_epoch": [round(x, 5) for x in result.loss_per_epoch], "layers_copied": len(copied)}
        write_text_atomic(self.model_dir / MASKED_PRETRAINING_FILE, json.dumps(record))
        print(f"masked-image pretraining: {result.steps} steps in {result.wall_time_s:.0f} s, "
              f"L1 on hidden pixels {result.loss_per_epoch[0]:.3f} -> {result.loss_per_epoch[-1]:.3f}; "
              f"{len(copied)} layers start the segmentation training")

    # -- evaluation -----------------------------------------------------------------------------------------------
    def model_inputs(self, hu_batch: np.ndarray) -> np.ndarray:
        """HU slices (N, H, W) -> model inputs (N, H, W, channels), by the recipe's per-image preprocessing."""
        from lungkit.preprocess import get_preprocessing

        preprocess = get_preprocessing(self.recipe.preprocessing)
        if self.recipe.input_channels == 2:
            raise ValueError("a CT + PET model needs its PET channel too: read the inputs with "
                             "lungkit.pipeline.load_split_arrays(..., channels=2)")
        images = np.stack([preprocess(np.asarray(hu, np.float32)) for hu in hu_batch])[..., None]
        if self.recipe.input_channels == 3:
            images = np.repeat(images, 3, axis=-1)
        return images

    def _predict_fn(self, model, flips: bool = False):
        """HU slices (N, H, W) -> probabilities (N, H, W)."""

        def predict(hu_batch: np.ndarray) -> np.ndarray:
            return self.predict_images(model, self.model_inputs(hu_batch), flips=flips)

        return predict

    def predict_images(self, model, images: np.ndarray, overlap: float | None = None,
                       flips: bool = False) -> np.ndarray:
        """Model-ready slices (N, H, W, C) -> probabilities (N, H, W): by sliding window of the patch size under
        patch training (Gaussian-weighted, half-overlapping windows), else one pass; ``flips``: test-time flips
        (each window's prediction averaged with those of its left-right and up-down mirrors, three passes)."""
        from lungkit.inference import DEFAULT_OVERLAP, predict_probabilities, sliding_window_predict

        if self.recipe.patch_size:
            return sliding_window_predict(
                model, images, window=self.recipe.patch_size, batch_size=self.recipe.batch_size,
                overlap=DEFAULT_OVERLAP if overlap is None else overlap, from_logits=self.recipe.from_logits,
                flips=flips,
            )
        return predict_probabilities(
            model, images, batch_size=self.recipe.batch_size, from_logits=self.recipe.from_logits, flips=flips
        )[..., 0]

    def sampling_description(self) -> str:
        """How training saw the slices, for the protocol (a departure from the papers' whole-slice training)."""
        if not self.recipe.patch_size:
            return f"whole slices resized to {self.recipe.image_size} px"
        capped = self.recipe.capped.get("image_size")
        scale = (f"capped from the recipe's {capped['recipe']} px by the profile" if capped
                 else "the recipe's pixel scale")
        from lungkit.pipeline import describe_nnunet_augmentation

        augmentation = "random flips and quarter turns"
        if self.recipe.patch_augmentation == "nnunet":
            augmentation += ", " + describe_nnunet_augmentation()
        text = (f"patches of {self.recipe.patch_size} px from slices at {self.recipe.image_size} px ({scale}), "
                f"1/3 forced to contain tumour, {augmentation}; whole-slice inference by "
                "Gaussian-weighted sliding window (overlap 0.5)")
        if self.recipe.augment_on_the_fly:
            text += "; the recipe's on-the-fly augmentation is not applied to patches"
        return text

    def _split_description(self, info: dict) -> str:
        """The protocol's split line: the dataset's own (``dataset.json``; datasets converted before it was recorded
        there are Lung-RADS ones), plus the offline augmentation when training used it."""
        split = info.get("split_description") or LUNGRADS_SPLIT_DESCRIPTION
        if self.training_data == "augmented":
            split += (f"; train expanded to {self.settings.augment_target} slices by offline augmentation (after the "
                      "split)")
        return split

    def _protocol_extra(self, dataset_dir: Path) -> dict:
        """More protocol entries of a subclass's data: none for the Lung-RADS slices; for a Lung-PET-CT-Dx (CT +
        PET) kit dataset the masks' source and what the input channels held."""
        from lungkit.data.petct_kit import mask_source_flag

        flag = mask_source_flag(dataset_dir)
        if not flag:
            return {}
        inputs = {1: "CT only (the PET channel left out)",
                  2: "CT + PET (channel 1: SUVbw resampled onto the CT slice, min-max per slice; 0 without PET)"}
        return {"mask_flag": flag, "input": inputs.get(self.recipe.input_channels, "CT repeated")}

    def _tables_print(self, metric: str) -> bool:
        """Whether a table this result fills has ``metric`` among its columns."""
        module = papers.get_paper(self.paper_id)
        return any(metric in module.TABLES.get(row["table"], {}).get("metrics", ()) for row in self.rows)

    def _tables_have_readings(self) -> bool:
        """Whether a table this result fills reports several readings of its metrics (``readings``)."""
        module = papers.get_paper(self.paper_id)
        return any(module.TABLES.get(row["table"], {}).get("readings") for row in self.rows)

    def evaluate(self, model, robustness: bool | None = None, notes: str = "",
                 lung_margin_px: int | None = None, lesion_level: bool | None = None,
                 test_time_flips: bool = False) -> EvaluationResult:
        """Score the test split and write ``per_image.csv``, ``summary.json`` and ``predictions.npz``.

        Args:
            model: the trained model (the best checkpoint when :meth:`train` restored it).
            robustness: also compute paper 004's robustness to intensity variation (6 extra test passes, most of
                the evaluation's time); None (the default): only when a table this result fills prints it.
            notes: free text added to the protocol.
            lung_margin_px: keep predictions only inside each slice's lungs found from HU, grown by this many
                pixels (:func:`lungkit.postprocess.restrict_to_lungs`); None (the default, as in the papers): no
                restriction. Recorded in the protocol.
            lesion_level: also score lesion-level precision, recall and F1 and the F1 of the mean P and R
                (:func:`lungkit.lesion_metrics.table1_metrics`; box IoU too when the dataset's masks come from
                boxes); None: when a table this result fills has ``readings`` (paper 000's Table 1). For a query model
                (Mask2Former, MaskFormer) its own instances are scored too, from the pass that gives its probability
                map (:func:`lungkit.inference.sliding_window_query_predict`).
            test_time_flips: average each prediction with those of its left-right and up-down mirrors (three
                passes; the papers do not, so off by default). Recorded in the protocol. A query model's own instances
                and paper 004's robustness passes are not flipped.

        Returns:
            An :class:`EvaluationResult`. The model is saved with its card in :attr:`model_dir`
            (:meth:`save_model_card`).
        """
        from lungkit.data.prepare import read_dataset_info
        from lungkit.evaluation import data_fingerprint, evaluate_segmentation, summarize, write_results
        from lungkit.inference import (
            DEFAULT_DUPLICATE_FRACTION,
            DEFAULT_INSTANCE_SCORE,
            DEFAULT_INSTANCE_TOP_K,
            is_query_model,
            sliding_window_query_predict,
        )
        from lungkit.metrics import intensity_robustness_std
        from lungkit.pipeline import load_split_arrays
        from lungkit.postprocess import refine_batch
        from lungkit.preprocess import needs_lung_mask

        start = time.perf_counter()
        if robustness is None:
            robustness = self._tables_print("intensity_robustness_std")
        dataset_dir = self.dataset_dir or self.prepare_data()
        size = self.recipe.image_size
        hu, masks, manifest = load_split_arrays(dataset_dir, "test", "hu", size, 1)
        hu, masks = hu[..., 0], masks[..., 0]
        display = np.clip((hu + 1000.0) / 1400.0, 0.0, 1.0)  # lung window [-1000, 400] for figures and the CRF

        if lesion_level is None:
            lesion_level = self._tables_have_readings()
        instances = None
        if needs_lung_mask(self.recipe.preprocessing) or self.recipe.input_channels == 2:
            images, _, _ = load_split_arrays(
                dataset_dir, "test", self.recipe.preprocessing, size, self.recipe.input_channels
            )
            # the perturbation path feeds HU only; lung-masked inputs need the lung mask too, CT + PET the PET
            robustness = False
        else:
            images = None
        if lesion_level and is_query_model(model):
            # one pass gives the semantic map and the model's own instances (scored as their own lesion reading)
            probabilities, instances = sliding_window_query_predict(
                model, images if images is not None else self.model_inputs(hu), window=self.recipe.patch_size,
                batch_size=self.recipe.batch_size)
        elif images is not None:
            probabilities = self.predict_images(model, images, flips=test_time_flips)
        else:
            probabilities = self._predict_fn(model, flips=test_time_flips)(hu)
        lung_restriction = "none"
        if lung_margin_px is not None:
            from lungkit.postprocess import restrict_to_lungs

            probabilities, unrestricted = restrict_to_lungs(probabilities, hu, int(lung_margin_px))
            lung_restriction = (f"predictions kept inside the lungs found from HU (air < -400 HU not touching the "
                                f"border, holes filled) grown by {int(lung_margin_px)} px; {unrestricted} of "
                                f"{len(hu)} slices without a plausible lung left unrestricted")

        if self.postprocess == "none":
            predicted_masks, method_used = (probabilities >= 0.5).astype(np.uint8), "none"
            scored_masks = None
        else:
            predicted_masks, method_used = refine_batch(
                probabilities, display, method="auto", intensity_range=(0.0, 1.0)
            )
            scored_masks = predicted_masks

        per_image = evaluate_segmentation(probabilities, masks, manifest, masks=scored_masks)
        extra = {}
        if robustness:
            # six more passes over the test set: windows without overlap keep them affordable on a CPU (the
            # unperturbed pass inside the measure uses the same windows, so the spread is like for like)
            def predict_for_robustness(hu_batch):
                return self.predict_images(model, self.model_inputs(hu_batch), overlap=0.0)

            extra["intensity_robustness_std"] = intensity_robustness_std(predict_for_robustness, hu, masks).std
        info = read_dataset_info(dataset_dir)
        if lesion_level:
            from lungkit.lesion_metrics import table1_metrics

            # box-derived ground truth (Lung-PET-CT-Dx's boxes, dataset.json's mask_method) is also matched by box
            extra.update(table1_metrics(predicted_masks, masks, per_image, box_derived=bool(info.get("mask_method")),
                                        instances=instances))
        data_extra = self._protocol_extra(dataset_dir)
        summary = summarize(per_image, extra_metrics=extra, seed=self.seed)

        fit = getattr(self, "fit", None)
        instance_protocol = {} if instances is None else {"instance_inference": (
            f"the model's own instances for the instance lesion reading: per window the top {DEFAULT_INSTANCE_TOP_K} "
            "(query, class) pairs, mask = logit > 0, score = class probability x mean mask probability, kept above "
            f"{DEFAULT_INSTANCE_SCORE:g}, merged across windows when they share >= {DEFAULT_DUPLICATE_FRACTION:g} of "
            "the smaller mask")}
        protocol = {
            **self.recipe.protocol(),
            "data_source": info.get("data_source", "unknown"),
            "split": self._split_description(info),
            "seed": self.seed,
            "epochs": int(fit.epochs_completed) if fit is not None else self.recipe.epochs,
            "epochs_recipe": self.paper_recipe.epochs,
            "postprocess": method_used,
            "lung_restriction": lung_restriction,
            "test_time_flips": ("on: each prediction averaged with those of its left-right and up-down mirrors"
                                if test_time_flips and instances is None else "off"),
            **instance_protocol,
            "postprocess_paper": self.postprocess,
            "data_fingerprint": data_fingerprint(dataset_dir),
            "training_wall_time_s": round(fit.wall_time_s, 1) if fit is not None else None,
            "masked_pretraining_record": self.masked_pretraining_record(),
            # a reused training may come from older code: the commit that trained it, beside git_commit (scoring's)
            "training_commit": fit.trained_at_commit if fit is not None else None,
            "training_reused": bool(fit.reused) if fit is not None else None,
            "environment": fit.environment if fit is not None else None,
            "pretrained_encoder": getattr(self, "pretrained", None),
            "steps_trained": int(fit.epochs_completed) * self.steps_per_epoch() if fit is not None else None,
            "stopped_by_wall_clock": bool(fit.stopped_by_wall_clock) if fit is not None else None,
            "deterministic": self.settings.deterministic,
            "sampling": self.sampling_description(),
            "notes": " ".join(x for x in (notes, data_extra.get("mask_flag", ""), data_extra.get("input", ""),
                                          getattr(self, "validation_note", ""), self.recipe.notes) if x),
            **data_extra,
        }
        phases = (fit.environment or {}).get("phases") if fit is not None else None
        if phases:
            # the optimizer line of the report must show the schedule that actually ran, not the first rate alone
            protocol["optimizer"] = "; then ".join(phases)
        tables = sorted({row["table"] for row in self.rows})
        summary_path = write_results(
            self.results_dir,
            per_image,
            summary,
            paper=self.paper_id,
            tables=tables,
            row=self.rows[0]["row"],
            model=self.recipe.model,
            task="segmentation",
            protocol=protocol,
            dataset_dir=dataset_dir,
            wall_time_s=round(time.perf_counter() - start + (fit.wall_time_s if fit is not None else 0.0), 1),
        )
        np.savez_compressed(
            self.results_dir / "predictions.npz",
            images=display.astype(np.float16),
            masks=masks.astype(np.uint8),
            probabilities=probabilities.astype(np.float16),
            dice=per_image["dice"].to_numpy(np.float32),
        )
        from lungkit.evaluation import load_summary

        summary = load_summary(summary_path)
        self.save_model_card(model, summary)
        return EvaluationResult(
            per_image=per_image,
            summary=summary,
            summary_path=summary_path,
            postprocess=method_used,
            hu=hu,
            images=display,
            masks=masks,
            probabilities=probabilities,
            predicted_masks=predicted_masks,
        )

    def save_model_card(self, model, summary: dict) -> Path:
        """Save ``model.keras`` and ``model_card.json`` in :attr:`model_dir`: the evaluated model with what
        ``lungkit predict`` needs to apply it (slice size, window, preprocessing, threshold) and what its numbers
        mean (this result's protocol line and test metrics).

        Args:
            model: the model that was evaluated.
            summary: the result's ``summary.json`` as loaded by :func:`lungkit.evaluation.load_summary`.

        Returns:
            The card's path.
        """
        from lungkit.model_card import make_card, save_model_with_card
        from lungkit.reports import protocol_line

        protocol = summary.get("protocol", {})
        metrics = {name: block.get("mean") if isinstance(block, dict) else block
                   for name, block in summary.get("metrics", {}).items()}
        card = make_card(
            architecture=self.recipe.model,
            scale=self.recipe.model_scale or "paper",
            slice_size=self.recipe.image_size,
            channels=self.recipe.input_channels,
            preprocessing=self.recipe.preprocessing,
            window=self.recipe.patch_size,
            from_logits=self.recipe.from_logits,
            threshold=0.5,  # evaluate() scores probabilities >= 0.5 (before any CRF-style refinement)
            postprocessing=protocol.get("postprocess", "none"),
            postprocessing_paper=self.postprocess,
            lung_restriction=protocol.get("lung_restriction", "none"),
            data_source=protocol.get("data_source", "unknown"),
            data_fingerprint=protocol.get("data_fingerprint"),
            split=protocol.get("split", ""),
            protocol_line=protocol_line(summary),
            test_metrics=metrics,
            paper=self.paper_id,
            result_key=self.result_key,
        )
        return save_model_with_card(model, self.model_dir, card)


def load_predictions(run_dir: str | Path, paper_id: str, result_key: str) -> dict:
    """``predictions.npz`` of one result (images, masks, probabilities, dice), as float32 / uint8 arrays."""
    path = Path(run_dir) / "results" / paper_id / result_key / "predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions; run that result's notebook first")
    with np.load(path) as data:
        return {key: data[key].astype(np.float32) if data[key].dtype == np.float16 else data[key] for key in data}


# ============================================================================================== paper 003

#: Result key of paper 003's trained U-Net baseline on the LUNA16 nodule windows.
UNET_RESULT_KEY = "unet_luna16"


class LunaUNetBaseline(SegmentationExperiment):
    """The kit U-Net trained on the LUNA16 nodule windows: paper 003's lungkit-added baseline beside SAM.

    A :class:`SegmentationExperiment` whose recipe is ``paper003.BASELINES[result_key]`` (not a row of the paper, so
    not in ``RECIPES``) and whose data is a windows dataset (:func:`lungkit.data.luna16_kit.write_nodule_windows`).
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
        from lungkit.data.luna16_kit import mask_source_flag

        flag = mask_source_flag(self.dataset_dir)
        return super().evaluate(model, robustness=robustness, notes=" ".join(x for x in (flag, notes) if x))

    def _protocol_extra(self, dataset_dir: Path) -> dict:
        from lungkit.data.kit_dataset import read_manifest
        from lungkit.data.luna16_kit import mask_sources
        from lungkit.data.prepare import read_dataset_info

        return {
            "mask_source": mask_sources(read_manifest(dataset_dir, "test")),
            "window_px": read_dataset_info(dataset_dir).get("window_px"),
        }


__all__ = [
    "EvaluationResult",
    "LunaUNetBaseline",
    "SegmentationExperiment",
    "UNET_RESULT_KEY",
    "load_predictions",
]
