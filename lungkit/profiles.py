"""Run profiles: how big a run is, from a CI smoke test to the papers' own settings.

Every notebook's ``parameters`` cell has ``profile``; the notebook asks :func:`get_profile` for the sizes.

- ``smoke``: tiny data, tiny models, one short epoch. Checks the wiring only; its numbers mean nothing.
- ``quick``: the default main job on a 2-core CPU (aimed at 20 minutes for every notebook together; measured about
  35, see the README's Timings). Small models trained for a few minutes each on phantom data: numbers show that
  each model learns, not what it can reach.
- ``paper``: each paper's own configuration (model size, image size, epochs, augmentation target). Meant for a
  GPU and the real data.

A paper's recipe (``lungkit.papers``) holds the paper's settings; a profile caps them (epochs, image size, model
scale). The caps are part of every result's protocol line, so a number is never shown without them. Where a model
measurably cannot learn under a small profile with the paper's settings, its recipe may name a departure for that
profile (``profile_overrides``, e.g. paper 001's Swin-UNet at ``quick``: lr 5e-4 and 25 epochs); the override wins
over the caps, its reason is in the recipe's notes, and the protocol line names it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
        max_image_size: cap on the model input side; None keeps the recipe's size.
        max_epochs: cap on the recipe's epochs; None keeps the recipe's epochs.
        max_steps_per_epoch: cap on training steps per epoch; None runs full epochs.
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
    max_epochs: int | None
    max_steps_per_epoch: int | None
    batch_size: int | None
    phantom_volumes: int

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile(
        name="smoke",
        phantom_train_rows=24,
        phantom_test_rows=8,
        phantom_image_size=128,
        augment_target=32,
        model_scale="tiny",
        max_image_size=64,
        max_epochs=1,
        max_steps_per_epoch=2,
        batch_size=4,
        phantom_volumes=3,
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
        max_epochs=10,
        max_steps_per_epoch=40,
        batch_size=8,
        phantom_volumes=24,
    ),
    "paper": Profile(
        name="paper",
        phantom_train_rows=708,
        phantom_test_rows=264,
        phantom_image_size=512,
        augment_target=3400,
        model_scale="paper",
        max_image_size=None,
        max_epochs=None,
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
