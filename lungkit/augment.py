"""Paper 001's training augmentation, with albumentations, on HU slices and their masks.

Paper 001 (Swin-UNet on the Lung-RADS data) says: "rotation (randomly rotating within ±30 degrees), horizontal and
vertical flips. Elastic transformation ... brightness and contrast adjustments", about 3,400 training samples in
the end, "all images are resized to 256×256 pixels". It gives no probabilities or strengths; ours are the
defaults of :func:`build_train_augmentation` and are written next to every augmented dataset.

How the pieces act on CT (the paper augmented 8-bit PNGs; we keep HU):

- The image is float32 HU throughout. Geometric transforms fill the uncovered corners with air (-1000 HU) and
  the masks with 0; masks use nearest-neighbour interpolation, so they stay binary.
- Brightness / contrast (:class:`HUBrightnessContrast`) is albumentations' ``RandomBrightnessContrast`` formula,
  ``x * alpha + beta``, applied on the lung window's unit scale (``(HU + 1000) / 1400``) and mapped back to HU, without
  the clip to [0, 1] albumentations does for float images: a brightness step of 0.1 is a 140 HU shift, contrast
  scales about -1000 HU (air stays air), and HU outside the window (bone, padding) are moved, not cut.
- Resize comes first, so the elastic field's strength and smoothness are in target pixels whatever the source
  size (the paper resizes last; with nearest-neighbour masks the order only changes boundary pixels).

Split first, augment after: :func:`expand_training_split` augments the train rows of an already split dataset and
only resizes val and test.

Seeding: ``A.Compose(seed=s)`` in albumentations 2.0.8 gives every transform the *same* seed, so two transforms that
draw alike (horizontal and vertical flip) always fire together. :func:`seed_augmentation` gives each transform its
own seed derived from ``s`` instead, and every call made here seeds the pipeline explicitly, so a result depends
only on (input, seed): reruns, resumed runs and parallel tf.data maps give identical images.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
from albumentations.core.pydantic import SymmetricRangeType
from albumentations.core.transforms_interface import BaseTransformInitSchema

from lungkit import preprocess
from lungkit.data import export, kit_dataset
from lungkit.data.kit_dataset import COMPLETE_MARKER, IMAGE_DIR, LUNG_DIR, MANIFEST_COLUMNS, MANIFEST_NAME, MASK_DIR
from lungkit.progress import progress_bar

#: HU put where a rotation or elastic warp uncovers the image: air.
AIR_HU = -1000.0
#: Defaults are set for 256-px images; the elastic field is scaled with the image side (see build_train_augmentation).
REFERENCE_SIZE = 256
DEFAULT_SETTINGS = {
    "rotate_limit": 30.0,  # paper 001: "within ±30 degrees"
    "p_rotate": 0.5,
    "p_hflip": 0.5,
    "p_vflip": 0.5,
    # RMS displacement about 2 px at 256 px, smooth over about 12 px: a gentle non-rigid deformation.
    "elastic_alpha": 300.0,
    "elastic_sigma": 12.0,
    "p_elastic": 0.3,
    # albumentations' defaults: ±0.2 of the lung window (±280 HU) and contrast x[0.8, 1.2] about air.
    "brightness_limit": 0.2,
    "contrast_limit": 0.2,
    "p_brightness_contrast": 0.5,
}
SETTINGS_NAME = "augmentation.json"
_UINT64 = (1 << 64) - 1


class HUBrightnessContrast(A.RandomBrightnessContrast):
    """``RandomBrightnessContrast`` for HU images: acts on the window's unit scale, never clips.

    Parameters are drawn exactly as albumentations draws them for float images (``alpha = 1 + U(contrast_limit)``,
    ``beta = U(brightness_limit)``); the result is ``((HU - low) / (high - low) * alpha + beta) * (high - low) + low``.

    Args:
        brightness_limit: range of ``beta``, in units of the window width.
        contrast_limit: range of ``alpha - 1``.
        low: HU mapped to 0 (the pivot of the contrast change).
        high: HU mapped to 1.
        p: probability of applying.
    """

    class InitSchema(BaseTransformInitSchema):
        brightness_limit: SymmetricRangeType
        contrast_limit: SymmetricRangeType
        low: float
        high: float

    def __init__(
        self,
        brightness_limit: tuple[float, float] | float = (-0.2, 0.2),
        contrast_limit: tuple[float, float] | float = (-0.2, 0.2),
        low: float = preprocess.HU_WINDOW_LOW,
        high: float = preprocess.HU_WINDOW_HIGH,
        p: float = 0.5,
    ):
        # brightness_by_max: beta is drawn as a fraction of a float image's maximum, 1.0 = the window width.
        super().__init__(brightness_limit=brightness_limit, contrast_limit=contrast_limit, brightness_by_max=True, p=p)
        if not low < high:
            raise ValueError(f"HUBrightnessContrast: low ({low}) must be below high ({high})")
        self.low = float(low)
        self.high = float(high)

    def apply(self, img: np.ndarray, alpha: float, beta: float, **params) -> np.ndarray:
        width = self.high - self.low
        return ((img - self.low) * alpha + (beta * width + self.low)).astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_limit", "contrast_limit", "low", "high")


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed from ``seed`` and integer keys (row number, transform index...), via numpy's SeedSequence.

    Args:
        seed: base seed (any int; taken modulo 2**64).
        *keys: further ints (taken modulo 2**64).

    Returns:
        An int in [0, 2**32), different for different keys, identical on every machine.
    """
    entropy = [int(seed) & _UINT64] + [int(key) & _UINT64 for key in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def seed_augmentation(compose: A.Compose, seed: int) -> A.Compose:
    """Seed a Compose and give each of its transforms its own derived seed (see the module note).

    Args:
        compose: the pipeline, changed in place.
        seed: base seed.

    Returns:
        The same ``compose``.
    """
    compose.set_random_seed(int(seed) & 0xFFFFFFFF)
    for index, transform in enumerate(compose.transforms):
        transform.set_random_seed(derive_seed(seed, index))
    return compose


def build_train_augmentation(image_size: int = 256, seed: int = 0, **settings) -> A.Compose:
    """Paper 001's augmentation: resize, flips, rotation ±30°, elastic warp, HU brightness / contrast.

    Args:
        image_size: side of the square output in pixels (paper 001: 256).
        seed: seed of the pipeline; calls made through :func:`apply_augmentation` reseed per call.
        **settings: override entries of :data:`DEFAULT_SETTINGS` (probabilities ``p_*``, ``rotate_limit``,
            ``elastic_alpha``, ``elastic_sigma``, ``brightness_limit``, ``contrast_limit``). ``elastic_alpha`` and
            ``elastic_sigma`` are given for 256 px and scaled with ``image_size`` (sigma linearly, alpha with the
            square), so a warp moves the anatomy by the same fraction of the image at any size.

    Returns:
        An ``A.Compose`` taking ``image`` (float32 HU, H x W) and ``mask`` (uint8, H x W or H x W x K).

    Raises:
        ValueError: for an unknown setting or a non-positive ``image_size``.
    """
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown augmentation settings {unknown}; expected some of {sorted(DEFAULT_SETTINGS)}")
    if int(image_size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    s = {**DEFAULT_SETTINGS, **settings}
    scale = int(image_size) / REFERENCE_SIZE
    transforms = [
        A.Resize(
            image_size,
            image_size,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST_EXACT,  # preprocess.resize_mask's pixels (but at exact ties)
            p=1.0,
        ),
        A.HorizontalFlip(p=s["p_hflip"]),
        A.VerticalFlip(p=s["p_vflip"]),
        A.Rotate(
            limit=s["rotate_limit"],
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=AIR_HU,
            fill_mask=0,
            p=s["p_rotate"],
        ),
        A.ElasticTransform(
            alpha=s["elastic_alpha"] * scale**2,
            sigma=s["elastic_sigma"] * scale,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=AIR_HU,
            fill_mask=0,
            p=s["p_elastic"],
        ),
        HUBrightnessContrast(
            brightness_limit=s["brightness_limit"], contrast_limit=s["contrast_limit"], p=s["p_brightness_contrast"]
        ),
    ]
    return seed_augmentation(A.Compose(transforms, seed=int(seed) & 0xFFFFFFFF), seed)


def apply_augmentation(
    compose: A.Compose, hu: np.ndarray, mask: np.ndarray, seed: int, lung_mask: np.ndarray | None = None,
    pet: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Augment one slice and its masks jointly, reproducibly.

    Args:
        compose: from :func:`build_train_augmentation` (reseeded here; not thread-safe, use one per thread).
        hu: float HU slice, H x W.
        mask: tumour mask, H x W (or H x W x K label channels), values kept as they are (0/1 stays 0/1).
        seed: seed of this one call; the same (slice, seed) always gives the same output.
        lung_mask: optional lung mask, H x W, warped with the tumour mask.
        pet: optional PET SUV slice on the CT's grid, H x W (paper 000's second channel): moved by exactly the CT's
            geometry (flips, rotation, elastic warp, resize) with the masks' nearest-neighbour sampling, filled with
            SUV 0 outside the slice, and never given the CT's HU brightness / contrast change. Nearest sampling moves
            no SUV value to a new one; PET's 4-5 mm voxels are several CT pixels wide, so it costs no resolution.

    Returns:
        ``(hu, mask, lung_mask)``: float32 HU, masks in their input dtype; ``lung_mask`` is None when not given.
        With ``pet``: ``(hu, mask, lung_mask, pet)``, PET float32.

    Raises:
        ValueError: if shapes disagree or the slice (or the PET) is not finite.
    """
    hu = np.asarray(hu, dtype=np.float32)
    mask = np.asarray(mask)
    if hu.ndim != 2 or mask.shape[:2] != hu.shape:
        raise ValueError(f"expected an H x W slice and a mask of the same H x W, got {hu.shape} and {mask.shape}")
    if not np.all(np.isfinite(hu)):
        raise ValueError("slice contains NaN or infinite HU; cannot augment it")
    channels = [mask.reshape(*hu.shape, -1)]
    if lung_mask is not None:
        lung_mask = np.asarray(lung_mask)
        if lung_mask.shape != hu.shape:
            raise ValueError(f"lung mask shape {lung_mask.shape} differs from the slice's {hu.shape}")
        channels.append(lung_mask.astype(mask.dtype)[..., None])
    stacked = np.concatenate(channels, axis=-1)
    stacked_dtype = stacked.dtype
    # OpenCV warps uint8 and float masks, not bool or int64: carry labels as uint8 (so labels must be 0..255).
    work_mask = stacked.astype(np.uint8) if stacked_dtype != np.uint8 else stacked
    targets = {}
    if pet is not None:
        pet = np.asarray(pet, dtype=np.float32)
        if pet.shape != hu.shape:
            raise ValueError(f"PET shape {pet.shape} differs from the slice's {hu.shape}")
        if not np.all(np.isfinite(pet)):
            raise ValueError("PET slice contains NaN or infinite SUV; cannot augment it")
        # a mask-type target: the same geometry as the labels, nearest sampling, fill 0, no intensity transform
        if "pet" not in compose.additional_targets:
            compose.add_targets({"pet": "mask"})
        targets["pet"] = np.ascontiguousarray(pet)
    seed_augmentation(compose, seed)
    out = compose(image=hu, mask=np.ascontiguousarray(work_mask[..., 0] if work_mask.shape[-1] == 1 else work_mask),
                  **targets)
    out_mask = out["mask"].reshape(*out["image"].shape[:2], -1).astype(stacked_dtype)
    n_tumour = channels[0].shape[-1]
    tumour = out_mask[..., :n_tumour]
    tumour = tumour[..., 0] if mask.ndim == 2 else tumour
    lung = out_mask[..., n_tumour] if lung_mask is not None else None
    if pet is not None:
        return out["image"].astype(np.float32), tumour, lung, np.asarray(out["pet"], np.float32)
    return out["image"].astype(np.float32), tumour, lung


def tf_augment_fn(image_size: int = 256, seed: int = 0, **settings):
    """Paper 001's augmentation as a function for ``tf.data.Dataset.map`` (via ``tf.numpy_function``).

    Args:
        image_size: output side in pixels.
        seed: base seed.
        **settings: see :func:`build_train_augmentation`.

    Returns:
        ``augment(image, mask, element_seed=None) -> (image, mask)``. ``image``: float32 HU, (H, W), (H, W, 1), or
        (H, W, 2) with PET SUV in channel 1 (moved with the CT's geometry, never its intensity change; see
        :func:`apply_augmentation`); ``mask``: (H, W) or (H, W, K), any dtype, all K channels warped alike (stack the
        lung mask there when the preprocessing needs it). Outputs keep rank and dtype, with H = W = ``image_size``
        and static shapes set.
        ``element_seed`` (an int64 scalar tensor, e.g. from ``tf.data.Dataset.random``) makes each call
        depend only on its inputs, which keeps a parallel map deterministic; without it calls draw seeds from a
        counter in call order, deterministic only when the map runs sequentially.
    """
    import tensorflow as tf  # the numpy side of this module does not need TensorFlow

    build_train_augmentation(image_size, seed, **settings)  # fail now on bad settings, not inside tf.data
    per_thread = threading.local()
    counter = {"next": 0}
    counter_lock = threading.Lock()

    def augment_numpy(image: np.ndarray, mask: np.ndarray, call_seed: int):
        if not hasattr(per_thread, "compose"):
            per_thread.compose = build_train_augmentation(image_size, seed, **settings)
        hu = image[..., 0] if image.ndim == 3 else image
        if image.ndim == 3 and image.shape[-1] == 2:  # CT + PET
            out_hu, out_mask, _, out_pet = apply_augmentation(per_thread.compose, hu, mask, call_seed,
                                                              pet=image[..., 1])
            return np.stack([out_hu, out_pet], axis=-1).astype(np.float32), out_mask.astype(mask.dtype)
        out_image, out_mask, _ = apply_augmentation(per_thread.compose, hu, mask, call_seed)
        out_image = out_image[..., None] if image.ndim == 3 else out_image
        return out_image.astype(np.float32), out_mask.astype(mask.dtype)

    def augment_with_element_seed(image, mask, element_seed):
        return augment_numpy(image, mask, derive_seed(seed, int(element_seed)))

    def augment_in_call_order(image, mask):
        with counter_lock:
            call_seed = derive_seed(seed, counter["next"])
            counter["next"] += 1
        return augment_numpy(image, mask, call_seed)

    def augment(image, mask, element_seed=None):
        image = tf.convert_to_tensor(image, tf.float32)
        mask = tf.convert_to_tensor(mask)
        if element_seed is None:
            out_image, out_mask = tf.numpy_function(
                augment_in_call_order, [image, mask], [tf.float32, mask.dtype], stateful=True
            )
        else:
            out_image, out_mask = tf.numpy_function(
                augment_with_element_seed,
                [image, mask, tf.cast(element_seed, tf.int64)],
                [tf.float32, mask.dtype],
                stateful=False,
            )
        out_image.set_shape([image_size, image_size] + ([image.shape[-1]] if image.shape.rank == 3 else []))
        out_mask.set_shape([image_size, image_size] + ([mask.shape[-1]] if mask.shape.rank == 3 else []))
        return out_image, out_mask

    return augment


def _read_png(path: str, dtype: type, what: str, row_id: str) -> np.ndarray:
    try:
        array = export.read_png(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"row {row_id!r}: cannot read its {what}: {error}") from None
    if array.dtype != dtype or array.ndim != 2:
        raise ValueError(
            f"row {row_id!r}: {what} PNG {path} is {array.dtype} with shape {array.shape}; "
            f"expected a single-channel {np.dtype(dtype).name} PNG (kit dataset format)"
        )
    return array


def read_kit_slice(row) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One kit-dataset manifest row -> ``(HU float32, tumour mask, lung mask)``, the masks uint8 in {0, 1}.

    Raises:
        FileNotFoundError / ValueError: naming the row, for a missing PNG or one of the wrong type or size.
    """
    stored = _read_png(row.image_path, np.uint16, "image", row.id)
    tumour = _read_png(row.mask_path, np.uint8, "mask", row.id)
    lung = _read_png(row.lung_path, np.uint8, "lung mask", row.id)
    if not stored.shape == tumour.shape == lung.shape:
        raise ValueError(
            f"row {row.id!r}: image {stored.shape}, mask {tumour.shape} and lung mask {lung.shape} differ in size"
        )
    if stored.shape != (int(row.height), int(row.width)):
        raise ValueError(
            f"row {row.id!r}: image {row.image_path} is {stored.shape}, the manifest says {(row.height, row.width)}"
        )
    return kit_dataset.png16_to_hu(stored), (tumour > 0).astype(np.uint8), (lung > 0).astype(np.uint8)


def _plan_rows(source: pd.DataFrame, target_count: int, seed: int) -> pd.DataFrame:
    """Output rows: every source row (resized), then augmented copies of train rows cycling through them."""
    train = source[source["split"] == "train"]
    n_train = len(train)
    if n_train == 0:
        raise ValueError("the dataset has no train rows to augment")
    if target_count < n_train:
        raise ValueError(f"target_count ({target_count}) is below the {n_train} original train rows it must keep")
    originals = source.assign(augmented_from="", augmentation_seed=pd.NA, copy_index=-1)
    copies = []
    for copy_index in range(target_count - n_train):
        original = train.iloc[copy_index % n_train]
        # The copy's seed depends only on (seed, copy_index), not on target_count: a larger target keeps the
        # copies of a smaller one.
        copies.append(
            {
                **original.to_dict(),
                "id": f"{original['id']}_aug{copy_index // n_train + 1:03d}",
                "augmented_from": original["id"],
                "augmentation_seed": derive_seed(seed, copy_index),
                "copy_index": copy_index,
            }
        )
    plan = originals.reset_index(drop=True)
    if copies:
        plan = pd.concat([plan, pd.DataFrame(copies, columns=originals.columns)], ignore_index=True)
    duplicated = plan["id"][plan["id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"augmented ids collide with existing ids: {sorted(duplicated)[:5]}")
    plan["augmentation_seed"] = plan["augmentation_seed"].astype("Int64")
    return plan


def expand_training_split(
    dataset_dir: str | Path, out_dir: str | Path, target_count: int, image_size: int = 256, seed: int = 0
) -> pd.DataFrame:
    """Write a new kit dataset: train expanded by augmentation to ``target_count`` rows, val / test only resized.

    Train keeps every original slice (resized) and gains augmented copies, cycling through the originals so each
    gets the same number of copies (±1). Val and test are resized and never augmented: augmentation comes after
    the split, so no copy of a slice crosses splits. Tumour area, diameter and box are recomputed on the new
    masks; ``pixel_spacing_mm`` is scaled by the resize factor (geometric mean of the two axes, which keeps the
    equivalent diameter in mm exact).

    Atomic and resumable like the conversion: files are written under temporary names and renamed, the manifest
    is written after all images and ``COMPLETE`` last; rerunning after an interruption redoes only missing files.
    Every copy depends only on (original, ``seed``, copy number), so the same call gives byte-identical files.

    Args:
        dataset_dir: source kit dataset (finished conversion).
        out_dir: new folder; must not be ``dataset_dir``.
        target_count: train rows wanted (paper 001: about 3,400); at least the original train count.
        image_size: side of every output slice (paper 001: 256).
        seed: base seed.

    Returns:
        The new manifest (as :func:`read_augmented_manifest` returns it), with the extra columns
        ``augmented_from`` (original id; empty for originals) and ``augmentation_seed`` (empty for originals).

    Raises:
        FileNotFoundError: if the source is missing or unfinished, or a PNG it lists is missing.
        ValueError: for a bad ``target_count``, a source without train rows, or an ``out_dir`` holding an
            augmentation made with other settings or another source.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if out_dir.resolve() == dataset_dir.resolve():
        raise ValueError(f"out_dir must differ from dataset_dir ({dataset_dir}); augmentation writes a new dataset")
    source = kit_dataset.read_manifest(dataset_dir)
    target_count, image_size = int(target_count), int(image_size)
    settings = {
        "source_fingerprint": kit_dataset.manifest_fingerprint(dataset_dir),
        "target_count": target_count,
        "image_size": image_size,
        "seed": int(seed),
        "augmentation": DEFAULT_SETTINGS,
        "source_dir": str(dataset_dir.resolve()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path = out_dir / SETTINGS_NAME
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        differing = sorted(k for k in settings if k != "source_dir" and previous.get(k) != settings[k])
        if differing:
            raise ValueError(
                f"{out_dir} holds an augmentation made with other {differing} "
                f"({ {k: previous.get(k) for k in differing} }); choose another out_dir or delete this one"
            )
        if kit_dataset.is_complete(out_dir):
            return read_augmented_manifest(out_dir)
    elif (out_dir / MANIFEST_NAME).exists():
        raise ValueError(f"{out_dir} already holds a kit dataset that is not an augmentation output; choose another")
    else:
        export.write_text_atomic(settings_path, json.dumps(settings, indent=2, sort_keys=True) + "\n")

    plan = _plan_rows(source, target_count, seed)
    for folder in (IMAGE_DIR, MASK_DIR, LUNG_DIR):
        (out_dir / folder).mkdir(exist_ok=True)
        for stale in (out_dir / folder).glob(".*.tmp"):  # left by an interrupted run
            stale.unlink()
    compose = build_train_augmentation(image_size, seed)

    records = []
    for row in progress_bar(plan.itertuples(index=False), total=len(plan), desc="augment", unit="slice"):
        relative = {folder: f"{folder}/{row.id}.png" for folder in (IMAGE_DIR, MASK_DIR, LUNG_DIR)}
        targets = {folder: out_dir / path for folder, path in relative.items()}
        if all(path.is_file() for path in targets.values()):
            tumour = _read_png(targets[MASK_DIR], np.uint8, "mask", row.id)
        else:
            hu, tumour, lung = read_kit_slice(row)
            if row.copy_index >= 0:
                hu, tumour, lung = apply_augmentation(compose, hu, tumour, int(row.augmentation_seed), lung)
            else:
                hu = preprocess.resize_image(hu, image_size)
                tumour, lung = preprocess.resize_mask(tumour, image_size), preprocess.resize_mask(lung, image_size)
            tumour = tumour.astype(np.uint8) * 255
            export.write_png(kit_dataset.hu_to_png16(hu), targets[IMAGE_DIR])
            export.write_png(lung.astype(np.uint8) * 255, targets[LUNG_DIR])
            export.write_png(tumour, targets[MASK_DIR])
        spacing = float(row.pixel_spacing_mm) * float(np.sqrt(row.height * row.width)) / image_size
        records.append(
            {
                **row._asdict(),
                "height": image_size,
                "width": image_size,
                "pixel_spacing_mm": spacing,
                **export.tumour_statistics(tumour, spacing),
                "image_path": relative[IMAGE_DIR],
                "mask_path": relative[MASK_DIR],
                "lung_path": relative[LUNG_DIR],
            }
        )
    manifest = pd.DataFrame(records).drop(columns="copy_index")
    manifest["augmentation_seed"] = manifest["augmentation_seed"].astype("Int64")
    augmentation_columns = ["augmented_from", "augmentation_seed"]
    extra = [c for c in manifest.columns if c not in MANIFEST_COLUMNS + augmentation_columns]
    manifest = manifest[MANIFEST_COLUMNS + extra + augmentation_columns]
    temporary = out_dir / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
    manifest.to_csv(temporary, index=False)
    os.replace(temporary, out_dir / MANIFEST_NAME)
    export.write_text_atomic(out_dir / COMPLETE_MARKER, "complete\n")
    return read_augmented_manifest(out_dir)


def read_augmented_manifest(dataset_dir: str | Path, split: str | None = None) -> pd.DataFrame:
    """:func:`lungkit.data.kit_dataset.read_manifest` plus typed augmentation columns.

    Returns:
        The manifest with ``augmented_from`` as str ("" for originals) and ``augmentation_seed`` as nullable
        ``Int64`` (missing for originals); both columns are added empty when the dataset was never augmented.
    """
    manifest = kit_dataset.read_manifest(dataset_dir, split)
    if "augmented_from" in manifest.columns:
        # Re-read as text: ids such as "001" must not become numbers.
        raw = pd.read_csv(Path(dataset_dir) / MANIFEST_NAME, dtype=str, keep_default_na=False)
        if split is not None:
            raw = raw[raw["split"] == split]
        manifest["augmented_from"] = raw["augmented_from"].to_numpy()
    else:
        manifest["augmented_from"] = ""
    seeds = manifest["augmentation_seed"] if "augmentation_seed" in manifest.columns else pd.NA
    manifest["augmentation_seed"] = pd.array(pd.Series(seeds, index=manifest.index), dtype="Int64")
    return manifest


