"""The training layer every lungkit model goes through: recipe -> strategy/precision -> compile -> fit.

A paper's hyper-parameters are data (a recipe dict in ``lungkit/papers/paperNNN.py``); :class:`Recipe` checks them,
:meth:`Recipe.for_profile` caps them for a run profile and records every cap, :func:`compile_model` turns them into
an optimizer, a loss and metrics, and :func:`train` runs ``model.fit`` with the callbacks every run gets:

- best checkpoint on the recipe's validation monitor (``ModelCheckpoint``),
- early stopping that may not stop before ``min_epochs`` and restores the best weights,
- ``ReduceLROnPlateau`` down to ``min_lr``, a CSV log, TensorBoard (no profiling),
- per-epoch throughput (images/s) and learning rate written into the history,
- resume: ``BackupAndRestore`` keeps the last completed epoch in ``run_dir/backup``; rerunning :func:`train` with
  the same ``run_dir`` after a crash continues from there (at most the interrupted epoch is lost), and rerunning it
  after a completed run reuses the result instead of training again.

Typical notebook use::

    recipe = Recipe.from_dict(PAPER004_RECIPES["attention_unet"]).for_profile("quick")
    strategy = choose_strategy()
    model = build_for_training(recipe, steps_per_epoch=len_train_batches, strategy=strategy)
    result = train(model, recipe, train_ds, val_ds, run_dir / "models" / "attention_unet", strategy=strategy)
    lungkit.figures.plot_training_curves(result.history)
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import math
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from lungkit.data import export

logger = logging.getLogger(__name__)

# Keys of a recipe dict (see the contracts). ``Recipe`` has a few more fields (profile, model_scale,
# max_steps_per_epoch, capped) that only ``for_profile`` sets; a recipe dict may not contain them.
RECIPE_KEYS = (
    "model",
    "image_size",
    "input_channels",
    "preprocessing",
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "loss",
    "loss_kwargs",
    "from_logits",
    "batch_size",
    "epochs",
    "min_epochs",
    "early_stopping_patience",
    "reduce_lr_patience",
    "reduce_lr_factor",
    "min_lr",
    "monitor",
    "augment_on_the_fly",
    "notes",
    "profile_overrides",
    "fine_tuning",
)
# What a profile override may change: training settings, never the model or the paper's notes.
OVERRIDABLE_RECIPE_KEYS = tuple(key for key in RECIPE_KEYS if key not in ("model", "notes", "profile_overrides")) + (
    "max_steps",  # a profile's step budget, for a model measured too slow for it (a recorded departure)
)
REQUIRED_RECIPE_KEYS = (
    "model",
    "image_size",
    "preprocessing",
    "optimizer",
    "learning_rate",
    "loss",
    "batch_size",
    "epochs",
)
OPTIMIZERS = ("adam", "adamw", "sgd")
#: Keys of a recipe's ``fine_tuning`` schedule (see :func:`fine_tuning_phases`).
FINE_TUNING_KEYS = ("frozen_layer", "frozen_fraction", "unfrozen_learning_rate")
LR_SCHEDULES = (None, "cosine")
MONITORS = {"val_loss": "min", "val_dice": "max"}

HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "training_summary.json"


# --------------------------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Recipe:
    """A paper's training hyper-parameters, checked.

    Args:
        model: registry name (``lungkit.models.available_models()``).
        image_size: side of the square model input in pixels.
        preprocessing: name in ``lungkit.preprocess.PREPROCESSING``.
        optimizer: ``"adam"``, ``"adamw"`` (decoupled weight decay, e.g. paper 000's Mask2Former) or ``"sgd"``.
        learning_rate: initial learning rate.
        loss: name in the ``lungkit.losses`` registry.
        batch_size: images per (global) batch.
        epochs: maximum number of epochs.
        input_channels: 1 (CT); 2 (CT + PET, on a CT + PET kit dataset: ``lungkit.pipeline.make_dataset``); 3 (CT
            repeated, for ImageNet-style encoders).
        momentum: SGD momentum (None = 0); not allowed with Adam.
        weight_decay: AdamW's decoupled weight decay; required with ``"adamw"`` (no silent Keras default) and
            not allowed with the other optimizers.
        lr_schedule: None (constant, optionally reduced on plateau) or ``"cosine"`` (cosine decay to ``min_lr``
            over ``epochs``; cannot be combined with ``reduce_lr_patience``).
        loss_kwargs: extra keyword arguments of the loss (e.g. ``lam``, ``alpha``, ``gamma``).
        from_logits: the model outputs logits (its head has no sigmoid).
        min_epochs: early stopping may not stop before this many epochs.
        early_stopping_patience: epochs without improvement before stopping; None = no early stopping.
        reduce_lr_patience: epochs without improvement before the learning rate is multiplied by
            ``reduce_lr_factor``; None = off.
        reduce_lr_factor: factor in (0, 1).
        min_lr: floor of the learning rate (plateau reduction and cosine decay).
        monitor: ``"val_loss"`` or ``"val_dice"``: what checkpointing, early stopping and plateau watch.
        augment_on_the_fly: the pipeline applies random augmentation to training batches.
        notes: free text: what the paper says, quoted where useful.
        profile: set by :meth:`for_profile`: the run profile's name.
        model_scale: set by :meth:`for_profile`: ``tiny`` / ``small`` / ``paper``.
        max_steps_per_epoch: set by :meth:`for_profile`: cap on training steps per epoch.
        profile_overrides: ``{profile name: {key: value}}``: settings a profile trains with instead of the paper's,
            for a measured reason the recipe's notes must give (e.g. paper 001's Swin-UNet: at the small scale the
            printed lr 0.005 could not fit one batch). Applied by :meth:`for_profile` and recorded in
            ``overridden``; the ``paper`` profile is meant to have none.
        fine_tuning: None (one phase) or the transfer-learning schedule ``{"frozen_layer": name of the pretrained
            part (a layer or nested model of the built model), "frozen_fraction": share of the epochs trained with
            it frozen, in (0, 1), "unfrozen_learning_rate": the lower rate of the second phase, when everything
            trains}``. The first phase trains at ``learning_rate``. See :func:`fine_tuning_phases`.
        capped: set by :meth:`for_profile`: ``{key: {"recipe": value, "used": value}}`` for every capped key.
        patch_size: set by :meth:`for_profile` with ``patches=True``: the model trains on ``patch_size`` patches
            cut from slices kept at ``image_size`` (their pixel scale) and predicts whole slices by sliding window;
            None: the model sees whole slices resized to ``image_size``.
        max_steps: set by :meth:`for_profile`: the profile's budget of optimizer steps (None: the recipe's epochs).
        max_train_seconds: set by :meth:`for_profile`: the profile's wall-clock safety cap per training run.
        patch_augmentation: set by :meth:`for_profile` under patch training: the profile's augmentation of the
            patches (``flips_turns`` or ``nnunet``, see :data:`lungkit.profiles.PATCH_AUGMENTATIONS`); None without
            patches.
        overridden: set by :meth:`for_profile`: ``{key: {"recipe": value, "used": value}}`` for every key the
            profile's override changed.
        model_settings: settings given to the model builder at build time beyond the scale's (e.g. a local
            pretrained ``weights`` file, by name, and the widths it needs), set by the experiment that builds the
            model; None when there were none. Part of :meth:`protocol`, so a finished run is never reused for a
            build with other settings.
        masked_pretraining_steps: steps of masked-image pretraining before the segmentation training
            (:mod:`lungkit.masked_pretraining`, run by the segmentation experiment); None: none.

    Raises:
        ValueError: for any value outside what is expected, naming the key.
    """

    model: str
    image_size: int
    preprocessing: str
    optimizer: str
    learning_rate: float
    loss: str
    batch_size: int
    epochs: int
    input_channels: int = 1
    momentum: float | None = None
    weight_decay: float | None = None
    lr_schedule: str | None = None
    loss_kwargs: dict = field(default_factory=dict)
    from_logits: bool = False
    min_epochs: int = 0
    early_stopping_patience: int | None = None
    reduce_lr_patience: int | None = None
    reduce_lr_factor: float = 0.5
    min_lr: float = 1e-6
    monitor: str = "val_loss"
    augment_on_the_fly: bool = False
    notes: str = ""
    profile: str | None = None
    model_scale: str | None = None
    max_steps_per_epoch: int | None = None
    capped: dict = field(default_factory=dict)
    profile_overrides: dict = field(default_factory=dict)
    fine_tuning: dict | None = None
    overridden: dict = field(default_factory=dict)
    patch_size: int | None = None
    max_steps: int | None = None
    max_train_seconds: float | None = None
    patch_augmentation: str | None = None
    model_settings: dict | None = None
    masked_pretraining_steps: int | None = None

    @property
    def input_size(self) -> int:
        """Side of the model's input: the patch side under patch training, else ``image_size``."""
        return self.patch_size or self.image_size

    def __post_init__(self):
        problems = []

        def expect(condition: bool, key: str, expected: str):
            if not condition:
                problems.append(f"{key}={getattr(self, key)!r} (expected {expected})")

        from lungkit.models import available_models

        from lungkit.profiles import PATCH_AUGMENTATIONS

        expect(self.model in available_models(), "model", f"one of {available_models()}")
        expect(self.patch_augmentation is None or self.patch_augmentation in PATCH_AUGMENTATIONS,
               "patch_augmentation", f"None or one of {PATCH_AUGMENTATIONS}")
        expect(_is_int(self.image_size) and self.image_size > 0, "image_size", "a positive int")
        expect(self.input_channels in (1, 2, 3) and _is_int(self.input_channels), "input_channels",
               "1, 2 (CT + PET) or 3")
        expect(isinstance(self.preprocessing, str) and bool(self.preprocessing), "preprocessing", "a name")
        expect(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}")
        expect(_is_number(self.learning_rate) and self.learning_rate > 0, "learning_rate", "a positive number")
        expect(
            self.momentum is None or (_is_number(self.momentum) and 0 <= self.momentum < 1),
            "momentum",
            "None or a number in [0, 1)",
        )
        expect(
            self.momentum is None or self.optimizer == "sgd", "momentum", "None unless optimizer is 'sgd'"
        )
        expect(
            self.weight_decay is None or (_is_number(self.weight_decay) and self.weight_decay >= 0),
            "weight_decay",
            "None or a number >= 0",
        )
        expect(
            (self.weight_decay is not None) == (self.optimizer == "adamw"),
            "weight_decay",
            "a number with optimizer 'adamw' and None otherwise",
        )
        expect(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {LR_SCHEDULES}")
        expect(isinstance(self.loss, str) and bool(self.loss), "loss", "a loss registry name")
        expect(isinstance(self.loss_kwargs, dict), "loss_kwargs", "a dict")
        expect(isinstance(self.from_logits, bool), "from_logits", "True or False")
        expect(_is_int(self.batch_size) and self.batch_size > 0, "batch_size", "a positive int")
        expect(_is_int(self.epochs) and self.epochs > 0, "epochs", "a positive int")
        expect(
            _is_int(self.min_epochs) and 0 <= self.min_epochs <= (self.epochs if _is_int(self.epochs) else 0),
            "min_epochs",
            "an int between 0 and epochs",
        )
        for key in ("early_stopping_patience", "reduce_lr_patience"):
            value = getattr(self, key)
            expect(value is None or (_is_int(value) and value >= 1), key, "None (off) or an int >= 1")
        expect(
            _is_number(self.reduce_lr_factor) and 0 < self.reduce_lr_factor < 1, "reduce_lr_factor", "in (0, 1)"
        )
        expect(
            _is_number(self.min_lr)
            and 0 <= self.min_lr
            and (not _is_number(self.learning_rate) or self.min_lr < self.learning_rate),
            "min_lr",
            "a number >= 0 and below learning_rate",
        )
        expect(self.monitor in MONITORS, "monitor", f"one of {sorted(MONITORS)}")
        tuning = self.fine_tuning
        expect(
            tuning is None
            or (
                isinstance(tuning, dict)
                and set(tuning) == set(FINE_TUNING_KEYS)
                and isinstance(tuning["frozen_layer"], str)
                and bool(tuning["frozen_layer"])
                and _is_number(tuning["frozen_fraction"])
                and 0 < tuning["frozen_fraction"] < 1
                and _is_number(tuning["unfrozen_learning_rate"])
                and 0 < tuning["unfrozen_learning_rate"] < (self.learning_rate if _is_number(self.learning_rate) else 0)
            ),
            "fine_tuning",
            f"None or a dict with exactly {list(FINE_TUNING_KEYS)}: a layer name, a fraction in (0, 1) and an "
            "unfrozen_learning_rate below learning_rate",
        )
        expect(isinstance(self.augment_on_the_fly, bool), "augment_on_the_fly", "True or False")
        expect(isinstance(self.notes, str), "notes", "a string")
        expect(
            isinstance(self.profile_overrides, dict)
            and all(
                isinstance(changes, dict) and set(changes) <= set(OVERRIDABLE_RECIPE_KEYS)
                for changes in self.profile_overrides.values()
            ),
            "profile_overrides",
            f"{{profile name: {{key: value}}}} with keys among {list(OVERRIDABLE_RECIPE_KEYS)}",
        )
        from lungkit.profiles import PROFILES

        expect(
            not isinstance(self.profile_overrides, dict) or set(self.profile_overrides) <= set(PROFILES),
            "profile_overrides",
            f"profile names among {sorted(PROFILES)}",
        )
        expect(
            not (self.lr_schedule == "cosine" and self.reduce_lr_patience is not None),
            "reduce_lr_patience",
            "None when lr_schedule='cosine' (a schedule owns the learning rate; choose one)",
        )
        expect(
            self.max_steps_per_epoch is None or (_is_int(self.max_steps_per_epoch) and self.max_steps_per_epoch > 0),
            "max_steps_per_epoch",
            "None or a positive int",
        )
        if problems:
            raise ValueError(f"recipe for model {self.model!r}: invalid " + "; ".join(problems))

    @classmethod
    def from_dict(cls, recipe: dict, source: str | None = None) -> "Recipe":
        """Build a recipe from a plain dict (the form recipes have in ``lungkit.papers``).

        Args:
            recipe: dict with the keys listed in ``RECIPE_KEYS``; those in ``REQUIRED_RECIPE_KEYS`` are required.
            source: where the dict comes from (e.g. ``"lungkit/papers/paper004.py: attention_unet"``), for
                error messages.

        Returns:
            The checked :class:`Recipe`.

        Raises:
            ValueError: for an unknown key (a typo must not silently fall back to a default), a missing required
                key, or a bad value; the message names the key and the source.
        """
        where = f" in {source}" if source else ""
        if not isinstance(recipe, dict):
            raise ValueError(f"recipe{where} must be a dict, got {type(recipe).__name__}")
        unknown = sorted(set(recipe) - set(RECIPE_KEYS))
        if unknown:
            raise ValueError(f"unknown recipe key(s) {unknown}{where}; allowed keys: {list(RECIPE_KEYS)}")
        missing = [key for key in REQUIRED_RECIPE_KEYS if key not in recipe]
        if missing:
            raise ValueError(f"recipe{where} is missing required key(s) {missing}")
        values = dict(recipe)
        values["loss_kwargs"] = dict(values.get("loss_kwargs") or {})
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{error}{where}") from None

    def for_profile(self, profile, patches: bool | None = None) -> "Recipe":
        """Cap the recipe for a run profile, then apply the profile's override (``profile_overrides``); record both.

        Epochs, image size and batch size are capped (``min`` of the recipe's and the profile's value; a cap never
        raises a value); ``min_epochs`` follows a capped ``epochs``. An override comes last and wins over a cap
        (it is an explicit, recorded decision for that profile, e.g. more epochs for a model that needs them).
        The profile's model scale and steps-per-epoch cap are recorded for :func:`build_for_training` and
        :func:`train`.

        With ``patches`` (default: the profile's ``patch_training``) the slices keep the recipe's pixel scale
        (``image_size``, capped only by the profile's ``max_slice_size``) and ``max_image_size`` caps the patch
        side instead (``patch_size``); nothing is downscaled. Segmentation experiments use this; classifiers of
        crops do not (``patches=False``).

        Epochs are capped by the step budget assuming full ``max_steps_per_epoch`` epochs; an experiment that
        knows its dataset's steps per epoch refines that with :meth:`with_step_budget`.

        Args:
            profile: a ``lungkit.profiles.Profile`` or its name (``smoke``, ``quick``, ``paper``).
            patches: train on patches at the recipe's scale; None follows the profile.

        Returns:
            A new :class:`Recipe` with ``profile``, ``model_scale``, ``max_steps_per_epoch``, ``max_steps``,
            ``patch_size``, ``capped`` and ``overridden`` (``{key: {"recipe": paper value, "used": value}}``) set.

        Raises:
            ValueError: for an unknown profile name, or an override that makes the recipe invalid.
        """
        from lungkit.profiles import Profile, get_profile

        if not isinstance(profile, Profile):
            profile = get_profile(profile)
        patches = profile.patch_training if patches is None else bool(patches)
        changes, capped = {}, dict(self.capped)
        scale_cap = profile.max_slice_size if patches else profile.max_image_size
        for key, cap in (
            ("epochs", profile.max_epochs),
            ("image_size", scale_cap),
            ("batch_size", profile.batch_size),
        ):
            value = getattr(self, key)
            if cap is not None and cap < value:
                changes[key] = cap
                capped[key] = {"recipe": capped.get(key, {}).get("recipe", value), "used": cap}
        overridden = dict(self.overridden)
        override = self.profile_overrides.get(profile.name, {})
        for key, value in override.items():
            if getattr(self, key) != value:
                overridden[key] = {"recipe": getattr(self, key), "used": value}
            capped.pop(key, None)
            changes[key] = value
        epochs = changes.get("epochs", self.epochs)
        if "min_epochs" not in override and self.min_epochs > epochs:
            changes["min_epochs"] = epochs
            capped["min_epochs"] = {"recipe": capped.get("min_epochs", {}).get("recipe", self.min_epochs), "used": epochs}
        patch_size = None
        if patches:
            scale = changes.get("image_size", self.image_size)
            patch_size = min(scale, profile.max_image_size or scale)
        # the profile's budget, unless the recipe's override for this profile names its own (a measured departure)
        budget = {key: changes.pop(key, getattr(profile, key)) for key in ("max_steps", "max_train_seconds")}
        for key in budget:
            if key in override and getattr(profile, key) != budget[key]:
                overridden[key] = {"recipe": getattr(profile, key), "used": budget[key]}
        return dataclasses.replace(
            self,
            **changes,
            profile=profile.name,
            model_scale=profile.model_scale,
            max_steps_per_epoch=profile.max_steps_per_epoch,
            capped=capped,
            overridden=overridden,
            patch_size=patch_size,
            patch_augmentation=profile.patch_augmentation if patches else None,
            **budget,
        )

    def with_step_budget(self, steps_per_epoch: int) -> "Recipe":
        """Epochs from the step budget once the steps per epoch are known: ``ceil(max_steps / steps_per_epoch)``,
        never above the paper's epochs, so a small dataset (short epochs) gets as many updates as a large one.
        An override of ``epochs`` for this profile wins, as in :meth:`for_profile`.

        Args:
            steps_per_epoch: optimizer steps in one epoch of this run.

        Returns:
            The recipe with ``epochs`` (and ``min_epochs`` when above it) set and recorded in ``capped``.
        """
        if self.max_steps is None or "epochs" in self.overridden or steps_per_epoch < 1:
            return self
        paper_epochs = self.capped.get("epochs", {}).get("recipe", self.epochs)
        epochs = min(paper_epochs, math.ceil(self.max_steps / int(steps_per_epoch)))
        capped = {key: dict(value) for key, value in self.capped.items()}
        capped.pop("epochs", None)
        changes = {"epochs": epochs}
        if epochs < paper_epochs:
            capped["epochs"] = {"recipe": paper_epochs, "used": epochs}
        paper_min = capped.get("min_epochs", {}).get("recipe", self.min_epochs)
        capped.pop("min_epochs", None)
        changes["min_epochs"] = min(paper_min, epochs)
        if paper_min > epochs:
            capped["min_epochs"] = {"recipe": paper_min, "used": epochs}
        return dataclasses.replace(self, **changes, capped=capped)

    def to_dict(self) -> dict:
        """The recipe as a plain dict of ``RECIPE_KEYS`` (round-trips through :meth:`from_dict`)."""
        return {key: getattr(self, key) for key in RECIPE_KEYS}

    def describe_optimizer(self) -> str:
        """One line, e.g. ``"adam lr=0.0001, cosine decay to 1e-06"``."""
        text = f"{self.optimizer} lr={self.learning_rate:g}"
        if self.optimizer == "sgd":
            text += f" momentum={self.momentum or 0.0:g}"
        if self.weight_decay is not None:
            text += f" weight_decay={self.weight_decay:g}"
        if self.lr_schedule == "cosine":
            text += f", cosine decay to {self.min_lr:g}"
        elif self.reduce_lr_patience is not None:
            text += (
                f", x{self.reduce_lr_factor:g} after {self.reduce_lr_patience} flat epochs (floor {self.min_lr:g})"
            )
        return text

    def describe_loss(self) -> str:
        """One line, e.g. ``"hybrid_dice_focal(alpha=0.25, gamma=2, lam=0.5), from_logits=False"``."""
        arguments = ", ".join(f"{key}={value!r}" for key, value in sorted(self.loss_kwargs.items()))
        return f"{self.loss}({arguments}), from_logits={self.from_logits}"

    def protocol(self) -> dict:
        """The recipe's part of a result's ``protocol`` block (see summary.json in the contracts).

        Returns:
            dict with ``profile``, ``image_size``, ``epochs``, ``model_scale``, ``loss``, ``optimizer`` (as one-line
            descriptions) and the other settings that shape a number, including ``capped``.
        """
        protocol = {
            "profile": self.profile,
            "model": self.model,
            "model_scale": self.model_scale,
            "image_size": self.image_size,
            "input_channels": self.input_channels,
            "preprocessing": self.preprocessing,
            "epochs": self.epochs,
            "min_epochs": self.min_epochs,
            "batch_size": self.batch_size,
            "max_steps_per_epoch": self.max_steps_per_epoch,
            "max_steps": self.max_steps,
            "patch_size": self.patch_size,
            "patch_augmentation": self.patch_augmentation,
            "loss": self.describe_loss(),
            "optimizer": self.describe_optimizer(),
            "early_stopping_patience": self.early_stopping_patience,
            "monitor": self.monitor,
            "augment_on_the_fly": self.augment_on_the_fly,
            "capped": {key: dict(value) for key, value in self.capped.items()},
            "overridden": {key: dict(value) for key, value in self.overridden.items()},
        }
        if self.fine_tuning:
            # only when set: a completed run's recorded protocol (compared on resume) stays what it was
            protocol["fine_tuning"] = dict(self.fine_tuning)
        if self.model_settings:
            protocol["model_settings"] = dict(self.model_settings)  # only when set, for the same reason
        if self.masked_pretraining_steps:
            from lungkit.masked_pretraining import describe

            protocol["masked_pretraining"] = describe(int(self.masked_pretraining_steps))
        return protocol


# --------------------------------------------------------------------------------------------------------------
# Devices: strategy and precision
# --------------------------------------------------------------------------------------------------------------


def _tpu_evidence() -> bool:
    """Cheap signs of a TPU, so that ``auto`` never waits on a metadata server on an ordinary machine."""
    env_keys = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")
    return any(os.environ.get(key) for key in env_keys) or bool(glob.glob("/dev/accel*"))


def _connect_tpu() -> tf.distribute.Strategy:
    # TPU VMs (Kaggle, Cloud TPU VM) expose the chips locally as /dev/accel*; TPU nodes (old Colab) by address
    tpu = "local" if glob.glob("/dev/accel*") else None
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    if tpu != "local":
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def choose_strategy(kind: str = "auto", devices=None) -> tf.distribute.Strategy:
    """Pick the ``tf.distribute`` strategy to build and train under.

    Args:
        kind: ``"auto"``: a TPU when one is attached and its resolver connects, else ``MirroredStrategy`` over all
            GPUs when there are two or more, else the default (single-device) strategy; ``"tpu"``: TPU or fail;
            ``"mirrored"``: ``MirroredStrategy`` over ``devices`` (all GPUs when None); ``"default"``: the
            default strategy.
        devices: device names for ``"mirrored"``, e.g. ``["/gpu:0", "/gpu:1"]`` or two logical CPUs.

    Returns:
        The strategy. Build and compile the model inside ``strategy.scope()`` (see :func:`build_for_training`);
        batch sizes are global (split over ``strategy.num_replicas_in_sync`` replicas).

    Raises:
        ValueError: unknown kind, or ``devices`` given for a kind other than ``"mirrored"``.
        RuntimeError: ``kind="tpu"`` and no TPU could be reached.
    """
    if kind not in ("auto", "tpu", "mirrored", "default"):
        raise ValueError(f"strategy kind must be 'auto', 'tpu', 'mirrored' or 'default', got {kind!r}")
    if devices is not None and kind != "mirrored":
        raise ValueError(f"devices are only used with kind='mirrored', got kind={kind!r}")
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices is not None else None)
    if kind == "tpu":
        try:
            return _connect_tpu()
        except Exception as error:  # the resolver raises ValueError, RuntimeError or NotFoundError
            raise RuntimeError(f"no TPU could be reached: {error}") from error
    if _tpu_evidence():
        try:
            return _connect_tpu()
        except Exception as error:
            logger.warning("TPU environment detected but the resolver failed (%s); falling back to GPUs/CPU", error)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe_strategy(strategy: tf.distribute.Strategy | None) -> dict:
    """``{"strategy": class name, "replicas": n}`` for the protocol."""
    strategy = strategy or tf.distribute.get_strategy()
    return {"strategy": type(strategy).__name__, "replicas": int(strategy.num_replicas_in_sync)}


def gpu_present() -> bool:
    """True when TensorFlow sees at least one GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


@dataclass(frozen=True)
class PrecisionChoice:
    """What :func:`configure_precision` chose, for the protocol.

    Args:
        dtype_policy: the global Keras dtype policy set (``float32``, ``mixed_float16`` or ``mixed_bfloat16``).
        jit_compile: whether :func:`compile_model` asks for XLA.
        reason: one line saying why.
    """

    dtype_policy: str
    jit_compile: bool
    reason: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def configure_precision(strategy: tf.distribute.Strategy | None = None, gpu: bool | None = None) -> PrecisionChoice:
    """Set the global Keras dtype policy for the hardware, and say whether to use XLA.

    Mixed precision (``mixed_float16``, with Keras' automatic loss scaling) and XLA (``jit_compile=True``) are
    used only on a GPU: on a CPU both make training slower. On a TPU the policy is ``mixed_bfloat16`` (TPUs
    compile with XLA anyway). Call it *before* building the model: a layer takes the policy that is global when
    it is created.

    Args:
        strategy: the strategy the model will train under; a ``TPUStrategy`` selects the TPU settings.
        gpu: whether a GPU is present; detected when None.

    Returns:
        The :class:`PrecisionChoice` (record it with the result).
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        choice = PrecisionChoice("mixed_bfloat16", False, "TPU: bfloat16 compute, XLA is implicit")
    else:
        if gpu is None:
            gpu = gpu_present()
        if gpu:
            choice = PrecisionChoice("mixed_float16", True, "GPU present: float16 compute with loss scaling, XLA")
        else:
            choice = PrecisionChoice("float32", False, "no GPU: float32 without XLA (both are slower on CPU)")
    keras.config.set_dtype_policy(choice.dtype_policy)
    return choice


# --------------------------------------------------------------------------------------------------------------
# Compile
# --------------------------------------------------------------------------------------------------------------


def make_optimizer(recipe: Recipe, steps_per_epoch: int | None = None) -> keras.optimizers.Optimizer:
    """The recipe's optimizer, with cosine decay when ``lr_schedule="cosine"``.

    Args:
        recipe: the recipe.
        steps_per_epoch: needed for the cosine schedule (it decays over ``epochs * steps_per_epoch`` steps).

    Raises:
        ValueError: cosine schedule without ``steps_per_epoch``.
    """
    learning_rate = float(recipe.learning_rate)
    if recipe.lr_schedule == "cosine":
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ValueError("lr_schedule='cosine' needs steps_per_epoch (the schedule spans epochs * steps)")
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate,
            decay_steps=int(recipe.epochs * steps_per_epoch),
            alpha=float(recipe.min_lr) / float(recipe.learning_rate),
        )
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=float(recipe.weight_decay))
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=float(recipe.momentum or 0.0))


def make_loss(recipe: Recipe):
    """The recipe's loss from the ``lungkit.losses`` registry."""
    from lungkit.losses import get_loss

    return get_loss(recipe.loss, from_logits=recipe.from_logits, **recipe.loss_kwargs)


def make_metrics(recipe: Recipe) -> list:
    """Per-image Dice (``lungkit.metrics.DiceMetric``, logged as ``dice``) and the tumour-class IoU of all pixels
    seen in the epoch (``keras.metrics.BinaryIoU``, logged as ``pooled_iou``).

    Both threshold at probability 0.5; with logits that is logit 0.
    """
    from lungkit.metrics import DiceMetric

    threshold = 0.0 if recipe.from_logits else 0.5
    return [
        DiceMetric(from_logits=recipe.from_logits, name="dice"),
        keras.metrics.BinaryIoU(target_class_ids=[1], threshold=threshold, name="pooled_iou"),
    ]


def _output_activation(model: keras.Model):
    """The activation of the model's last layer, when it has a plain one."""
    return getattr(model.layers[-1], "activation", None) if model.layers else None


def compile_model(
    model: keras.Model,
    recipe: Recipe,
    steps_per_epoch: int | None = None,
    jit_compile: bool | None = None,
    metrics=None,
) -> keras.Model:
    """Compile ``model`` with the recipe's optimizer, loss and metrics.

    Args:
        model: built model (inside the strategy scope if there is one).
        recipe: the recipe.
        steps_per_epoch: training steps per epoch (required for ``lr_schedule="cosine"``).
        jit_compile: XLA; None -> on only when a GPU is present (see :func:`configure_precision`).
        metrics: a function ``recipe -> list of metrics`` (fresh objects at each call); None ->
            :func:`make_metrics` (segmentation: Dice and IoU). Classifiers pass their own.

    Returns:
        The same model, compiled.

    Raises:
        ValueError: when the model's head contradicts ``recipe.from_logits`` (a sigmoid head with a logits loss,
            or a linear head with a probability loss: both train silently wrong).
    """
    activation = _output_activation(model)
    if activation is keras.activations.sigmoid and recipe.from_logits:
        raise ValueError(
            f"model {model.name!r} ends in a sigmoid but recipe.from_logits=True; build it with "
            "output_activation=None or set from_logits=False"
        )
    if activation is keras.activations.linear and not recipe.from_logits:
        raise ValueError(
            f"model {model.name!r} outputs logits (linear head) but recipe.from_logits=False; build it with "
            "output_activation='sigmoid' or set from_logits=True"
        )
    if jit_compile is None:
        jit_compile = gpu_present()
    model.compile(
        optimizer=make_optimizer(recipe, steps_per_epoch),
        loss=make_loss(recipe),
        metrics=(metrics or make_metrics)(recipe),
        jit_compile=jit_compile,
    )
    return model


def build_for_training(
    recipe: Recipe,
    steps_per_epoch: int | None = None,
    scale: str | None = None,
    strategy: tf.distribute.Strategy | None = None,
    precision: PrecisionChoice | None = None,
    **overrides,
) -> keras.Model:
    """Build the recipe's model from the registry inside the strategy scope and compile it.

    Args:
        recipe: the recipe (its ``model``, ``image_size``, ``input_channels``, ``from_logits``).
        steps_per_epoch: see :func:`compile_model`.
        scale: model scale; default the profile's (``recipe.model_scale``), else ``"paper"``.
        strategy: build under this strategy; default strategy when None.
        precision: the precision choice; :func:`configure_precision` is called (for ``strategy``) when None.
        **overrides: model settings passed to the builder. ``output_activation=None`` is added when the recipe
            says ``from_logits``.

    Returns:
        The compiled model.
    """
    from lungkit.models import build_model

    strategy = strategy or tf.distribute.get_strategy()
    if precision is None:
        precision = configure_precision(strategy)
    if recipe.from_logits:
        overrides.setdefault("output_activation", None)
    input_shape = (recipe.input_size, recipe.input_size, recipe.input_channels)
    with strategy.scope():
        model = build_model(recipe.model, scale=scale or recipe.model_scale or "paper", input_shape=input_shape, **overrides)
        compile_model(model, recipe, steps_per_epoch=steps_per_epoch, jit_compile=precision.jit_compile)
    return model


# --------------------------------------------------------------------------------------------------------------
# Train
# --------------------------------------------------------------------------------------------------------------


class EpochStats(keras.callbacks.Callback):
    """Writes ``images_per_second`` (training part of the epoch), ``epoch_seconds`` and ``learning_rate`` (the
    rate in use during the epoch) into each epoch's logs, so the CSV log and the history carry them.

    Args:
        images_per_epoch: training images per epoch (steps x global batch size; a partial last batch counts as
            full, so throughput is slightly overstated for such datasets).
    """

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = int(images_per_epoch)
        self._epoch_start = None
        self._train_end = None
        self._learning_rate = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._train_end = None
        self._learning_rate = self._current_learning_rate()

    def on_test_begin(self, logs=None):
        # fit's validation pass calls this: the training part of the epoch has ended
        if self._epoch_start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self._epoch_start is None:
            return
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._epoch_start
        logs["images_per_second"] = self.images_per_epoch / max(train_seconds, 1e-9)
        logs["epoch_seconds"] = now - self._epoch_start
        if self._learning_rate is not None:
            logs["learning_rate"] = self._learning_rate

    def _current_learning_rate(self):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return None
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class WallClockLimit(keras.callbacks.Callback):
    """Stops training at the end of the first epoch that ends past ``seconds`` of wall time (a profile's safety cap;
    a run it stops is machine-dependent, which :class:`TrainResult` records as ``stopped_by_wall_clock``)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = float(seconds)
        self.start = None
        self.stopped = False

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.start is not None and time.perf_counter() - self.start > self.seconds:
            self.stopped = True
            self.model.stop_training = True


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and turn on TensorFlow's op determinism, so the same seed on the same
    machine and software trains bit-identical weights (measured cost: see the benchmarks). Determinism stays on for
    the rest of the process."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def seed_run(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow before building a model; with ``deterministic`` (the profile's
    ``deterministic``) also turn on op determinism (:func:`make_deterministic`). Every experiment seeds through
    here, so a profile that promises bit-identical reruns keeps the promise for classifiers too."""
    if deterministic:
        make_deterministic(seed)
    else:
        keras.utils.set_random_seed(int(seed))


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Args:
        history: one row per completed epoch over all (resumed) runs: ``epoch`` (0-based), ``loss``, ``dice``,
            ``pooled_iou``, their ``val_`` versions, ``learning_rate``, ``images_per_second``, ``epoch_seconds``.
        best_checkpoint: the best model on the monitor (``.keras``, or ``.weights.h5`` with
            ``save_weights_only``); None when no epoch completed.
        wall_time_s: seconds spent in this call; for a reused run (``reused``), the figure recorded by the call that
            trained it (protocols report training time, not the seconds it took to reload).
        images_per_second: per-epoch training throughput (the history column as a list).
        resumed_from_epoch: completed epochs restored from ``run_dir/backup`` (0 = fresh start).
        epochs_completed: epochs in ``history``.
        stopped_early: early stopping ended the run before ``recipe.epochs``.
        reused: the run had already completed and nothing was trained.
        environment: strategy, replicas, dtype policy, XLA.
        run_dir: the run directory.
        stopped_by_wall_clock: the profile's ``max_train_seconds`` ended the run.
        trained_at_commit: the lungkit commit that trained it (:func:`lungkit.evaluation.git_commit`; for a reused
            run the one its summary recorded, None when it recorded none).
    """

    history: pd.DataFrame
    best_checkpoint: Path | None
    wall_time_s: float
    images_per_second: list
    resumed_from_epoch: int
    epochs_completed: int
    stopped_early: bool
    reused: bool
    environment: dict
    run_dir: Path
    stopped_by_wall_clock: bool = False
    trained_at_commit: str | None = None

    def summary(self) -> dict:
        """JSON-ready summary (no history rows)."""
        return {
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "wall_time_s": self.wall_time_s,
            "images_per_second": self.images_per_second,
            "resumed_from_epoch": self.resumed_from_epoch,
            "epochs_completed": self.epochs_completed,
            "stopped_early": self.stopped_early,
            "stopped_by_wall_clock": self.stopped_by_wall_clock,
            "environment": self.environment,
            "git_commit": self.trained_at_commit,
        }


def tensorboard_available() -> bool:
    """True when the ``tensorboard`` package (needed by ``tf.summary`` writers) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def _write_json_atomic(path: Path, payload: dict) -> None:
    export.write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def _load_checkpoint(model: keras.Model, path: Path) -> None:
    """Load a checkpoint's weights, optimizer state included (its variables must exist to receive it)."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(path)


def _read_history(path: Path) -> pd.DataFrame:
    """The CSV log, one row per epoch (the last row wins if an epoch was logged twice around a crash)."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["epoch"])
    history = pd.read_csv(path)
    if history.empty:
        return history
    return history.drop_duplicates(subset="epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def _backed_up_epoch(backup_dir: Path) -> int:
    """Completed epochs recorded by ``BackupAndRestore`` (0 when there is no backup)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        metadata = backup_dir / name
        if metadata.exists():
            try:
                return int(json.loads(metadata.read_text())["epoch"])
            except (ValueError, KeyError, OSError):
                continue
    return 0


def _steps(dataset: tf.data.Dataset, requested: int | None, cap: int | None, what: str) -> tuple[int | None, bool]:
    """Steps per epoch and whether the dataset must be repeated to supply them."""
    cardinality = int(dataset.cardinality().numpy())
    known = cardinality >= 0
    if requested is None:
        if cardinality == tf.data.INFINITE_CARDINALITY and cap is None:
            raise ValueError(f"{what} is infinite: pass steps_per_epoch / validation_steps")
        requested = cardinality if known else None
        if cap is not None:
            requested = cap if requested is None else min(requested, cap)
    if requested is not None and requested < 1:
        raise ValueError(f"{what} has no batches (steps={requested})")
    # with a step count that differs from the length of a finite dataset, keras' iterator would run dry
    repeat = requested is not None and cardinality != tf.data.INFINITE_CARDINALITY and requested != cardinality
    return requested, repeat


@dataclass(frozen=True)
class TrainingPhase:
    """One phase of a fine-tuning schedule.

    Args:
        name: ``frozen``, ``unfrozen`` or ``from_scratch`` (the subfolder of the run's model folder).
        recipe: the phase's recipe: its epochs and learning rate, ``fine_tuning`` None (a phase is one plain run).
        frozen_layer: the layer frozen during the phase; None when everything trains.
    """

    name: str
    recipe: Recipe
    frozen_layer: str | None

    def describe(self) -> str:
        what = f"{self.frozen_layer} frozen" if self.frozen_layer else "all layers trainable"
        return f"{self.name}: {self.recipe.epochs} epochs, {what}, {self.recipe.describe_optimizer()}"


def fine_tuning_phases(recipe: Recipe, pretrained: bool = True) -> list[TrainingPhase]:
    """Split a recipe's epochs into the phases of its ``fine_tuning`` schedule.

    With a pretrained part: first ``frozen_fraction`` of the epochs (rounded, at least one) with ``frozen_layer``
    frozen at ``learning_rate``, then the rest (at least one; a one-epoch recipe gets one of each, so the smoke
    profile runs both) with everything trainable at ``unfrozen_learning_rate``. ``min_epochs`` is split the same way.

    Without pretrained weights there is nothing to protect: freezing a randomly initialised encoder would train the
    decoder on random features for part of the budget, and the lower second rate exists to keep pretrained filters
    from being destroyed. So an unpretrained model trains in one ``from_scratch`` phase, everything trainable, at
    ``learning_rate`` for all the epochs; the protocol records that the schedule was skipped and why.

    Args:
        recipe: the (profile-capped) recipe.
        pretrained: whether ``frozen_layer`` holds pretrained weights.

    Returns:
        The phases in order; one phase named ``"full"`` (the recipe itself) when it has no ``fine_tuning``.
    """
    tuning = recipe.fine_tuning
    if not tuning:
        return [TrainingPhase("full", recipe, None)]
    if not pretrained:
        return [TrainingPhase("from_scratch", recipe, None)]
    epochs = int(recipe.epochs)
    frozen_epochs = 1 if epochs < 2 else min(epochs - 1, max(1, round(epochs * float(tuning["frozen_fraction"]))))
    unfrozen_epochs = max(1, epochs - frozen_epochs)
    frozen_min = min(recipe.min_epochs, frozen_epochs)
    unfrozen_min = min(max(0, recipe.min_epochs - frozen_epochs), unfrozen_epochs)
    unfrozen_lr = float(tuning["unfrozen_learning_rate"])
    frozen = dataclasses.replace(recipe, epochs=frozen_epochs, min_epochs=frozen_min, fine_tuning=None)
    unfrozen = dataclasses.replace(
        recipe, epochs=unfrozen_epochs, min_epochs=unfrozen_min, learning_rate=unfrozen_lr,
        min_lr=min(recipe.min_lr, unfrozen_lr / 10.0), fine_tuning=None,
    )
    return [TrainingPhase("frozen", frozen, tuning["frozen_layer"]), TrainingPhase("unfrozen", unfrozen, None)]


def joined_commits(commits: list[str | None]) -> str | None:
    """The commits that trained a run's phases, once each, in order: ``"abc + def"``; a phase that recorded none shows
    as ``(not recorded)``, and None when no phase recorded one."""
    if all(commit is None for commit in commits):
        return None
    return " + ".join(dict.fromkeys(commit or "(not recorded)" for commit in commits))


def train_in_phases(
    model: keras.Model,
    recipe: Recipe,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run_dir,
    pretrained: bool = True,
    steps_per_epoch: int | None = None,
    jit_compile: bool | None = None,
    metrics=None,
    **train_kwargs,
) -> TrainResult:
    """:func:`train` once per phase of the recipe's fine-tuning schedule (:func:`fine_tuning_phases`).

    Before each phase the frozen layer's ``trainable`` flag is set and the model is recompiled (Keras fixes the
    trainable variables at compile time) with the phase's optimizer, inside the model's strategy scope. Each phase
    has its own folder ``run_dir/<phase name>`` with its own checkpoint, log and backup, so a crash resumes the
    phase it interrupted and a finished phase is reused; the second phase starts from the first's best checkpoint.
    A recipe without ``fine_tuning`` is passed straight to :func:`train` with ``run_dir`` unchanged.

    Args:
        model: the model, compiled or not (it is recompiled per phase).
        recipe: the recipe.
        train_ds, val_ds: as for :func:`train`.
        run_dir: the model's folder.
        pretrained: whether the frozen layer holds pretrained weights (see :func:`fine_tuning_phases`).
        steps_per_epoch: as for :func:`train`; also the cosine schedule's steps per epoch.
        jit_compile: XLA; None -> on only when a GPU is present.
        metrics: as for :func:`compile_model` (None: segmentation metrics).
        **train_kwargs: more arguments of :func:`train` (``validation_steps``, ``verbose``, ``strategy`` ...).

    Returns:
        One :class:`TrainResult` over the phases: the history rows of every phase in order, with a ``phase``
        column and ``epoch`` counted across phases; times and epochs summed; the last phase's checkpoint. Its
        ``environment`` gets ``phases``, one line per phase (what ran, for the protocol).

    Raises:
        ValueError: when the frozen layer is not in the model, or as :func:`train`.
    """
    phases = fine_tuning_phases(recipe, pretrained)
    if not recipe.fine_tuning:
        return train(model, recipe, train_ds, val_ds, run_dir, steps_per_epoch=steps_per_epoch, **train_kwargs)
    layer_name = recipe.fine_tuning["frozen_layer"]
    try:
        frozen_layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(f"fine_tuning.frozen_layer {layer_name!r} is not a layer of model {model.name!r}") from None
    run_dir = Path(run_dir)
    results = []
    for phase in phases:
        frozen_layer.trainable = phase.frozen_layer is None
        with model.distribute_strategy.scope():
            compile_model(model, phase.recipe, steps_per_epoch=steps_per_epoch, jit_compile=jit_compile,
                          metrics=metrics)
        results.append(train(model, phase.recipe, train_ds, val_ds, run_dir / phase.name,
                             steps_per_epoch=steps_per_epoch, **train_kwargs))
    histories, offset = [], 0
    for phase, result in zip(phases, results):
        history = result.history.copy()
        history.insert(0, "phase", phase.name)
        if "epoch" in history:
            history["epoch"] = history["epoch"] + offset
        offset += result.epochs_completed
        histories.append(history)
    last = results[-1]
    environment = {**last.environment, "phases": [phase.describe() for phase in phases]}
    if len(phases) == 1 and phases[0].name == "from_scratch":
        environment["phases"] = [
            f"fine-tuning schedule skipped: {layer_name} has no pretrained weights, so nothing is frozen; "
            + phases[0].describe()
        ]
    return TrainResult(
        history=pd.concat(histories, ignore_index=True),
        best_checkpoint=last.best_checkpoint,
        wall_time_s=sum(r.wall_time_s for r in results),
        images_per_second=[value for r in results for value in r.images_per_second],
        resumed_from_epoch=sum(r.resumed_from_epoch for r in results),
        epochs_completed=sum(r.epochs_completed for r in results),
        stopped_early=any(r.stopped_early for r in results),
        reused=all(r.reused for r in results),
        environment=environment,
        run_dir=run_dir,
        stopped_by_wall_clock=any(r.stopped_by_wall_clock for r in results),
        trained_at_commit=joined_commits([r.trained_at_commit for r in results]),
    )


def train(
    model: keras.Model,
    recipe: Recipe,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run_dir,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    verbose="auto",
    extra_callbacks=(),
    overwrite: bool = False,
    save_weights_only: bool = False,
    tensorboard: bool = True,
) -> TrainResult:
    """Fit a compiled model by its recipe, with checkpointing, early stopping, logging and resume.

    Files in ``run_dir``: ``best.keras`` (or ``best.weights.h5``), ``history.csv``, ``tensorboard/``,
    ``backup/`` (while a run is unfinished) and ``training_summary.json`` (written when a run completes).

    Resume: if ``run_dir/backup`` holds a backup, weights, optimizer state and epoch counter are restored and
    training continues with the next epoch; the CSV log is appended to and the best checkpoint is only replaced
    by a better epoch. If ``training_summary.json`` says the run completed with the same recipe, the best
    checkpoint is loaded and returned without training (``reused=True``); the recipe does not change when model or
    training code does, so a run trained at another commit than the current one is reused with a warning naming both
    (delete the folder, or ``overwrite=True``, to train again).

    Args:
        model: compiled model (see :func:`compile_model` / :func:`build_for_training`).
        recipe: the recipe (epochs, callbacks' settings, monitor, batch size for throughput).
        train_ds: batched ``tf.data.Dataset`` of (image, mask).
        val_ds: batched validation dataset (every callback watches a ``val_`` monitor).
        run_dir: the run's folder (``<run_dir>/models/<result_key>`` in the main job).
        steps_per_epoch: training steps per epoch; default: the dataset's length, capped by
            ``recipe.max_steps_per_epoch``. A finite dataset is repeated when the two differ.
        validation_steps: validation steps; default the whole validation set.
        strategy: the strategy the model was built under; checked against the model's.
        verbose: ``model.fit`` verbosity.
        extra_callbacks: more callbacks, run after the built-in ones (so the backup of an epoch is written
            before they see its end).
        overwrite: delete the run's previous files and train from scratch.
        save_weights_only: checkpoint weights (``best.weights.h5``) instead of the whole model.
        tensorboard: write TensorBoard logs (skipped with a warning when the ``tensorboard`` package is absent).

    Returns:
        :class:`TrainResult`. The model holds the best checkpoint's weights afterwards.

    Raises:
        ValueError: uncompiled model, model built under another strategy, missing validation data, infinite
            dataset without step counts, or a completed run in ``run_dir`` with a different recipe.
    """
    from lungkit.evaluation import git_commit

    start = time.perf_counter()
    run_dir = Path(run_dir)
    if not getattr(model, "compiled", False):
        raise ValueError(f"model {model.name!r} is not compiled: use compile_model or build_for_training first")
    if strategy is not None and model.distribute_strategy is not strategy:
        raise ValueError(
            f"model {model.name!r} was built under {type(model.distribute_strategy).__name__}, not the given "
            f"{type(strategy).__name__}: build and compile it inside strategy.scope() (build_for_training does)"
        )
    if val_ds is None:
        raise ValueError(f"train needs validation data: the monitor {recipe.monitor!r} is a validation metric")
    for name, dataset in (("train_ds", train_ds), ("val_ds", val_ds)):
        if not isinstance(dataset, tf.data.Dataset):
            raise TypeError(f"{name} must be a batched tf.data.Dataset of (image, mask), got {type(dataset).__name__}")

    history_path = run_dir / HISTORY_FILE
    backup_dir = run_dir / BACKUP_DIR
    summary_path = run_dir / SUMMARY_FILE
    checkpoint_path = run_dir / ("best.weights.h5" if save_weights_only else "best.keras")
    environment = {
        **describe_strategy(model.distribute_strategy),
        "dtype_policy": model.dtype_policy.name if hasattr(model, "dtype_policy") else keras.config.dtype_policy().name,
        "jit_compile": bool(model.jit_compile),
    }

    if overwrite and run_dir.exists():
        for path in (history_path, summary_path, checkpoint_path):
            path.unlink(missing_ok=True)
        for folder in (backup_dir, run_dir / TENSORBOARD_DIR):
            shutil.rmtree(folder, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    if summary_path.exists() and not backup_dir.exists():
        done = json.loads(summary_path.read_text())
        if done.get("recipe") != json.loads(json.dumps(recipe.protocol(), default=str)):
            raise ValueError(
                f"{run_dir} holds a completed run with a different recipe ({summary_path}); use a new run_dir "
                "or overwrite=True"
            )
        if checkpoint_path.exists():
            _load_checkpoint(model, checkpoint_path)
        history = _read_history(history_path)
        trained_at, now = done.get("git_commit"), git_commit()
        if trained_at != now:
            warnings.warn(f"{run_dir}: reusing a completed run trained at commit {trained_at or '(not recorded)'}; "
                          f"the code is now at {now}. Delete that folder (or pass overwrite=True) to train again.")
        return TrainResult(
            history=history,
            best_checkpoint=checkpoint_path if checkpoint_path.exists() else None,
            wall_time_s=float(done.get("wall_time_s", time.perf_counter() - start)),
            images_per_second=history.get("images_per_second", pd.Series(dtype=float)).tolist(),
            resumed_from_epoch=int(len(history)),
            epochs_completed=int(len(history)),
            stopped_early=bool(done.get("stopped_early", False)),
            reused=True,
            environment=environment,
            run_dir=run_dir,
            trained_at_commit=trained_at,
        )

    resumed_from_epoch = _backed_up_epoch(backup_dir) if backup_dir.exists() else 0
    mode = MONITORS[recipe.monitor]
    best_so_far = None
    if resumed_from_epoch:
        # keep only epochs the backup covers (the interrupted epoch may have been logged but not backed up)
        history = _read_history(history_path)
        history = history[history["epoch"] < resumed_from_epoch]
        export.write_text_atomic(history_path, history.to_csv(index=False))
        if recipe.monitor in history and history[recipe.monitor].notna().any():
            values = history[recipe.monitor].astype(float)
            best_so_far = float(values.min() if mode == "min" else values.max())
    else:
        # an abandoned run that never completed an epoch, or leftovers without a backup: start clean
        history_path.unlink(missing_ok=True)
        summary_path.unlink(missing_ok=True)
        checkpoint_path.unlink(missing_ok=True)

    steps_per_epoch, repeat_train = _steps(train_ds, steps_per_epoch, recipe.max_steps_per_epoch, "train_ds")
    validation_steps, repeat_val = _steps(val_ds, validation_steps, None, "val_ds")
    if repeat_train:
        train_ds = train_ds.repeat()
    if repeat_val:
        val_ds = val_ds.repeat()
    images_per_epoch = (steps_per_epoch or 0) * recipe.batch_size

    callbacks = [
        EpochStats(images_per_epoch),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint(
            filepath=str(checkpoint_path),
            monitor=recipe.monitor,
            mode=mode,
            save_best_only=True,
            save_weights_only=save_weights_only,
            initial_value_threshold=best_so_far,
        ),
    ]
    early_stopping = None
    if recipe.early_stopping_patience is not None:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=recipe.monitor,
            mode=mode,
            patience=recipe.early_stopping_patience,
            start_from_epoch=recipe.min_epochs,
            restore_best_weights=True,
        )
        callbacks.append(early_stopping)
    if recipe.reduce_lr_patience is not None:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=recipe.monitor,
                mode=mode,
                factor=recipe.reduce_lr_factor,
                patience=recipe.reduce_lr_patience,
                min_lr=recipe.min_lr,
            )
        )
    wall_clock = WallClockLimit(recipe.max_train_seconds) if recipe.max_train_seconds else None
    if wall_clock is not None:
        callbacks.append(wall_clock)
    callbacks.append(keras.callbacks.CSVLogger(str(history_path), append=bool(resumed_from_epoch)))
    if tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / TENSORBOARD_DIR), profile_batch=0))
    elif tensorboard:
        warnings.warn("the tensorboard package is not installed: no TensorBoard logs (history.csv has the same numbers)")
    environment["tensorboard"] = bool(tensorboard and tensorboard_available())
    callbacks.append(keras.callbacks.BackupAndRestore(backup_dir=str(backup_dir), double_checkpoint=True))
    callbacks.extend(extra_callbacks)

    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=recipe.epochs,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # tf.data datasets are shuffled by the pipeline; fit ignores (and warns about) shuffle
    )

    best_checkpoint = checkpoint_path if checkpoint_path.exists() else None
    if best_checkpoint is not None:
        # one rule for every ending (early stop, full run, resumed run): the model leaves with the best epoch
        _load_checkpoint(model, best_checkpoint)
    history = _read_history(history_path)
    result = TrainResult(
        history=history,
        best_checkpoint=best_checkpoint,
        wall_time_s=time.perf_counter() - start,
        images_per_second=history.get("images_per_second", pd.Series(dtype=float)).tolist(),
        resumed_from_epoch=resumed_from_epoch,
        epochs_completed=int(len(history)),
        stopped_early=bool(early_stopping is not None and early_stopping.stopped_epoch > 0),
        reused=False,
        environment=environment,
        run_dir=run_dir,
        stopped_by_wall_clock=bool(wall_clock is not None and wall_clock.stopped),
        trained_at_commit=git_commit(),
    )
    _write_json_atomic(summary_path, {"recipe": recipe.protocol(), "completed": True, **result.summary()})
    return result
