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
(``os.system``, ``builtins.eval``, ...) is refused before anything is called. Allowed globals are not enough:
``numpy.ndarray((1,), dtype('O'), buffer=b'A' * 8)`` is an object array whose element is a forged pointer, and
loading it crashes the process. So the reader also checks every call and every ``__setstate__`` the pickle makes,
with the arguments numpy and pandas write, before making it:

- Object arrays (the frame's cells) come only from pickled Python objects, never from raw bytes.
- Numeric arrays must be backed by bytes in the file (exactly shape x itemsize), and declared sizes are capped
  before anything is allocated: images at most :data:`MAX_IMAGE_SIDE` (4096) pixels a side, any array at most
  :data:`MAX_ARRAY_ELEMENTS`, frames and indexes at most :data:`MAX_ROWS` (100,000) rows and
  :data:`MAX_COLUMNS` columns.
- ``numpy.ndarray``, ``DataFrame`` and ``Index`` are never called; a DataFrame is created empty and given its
  checked state, and one left without state is a :class:`CorruptPickleError`.

A refused file raises :class:`UnsafePickleError` naming the file and what was refused. The pickles are found with
one bounded walk (:func:`find_lungrads_pickles`: at most :data:`SEARCH_MAX_DEPTH` levels below the data folder).
"""

from __future__ import annotations

import collections
import functools
import importlib
import io
import math
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from lungkit.data.kit_dataset import LUNGRADS_LABELS

#: The columns of every Lung-RADS pickle, in their order.
LUNGRADS_COLUMNS = ("label1", "mask", "hu_array", "hu_array_old")
#: File names of the two pickles (as in the Mendeley archive).
LUNGRADS_FILE_NAMES = {"train": "lung_cancer_train.pkl", "test": "lung_cancer_test.pkl"}
_ARRAY_COLUMNS = ("mask", "hu_array", "hu_array_old")
_HU_COLUMNS = ("hu_array", "hu_array_old")

#: Largest side of an image array (pixels) the reader accepts; the dataset's slices are 512 x 512.
MAX_IMAGE_SIDE = 4096
#: Most elements of any one array (a 4096 x 4096 image).
MAX_ARRAY_ELEMENTS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
#: Most rows of a Lung-RADS frame (the train pickle has 708); also caps any index or 1-D array.
MAX_ROWS = 100_000
#: Most columns a frame may declare (the schema has 4; more are read so the schema error can name them).
MAX_COLUMNS = 64
# dtypes an array in a Lung-RADS pickle may have: bool, ints, floats, and object (cells of a frame)
_ARRAY_DTYPE_KINDS = "biufO"
_DTYPE_SPEC = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|O[48]?)")

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
    """A pickle asked for something a Lung-RADS pickle never does; it was refused before it ran or allocated.

    Raised for a global outside :data:`ALLOWED_GLOBALS`, a call of an allowed global with arguments pandas / numpy
    never write (e.g. ``numpy.ndarray(..., buffer=...)``), an object array from raw bytes, an array whose declared
    size is not backed by bytes in the file, and an array or index beyond :data:`MAX_IMAGE_SIDE`,
    :data:`MAX_ROWS` or :data:`MAX_ARRAY_ELEMENTS`.
    """


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


@functools.cache
def _real_objects() -> dict[str, Any]:
    """Today's objects behind :data:`ALLOWED_GLOBALS`, by a short name (what the call checks compare against)."""
    from pandas.core.internals.managers import BlockManager

    return {
        "ndarray": np.ndarray,
        "dtype": np.dtype,
        "_reconstruct": _resolve_global("numpy._core.multiarray", "_reconstruct"),
        "scalar": _resolve_global("numpy._core.multiarray", "scalar"),
        "_frombuffer": _resolve_global("numpy._core.numeric", "_frombuffer"),
        "slice": slice,
        "DataFrame": pd.DataFrame,
        "Index": pd.Index,
        "RangeIndex": pd.RangeIndex,
        "_new_Index": _resolve_global("pandas.core.indexes.base", "_new_Index"),
        "BlockManager": BlockManager,
        "_unpickle_block": _resolve_global("pandas._libs.internals", "_unpickle_block"),
        "StringDtype": pd.StringDtype,
        "StringArray": pd.arrays.StringArray,
        "__pyx_unpickle_NDArrayBacked": _resolve_global("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    }


def _qualified_name(obj: Any) -> str:
    if isinstance(obj, type) or callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    return type(obj).__name__


# Why some allowed globals may be named in a pickle but never called (a pickle names them as the class of a value
# rebuilt from its state; calling them takes arbitrary arguments).
_NEVER_CALLED = {
    "ndarray": "it can build an array from raw memory (buffer=...); arrays are rebuilt with _reconstruct + state",
    "DataFrame": "a pickled DataFrame is created empty (NEWOBJ) and given its state; calling it takes any data",
    "Index": "a pickled Index is rebuilt with _new_Index",
    "RangeIndex": "a pickled RangeIndex is rebuilt with _new_Index",
    "StringArray": "a pickled StringArray is rebuilt with __pyx_unpickle_NDArrayBacked + state",
}
_LABEL_TYPES = (str, int, float, bool, type(None))


def _is(value: Any, *expected: Any) -> bool:
    """``value`` equals one of ``expected`` and has its exact type. Plain ``==`` would compare a numpy array in
    a crafted pickle elementwise and fail with an unrelated error."""
    return any(type(value) is type(e) and value == e for e in expected)


class _BoundedReader:
    """File wrapper that refuses a read longer than what is left in the file, before anything is allocated.

    A pickle declares the length of each bytes object; ``file.read(n)`` allocates ``n`` bytes before reading, so a
    60-byte file declaring a 300 GB object would otherwise allocate 300 GB.
    """

    def __init__(self, file, source: str):
        self._file = file
        self._source = source
        try:
            self.size = os.fstat(file.fileno()).st_size
        except (AttributeError, OSError, io.UnsupportedOperation):
            position = file.tell()
            self.size = file.seek(0, io.SEEK_END)
            file.seek(position)

    def remaining(self) -> int:
        return self.size - self._file.tell()

    def read(self, n: int = -1) -> bytes:
        remaining = self.remaining()
        if n is not None and n > remaining:
            raise CorruptPickleError(
                f"{self._source}: truncated or not a pickle: {n} bytes wanted at byte {self._file.tell()} but only "
                f"{remaining} left (a cut download, or a hand-made length); download it again"
            )
        return self._file.read(n)

    def readline(self) -> bytes:
        return self._file.readline()

    def readinto(self, buffer) -> int:
        if len(buffer) > self.remaining():
            self.read(len(buffer))  # raises the message above
        return self._file.readinto(buffer)


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that rebuilds only a pandas DataFrame of numpy arrays, checking every call before it is made.

    Built on the pure-Python unpickler (``pickle._Unpickler``) because every opcode that runs code must be checked,
    not only the globals: the C unpickler calls ``__setstate__`` (opcode BUILD) and ``__setitem__`` itself, and an
    allowed global called with crafted arguments (``numpy.ndarray((1,), dtype('O'), buffer=b'A' * 8)``: an object
    array whose element is a forged pointer) crashes the process. The rules:

    - Globals: only :data:`ALLOWED_GLOBALS` (else :class:`UnsafePickleError`, nothing called).
    - Calls (REDUCE, NEWOBJ): only the shapes numpy / pandas write: ``_reconstruct(ndarray, (0,), b'b')``,
      ``_frombuffer(bytes, dtype, shape, order)``, ``dtype('f8', False, True)``, ``_new_Index(Index | RangeIndex,
      {...})``, ``_unpickle_block(values, placement, 2)``, ``BlockManager(blocks, axes)``, ``DataFrame.__new__``,
      ``slice``, ``StringDtype`` and the StringArray unpickler, each with its arguments checked. ``numpy.ndarray``,
      ``DataFrame``, ``Index`` are never called. OBJ / INST (protocol 0/1 object creation) are refused.
    - State (BUILD): only once, and only on an object that one of those calls left waiting for it (array, dtype,
      DataFrame, BlockManager, StringArray); the state is checked and handed on rebuilt from checked parts.
    - Object arrays come only from a list of pickled Python objects, never from bytes (``_frombuffer`` with an
      object dtype, or an object-dtype state with a bytes payload, is refused).
    - Numeric arrays must be backed by bytes in the file: the payload has exactly shape x itemsize bytes.
    - Sizes: 2-D numeric arrays at most :data:`MAX_IMAGE_SIDE` a side, 1-D arrays and indexes at most
      :data:`MAX_ROWS` long, object blocks at most :data:`MAX_COLUMNS` x :data:`MAX_ROWS`, any array at most
      :data:`MAX_ARRAY_ELEMENTS`; a declared length beyond the end of the file is refused before allocating.
    - APPEND(S) / SETITEM(S) / ADDITEMS only on plain lists / dicts / sets.
    - An object created but never given its state (e.g. a DataFrame via NEWOBJ without BUILD) is a
      :class:`CorruptPickleError`.

    Args:
        file: binary file object to read from.
        source: name of the file, used in error messages.

    Raises:
        UnsafePickleError: from :meth:`load`, for anything outside the rules above; raised before the refused call.
        CorruptPickleError: from :meth:`load`, for a file that ends early or leaves an object without its state.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, source: str = "<pickle>"):
        self._reader = _BoundedReader(file, source)
        super().__init__(self._reader)
        self.source = source
        real = _real_objects()
        self._real = real
        self._reduce_checks = {
            id(real["_reconstruct"]): self._call_reconstruct,
            id(real["_frombuffer"]): self._call_frombuffer,
            id(real["scalar"]): self._call_scalar,
            id(real["dtype"]): self._call_dtype,
            id(real["slice"]): self._call_slice,
            id(real["_new_Index"]): self._call_new_index,
            id(real["_unpickle_block"]): self._call_unpickle_block,
            id(real["BlockManager"]): self._call_block_manager,
            id(real["StringDtype"]): self._call_string_dtype,
            id(real["__pyx_unpickle_NDArrayBacked"]): self._call_unpickle_ndarray_backed,
        }
        self._never_called = {id(real[name]): reason for name, reason in _NEVER_CALLED.items()}
        # objects waiting for their BUILD (must get it exactly once) and dtypes that may get one (until first used);
        # values keep the objects alive so their ids stay unique
        self._awaiting_state: dict[int, Any] = {}
        self._dtype_may_get_state: dict[int, np.dtype] = {}
        # blocks made by _unpickle_block: id -> (block, column positions, number of rows)
        self._blocks: dict[int, tuple[Any, list[int], int]] = {}

    # -- globals ------------------------------------------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source}: refused global {module}.{name}: a Lung-RADS pickle holds only numpy arrays in a "
                "pandas DataFrame, so this file is not one (it may try to run code); it was not loaded"
            )
        return _resolve_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r}; not a plain pandas pickle")

    def load(self) -> Any:
        result = super().load()
        if self._awaiting_state:
            waiting = sorted({_qualified_name(type(obj)) for obj in self._awaiting_state.values()})
            raise CorruptPickleError(
                f"{self.source}: the pickle creates {', '.join(waiting)} but never sets its state (its data); a "
                "truncated or hand-made file, not a DataFrame as pandas writes it"
            )
        return result

    # -- checks -------------------------------------------------------------------------------------------------

    def _refuse(self, what: str) -> NoReturn:
        raise UnsafePickleError(f"{self.source}: refused {what}; the file was not loaded")

    def _require_ready(self, obj: Any, role: str) -> None:
        if id(obj) in self._awaiting_state:
            self._refuse(f"{role}: a {_qualified_name(type(obj))} used before its state was set")

    def _check_dtype(self, dtype: Any, role: str) -> np.dtype:
        if not isinstance(dtype, np.dtype):
            self._refuse(f"{role}: expected a numpy dtype, found {type(dtype).__name__}")
        if dtype.kind not in _ARRAY_DTYPE_KINDS or dtype.names is not None or dtype.subdtype is not None:
            self._refuse(f"{role}: dtype {dtype} (expected bool, integer, float or object)")
        # once used, a dtype's state is fixed: a later BUILD must not change what a checked array means
        self._dtype_may_get_state.pop(id(dtype), None)
        return dtype

    def _check_shape(self, shape: Any, dtype: np.dtype, role: str) -> int:
        """Check an array's declared shape against the caps; returns its number of elements."""
        if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
            self._refuse(f"{role}: shape {shape!r} (expected a tuple of non-negative ints)")
        # numeric cells up to 3-D still load, so that the schema check can name their row and column
        if len(shape) > (2 if dtype.kind == "O" else 3):
            self._refuse(f"{role}: a {len(shape)}-D {dtype} array of shape {shape} (expected 1-D labels or 2-D images)")
        size = math.prod(shape)
        if len(shape) == 1 and shape[0] > MAX_ROWS:
            self._refuse(f"{role}: a 1-D array of {shape[0]} elements (at most MAX_ROWS = {MAX_ROWS})")
        if len(shape) == 2 and dtype.kind == "O" and (shape[0] > MAX_COLUMNS or shape[1] > MAX_ROWS):
            self._refuse(
                f"{role}: an object block of shape {shape} (at most MAX_COLUMNS x MAX_ROWS = "
                f"{MAX_COLUMNS} x {MAX_ROWS})"
            )
        if len(shape) >= 2 and dtype.kind != "O" and max(shape) > MAX_IMAGE_SIDE:
            self._refuse(
                f"{role}: a {dtype} array of shape {shape} (at most MAX_IMAGE_SIDE = {MAX_IMAGE_SIDE} px a side)"
            )
        if size > MAX_ARRAY_ELEMENTS:
            self._refuse(f"{role}: an array of shape {shape} (at most MAX_ARRAY_ELEMENTS = {MAX_ARRAY_ELEMENTS})")
        return size

    def _check_payload(self, data: Any, dtype: np.dtype, shape: tuple, size: int, role: str) -> None:
        """An array's data: a list of Python objects for object dtype, exactly shape x itemsize bytes otherwise."""
        if dtype.hasobject:
            if isinstance(data, (bytes, bytearray, memoryview, str)):
                self._refuse(
                    f"{role}: an object array of shape {shape} from a {len(data)}-byte bytes payload (raw memory read "
                    "as object pointers); object arrays may only come from pickled Python objects"
                )
            if type(data) is not list:
                self._refuse(f"{role}: object array data of type {type(data).__name__} (expected a list)")
            if len(data) != size:
                self._refuse(f"{role}: an object array of shape {shape} with {len(data)} elements supplied")
            for element in data:
                self._require_ready(element, f"{role}: element")
            return
        if type(data) not in (bytes, bytearray):
            self._refuse(f"{role}: array data of type {type(data).__name__} (expected bytes)")
        needed = size * dtype.itemsize
        if len(data) != needed:
            self._refuse(
                f"{role}: a {dtype} array of shape {shape}: it needs {needed} bytes but the file supplies "
                f"{len(data)} (arrays must be backed by bytes in the file)"
            )

    def _check_label(self, label: Any, role: str) -> None:
        if not isinstance(label, _LABEL_TYPES + (np.number,)):
            self._refuse(f"{role}: a label of type {type(label).__name__} (expected str, number or None)")

    def _check_string_values(self, values: Any, role: str) -> None:
        if not (isinstance(values, np.ndarray) and values.dtype.kind == "O" and values.ndim == 1):
            self._refuse(f"{role}: expected a 1-D object array of strings, found {type(values).__name__}")
        self._require_ready(values, role)
        for value in values:
            if not (isinstance(value, str) or value is None or value is pd.NA or
                    (isinstance(value, float) and math.isnan(value))):
                self._refuse(f"{role}: a string array holding a {type(value).__name__}")

    def _ready_array(self, values: Any, role: str) -> np.ndarray:
        if type(values) is not np.ndarray:
            self._refuse(f"{role}: expected a numpy array, found {type(values).__name__}")
        self._require_ready(values, role)
        return values

    def _placement(self, placement: Any, role: str) -> list[int]:
        """Column positions of a block, from the slice or integer array pandas stores."""
        if type(placement) is slice:
            start, stop, step = placement.start or 0, placement.stop, placement.step or 1
            if not (type(start) is int and type(stop) is int and type(step) is int and start >= 0 and step >= 1):
                self._refuse(f"{role}: block placement {placement!r} (expected slice(start, stop, step) of ints)")
            positions = range(start, stop, step)
            if len(positions) > MAX_COLUMNS:
                self._refuse(f"{role}: a block of {len(positions)} columns (at most MAX_COLUMNS = {MAX_COLUMNS})")
            return list(positions)
        if type(placement) is np.ndarray and placement.ndim == 1 and placement.dtype.kind in "iu":
            self._require_ready(placement, role)
            if placement.size > MAX_COLUMNS or (placement.size and placement.min() < 0):
                self._refuse(f"{role}: block placement {placement!r} (expected at most {MAX_COLUMNS} positions >= 0)")
            return [int(p) for p in placement]
        self._refuse(f"{role}: block placement of type {type(placement).__name__} (expected a slice or int array)")

    def _block_values(self, values: Any, n_positions: int, role: str) -> int:
        """Check a block's values against its placement; returns its number of rows."""
        if isinstance(values, self._real["StringArray"]):
            self._require_ready(values, role)
            if n_positions != 1:
                self._refuse(f"{role}: a string block placed at {n_positions} columns (expected 1)")
            return len(values)
        values = self._ready_array(values, role)
        if values.ndim != 2 or values.shape[0] != n_positions:
            self._refuse(f"{role}: block values of shape {values.shape} for {n_positions} column(s)")
        return values.shape[1]

    def _check_axes(self, axes: Any, role: str) -> tuple[int, int]:
        if type(axes) not in (list, tuple) or len(axes) != 2 or not all(isinstance(a, pd.Index) for a in axes):
            self._refuse(f"{role}: axes {type(axes).__name__} (expected [columns Index, rows Index])")
        for axis in axes:
            self._require_ready(axis, role)
        n_columns, n_rows = len(axes[0]), len(axes[1])
        if n_columns > MAX_COLUMNS or n_rows > MAX_ROWS:
            self._refuse(f"{role}: {n_columns} columns x {n_rows} rows (at most {MAX_COLUMNS} x MAX_ROWS = {MAX_ROWS})")
        return n_columns, n_rows

    def _check_blocks_cover(self, blocks: list[tuple[list[int], int]], n_columns: int, n_rows: int, role: str):
        """Every column in exactly one block and every block as long as the rows: pandas indexes its blocks
        without bounds checks, so a placement outside the columns would write outside its tables."""
        positions = sorted(p for placement, _ in blocks for p in placement)
        if positions != list(range(n_columns)):
            self._refuse(f"{role}: blocks placed at columns {positions} for {n_columns} columns")
        for _, block_rows in blocks:
            if block_rows != n_rows:
                self._refuse(f"{role}: a block of {block_rows} rows in a frame of {n_rows} rows")

    # -- REDUCE: allowed calls -----------------------------------------------------------------------------------

    def _call_reconstruct(self, args: tuple) -> Any:
        if not (len(args) == 3 and args[0] is np.ndarray and _is(args[1], (0,)) and _is(args[2], b"b", "b")):
            self._refuse(f"numpy _reconstruct{args!r:.100} (numpy writes _reconstruct(ndarray, (0,), b'b'))")
        array = self._real["_reconstruct"](np.ndarray, (0,), b"b")
        self._awaiting_state[id(array)] = array
        return array

    def _call_frombuffer(self, args: tuple) -> Any:
        if len(args) != 4:
            self._refuse(f"numpy _frombuffer with {len(args)} arguments (expected buffer, dtype, shape, order)")
        data, dtype, shape, order = args
        dtype = self._check_dtype(dtype, "numpy _frombuffer")
        if dtype.hasobject:
            self._refuse("numpy _frombuffer with an object dtype (raw bytes read as object pointers); object arrays "
                         "may only come from pickled Python objects")
        size = self._check_shape(shape, dtype, "numpy _frombuffer")
        self._check_payload(data, dtype, shape, size, "numpy _frombuffer")
        if not _is(order, "C", "F"):
            self._refuse(f"numpy _frombuffer order {order!r}")
        return self._real["_frombuffer"](data, dtype, shape, order)

    def _call_scalar(self, args: tuple) -> Any:
        if len(args) != 2:
            self._refuse(f"numpy scalar with {len(args)} arguments (expected dtype, bytes)")
        dtype = self._check_dtype(args[0], "numpy scalar")
        if dtype.hasobject:
            self._refuse("a numpy scalar of object dtype")
        if type(args[1]) is not bytes or len(args[1]) != dtype.itemsize:
            self._refuse(f"numpy scalar {dtype} from {type(args[1]).__name__} (expected {dtype.itemsize} bytes)")
        return self._real["scalar"](dtype, args[1])

    def _call_dtype(self, args: tuple) -> Any:
        spec = args[0] if args else None
        if not (1 <= len(args) <= 3 and type(spec) is str and _DTYPE_SPEC.fullmatch(spec)):
            self._refuse(f"numpy dtype{args!r:.100} (expected a bool, integer, float or object code such as 'f8')")
        # copy=True always: state (BUILD) is then set on a private copy, never on numpy's shared float64 etc.
        dtype = np.dtype(spec, align=False, copy=True)
        self._dtype_may_get_state[id(dtype)] = dtype
        return dtype

    def _call_slice(self, args: tuple) -> Any:
        if not (1 <= len(args) <= 3 and all(a is None or type(a) is int for a in args)):
            self._refuse(f"slice{args!r:.100} (expected ints or None)")
        return slice(*args)

    def _call_new_index(self, args: tuple) -> Any:
        if len(args) != 2 or type(args[1]) is not dict:
            self._refuse("pandas _new_Index with other arguments than (Index class, dict)")
        cls, fields = args[0], dict(args[1])
        if cls is self._real["RangeIndex"]:
            if not set(fields) <= {"start", "stop", "step", "name"}:
                self._refuse(f"RangeIndex fields {sorted(map(str, fields))} (expected start, stop, step, name)")
            bounds = [fields.get("start", 0), fields.get("stop"), fields.get("step", 1)]
            if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bounds) or not bounds[2]:
                self._refuse(f"RangeIndex({bounds!r:.100}) (expected int start, stop and non-zero step)")
            length = len(range(*(int(b) for b in bounds)))
            if length > MAX_ROWS:
                self._refuse(f"a RangeIndex of {length} rows (at most MAX_ROWS = {MAX_ROWS})")
        elif cls is self._real["Index"]:
            if not set(fields) <= {"data", "name", "dtype"} or "data" not in fields:
                self._refuse(f"Index fields {sorted(map(str, fields))} (expected data, name, dtype)")
            data = fields["data"]
            if isinstance(data, self._real["StringArray"]):
                self._require_ready(data, "Index data")
            else:
                data = self._ready_array(data, "Index data")
                if data.ndim != 1:
                    self._refuse(f"Index data of shape {data.shape} (expected 1-D)")
                if data.dtype.kind == "O":
                    for label in data:
                        self._check_label(label, "Index data")
            if "dtype" in fields and not isinstance(fields["dtype"], self._real["StringDtype"]):
                self._check_dtype(fields["dtype"], "Index dtype")
        else:
            self._refuse(f"pandas _new_Index of {_qualified_name(cls)} (expected Index or RangeIndex)")
        self._check_label(fields.get("name"), "Index name")
        return self._real["_new_Index"](cls, fields)

    def _call_unpickle_block(self, args: tuple) -> Any:
        if len(args) != 3 or not _is(args[2], 2):
            self._refuse("pandas _unpickle_block with other arguments than (values, placement, 2)")
        positions = self._placement(args[1], "pandas block")
        n_rows = self._block_values(args[0], len(positions), "pandas block")
        block = self._real["_unpickle_block"](args[0], args[1], 2)
        self._blocks[id(block)] = (block, positions, n_rows)
        return block

    def _call_block_manager(self, args: tuple) -> Any:
        if len(args) != 2 or type(args[0]) not in (list, tuple):
            self._refuse("pandas BlockManager with other arguments than (blocks, axes)")
        blocks = []
        for block in args[0]:
            if id(block) not in self._blocks or self._blocks[id(block)][0] is not block:
                self._refuse(f"pandas BlockManager with a block of type {type(block).__name__} not made by "
                             "_unpickle_block")
            blocks.append(self._blocks[id(block)][1:])
        n_columns, n_rows = self._check_axes(args[1], "pandas BlockManager")
        self._check_blocks_cover(blocks, n_columns, n_rows, "pandas BlockManager")
        return self._real["BlockManager"](tuple(args[0]), list(args[1]))

    def _call_string_dtype(self, args: tuple) -> Any:
        storage = args[0] if args else None
        na_value = args[1] if len(args) > 1 else pd.NA
        nan = isinstance(na_value, float) and math.isnan(na_value)
        if len(args) > 2 or not (storage is None or _is(storage, "python")) or not (na_value is pd.NA or nan):
            self._refuse(f"pandas StringDtype{args!r:.100} (expected storage 'python' and NA or NaN)")
        return self._real["StringDtype"](*args)

    def _call_unpickle_ndarray_backed(self, args: tuple) -> Any:
        if not (len(args) == 3 and args[0] is self._real["StringArray"] and type(args[1]) is int and args[2] is None):
            self._refuse("pandas __pyx_unpickle_NDArrayBacked with other arguments than (StringArray, int, None)")
        array = self._real["__pyx_unpickle_NDArrayBacked"](*args)
        self._awaiting_state[id(array)] = array
        return array

    # -- BUILD: state for objects waiting for it -----------------------------------------------------------------

    def _build_ndarray(self, array: np.ndarray, state: Any) -> None:
        if type(state) is tuple and len(state) == 5 and _is(state[0], 1):
            state = state[1:]
        if type(state) is not tuple or len(state) != 4:
            self._refuse("numpy array state (expected (1, shape, dtype, is_fortran, data))")
        shape, dtype, is_fortran, data = state
        dtype = self._check_dtype(dtype, "numpy array state")
        size = self._check_shape(shape, dtype, "numpy array state")
        self._check_payload(data, dtype, shape, size, "numpy array state")
        if type(is_fortran) not in (bool, int):
            self._refuse(f"numpy array state is_fortran={is_fortran!r}")
        array.__setstate__((1, shape, dtype, bool(is_fortran), data))

    def _build_dtype(self, dtype: np.dtype, state: Any) -> None:
        if type(state) is not tuple or len(state) not in (8, 9) or not _is(state[0], 3, 4):
            self._refuse("numpy dtype state (expected (3, byteorder, None, None, None, -1, -1, flags))")
        byteorder = state[1]
        plain = all(part is None for part in state[2:5]) and _is(state[5], -1) and _is(state[6], -1)
        if not plain or (len(state) == 9 and state[8] is not None):
            self._refuse(f"numpy dtype state {state!r:.120} (sub-arrays, fields, sizes or metadata on a plain dtype)")
        single_byte = dtype.kind == "O" or dtype.itemsize == 1
        if not _is(byteorder, *(("|",) if single_byte else ("<", ">", "="))):
            self._refuse(f"numpy dtype state: byte order {byteorder!r} for {dtype}")
        # the file's flags are ignored: they tell numpy whether an item holds object pointers
        dtype.__setstate__((3, byteorder, None, None, None, -1, -1, dtype.flags))

    def _build_dataframe(self, frame: pd.DataFrame, state: Any) -> None:
        allowed = {"_mgr", "_data", "_typ", "_metadata", "attrs", "_attrs", "_flags"}
        if type(state) is not dict or not set(state) <= allowed:
            keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            self._refuse(f"DataFrame state {keys} (expected the keys pandas writes: {sorted(allowed)})")
        managers = [state[k] for k in ("_mgr", "_data") if k in state]
        if len(managers) != 1 or not isinstance(managers[0], self._real["BlockManager"]):
            self._refuse("DataFrame state without exactly one BlockManager (_mgr)")
        self._require_ready(managers[0], "DataFrame state")
        if not _is(state.get("_typ"), "dataframe"):
            self._refuse(f"DataFrame state _typ={state.get('_typ')!r}")
        metadata = state.get("_metadata", [])
        if type(metadata) is not list or not all(type(m) is str for m in metadata):
            self._refuse("DataFrame state _metadata (expected a list of names)")
        for key in ("attrs", "_attrs"):
            if key in state and type(state[key]) is not dict:
                self._refuse(f"DataFrame state {key} of type {type(state[key]).__name__}")
        flags = state.get("_flags", {})
        if type(flags) is not dict or not set(flags) <= {"allows_duplicate_labels"} or not all(
                type(v) is bool for v in flags.values()):
            self._refuse(f"DataFrame state _flags={flags!r:.100}")
        frame.__setstate__(dict(state))

    def _build_block_manager(self, manager: Any, state: Any) -> None:
        # pandas < 1.5 layout: (axes, values, items, {"0.14.1": {"axes": [...], "blocks": [{values, mgr_locs}]}})
        if not (type(state) is tuple and len(state) >= 4 and type(state[3]) is dict and
                type(state[3].get("0.14.1")) is dict):
            self._refuse("BlockManager state (expected the '0.14.1' layout pandas writes)")
        layout = state[3]["0.14.1"]
        axes, blocks = layout.get("axes"), layout.get("blocks")
        n_columns, n_rows = self._check_axes(axes, "BlockManager state")
        if type(blocks) is not list or not all(type(b) is dict and set(b) == {"values", "mgr_locs"} for b in blocks):
            self._refuse("BlockManager state blocks (expected a list of {values, mgr_locs})")
        covered = []
        for block in blocks:
            positions = self._placement(block["mgr_locs"], "BlockManager state")
            covered.append((positions, self._block_values(block["values"], len(positions), "BlockManager state")))
        self._check_blocks_cover(covered, n_columns, n_rows, "BlockManager state")
        checked = [{"values": b["values"], "mgr_locs": b["mgr_locs"]} for b in blocks]
        manager.__setstate__((None, None, None, {"0.14.1": {"axes": list(axes), "blocks": checked}}))

    def _build_string_array(self, array: Any, state: Any) -> None:
        if not (type(state) is tuple and len(state) == 2 and isinstance(state[0], self._real["StringDtype"])):
            self._refuse("StringArray state (expected (StringDtype, object array))")
        if not _is(state[0].storage, "python"):
            self._refuse(f"StringArray state with storage {state[0].storage!r}")
        self._check_string_values(state[1], "StringArray state")
        array.__setstate__((state[0], state[1]))

    # -- opcodes that run code ------------------------------------------------------------------------------------

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if type(args) is not tuple:
            self._refuse(f"call with arguments of type {type(args).__name__}")
        check = self._reduce_checks.get(id(func))
        if check is None:
            reason = self._never_called.get(id(func), "it is not one of the calls numpy / pandas pickles make")
            self._refuse(f"call {_qualified_name(func)}(...): {reason}")
        self.stack[-1] = check(args)

    dispatch[pickle.REDUCE[0]] = _load_reduce

    def _new_object(self, cls: Any, args: Any, kwargs: Any) -> None:
        creatable = cls is self._real["DataFrame"] or cls is self._real["BlockManager"]
        if not creatable or type(args) is not tuple or args or type(kwargs) is not dict or kwargs:
            self._refuse(f"object creation {_qualified_name(cls)}.__new__ with arguments {args!r:.60} (only an "
                         "empty DataFrame or BlockManager is created this way)")
        obj = cls.__new__(cls)
        self._awaiting_state[id(obj)] = obj
        self.append(obj)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new_object(cls, args, {})

    dispatch[pickle.NEWOBJ[0]] = _load_newobj

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new_object(cls, args, kwargs)

    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex

    def _load_obj_or_inst(self):
        self._refuse("opcode OBJ / INST (protocol 0/1 object creation); pandas pickles use protocol 2 or later")

    dispatch[pickle.OBJ[0]] = _load_obj_or_inst
    dispatch[pickle.INST[0]] = _load_obj_or_inst

    def _load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if self._awaiting_state.pop(id(target), None) is target:
            builders = (
                (np.ndarray, self._build_ndarray),
                (self._real["DataFrame"], self._build_dataframe),
                (self._real["BlockManager"], self._build_block_manager),
                (self._real["StringArray"], self._build_string_array),
            )
            for cls, build in builders:
                if type(target) is cls:
                    return build(target, state)
        elif self._dtype_may_get_state.pop(id(target), None) is target:
            return self._build_dtype(target, state)
        self._refuse(f"state (BUILD) for a {_qualified_name(type(target))} that is not waiting for it")

    dispatch[pickle.BUILD[0]] = _load_build

    def _require_type(self, target: Any, expected: type, opcode: str) -> None:
        if type(target) is not expected:
            self._refuse(f"opcode {opcode} on a {type(target).__name__} (only on a plain {expected.__name__})")

    def _load_append(self):
        value = self.stack.pop()
        self._require_type(self.stack[-1], list, "APPEND")
        self.stack[-1].append(value)

    dispatch[pickle.APPEND[0]] = _load_append

    def _load_appends(self):
        items = self.pop_mark()
        self._require_type(self.stack[-1], list, "APPENDS")
        self.stack[-1].extend(items)

    dispatch[pickle.APPENDS[0]] = _load_appends

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._require_type(self.stack[-1], dict, "SETITEM")
        self.stack[-1][key] = value

    dispatch[pickle.SETITEM[0]] = _load_setitem

    def _load_setitems(self):
        items = self.pop_mark()
        self._require_type(self.stack[-1], dict, "SETITEMS")
        target = self.stack[-1]
        for index in range(0, len(items), 2):
            target[items[index]] = items[index + 1]

    dispatch[pickle.SETITEMS[0]] = _load_setitems

    def _load_additems(self):
        items = self.pop_mark()
        self._require_type(self.stack[-1], set, "ADDITEMS")
        self.stack[-1].update(items)

    dispatch[pickle.ADDITEMS[0]] = _load_additems

    def _load_bytearray8(self):
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._reader.size:
            self._reader.read(length)  # raises: longer than the whole file
        self.append(bytearray(self.read(length)))

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


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
        The unpickled object (not yet checked to be a Lung-RADS DataFrame).

    Raises:
        FileNotFoundError: if ``path`` does not exist or is not a file.
        UnsafePickleError: if the pickle asks for anything outside :class:`RestrictedUnpickler`'s rules.
        CorruptPickleError: if the file is truncated, not a pickle, or leaves an object without its state.
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
        except (UnsafePickleError, CorruptPickleError):
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
        if cell.size == 0 or max(cell.shape) > MAX_IMAGE_SIDE:
            violations.append(
                f"{where}: column {column!r}: expected an image of 1 to {MAX_IMAGE_SIDE} pixels a side, "
                f"found shape {cell.shape}"
            )
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

    First the frame as a whole: exactly the columns ``label1, mask, hu_array, hu_array_old`` in that order and 1 to
    :data:`MAX_ROWS` rows; if that fails, the rows are not looked at (a frame with wrong columns or 10**15 rows is
    reported at once). Then every row: ``label1`` in ``LR2, LR3, LR4A, LR4B``; every array cell a numeric 2-D numpy
    array of 1 to :data:`MAX_IMAGE_SIDE` pixels a side; one shape per row; finite HU in ``hu_array`` and
    ``hu_array_old``; mask values in {0, 1} or {0, 255}. Rows are checked one at a time, so no full copy of the
    frame is made.

    Args:
        df: the unpickled frame.
        source: file name used in messages.

    Raises:
        LungRadsSchemaError: (a ValueError) listing every violation with the file, the row (0-based position)
            and what was expected vs found.
    """
    if not isinstance(df, pd.DataFrame):
        raise LungRadsSchemaError(source, [f"{source}: expected a pandas DataFrame, found {type(df).__name__}"])
    try:
        columns = list(df.columns)
        n_rows = len(df)
    except AttributeError:  # a DataFrame made with DataFrame.__new__ and never given its data
        raise LungRadsSchemaError(
            source, [f"{source}: a pandas DataFrame without data (its state was never set)"]
        ) from None
    violations = _column_violations(columns, source)
    if n_rows == 0:
        violations.append(f"{source}: expected at least one row, found none")
    if n_rows > MAX_ROWS:
        violations.append(f"{source}: expected at most MAX_ROWS = {MAX_ROWS} rows, found {n_rows}")
    if violations:
        raise LungRadsSchemaError(source, violations)
    positions = [columns.index(c) for c in LUNGRADS_COLUMNS]
    for row_index in range(n_rows):
        row = {c: df.iat[row_index, p] for c, p in zip(LUNGRADS_COLUMNS, positions)}
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


#: How many folder levels below ``data_dir`` :func:`find_lungrads_pickles` looks (the Mendeley archive unpacks 2 deep).
SEARCH_MAX_DEPTH = 4
#: How many files and folders :func:`find_lungrads_pickles` visits before it stops (a wrong ``data_dir`` such as
#: ``/usr`` holds hundreds of thousands).
SEARCH_MAX_ENTRIES = 20_000
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")
# words in the name of an archive that may hold the pickles (the Mendeley archive is named after its DOI 5rr22hgzwr)
_ARCHIVE_NAME_WORDS = ("lung", "cancer", "rads", "5rr22hgzwr")


def _walk_files(root: Path, max_depth: int, max_entries: int) -> tuple[list[Path], bool]:
    """Files below ``root``, breadth first, in one walk; returns (files, whether the walk finished within bounds).

    Symbolic links to folders are followed once (their real path is remembered, so a link loop ends).
    """
    files: list[Path] = []
    seen_folders = {os.path.realpath(root)}
    queue = collections.deque([(root, 0)])
    visited = 0
    while queue:
        folder, depth = queue.popleft()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    visited += 1
                    if visited > max_entries:
                        return files, False
                    try:
                        if entry.is_dir():
                            real = os.path.realpath(entry.path)
                            if depth < max_depth and real not in seen_folders:
                                seen_folders.add(real)
                                queue.append((Path(entry.path), depth + 1))
                        elif entry.is_file():
                            files.append(Path(entry.path))
                    except OSError:  # a broken link or a vanished entry: not a pickle
                        continue
        except OSError:  # an unreadable folder (permissions): nothing to find there
            continue
    return files, True


def _is_plausible_archive(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_ARCHIVE_SUFFIXES) and any(word in lower for word in _ARCHIVE_NAME_WORDS)


def find_lungrads_pickles(
    data_dir: str | Path, max_depth: int = SEARCH_MAX_DEPTH, max_entries: int = SEARCH_MAX_ENTRIES
) -> dict[str, Path]:
    """Find ``lung_cancer_train.pkl`` and ``lung_cancer_test.pkl`` in a folder or a few levels below it.

    Works with the unpacked Mendeley archive as downloaded (the files may sit in a nested folder). The search is
    one breadth-first walk, bounded so that a wrong ``data_dir`` (``/usr``, a home folder) fails fast: at most
    ``max_depth`` folder levels below ``data_dir`` and ``max_entries`` files and folders visited.

    Args:
        data_dir: folder holding the two pickles (or one of the pickle files themselves).
        max_depth: folder levels below ``data_dir`` searched (0: ``data_dir`` only).
        max_entries: files and folders visited at most before the search stops.

    Returns:
        ``{"train": path, "test": path}``.

    Raises:
        FileNotFoundError: if the folder or either file is missing. Says what was looked for, how deep, whether the
            search stopped at ``max_entries``, and names archives lying there whose names suggest the dataset
            (zip / tar / 7z / rar named with 'lung', 'cancer', 'rads' or the Mendeley id '5rr22hgzwr').
        ValueError: if a file name occurs more than once within the searched levels.
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.is_file():
        data_dir = data_dir.parent
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder (expected the folder holding the Lung-RADS pickles)")
    files, complete = _walk_files(data_dir, max_depth, max_entries)
    found: dict[str, Path] = {}
    for split, name in LUNGRADS_FILE_NAMES.items():
        matches = sorted(p for p in files if p.name.lower() == name)
        if len(matches) > 1:
            raise ValueError(f"{data_dir}: {name} found more than once ({[str(m) for m in matches]}); keep one")
        if matches:
            found[split] = matches[0]
    missing = [LUNGRADS_FILE_NAMES[s] for s in LUNGRADS_FILE_NAMES if s not in found]
    if missing:
        message = f"{data_dir}: missing {missing} (searched this folder and {max_depth} folder levels below)"
        if not complete:
            message += (
                f"; stopped after visiting {max_entries} files and folders: set data_dir to the folder that holds "
                "the pickles, not a system or home folder"
            )
        archives = sorted(str(p.relative_to(data_dir)) for p in files if _is_plausible_archive(p.name))
        if archives:
            message += f"; unpack the archive(s) {archives} first"
        raise FileNotFoundError(message)
    return found


__all__ = [
    "ALLOWED_GLOBALS",
    "LUNGRADS_COLUMNS",
    "LUNGRADS_FILE_NAMES",
    "MAX_ARRAY_ELEMENTS",
    "MAX_COLUMNS",
    "MAX_IMAGE_SIDE",
    "MAX_ROWS",
    "SEARCH_MAX_DEPTH",
    "SEARCH_MAX_ENTRIES",
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
