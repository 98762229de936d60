"""Reader for the Lung-RADS pickles (Nam, Panina, Pak 2024; Mendeley Data doi 10.17632/5rr22hgzwr.1).

The dataset ships as two pickled pandas DataFrames, ``lung_cancer_train.pkl`` (708 rows, 4.15 GB) and
``lung_cancer_test.pkl`` (264 rows), with exactly the columns ``label1, mask, hu_array, hu_array_old``: one row is
one axial CT slice, every other cell a 512 x 512 numpy array.

- ``label1``: the Lung-RADS category, one of ``LR2, LR3, LR4A, LR4B`` (rows are grouped by class).
- ``mask``: tumour mask, 0/1 integers (int64 in train, int8 in test).
- ``hu_array_old``: float64 Hounsfield units, unclipped; the padding outside the scanner's field of view varies
  (-1024, -2048, -1001).
- ``hu_array``: ``hu_array_old`` times an automatic (unchecked) lung mask: 0 (printed ``-0.0``) outside the lungs.
  The lung mask itself is not stored; :func:`iter_lungrads_slices` recovers it as ``hu_array != 0``.

Why a restricted unpickler: unpickling can call any importable function, so a pickle from the internet is code.
:class:`RestrictedUnpickler` resolves only the handful of numpy / pandas globals that a DataFrame of numpy arrays
needs (found empirically from pickles written by pandas 1.5.3 and pandas 3.1), mapping their old module paths
(``numpy.core.multiarray``, ``pandas.core.indexes.numeric.Int64Index``, ...) to today's; any other global
(``os.system``, ``builtins.eval``, ...) is refused before anything is called.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungkit.data.kit_dataset import LUNGRADS_LABELS

#: The columns of every Lung-RADS pickle, in their order.
LUNGRADS_COLUMNS = ("label1", "mask", "hu_array", "hu_array_old")
#: File names of the two pickles (as in the Mendeley archive).
LUNGRADS_FILE_NAMES = {"train": "lung_cancer_train.pkl", "test": "lung_cancer_test.pkl"}
_ARRAY_COLUMNS = ("mask", "hu_array", "hu_array_old")
_HU_COLUMNS = ("hu_array", "hu_array_old")

# Globals a pickled DataFrame of numpy arrays refers to, as (module, name) written in the file -> where the object
# lives today, in order of preference. Found by recording find_class calls while loading the pandas 1.5.3 samples
# (shared/data/lungrads-sample) and frames written by pandas 3.1 with protocols 4 and 5. Older module paths come
# from pandas' own pickle_compat table and numpy's 2.0 rename of numpy.core to numpy._core.
_RECONSTRUCT = (("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"))
_SCALAR = (("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"))
_FROMBUFFER = (("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"))
_DATAFRAME = (("pandas", "DataFrame"),)
_INDEX = (("pandas", "Index"),)
_RANGE_INDEX = (("pandas", "RangeIndex"),)
_NEW_INDEX = (("pandas.core.indexes.base", "_new_Index"),)
_BLOCK_MANAGER = (("pandas.core.internals.managers", "BlockManager"),)
_UNPICKLE_BLOCK = (("pandas._libs.internals", "_unpickle_block"),)
_STRING_DTYPE = (("pandas", "StringDtype"),)
_STRING_ARRAY = (("pandas.arrays", "StringArray"),)
_UNPICKLE_NDARRAY_BACKED = (("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),)

ALLOWED_GLOBALS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    # builtins: pandas stores block placements as slices
    ("builtins", "slice"): (("builtins", "slice"),),
    # numpy arrays, dtypes, scalars (protocol <= 4 and protocol 5 out-of-band style buffers)
    ("numpy", "ndarray"): (("numpy", "ndarray"),),
    ("numpy", "dtype"): (("numpy", "dtype"),),
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    # the DataFrame and its axes
    ("pandas", "DataFrame"): _DATAFRAME,
    ("pandas.core.frame", "DataFrame"): _DATAFRAME,
    ("pandas", "Index"): _INDEX,
    ("pandas.core.indexes.base", "Index"): _INDEX,
    ("pandas.core.index", "Index"): _INDEX,
    ("pandas.core.indexes.numeric", "Int64Index"): _INDEX,
    ("pandas.core.indexes.numeric", "UInt64Index"): _INDEX,
    ("pandas.core.indexes.numeric", "Float64Index"): _INDEX,
    ("pandas", "RangeIndex"): _RANGE_INDEX,
    ("pandas.core.indexes.range", "RangeIndex"): _RANGE_INDEX,
    ("pandas.core.indexes.base", "_new_Index"): _NEW_INDEX,
    ("pandas.core.index", "_new_Index"): _NEW_INDEX,
    # the block manager and its blocks
    ("pandas.core.internals.managers", "BlockManager"): _BLOCK_MANAGER,
    ("pandas.core.internals", "BlockManager"): _BLOCK_MANAGER,
    ("pandas._libs.internals", "_unpickle_block"): _UNPICKLE_BLOCK,
    ("pandas.core.internals.blocks", "new_block"): _UNPICKLE_BLOCK,
    # pandas >= 3 stores string columns (and string column labels) as StringArray
    ("pandas", "StringDtype"): _STRING_DTYPE,
    ("pandas.core.arrays.string_", "StringDtype"): _STRING_DTYPE,
    ("pandas.arrays", "StringArray"): _STRING_ARRAY,
    ("pandas.core.arrays.string_", "StringArray"): _STRING_ARRAY,
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): _UNPICKLE_NDARRAY_BACKED,
    ("pandas", "NA"): (("pandas", "NA"),),
    ("pandas._libs.missing", "NA"): (("pandas", "NA"),),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`ALLOWED_GLOBALS`; nothing it asked for was called."""


class CorruptPickleError(pickle.UnpicklingError):
    """A file is truncated, is not a pickle, or its content cannot be rebuilt by this numpy / pandas."""


class LungRadsSchemaError(ValueError):
    """A Lung-RADS DataFrame breaks the schema. ``violations`` lists every problem found, one string each."""

    def __init__(self, source: str, violations: list[str]):
        self.source = source
        self.violations = list(violations)
        lines = "\n".join(f"  - {v}" for v in self.violations)
        super().__init__(f"{source}: {len(self.violations)} schema violation(s):\n{lines}")


def _resolve_global(module: str, name: str) -> Any:
    """Import today's object for an allowed (module, name), trying each known location in turn."""
    errors = []
    for target_module, target_name in ALLOWED_GLOBALS[(module, name)]:
        try:
            return getattr(importlib.import_module(target_module), target_name)
        except (ImportError, AttributeError) as error:
            errors.append(f"{target_module}.{target_name}: {error}")
    raise pickle.UnpicklingError(f"allowed global {module}.{name} not found in this environment: {errors}")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` (numpy arrays in pandas DataFrames).

    Args:
        file: binary file object to read from.
        source: name of the file, used in error messages.

    Raises:
        UnsafePickleError: from :meth:`load` when the pickle refers to any other global. The check happens when
            the global is looked up, before the pickle can call it, so nothing runs.
    """

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refused global {module}.{name}: a Lung-RADS pickle holds only numpy arrays in a "
                "pandas DataFrame, so this file is not one (it may try to run code); it was not loaded"
            )
        return _resolve_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r}; not a plain pandas pickle")


def _available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_restricted_pickle(path: str | Path) -> Any:
    """Unpickle one file with :class:`RestrictedUnpickler`.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object (not yet checked to be a DataFrame).

    Raises:
        FileNotFoundError: if ``path`` does not exist or is not a file.
        UnsafePickleError: if the pickle refers to a global outside :data:`ALLOWED_GLOBALS`.
        CorruptPickleError: if the file is truncated or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a Lung-RADS pickle such as lung_cancer_train.pkl)")
    size = path.stat().st_size
    available = _available_memory_bytes()
    if available is not None and size > available:
        warnings.warn(
            f"{path}: loading needs about {size / 2**30:.1f} GiB of memory but only {available / 2**30:.1f} GiB "
            "is available; the process may be killed",
            RuntimeWarning,
            stacklevel=2,
        )
    with open(path, "rb") as file:
        try:
            return RestrictedUnpickler(file, source=str(path)).load()
        except UnsafePickleError:
            raise
        except MemoryError as error:
            raise MemoryError(f"{path}: out of memory while loading ({size / 2**30:.1f} GiB on disk)") from error
        except Exception as error:  # noqa: BLE001 - any failure inside the byte stream means the file is bad
            raise CorruptPickleError(
                f"{path}: truncated or not a pickle ({type(error).__name__}: {error}); download it again"
            ) from error


def _describe_values(values: np.ndarray, limit: int = 8) -> str:
    unique = np.unique(values)
    shown = ", ".join(str(v) for v in unique[:limit])
    return f"[{shown}{', ...' if unique.size > limit else ''}] ({unique.size} distinct)"


def _column_violations(columns: list, source: str) -> list[str]:
    expected = list(LUNGRADS_COLUMNS)
    if columns == expected:
        return []
    violations = []
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    duplicated = sorted({c for c in columns if columns.count(c) > 1}, key=str)
    if missing:
        violations.append(f"{source}: columns: missing {missing}; expected exactly {expected}")
    if extra:
        violations.append(f"{source}: columns: unexpected extra {extra}; expected exactly {expected}")
    if duplicated:
        violations.append(f"{source}: columns: duplicated {duplicated}; expected each of {expected} once")
    found_order = [c for c in dict.fromkeys(columns) if c in expected]
    if found_order != [c for c in expected if c in columns]:
        violations.append(f"{source}: columns: found in the order {columns}; expected the order {expected}")
    return violations


def _row_violations(row: dict, row_index: int, source: str) -> list[str]:
    where = f"{source}: row {row_index}"
    violations = []
    if "label1" in row:
        label = row["label1"]
        if not isinstance(label, str) or label not in LUNGRADS_LABELS:
            violations.append(f"{where}: column 'label1': expected one of {list(LUNGRADS_LABELS)}, found {label!r}")
    shapes = {}
    for column in _ARRAY_COLUMNS:
        if column not in row:
            continue
        cell = row[column]
        if not isinstance(cell, np.ndarray):
            violations.append(f"{where}: column {column!r}: expected a 2-D numpy array, found {type(cell).__name__}")
            continue
        if cell.ndim != 2:
            violations.append(f"{where}: column {column!r}: expected a 2-D array, found shape {cell.shape}")
            continue
        if cell.dtype.kind not in "biuf":
            violations.append(f"{where}: column {column!r}: expected a numeric array, found dtype {cell.dtype}")
            continue
        shapes[column] = cell.shape
        if column in _HU_COLUMNS and not np.isfinite(cell).all():
            bad = int(np.count_nonzero(~np.isfinite(cell)))
            violations.append(f"{where}: column {column!r}: expected finite HU, found {bad} NaN/inf value(s)")
        if column == "mask":
            zero = cell == 0
            if not ((zero | (cell == 1)).all() or (zero | (cell == 255)).all()):
                violations.append(
                    f"{where}: column 'mask': expected values in {{0, 1}} or {{0, 255}}, found {_describe_values(cell)}"
                )
    if len(set(shapes.values())) > 1:
        found = ", ".join(f"{c} {s}" for c, s in shapes.items())
        violations.append(f"{where}: expected all arrays of a row to have one shape, found {found}")
    return violations


def validate_lungrads_frame(df: pd.DataFrame, source: str) -> None:
    """Check a DataFrame against the Lung-RADS schema, collecting every violation.

    Checks: exactly the columns ``label1, mask, hu_array, hu_array_old`` in that order; at least one row;
    ``label1`` in ``LR2, LR3, LR4A, LR4B``; every array cell a numeric 2-D numpy array; one shape per row; finite HU
    in ``hu_array`` and ``hu_array_old``; mask values in {0, 1} or {0, 255}. Rows are checked one at a time, so no
    full copy of the frame is made.

    Args:
        df: the unpickled frame.
        source: file name used in messages.

    Raises:
        LungRadsSchemaError: (a ValueError) listing every violation with the file, the row (0-based position)
            and what was expected vs found.
    """
    if not isinstance(df, pd.DataFrame):
        raise LungRadsSchemaError(source, [f"{source}: expected a pandas DataFrame, found {type(df).__name__}"])
    columns = list(df.columns)
    violations = _column_violations(columns, source)
    if len(df) == 0:
        violations.append(f"{source}: expected at least one row, found none")
    known = [c for c in LUNGRADS_COLUMNS if c in columns]
    positions = [columns.index(c) for c in known]
    for row_index in range(len(df)):
        row = {c: df.iat[row_index, p] for c, p in zip(known, positions)}
        violations.extend(_row_violations(row, row_index, source))
    if violations:
        raise LungRadsSchemaError(source, violations)


def load_lungrads_pickle(path: str | Path) -> pd.DataFrame:
    """Load and validate one Lung-RADS pickle with the restricted unpickler.

    Reads pickles written by old pandas (the dataset was written by Python 3.7 / pandas < 2; the shared samples by
    pandas 1.5.3) with today's pandas. Memory: about the file size (the arrays keep the unpickled bytes as their
    buffers); loading the real train file needs ~4.2 GiB.

    Args:
        path: ``lung_cancer_train.pkl``, ``lung_cancer_test.pkl`` or a pickle in the same schema.

    Returns:
        The validated DataFrame, as stored (object columns holding numpy arrays).

    Raises:
        FileNotFoundError: if ``path`` is missing.
        UnsafePickleError: if the pickle refers to anything but numpy / pandas data classes.
        CorruptPickleError: if the file is truncated or not a pickle.
        LungRadsSchemaError: listing every schema violation.
    """
    frame = read_restricted_pickle(path)
    validate_lungrads_frame(frame, str(path))
    return frame


@dataclass(frozen=True)
class LungRadsSlice:
    """One validated slice of a Lung-RADS pickle.

    Attributes:
        hu: float32 HxW Hounsfield units from ``hu_array_old`` (unclipped, padding included).
        mask: uint8 HxW tumour mask, 0/1 (a 0/255 mask is mapped to 0/1).
        lung_mask: uint8 HxW lung mask, 0/1. Not stored in the pickles: it is implied by ``hu_array`` (lung mask
            x HU, 0 outside), recovered as ``hu_array != 0``. A lung pixel of exactly 0 HU would read as outside,
            which does not occur in aerated lung (about -850 HU).
        label1: Lung-RADS class, one of ``LR2, LR3, LR4A, LR4B``.
        source_file: name of the pickle file the slice comes from.
        source_row: 0-based row position in that file.
    """

    hu: np.ndarray
    mask: np.ndarray
    lung_mask: np.ndarray
    label1: str
    source_file: str
    source_row: int


def iter_lungrads_slices(path: str | Path) -> Iterator[LungRadsSlice]:
    """Yield the slices of one Lung-RADS pickle, converted one row at a time.

    The frame is loaded and validated first (so a bad file fails before anything is yielded); each row is then
    converted to small dtypes only when it is yielded, so at most one converted slice exists besides the frame.

    Args:
        path: the pickle file.

    Yields:
        :class:`LungRadsSlice` per row, in file order.

    Raises:
        Same as :func:`load_lungrads_pickle`.
    """
    path = Path(path)
    yield from frame_slices(load_lungrads_pickle(path), path.name)


def frame_slices(frame: pd.DataFrame, source_file: str) -> Iterator[LungRadsSlice]:
    """Yield the rows of an already validated Lung-RADS frame as :class:`LungRadsSlice`, one at a time.

    Args:
        frame: a frame that passed :func:`validate_lungrads_frame`.
        source_file: file name recorded in each slice.

    Yields:
        :class:`LungRadsSlice` per row, in frame order.
    """
    positions = [list(frame.columns).index(c) for c in LUNGRADS_COLUMNS]
    for row_index in range(len(frame)):
        label, mask, hu_lung, hu = (frame.iat[row_index, p] for p in positions)
        yield LungRadsSlice(
            hu=hu.astype(np.float32),
            mask=(mask != 0).astype(np.uint8),
            lung_mask=(hu_lung != 0).astype(np.uint8),
            label1=str(label),
            source_file=source_file,
            source_row=row_index,
        )


def find_lungrads_pickles(data_dir: str | Path) -> dict[str, Path]:
    """Find ``lung_cancer_train.pkl`` and ``lung_cancer_test.pkl`` in a folder or anywhere below it.

    Works with the unpacked Mendeley archive as downloaded (the files may sit in a nested folder).

    Args:
        data_dir: folder holding the two pickles (or one of the pickle files themselves).

    Returns:
        ``{"train": path, "test": path}``.

    Raises:
        FileNotFoundError: if the folder or either file is missing (says what was looked for, and whether an
            unpacked zip archive is lying there).
        ValueError: if a file name occurs more than once below ``data_dir``.
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.is_file():
        data_dir = data_dir.parent
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder (expected the folder holding the Lung-RADS pickles)")
    found: dict[str, Path] = {}
    for split, name in LUNGRADS_FILE_NAMES.items():
        matches = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name.lower() == name)
        if len(matches) > 1:
            raise ValueError(f"{data_dir}: {name} found more than once ({[str(m) for m in matches]}); keep one")
        if matches:
            found[split] = matches[0]
    missing = [LUNGRADS_FILE_NAMES[s] for s in LUNGRADS_FILE_NAMES if s not in found]
    if missing:
        archives = sorted(p.name for p in data_dir.rglob("*.zip"))
        hint = f"; unpack the archive(s) {archives} first" if archives else ""
        raise FileNotFoundError(f"{data_dir}: missing {missing} (searched this folder and below){hint}")
    return found


__all__ = [
    "ALLOWED_GLOBALS",
    "LUNGRADS_COLUMNS",
    "LUNGRADS_FILE_NAMES",
    "CorruptPickleError",
    "LungRadsSchemaError",
    "LungRadsSlice",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "find_lungrads_pickles",
    "frame_slices",
    "iter_lungrads_slices",
    "load_lungrads_pickle",
    "read_restricted_pickle",
    "validate_lungrads_frame",
]
