"""tf.data input pipelines over a kit dataset: PNGs -> HU -> (augmentation) -> resize -> preprocessing -> batches.

One element is ``(image, mask)``: ``image`` float32 ``[H, W, C]`` after the named preprocessing profile (``C`` = 1,
or 3 with the grey channel repeated for ImageNet-style encoders), ``mask`` float32 ``[H, W, 1]`` with values 0 / 1.

Order of the steps, and why:

1. decode: ``tf.io.decode_png`` (uint16 image, uint8 masks); HU = stored - ``HU_OFFSET``; masks are "> 0".
2. spatial: either the on-the-fly augmentation of paper 001 (:func:`lungkit.augment.tf_augment_fn`, which also
   resizes) or a plain resize (bilinear image, nearest-neighbour masks). Both act on HU, so brightness / contrast
   changes are in HU and the profile's window applies afterwards, as it would to a real scan.
3. preprocessing at the model's size: per-image statistics (z-score, min-max) are those of the image the model sees.

Determinism: with a seed, two datasets built with the same arguments yield identical batches, and successive
epochs of one dataset are reshuffled (and re-augmented) in a sequence fixed by the seed. Shuffling uses
``reshuffle_each_iteration=True`` with an op seed; augmentation draws one seed per element from
``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` and the albumentations pipeline is reseeded from it
for each element, so a parallel map gives the same result as a sequential one; ``options.deterministic`` keeps the
parallel map's output order. TensorFlow combines op seeds with the global seed (``keras.utils.set_random_seed``),
so set that alike too when comparing runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from lungkit import preprocess
from lungkit.data import kit_dataset
from lungkit.data.kit_dataset import HU_OFFSET


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches needed to see ``n`` examples once (the last batch may be short).

    Raises:
        ValueError: if ``n`` or ``batch_size`` is below 1.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if int(n) < 1:
        raise ValueError(f"cannot make epochs from {n} examples; the split is empty")
    return math.ceil(int(n) / int(batch_size))


def _decode(paths: dict, with_lung: bool, with_pet: bool = False) -> dict:
    stored = tf.io.decode_png(tf.io.read_file(paths["image"]), channels=1, dtype=tf.uint16)
    hu = tf.cast(stored, tf.float32) - float(HU_OFFSET)
    if with_pet:
        from lungkit.data.petct_kit import PET_SUV_SCALE

        # PET (SUVbw) rides along as the second channel of "hu", so that resizing treats both alike; a slice
        # without PET (a CT-only study) gets SUV 0, as outside the PET field of view
        pet = tf.cond(
            tf.equal(paths["pet"], ""),
            lambda: tf.zeros_like(hu),
            lambda: tf.cast(tf.io.decode_png(tf.io.read_file(paths["pet"]), channels=1, dtype=tf.uint16),
                            tf.float32) / float(PET_SUV_SCALE),
        )
        hu = tf.concat([hu, pet], axis=-1)
    masks = [tf.io.decode_png(tf.io.read_file(paths["mask"]), channels=1, dtype=tf.uint8)]
    if with_lung:
        masks.append(tf.io.decode_png(tf.io.read_file(paths["lung"]), channels=1, dtype=tf.uint8))
    # Channel 0: tumour; channel 1 (when needed): lungs. Warped and resized together.
    masks = tf.cast(tf.concat(masks, axis=-1) > 0, tf.uint8)
    return {"hu": hu, "masks": masks, "id": paths["id"]}


def make_dataset(
    dataset_dir: str | Path,
    split: str,
    preprocessing: str = "hu_window_zscore",
    image_size: int | None = 256,
    channels: int = 1,
    batch_size: int = 8,
    shuffle: bool | None = None,
    augment: bool = False,
    seed: int | None = 0,
    repeat: bool = False,
    cache: bool | str = False,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    include_ids: bool = False,
) -> tf.data.Dataset:
    """Batched ``(image, mask)`` pairs from one split of a kit dataset.

    Args:
        dataset_dir: a finished kit dataset.
        split: ``train``, ``val`` or ``test``.
        preprocessing: a name in :data:`lungkit.preprocess.PREPROCESSING`; the lung masks are read when it needs them.
        image_size: side of the square output; None keeps the stored size (all slices of the split must share it).
        channels: 1; 3 to repeat the grey channel for ImageNet-style encoders; 2 for CT + PET (a kit dataset with a
            ``pet_path`` column, :mod:`lungkit.data.petct_kit`): channel 0 the CT by ``preprocessing``, channel 1
            the PET SUV min-max scaled per slice (:func:`lungkit.preprocess.minmax`; all 0 where a slice has no
            PET).
        batch_size: examples per batch (the last batch may be short).
        shuffle: shuffle the whole split; default True for train, False otherwise.
        augment: paper 001's augmentation on the fly (train only); a PET channel moves with the CT's geometry and
            keeps its SUV (:func:`lungkit.augment.apply_augmentation`).
        seed: seed for shuffling and augmentation; None for unseeded (not reproducible) order.
        repeat: repeat forever (then pass ``steps_per_epoch`` to ``fit``).
        cache: True caches in memory, a string caches to that file. Without augmentation the finished examples
            are cached; with augmentation the decoded slices are, and augmentation runs after the cache.
        num_parallel_calls: parallelism of the map steps.
        include_ids: yield ``(image, mask, id)`` instead; for evaluation (Keras ``fit`` would read a third element
            as sample weights).

    Returns:
        A ``tf.data.Dataset`` of batches: image float32 ``[B, S, S, channels]``, mask float32 ``[B, S, S, 1]``
        (and ids, string ``[B]``), prefetched.

    Raises:
        ValueError: for an unknown split or preprocessing, ``augment`` outside train, bad channels / sizes, or an
            empty split.
        FileNotFoundError: if the dataset is missing or unfinished.
    """
    if augment and split != "train":
        raise ValueError(
            f"augmentation is for the train split only (asked for {split!r}): val and test must show the model "
            "slices as they are, and augmented copies must never cross the split"
        )
    if channels not in (1, 2, 3):
        raise ValueError(f"channels must be 1, 2 (CT + PET) or 3, got {channels}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    preprocess_fn = preprocess.get_preprocessing(preprocessing)
    with_lung = preprocess.needs_lung_mask(preprocessing)
    with_pet = channels == 2
    manifest = kit_dataset.read_manifest(dataset_dir, split)
    if manifest.empty:
        raise ValueError(f"{dataset_dir}: split {split!r} has no rows")
    if with_pet:
        from lungkit.data.petct_kit import absolute_pet_paths

        if "pet_path" not in manifest:
            raise ValueError(f"{dataset_dir} has no PET channel (no pet_path column): 2 input channels need a CT + "
                             "PET kit dataset (lungkit.data.petct_kit.prepare_petct_dataset)")
    if image_size is None:
        sizes = set(zip(manifest["height"].astype(int), manifest["width"].astype(int)))
        if len(sizes) != 1:
            raise ValueError(f"{dataset_dir} split {split!r} mixes slice sizes {sorted(sizes)}; pass image_size")
        output_hw = sizes.pop()
        if augment:
            if output_hw[0] != output_hw[1]:
                raise ValueError(f"augmentation makes square images; slices are {output_hw}, pass image_size")
    else:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive or None, got {image_size}")
        output_hw = (int(image_size), int(image_size))
    shuffle = split == "train" if shuffle is None else bool(shuffle)
    n_masks = 2 if with_lung else 1

    def resize(example: dict) -> dict:
        hu, masks = example["hu"], example["masks"]
        if image_size is not None:
            hu, masks = preprocess.resize_image(hu, output_hw), preprocess.resize_mask(masks, output_hw)
        hu.set_shape([*output_hw, 2 if with_pet else 1])
        masks.set_shape([*output_hw, n_masks])
        return {**example, "hu": hu, "masks": masks}

    if augment:
        from lungkit.augment import tf_augment_fn

        augment_fn = tf_augment_fn(output_hw[0], 0 if seed is None else seed)

        def spatial(example: dict, element_seed) -> dict:
            hu, masks = augment_fn(example["hu"], example["masks"], element_seed)
            return {**example, "hu": hu, "masks": masks}

    def finish(example: dict) -> tuple:
        hu = example["hu"][..., 0]
        if with_lung:
            image = preprocess_fn(hu, example["masks"][..., 1])
        else:
            image = preprocess_fn(hu)
        image = tf.cast(image, tf.float32)[..., tf.newaxis]
        if channels == 3:
            image = tf.repeat(image, 3, axis=-1)
        elif with_pet:
            image = tf.concat([image, tf.cast(preprocess.minmax(example["hu"][..., 1]), tf.float32)[..., None]],
                              axis=-1)
        mask = tf.cast(example["masks"][..., :1], tf.float32)
        return (image, mask, example["id"]) if include_ids else (image, mask)

    paths = tf.data.Dataset.from_tensor_slices(
        {
            "image": manifest["image_path"].astype(str).to_numpy(),
            "mask": manifest["mask_path"].astype(str).to_numpy(),
            "lung": manifest["lung_path"].astype(str).to_numpy(),
            "id": manifest["id"].astype(str).to_numpy(),
            **({"pet": np.array(absolute_pet_paths(manifest, dataset_dir))} if with_pet else {}),
        }
    )
    dataset = paths
    # Without a cache, shuffle the file names (cheap); with one, shuffle after it, or every epoch would replay the
    # first epoch's order. Both give the same permutation for the same seed.
    if cache is not False:
        dataset = dataset.map(lambda p: _decode(p, with_lung, with_pet), num_parallel_calls=num_parallel_calls)
        if not augment:
            dataset = dataset.map(lambda e: finish(resize(e)), num_parallel_calls=num_parallel_calls)
        dataset = dataset.cache("" if cache is True else str(cache))
    if shuffle:
        dataset = dataset.shuffle(len(manifest), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if augment:
        element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, element_seeds))
        if cache is False:
            dataset = dataset.map(
                lambda p, s: finish(spatial(_decode(p, with_lung, with_pet), s)), num_parallel_calls=num_parallel_calls
            )
        else:
            dataset = dataset.map(lambda e, s: finish(spatial(e, s)), num_parallel_calls=num_parallel_calls)
    elif cache is False:
        dataset = dataset.map(lambda p: finish(resize(_decode(p, with_lung, with_pet))), num_parallel_calls=num_parallel_calls)
    dataset = dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


#: nnU-Net forces a third of its training patches to contain foreground.
DEFAULT_FOREGROUND_FRACTION = 1.0 / 3.0
#: The rotation, zoom and intensity transforms of nnU-Net's 2-D training (its ``get_training_transforms``), each as
#: (probability per patch, range). Rotation is limited to +-30 degrees (paper 001's range) because quarter turns
#: already cover the rest of the circle. Intensities act on the model-ready patch: multiplicative brightness, contrast
#: about the patch mean (clipped to the patch's range), gamma on the patch rescaled to [0, 1], and Gaussian noise with
#: a standard deviation drawn as a fraction of the patch's own (nnU-Net draws it in z-score units; relative to the
#: patch it means the same for min-max inputs).
NNUNET_AUGMENTATION = {
    "rotation_degrees": (0.2, (-30.0, 30.0)),
    "zoom": (0.2, (0.7, 1.4)),
    "brightness": (0.15, (0.75, 1.25)),
    "contrast": (0.15, (0.75, 1.25)),
    "gamma": (0.3, (0.7, 1.5)),
    "noise_fraction": (0.1, (0.0, 0.1)),
}
#: A plan's values that leave a patch unchanged.
_IDENTITY = {"rotation_degrees": 0.0, "zoom": 1.0, "brightness": 1.0, "contrast": 1.0, "gamma": 1.0,
             "noise_fraction": 0.0}


def describe_nnunet_augmentation() -> str:
    """The transforms of :data:`NNUNET_AUGMENTATION` in words, for protocols."""
    def share(name):
        return f"p {NNUNET_AUGMENTATION[name][0]:g}"

    def span(name, prefix=""):
        low, high = NNUNET_AUGMENTATION[name][1]
        return f"{prefix}{low:g}-{high:g}"

    rotation = NNUNET_AUGMENTATION["rotation_degrees"][1][1]
    return (f"rotations ({share('rotation_degrees')}, +-{rotation:g} degrees) and zooms ({share('zoom')}, "
            f"{span('zoom', 'x')}) cut from the whole slice, brightness ({share('brightness')}, "
            f"{span('brightness', 'x')}), contrast ({share('contrast')}, {span('contrast', 'x')}), gamma "
            f"({share('gamma')}, {span('gamma')}) and Gaussian noise ({share('noise_fraction')}, sd up to "
            f"{NNUNET_AUGMENTATION['noise_fraction'][1][1]:g} of the patch's) as nnU-Net's 2-D training")


class PatchSampler:
    """Random square patches of whole preprocessed slices, a share of them centred near the tumour.

    nnU-Net's sampling: keep the slices at their pixel scale and train on patches the model's input size, forcing
    ``foreground_fraction`` of them to contain tumour (a random tumour pixel lands at a random place inside the
    patch, at least 1/8 of the side from its border), the rest anywhere. Without that, a nodule of 0.1 % of the
    pixels is seen so rarely that models learn to predict nothing. Optional flips and quarter turns (square
    patches only) are the spatial augmentation nnU-Net never goes without; ``rotations_zooms_intensity`` adds the
    rest of nnU-Net's 2-D transforms (:data:`NNUNET_AUGMENTATION`), applied by :func:`make_patch_dataset` (the numpy
    :meth:`sample` cuts the plan's window, turn and flip only).

    Args:
        images: ``(N, H, W, C)`` float32 model-ready slices (preprocessed over the whole slice).
        masks: ``(N, H, W)`` or ``(N, H, W, 1)`` 0/1 tumour masks.
        patch_size: side of the patches; at most the slice side.
        foreground_fraction: share of patches forced to contain tumour (slices without tumour are skipped for them).
        flips_and_turns: random horizontal / vertical flips and quarter turns.
        rotations_zooms_intensity: draw nnU-Net's rotations, zooms and intensity changes into the plan too (off: the
            plan holds identity values and the draw of windows, turns and flips is the same as without them).
        seed: seed of the draw; the same seed gives the same sequence of patches.

    Raises:
        ValueError: for mismatched shapes, a patch larger than the slices or a fraction outside [0, 1].
    """

    def __init__(self, images, masks, patch_size: int, foreground_fraction: float = DEFAULT_FOREGROUND_FRACTION,
                 flips_and_turns: bool = True, rotations_zooms_intensity: bool = False, seed: int = 0):
        images = np.asarray(images, np.float32)
        masks = np.asarray(masks)
        if masks.ndim == 4:
            masks = masks[..., 0]
        if images.ndim != 4 or masks.shape != images.shape[:3]:
            raise ValueError(f"images (N, H, W, C) and masks (N, H, W) must match, got {images.shape} and {masks.shape}")
        if not 1 <= int(patch_size) <= min(images.shape[1:3]):
            raise ValueError(f"patch_size {patch_size} must be between 1 and the slice side {images.shape[1:3]}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.images, self.masks = images, (masks > 0).astype(np.float32)
        self.patch_size = int(patch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.flips_and_turns = bool(flips_and_turns)
        self.rotations_zooms_intensity = bool(rotations_zooms_intensity)
        self.rng = np.random.default_rng(seed)
        # a stream of its own, so switching the extras on or off leaves the windows, turns and flips as they were
        self.augmentation_rng = np.random.default_rng([int(seed), 1])
        self.foreground = [np.argwhere(m > 0) for m in self.masks]
        self.with_tumour = np.flatnonzero([len(f) > 0 for f in self.foreground])

    def _corner(self, centre: int, side: int) -> int:
        margin = max(1, self.patch_size // 8)
        offset = int(self.rng.integers(margin, max(margin + 1, self.patch_size - margin)))
        return int(np.clip(centre - offset, 0, side - self.patch_size))

    def _window(self, index: int, near_tumour: bool) -> tuple[int, int]:
        height, width = self.images.shape[1:3]
        if near_tumour:
            cy, cx = self.foreground[index][self.rng.integers(len(self.foreground[index]))]
            return self._corner(int(cy), height), self._corner(int(cx), width)
        return (int(self.rng.integers(0, height - self.patch_size + 1)),
                int(self.rng.integers(0, width - self.patch_size + 1)))

    def _patch(self, index: int, near_tumour: bool) -> tuple[np.ndarray, np.ndarray]:
        y0, x0 = self._window(index, near_tumour)
        window = (slice(y0, y0 + self.patch_size), slice(x0, x0 + self.patch_size))
        return self.images[index][window], self.masks[index][window]

    def plan(self, count: int) -> dict[str, np.ndarray]:
        """The next ``count`` patches as a plan: slice ``index``, top-left corner ``y0``/``x0``, quarter ``turns``
        and ``flip`` (int32 arrays), and the float32 parameters of :data:`NNUNET_AUGMENTATION` (identity values
        unless ``rotations_zooms_intensity``) with an int32 ``noise_seed``. Drawing the plan is cheap numpy; cutting
        the patches can then run inside tf.data (see :func:`make_patch_dataset`) instead of a Python generator."""
        rows = []
        for _ in range(int(count)):
            if len(self.with_tumour) and self.rng.random() < self.foreground_fraction:
                index = int(self.rng.choice(self.with_tumour))
                y0, x0 = self._window(index, near_tumour=True)
            else:
                index = int(self.rng.integers(len(self.images)))
                y0, x0 = self._window(index, near_tumour=False)
            turns, flip = 0, 0
            if self.flips_and_turns:
                turns, flip = int(self.rng.integers(4)), int(self.rng.random() < 0.5)
            rows.append((index, y0, x0, turns, flip))
        columns = np.asarray(rows, np.int32).reshape(-1, 5)
        plan = {name: columns[:, k] for k, name in enumerate(("index", "y0", "x0", "turns", "flip"))}
        count = len(rows)
        for name, (probability, (low, high)) in NNUNET_AUGMENTATION.items():
            values = np.full(count, _IDENTITY[name], np.float32)
            if self.rotations_zooms_intensity:
                applied = self.augmentation_rng.random(count) < probability
                drawn = self.augmentation_rng.uniform(low, high, count).astype(np.float32)
                values = np.where(applied, drawn, values).astype(np.float32)
            plan[name] = values
        plan["noise_seed"] = (self.augmentation_rng.integers(0, 2**31 - 1, count, dtype=np.int64).astype(np.int32)
                              if self.rotations_zooms_intensity else np.zeros(count, np.int32))
        return plan

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One ``(patch (P, P, C), mask (P, P, 1))`` pair (the next row of :meth:`plan`, cut in numpy)."""
        row = {name: values[0] for name, values in self.plan(1).items()}
        window = (slice(row["y0"], row["y0"] + self.patch_size), slice(row["x0"], row["x0"] + self.patch_size))
        patch, mask = self.images[row["index"]][window], self.masks[row["index"]][window]
        patch, mask = np.rot90(patch, row["turns"]), np.rot90(mask, row["turns"])
        if row["flip"]:
            patch, mask = patch[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(patch), np.ascontiguousarray(mask)[..., None]

    def batches(self, batch_size: int):
        """Endless ``(images (B, P, P, C), masks (B, P, P, 1))`` batches."""
        while True:
            pairs = [self.sample() for _ in range(int(batch_size))]
            yield np.stack([p for p, _ in pairs]), np.stack([m for _, m in pairs])

    def fixed_set(self, per_slice: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Validation patches drawn once, so every epoch is scored on the same ones: per slice, the first near its
        tumour (when it has one), the others anywhere; no flips."""
        pairs = [
            self._patch(index, near_tumour=(k == 0 and len(self.foreground[index]) > 0))
            for index in range(len(self.images))
            for k in range(per_slice)
        ]
        return np.stack([p for p, _ in pairs]), np.stack([m for _, m in pairs])[..., None]


def make_patch_dataset(sampler: PatchSampler, batch_size: int, batches: int) -> tf.data.Dataset:
    """A tf.data pipeline of ``batches`` batches of the sampler's patches (then the same ones again, so a fit never
    runs dry): the plan is drawn up front in numpy (:meth:`PatchSampler.plan`) and the patches are cut, turned and
    flipped by tf.data's parallel map from the slices held as one tensor. A Python generator here cost about 40% of
    a small U-Net's step time on 2 CPU cores (the generator and the training loop share the GIL).

    Args:
        sampler: the slices and the draw.
        batch_size: patches per batch.
        batches: batches to plan: the run's optimizer steps (epochs x steps per epoch).
    """
    size = sampler.patch_size
    plan = sampler.plan(int(batches) * int(batch_size))
    images = tf.convert_to_tensor(sampler.images)
    masks = tf.convert_to_tensor(sampler.masks[..., None])

    def window(row):
        begin = tf.stack([row["index"], row["y0"], row["x0"], 0])
        return tf.slice(images, begin, [1, size, size, -1])[0], tf.slice(masks, begin, [1, size, size, 1])[0]

    def cut(row):
        rotated_or_zoomed = tf.logical_or(tf.not_equal(row["rotation_degrees"], 0.0), tf.not_equal(row["zoom"], 1.0))
        patch, mask = tf.cond(rotated_or_zoomed, lambda: _rotated_zoomed_window(images, masks, row, size),
                              lambda: window(row))
        patch, mask = tf.image.rot90(patch, row["turns"]), tf.image.rot90(mask, row["turns"])
        flip = tf.cast(row["flip"], tf.bool)
        patch = tf.cond(flip, lambda: tf.reverse(patch, [1]), lambda: patch)
        mask = tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask)
        patch = _intensity_transforms(patch, row)
        return tf.ensure_shape(patch, (size, size, images.shape[-1])), tf.ensure_shape(mask, (size, size, 1))

    dataset = tf.data.Dataset.from_tensor_slices(plan).map(cut, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(int(batch_size)).repeat().prefetch(2)


def _rotated_zoomed_window(images: tf.Tensor, masks: tf.Tensor, row: dict, size: int):
    """The plan's window rotated by ``rotation_degrees`` and zoomed by ``zoom`` about its centre, sampled from the
    whole slice (so a rotated corner shows the slice's own pixels, not padding; beyond the slice's border the edge
    pixel repeats). Image bilinear; mask bilinear then thresholded at 0.5, so it stays 0/1."""
    angle = row["rotation_degrees"] * (np.pi / 180.0)
    step = 1.0 / row["zoom"]  # input pixels per output pixel: a zoom above 1 enlarges the content
    centre = (size - 1) / 2.0
    cos, sin = step * tf.cos(angle), step * tf.sin(angle)
    centre_x = tf.cast(row["x0"], tf.float32) + centre
    centre_y = tf.cast(row["y0"], tf.float32) + centre
    # output (x, y) -> input (cos*(x-c) - sin*(y-c) + cx, sin*(x-c) + cos*(y-c) + cy), as ImageProjectiveTransform
    # wants it: [a0, a1, a2, b0, b1, b2, 0, 0] with x_in = a0 x + a1 y + a2, y_in = b0 x + b1 y + b2
    transform = tf.stack([cos, -sin, centre_x - cos * centre + sin * centre,
                          sin, cos, centre_y - sin * centre - cos * centre, 0.0, 0.0])[None]

    def warp(stack):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=stack, transforms=transform, output_shape=tf.constant([size, size]), fill_value=0.0,
            interpolation="BILINEAR", fill_mode="NEAREST")[0]

    index = row["index"]
    patch = warp(images[index][None])
    mask = tf.cast(warp(masks[index][None]) >= 0.5, tf.float32)
    return patch, mask


def _intensity_transforms(patch: tf.Tensor, row: dict) -> tf.Tensor:
    """The plan's brightness, contrast, gamma and noise on a model-ready patch; a transform at its identity value is
    skipped, so an unaugmented patch stays bit-identical."""
    low = tf.reduce_min(patch, axis=[0, 1], keepdims=True) * row["brightness"]
    high = tf.reduce_max(patch, axis=[0, 1], keepdims=True) * row["brightness"]
    low, high = tf.minimum(low, high), tf.maximum(low, high)
    span = tf.maximum(high - low, 1e-6)

    def contrast(x):
        mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
        return tf.clip_by_value((x - mean) * row["contrast"] + mean, low, high)

    def noise(x):
        spread = tf.math.reduce_std(x, axis=[0, 1], keepdims=True) * row["noise_fraction"]  # per channel
        return x + tf.random.stateless_normal(tf.shape(x), seed=tf.stack([row["noise_seed"], 0])) * spread

    patch = tf.cond(tf.not_equal(row["brightness"], 1.0), lambda: patch * row["brightness"], lambda: patch)
    patch = tf.cond(tf.not_equal(row["contrast"], 1.0), lambda: contrast(patch), lambda: patch)
    patch = tf.cond(tf.not_equal(row["gamma"], 1.0),
                    lambda: tf.pow(tf.clip_by_value((patch - low) / span, 0.0, 1.0), row["gamma"]) * span + low,
                    lambda: patch)
    return tf.cond(tf.not_equal(row["noise_fraction"], 0.0), lambda: noise(patch), lambda: patch)


def load_split_arrays(
    dataset_dir: str | Path,
    split: str,
    preprocessing: str = "hu_window_zscore",
    image_size: int | None = 256,
    channels: int = 1,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A whole split as numpy arrays, in manifest order, for evaluation.

    Args:
        dataset_dir: a finished kit dataset.
        split: ``train``, ``val`` or ``test``.
        preprocessing: name in :data:`lungkit.preprocess.PREPROCESSING`.
        image_size: output side; None keeps the stored size.
        channels: 1, 2 (CT + PET) or 3, as :func:`make_dataset`.
        batch_size: decoding batch size (memory only; results do not depend on it).

    Returns:
        ``(images, masks, manifest)``: float32 ``[N, S, S, channels]``, float32 ``[N, S, S, 1]`` in {0, 1}, and the
        split's manifest (row ``i`` describes ``images[i]``).

    Raises:
        ValueError: as :func:`make_dataset`.
    """
    manifest = kit_dataset.read_manifest(dataset_dir, split)
    dataset = make_dataset(
        dataset_dir,
        split,
        preprocessing=preprocessing,
        image_size=image_size,
        channels=channels,
        batch_size=batch_size,
        shuffle=False,
        include_ids=True,
    )
    images, masks, ids = [], [], []
    for image_batch, mask_batch, id_batch in dataset.as_numpy_iterator():
        images.append(image_batch)
        masks.append(mask_batch)
        ids.extend(i.decode() for i in id_batch)
    if ids != manifest["id"].tolist():
        raise RuntimeError(f"{dataset_dir}: pipeline order differs from the manifest's for split {split!r}")
    return np.concatenate(images), np.concatenate(masks), manifest
