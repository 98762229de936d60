"""The one data call every notebook makes: get the Lung-RADS kit dataset of a run, building it when needed.

``prepare_lungrads_dataset(data_dir, run_dir, profile)`` is idempotent: the first notebook that runs builds
``<run_dir>/dataset/`` (from the real pickles in ``data_dir``, or from phantom pickles written to
``<run_dir>/phantom/`` when ``data_dir`` is empty); every later call returns the finished folder at once. So a
student can open any notebook first.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from lungkit.data.export import DATASET_INFO_NAME, convert_lungrads_to_kit
from lungkit.data.kit_dataset import is_complete
from lungkit.data.kit_dataset import manifest_fingerprint as dataset_fingerprint  # re-export for callers
from lungkit.data.lungrads import LUNGRADS_FILE_NAMES, find_lungrads_pickles
from lungkit.data.phantom import phantom_pixel_spacing_mm, write_phantom_pickles
from lungkit.data.sources import DataSource, SourceError, describe_source
from lungkit.data.splits import (
    LUNGRADS_SPLIT_DESCRIPTION,
    assign_patient_splits,
    assign_validation_split,
    describe_patient_split,
)
from lungkit.profiles import get_profile

PHANTOM_DIR = "phantom"
DATASET_DIR = "dataset"
#: Neighbouring rows per validation block (see :mod:`lungkit.data.splits`).
VALIDATION_BLOCK_SIZE = 4
_PHANTOM_RECORD = "phantom.json"


def _phantom_pickles(phantom_dir: Path, n_train: int, n_test: int, image_size: int, seed: int) -> dict[str, Path]:
    """Phantom pickles in ``phantom_dir``, written unless the same ones are already there."""
    wanted = {"n_train": n_train, "n_test": n_test, "image_size": image_size, "seed": seed}
    record = phantom_dir / _PHANTOM_RECORD
    paths = {split: phantom_dir / name for split, name in LUNGRADS_FILE_NAMES.items()}
    if record.is_file() and all(p.is_file() for p in paths.values()):
        try:
            existing = json.loads(record.read_text())
        except ValueError:
            existing = {}
        if all(existing.get(k) == v for k, v in wanted.items()):
            return paths
    return write_phantom_pickles(phantom_dir, n_train, n_test, image_size=image_size, seed=seed)


def read_dataset_info(dataset_dir: str | Path) -> dict:
    """The provenance record ``dataset.json`` of a kit dataset (data_source, profile, seed, spacing, pickles).

    Raises:
        FileNotFoundError: if the folder has no ``dataset.json``.
    """
    path = Path(dataset_dir) / DATASET_INFO_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dataset record; build the dataset with prepare_lungrads_dataset")
    return json.loads(path.read_text())


def prepare_lungrads_dataset(
    data_dir: str | Path | None,
    run_dir: str | Path,
    profile: str,
    seed: int = 0,
    val_fraction: float = 0.15,
) -> Path:
    """Return the run's kit dataset, converting it first when it is not there yet.

    Args:
        data_dir: the data (see :func:`lungkit.data.sources.describe_source`): a folder holding
            ``lung_cancer_train.pkl`` and ``lung_cancer_test.pkl`` (searched below too), or a slice folder / array
            files declared by a ``lungkit_source.json`` (in the folder, or the file itself), split by patient; None
            or ``""`` uses the phantom, sized by the profile (``phantom_train_rows``, ``phantom_test_rows``,
            ``phantom_image_size``) and written to ``<run_dir>/phantom/``.
        run_dir: the run directory; the dataset goes to ``<run_dir>/dataset/``.
        profile: ``smoke``, ``quick`` or ``paper`` (see :mod:`lungkit.profiles`).
        seed: seed of the phantom and of the validation split.
        val_fraction: share of each class's train rows moved to validation, in blocks of neighbouring rows (the
            pickles); for slice and array sources the share of non-test patients (the source file may override it).

    Returns:
        The dataset folder (finished: it has its ``COMPLETE`` marker). Its ``dataset.json`` records
        ``data_source`` (``phantom``, ``lungrads``, ``slice_folder`` or ``arrays``), profile, seed, validation
        settings, pixel spacing and ``split_description`` (the protocol's split line).

    Raises:
        FileNotFoundError: if ``data_dir`` lacks the pickles.
        lungkit.data.sources.SourceError: for a bad ``lungkit_source.json`` or an undeclared slice / array folder.
        ValueError: for an unknown profile, or when ``<run_dir>/dataset`` was built from other data or settings
            (use a new run_dir, or delete that folder).
    """
    settings = get_profile(profile)
    run_dir = Path(run_dir)
    dataset_dir = run_dir / DATASET_DIR
    use_phantom = data_dir is None or str(data_dir).strip() == ""
    source = None if use_phantom else describe_source(data_dir)
    if source is not None and source.kind != "lungrads":
        return _prepare_slice_source(source, dataset_dir, profile, seed, val_fraction)
    identity = {
        "data_source": "phantom" if use_phantom else "lungrads",
        "seed": seed,
        "val_fraction": val_fraction,
        "val_block_size": VALIDATION_BLOCK_SIZE,
        "phantom": (
            {
                "n_train": settings.phantom_train_rows,
                "n_test": settings.phantom_test_rows,
                "image_size": settings.phantom_image_size,
            }
            if use_phantom
            else None
        ),
    }
    if is_complete(dataset_dir):
        _check_reuse(dataset_dir, identity)
        return dataset_dir
    if use_phantom:
        pickles = _phantom_pickles(
            run_dir / PHANTOM_DIR,
            settings.phantom_train_rows,
            settings.phantom_test_rows,
            settings.phantom_image_size,
            seed,
        )
        spacing = phantom_pixel_spacing_mm(settings.phantom_image_size)
    else:
        pickles = find_lungrads_pickles(source.root)
        spacing = None  # not stored in the Lung-RADS pickles
    metadata = {
        **identity,
        "profile": profile,
        "source_description": (
            "lungkit phantom (synthetic CT in the Lung-RADS pickle schema)"
            if use_phantom
            else "Lung-RADS pickles, Nam, Panina, Pak 2024, Mendeley Data doi 10.17632/5rr22hgzwr.1"
        ),
        "split_protocol": (
            f"given train/test split; val = {val_fraction:.0%} of each class's train rows, "
            f"in blocks of {VALIDATION_BLOCK_SIZE} neighbouring rows (seed {seed})"
        ),
        "split_description": (
            f"{LUNGRADS_SPLIT_DESCRIPTION}; no patient id exists, so one patient's slices may sit in both train and "
            "validation"
        ),
    }
    try:
        convert_lungrads_to_kit(
            pickles,
            dataset_dir,
            pixel_spacing_mm=spacing,
            finalize_manifest=partial(
                assign_validation_split, fraction=val_fraction, seed=seed, block_size=VALIDATION_BLOCK_SIZE
            ),
            metadata=metadata,
        )
    except (FileExistsError, FileNotFoundError):
        # two notebooks converting at once share the staging folder; the first to finish moves it away
        if not is_complete(dataset_dir):
            raise
    return dataset_dir


def _check_reuse(dataset_dir: Path, identity: dict) -> None:
    existing = read_dataset_info(dataset_dir)
    differing = [k for k in identity if existing.get(k) != identity[k]]
    if differing:
        raise ValueError(
            f"{dataset_dir}: already built with other settings ({', '.join(differing)}: "
            f"{ {k: existing.get(k) for k in differing} } vs requested { {k: identity[k] for k in differing} }); "
            "use a new run_dir or delete that folder"
        )


def _prepare_slice_source(source: DataSource, dataset_dir: Path, profile: str, seed: int, val_fraction: float) -> Path:
    """A slice folder or array source (declared in its ``lungkit_source.json``) -> the run's dataset, split by
    patient: the source's own test rows (array files named ``test``) or ``test_patients`` or a seeded
    ``test_fraction`` of the patients for test, ``val_fraction`` of the rest for validation."""
    from lungkit.data.slices import convert_array_files, convert_slice_folder

    options = dict(source.options)
    identity = {"data_source": source.kind, "source": json.loads(json.dumps(source.identity())), "seed": seed,
                "val_fraction": options.get("val_fraction", val_fraction)}
    if is_complete(dataset_dir):
        _check_reuse(dataset_dir, identity)
        return dataset_dir
    split_options = {
        "test_patients": options.pop("test_patients", None),
        "test_fraction": float(options.pop("test_fraction", 0.2)),
        "val_fraction": float(options.pop("val_fraction", val_fraction)),
        "seed": seed,
    }
    if split_options["test_patients"] is not None and not isinstance(split_options["test_patients"], list):
        raise SourceError(f"{source.declared_in}: \"test_patients\" must be a list of patient ids")

    def split(manifest):
        if (manifest["split"] == "test").any():
            split_options["test_fraction"] = 0.0  # the source's own test set
        return assign_patient_splits(manifest, **split_options)

    common = {
        "out_dir": dataset_dir,
        "intensity": options.pop("intensity"),
        "mask_threshold": options.pop("mask_threshold", None),
        "pixel_spacing_mm": options.pop("pixel_spacing_mm", None),
        "metadata": {**identity, "profile": profile, "source_description": f"{source.kind} at {source.root}"
                     + (f", declared in {source.declared_in}" if source.declared_in else "")},
        "finalize_manifest": split,
        "describe_split": describe_patient_split,
    }
    if source.kind == "slice_folder":
        convert_slice_folder(source.root, **common, **options)
    else:
        files = options.pop("files", None)
        if files is None:
            raise SourceError(f"{source.declared_in}: an arrays source names its \"files\" (one .npz, or "
                              "{\"train\": ..., \"test\": ...})")
        files = ({split_name: source.root / name for split_name, name in files.items()} if isinstance(files, dict)
                 else source.root / files)
        convert_array_files(files, **common, **options)
    return dataset_dir


__all__ = ["dataset_fingerprint", "prepare_lungrads_dataset", "read_dataset_info"]


AUGMENTED_DIR = "augmented"
#: Paper 001 resizes its augmented slices to 256 x 256; a profile with a smaller slice cap uses that cap instead.
AUGMENTED_IMAGE_SIZE = 256


def augmented_image_size(profile: str) -> int:
    """Side of the augmented slices at ``profile``: paper 001's 256 px, capped by the profile's slice size.

    Under patch training the models train on patches of slices kept at the recipe's pixel scale, so only
    ``max_slice_size`` caps the slices (``max_image_size`` is then the patch side); without it, whole slices are
    resized to ``max_image_size`` anyway, so that caps them. Until 2026-12-02 the quick profile wrote these slices at
    its 128 px patch side, halving paper 001's pixel scale (2.8 mm; an LR4A nodule 3-5 px across).
    """
    settings = get_profile(profile)
    cap = settings.max_slice_size if settings.patch_training else settings.max_image_size
    return min(AUGMENTED_IMAGE_SIZE, cap or AUGMENTED_IMAGE_SIZE)


def prepare_augmented_dataset(data_dir: str | Path | None, run_dir: str | Path, profile: str, seed: int = 0) -> Path:
    """Return the run's augmented kit dataset (paper 001), building the converted dataset and it when needed.

    Augmentation runs on the training split only, after the split (see :func:`lungkit.augment.expand_training_split`),
    expanding it to the profile's ``augment_target`` rows at :func:`augmented_image_size` pixels.

    Args:
        data_dir: as in :func:`prepare_lungrads_dataset`.
        run_dir: the run directory; the dataset goes to ``<run_dir>/augmented/``.
        profile: ``smoke``, ``quick`` or ``paper``.
        seed: seed of the phantom, the split and the augmentation.

    Returns:
        The finished augmented dataset folder.
    """
    from lungkit.augment import expand_training_split

    settings = get_profile(profile)
    dataset_dir = prepare_lungrads_dataset(data_dir, run_dir, profile, seed=seed)
    augmented_dir = Path(run_dir) / AUGMENTED_DIR
    if not is_complete(augmented_dir):
        expand_training_split(dataset_dir, augmented_dir, settings.augment_target,
                              image_size=augmented_image_size(profile), seed=seed)
    if not (augmented_dir / DATASET_INFO_NAME).is_file():
        # provenance travels with the data: results trained on the augmented set name their source too
        info = {**read_dataset_info(dataset_dir), "augmented_from": str(dataset_dir),
                "augment_target": settings.augment_target}
        if info.get("pixel_spacing_mm") is not None:
            # the slices were resized: the source's spacing no longer holds (each row's is in the manifest)
            from lungkit.data.kit_dataset import read_manifest

            info["pixel_spacing_mm"] = float(read_manifest(augmented_dir)["pixel_spacing_mm"].median())
        staging = augmented_dir / f".{DATASET_INFO_NAME}.tmp"
        staging.write_text(json.dumps(info, indent=2))
        staging.replace(augmented_dir / DATASET_INFO_NAME)
    return augmented_dir
