"""What a ``data_dir`` holds: Lung-RADS pickles, a folder of image/mask slices, or arrays of slices.

Every notebook and ``make reproduce DATA_DIR=...`` take one ``data_dir``. :func:`describe_source` finds out which
kind of source it is:

- a **source file** ``lungkit_source.json`` (in ``data_dir``, or ``data_dir`` is the file itself) declares the kind
  and its options; this is the only way for slice folders and arrays, because what their pixels mean must be
  declared, not guessed (see :mod:`lungkit.data.slices`);
- otherwise the Lung-RADS pickles are looked for (:func:`lungkit.data.lungrads.find_lungrads_pickles`); a folder
  that looks like a slice folder (``image/`` and ``label/``) or holds ``.npz`` files but has no source file gets an
  error that shows the file to write.

A source file, with every key (only ``kind`` and ``intensity`` are required for slices and arrays)::

    {
      "kind": "slice_folder",                 # or "arrays" or "lungrads"
      "root": ".",                            # the data, relative to this file (default: its folder)
      "intensity": "display8",                # "hu", "display8", "unit" or {"kind": ..., "slope": ..., ...}
      "image_pattern": "image/{patient}/{name}",
      "mask_pattern": "label/{patient}/{name}",
      "files": {"train": "train.npz", "test": "test.npz"},   # arrays only (or one file name)
      "image_key": "images", "mask_key": "masks", "patient_key": "patients",   # arrays only
      "mask_threshold": null,                 # default rule: see lungkit.data.slices
      "pixel_spacing_mm": null,
      "test_patients": ["LIDC-IDRI-72"],      # else test_fraction of the patients, drawn with the seed
      "test_fraction": 0.2,
      "val_fraction": 0.15                    # of the remaining patients
    }

The file is small JSON read with a size cap; unknown keys are refused (a typo must not silently fall back to a
default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_FILE_NAME = "lungkit_source.json"
SOURCE_KINDS = ("lungrads", "slice_folder", "arrays")
#: A source file is a few hundred bytes; anything past this is not one.
MAX_SOURCE_FILE_BYTES = 64 * 1024
_COMMON_KEYS = {"kind", "root", "intensity", "mask_threshold", "pixel_spacing_mm", "test_patients", "test_fraction",
                "val_fraction"}
_ALLOWED_KEYS = {
    "lungrads": {"kind", "root"},
    "slice_folder": _COMMON_KEYS | {"image_pattern", "mask_pattern"},
    "arrays": _COMMON_KEYS | {"files", "image_key", "mask_key", "patient_key"},
}
_EXAMPLE = {
    "slice_folder": '{"kind": "slice_folder", "intensity": "hu"}   (or "display8" for 8-bit renderings, "unit")',
    "arrays": '{"kind": "arrays", "files": {"train": "train.npz", "test": "test.npz"}, "intensity": "unit"}',
}


class SourceError(ValueError):
    """A ``data_dir`` or source file that cannot be read as a data source; the message says what to change."""


@dataclass(frozen=True)
class DataSource:
    """A resolved data source: its kind, the folder its paths are relative to, and the declared options."""

    kind: str
    root: Path
    options: dict = field(default_factory=dict)
    declared_in: Path | None = None

    def identity(self) -> dict:
        """What makes two conversions the same (recorded in ``dataset.json`` and compared on reuse)."""
        return {"kind": self.kind, "root": str(self.root.resolve()), **self.options}


def _read_source_file(path: Path) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_FILE_BYTES:
            raise SourceError(f"{path}: {size} bytes; a source file is a small JSON object (at most "
                              f"{MAX_SOURCE_FILE_BYTES} bytes)")
        spec = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, SourceError):
            raise
        raise SourceError(f"{path}: not readable JSON ({error}); expected e.g. {_EXAMPLE['slice_folder']}") from error
    if not isinstance(spec, dict):
        raise SourceError(f"{path}: expected a JSON object, found {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in SOURCE_KINDS:
        raise SourceError(f"{path}: \"kind\" is {kind!r}; expected one of {list(SOURCE_KINDS)}")
    unknown = sorted(set(spec) - _ALLOWED_KEYS[kind])
    if unknown:
        raise SourceError(f"{path}: unknown key(s) {unknown} for kind {kind!r}; allowed: {sorted(_ALLOWED_KEYS[kind])}")
    if kind != "lungrads" and "intensity" not in spec:
        raise SourceError(f"{path}: declare what the pixels mean with \"intensity\" (\"hu\", \"display8\", \"unit\" "
                          "or a map); it is never guessed")
    return spec


def _looks_like(folder: Path) -> str | None:
    if (folder / "image").is_dir() and (folder / "label").is_dir():
        return "slice_folder"
    try:
        if any(p.suffix == ".npz" for p in folder.iterdir()):
            return "arrays"
    except OSError:
        return None
    return None


def describe_source(data_dir: str | Path) -> DataSource:
    """The data source behind ``data_dir`` (a folder, or a ``lungkit_source.json`` file).

    Raises:
        FileNotFoundError: when ``data_dir`` does not exist.
        SourceError: for a bad source file, or a slice / array folder without one (the message shows the file to
            write).
    """
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder or file (expected the Lung-RADS pickles' folder, or a folder "
                                f"with a {SOURCE_FILE_NAME}, or that file)")
    source_file = path if path.is_file() and path.suffix == ".json" else path / SOURCE_FILE_NAME
    if source_file.is_file():
        spec = _read_source_file(source_file)
        root = (source_file.parent / spec.pop("root", ".")).resolve()
        kind = spec.pop("kind")
        if not root.exists():
            raise FileNotFoundError(f"{source_file}: its root {root} does not exist")
        return DataSource(kind, root, spec, source_file)
    folder = path if path.is_dir() else path.parent
    looks = _looks_like(folder)
    if looks is not None:
        from lungkit.data.lungrads import find_lungrads_pickles

        try:
            find_lungrads_pickles(folder, max_depth=0)
        except (FileNotFoundError, ValueError):
            raise SourceError(
                f"{folder}: looks like a {looks.replace('_', ' ')} but has no {SOURCE_FILE_NAME}; what its pixels "
                f"mean must be declared. Write {folder / SOURCE_FILE_NAME} with\n  {_EXAMPLE[looks]}\n(or put that "
                f"file elsewhere with \"root\" pointing here and pass the file as data_dir)"
            ) from None
    return DataSource("lungrads", path)


__all__ = ["DataSource", "MAX_SOURCE_FILE_BYTES", "SOURCE_FILE_NAME", "SOURCE_KINDS", "SourceError",
           "describe_source"]
