"""Run profiles: how big a run is, from a CI smoke test to the papers' own settings.

Every notebook's ``parameters`` cell has ``profile``; the notebook asks :func:`get_profile` for the sizes.

- ``smoke``: tiny data, tiny models, one short epoch. Checks the wiring only; its numbers mean nothing.
- ``quick``: the default main job on a 2-core CPU (aimed at 20 minutes for every notebook together; see the
  README's Timings). Small models, each trained for a budget of 200 optimizer steps on 128 px patches of slices
  kept at the recipe's pixel scale (a small real dataset gets the same 200 steps as the phantom; a recipe whose step
  was measured far costlier may get fewer, as a recorded departure): numbers show that each model learns, not what it
  can reach. Halving the budget from 400 steps cost the small U-Net 0.03 test Dice on the phantom (0.353 -> 0.328,
  seed 0) and halved the job. A recipe may ask for more where 200 measurably fall short (paper 004's U-Net: 400, its
  notes say why).
- ``paper``: each paper's own configuration (model size, image size, epochs, augmentation target). Meant for a
  GPU and the real data.

A paper's recipe (``lungkit.papers``) holds the paper's settings; a profile caps them (epochs, image size, model
scale). The caps are part of every result's protocol line, so a number is never shown without them. Where a model
measurably cannot learn under a small profile with the paper's settings, its recipe may name a departure for that
profile (``profile_overrides``, e.g. paper 001's Swin-UNet at ``quick``: lr 5e-4); the override wins
over the caps, its reason is in the recipe's notes, and the protocol line names it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: Augmentations of training patches (:class:`Profile`'s ``patch_augmentation``). ``nnunet`` measured on real CT, U-Net
#: at quick, patients never seen: LIDC fold A, three seeds, per-image Dice 0.53 on average against 0.41 with flips and
#: turns alone; MSD patches, two seeds, 0.52 against 0.55 (within the spread over seeds).
PATCH_AUGMENTATIONS = ("flips_turns", "nnunet")


@dataclass(frozen=True)
class Profile:
    """Sizes of a run.

    Args:
        name: ``smoke``, ``quick`` or ``paper``.
        phantom_train_rows: rows of the phantom train pickle (the real train file has 708).
        phantom_test_rows: rows of the phantom test pickle (the real test file has 264).
        phantom_image_size: side of the phantom slices in pixels (the real slices are 512).
        augment_target: size of the training split after offline augmentation (paper 001: about 3,400).
        model_scale: ``tiny`` (a few thousand parameters, for tests), ``small`` (CPU-trainable) or ``paper``.
        max_image_size: cap on the model input side; None keeps the recipe's size. With ``patch_training`` the
            slices keep the recipe's pixel scale and the model trains on patches of this side instead of
            downscaled slices (and predicts whole slices by sliding window).
        max_steps: the training budget in optimizer steps (the same for a small real dataset as for the phantom:
            epochs follow from it and the dataset's size, rounded up to whole epochs, so a recipe override is best a
            multiple of ``max_steps_per_epoch``); None keeps the recipe's epochs.
        max_steps_per_epoch: cap on training steps per epoch (an "epoch" is then a checkpoint / log interval);
            None runs full epochs.
        max_train_seconds: wall-clock safety cap per training run; a run stopped by it says so in its protocol
            (its number then depends on the machine). None: no cap.
        patch_training: train on patches at the recipe's pixel scale (nnU-Net's sampling, see
            :class:`lungkit.pipeline.PatchSampler`) instead of whole slices resized to ``max_image_size``.
        max_slice_size: cap on the slice side patches are cut from (keeps ``smoke`` cheap); None keeps the
            recipe's scale.
        patch_augmentation: how training patches are augmented under ``patch_training``: ``flips_turns`` (random
            flips and quarter turns) or ``nnunet`` (those plus nnU-Net's rotations, zooms, brightness, contrast, gamma
            and noise, :data:`lungkit.pipeline.NNUNET_AUGMENTATION`).
        deterministic: TensorFlow op determinism on (bit-identical reruns on the same machine and software; its
            cost is in the benchmarks).
        batch_size: None keeps the recipe's batch size.
        phantom_volumes: volumes of the LUNA16-layout phantom (paper 003). The split is by series, so smoke needs
            one series per split; at 2-4 nodules a volume, quick needs about 24 volumes for a classifier test set of
            a dozen nodules.
    """

    name: str
    phantom_train_rows: int
    phantom_test_rows: int
    phantom_image_size: int
    augment_target: int
    model_scale: str
    max_image_size: int | None
    max_steps: int | None
    max_steps_per_epoch: int | None
    batch_size: int | None
    phantom_volumes: int
    max_train_seconds: float | None = None
    patch_training: bool = False
    max_slice_size: int | None = None
    patch_augmentation: str = "flips_turns"
    deterministic: bool = False

    @property
    def max_epochs(self) -> int | None:
        """Epochs the step budget allows when every epoch has ``max_steps_per_epoch`` steps (an upper bound for
        experiments that do not yet know their dataset's size; a smaller dataset gets more, shorter epochs)."""
        if self.max_steps is None:
            return None
        return math.ceil(self.max_steps / (self.max_steps_per_epoch or self.max_steps))

    def as_dict(self) -> dict:
        return {**asdict(self), "max_epochs": self.max_epochs}


PROFILES = {
    "smoke": Profile(
        name="smoke",
        phantom_train_rows=24,
        phantom_test_rows=8,
        phantom_image_size=128,
        augment_target=32,
        model_scale="tiny",
        max_image_size=64,
        max_steps=2,
        max_steps_per_epoch=2,
        batch_size=4,
        phantom_volumes=3,
        patch_training=True,
        patch_augmentation="nnunet",
        max_slice_size=128,
        deterministic=True,
    ),
    # Many distinct phantom patients and few passes over them: with 160 slices a small U-Net memorised the
    # training slices (train Dice 0.79, test 0.08); the same number of steps over 3x the slices generalises.
    "quick": Profile(
        name="quick",
        phantom_train_rows=480,
        phantom_test_rows=64,
        phantom_image_size=256,
        augment_target=960,
        model_scale="small",
        max_image_size=128,
        max_steps=200,
        max_steps_per_epoch=40,
        batch_size=8,
        phantom_volumes=24,
        max_train_seconds=900.0,
        patch_training=True,
        patch_augmentation="nnunet",
        deterministic=True,
    ),
    "paper": Profile(
        name="paper",
        phantom_train_rows=708,
        phantom_test_rows=264,
        phantom_image_size=512,
        augment_target=3400,
        model_scale="paper",
        max_image_size=None,
        max_steps=None,
        max_steps_per_epoch=None,
        batch_size=None,
        phantom_volumes=64,
    ),
}


def get_profile(name: str) -> Profile:
    """Return the named profile.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}") from None
