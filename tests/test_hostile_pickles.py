"""Hand-made hostile and broken pickles against the Lung-RADS reader (issue 12).

Each test builds its own input: a small class whose ``__reduce__`` makes the pickler write a call of an allowed
global with crafted arguments (or raw opcodes where the pickler would not write them). The hostile files are loaded
in a child Python with a timeout, so a crash (SIGSEGV) or a hang fails the test instead of killing pytest; the test
then asserts a normal exit and the reader's own error message.
"""

from __future__ import annotations

import copyreg
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.core.internals.managers import BlockManager

from lungkit.data.lungrads import (
    ALLOWED_GLOBALS,
    LUNGRADS_COLUMNS,
    MAX_ROWS,
    CorruptPickleError,
    LungRadsSchemaError,
    find_lungrads_pickles,
    load_lungrads_pickle,
    validate_lungrads_frame,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
_reconstruct = np._core.multiarray._reconstruct
_frombuffer = np._core.numeric._frombuffer
_new_Index = pd.core.indexes.base._new_Index
_unpickle_block = pd._libs.internals._unpickle_block

# Child process: load one file, print the error type and message (or LOADED), exit normally.
_LOADER = """
import sys
from lungkit.data.lungrads import load_lungrads_pickle
try:
    frame = load_lungrads_pickle(sys.argv[1])
except Exception as error:
    print(type(error).__name__)
    print(error)
else:
    print("LOADED")
"""

# Child process for many files: two lines per file (error class or LOADED, then the message on one line).
_MANY_LOADER = """
import sys
from lungkit.data.lungrads import load_lungrads_pickle
for path in sys.argv[1:]:
    try:
        load_lungrads_pickle(path)
    except Exception as error:
        print(type(error).__name__)
        print(str(error).replace(chr(10), " "))
    else:
        print("LOADED")
        print()
"""


def _load_in_child(path: Path, timeout: float = 60) -> tuple[str, str]:
    """Load ``path`` in a child Python; returns (error class name or 'LOADED', message). Fails on crash / hang."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        result = subprocess.run(
            [sys.executable, "-c", _LOADER, str(path)], capture_output=True, text=True, timeout=timeout,
            cwd=REPO_ROOT, env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path.name} hung for more than {timeout} s")
    assert result.returncode == 0, f"the reader crashed on {path.name} (exit {result.returncode}): {result.stderr}"
    kind, _, message = result.stdout.partition("\n")
    return kind, message


class _Call:
    """Pickles as a call ``func(*args)``, followed by BUILD ``state`` when one is given."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class _NewObject:
    """Pickles as ``cls.__new__(cls, *args, **kwargs)`` (NEWOBJ / NEWOBJ_EX), with no state."""

    def __init__(self, cls, *args, **kwargs):
        self.cls, self.args, self.kwargs = cls, args, kwargs

    def __reduce__(self):
        if self.kwargs:
            return (copyreg.__newobj_ex__, (self.cls, self.args, self.kwargs))
        return (copyreg.__newobj__, (self.cls, *self.args))


def _valid_frame(n_rows: int = 2, size: int = 8) -> pd.DataFrame:
    table = np.empty((n_rows, 4), dtype=object)
    for row in range(n_rows):
        hu = np.full((size, size), -800.0)
        mask = np.zeros((size, size), dtype=np.int64)
        mask[2:4, 2:4] = 1
        table[row] = ["LR3", mask, hu, hu]
    return pd.DataFrame(table, columns=pd.Index(list(LUNGRADS_COLUMNS), dtype=object), dtype=object)


def global_(module: str, name: str) -> bytes:
    """Opcodes pushing the global ``module.name`` (SHORT_BINUNICODE x 2, STACK_GLOBAL)."""
    return b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode() + b"\x93"


def _write(obj, path: Path) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def _in_a_cell(payload) -> pd.DataFrame:
    """A valid frame with ``payload`` as the hu_array_old cell of row 1 (where an attacker would hide it)."""
    frame = _valid_frame()
    frame.iat[1, 3] = payload
    return frame


def _assert_refused(path: Path, *fragments: str, kind: str = "UnsafePickleError") -> str:
    found_kind, message = _load_in_child(path)
    assert found_kind == kind, f"expected {kind}, got {found_kind}: {message}"
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


# -- defect 1: memory corruption through object arrays built from raw bytes ----------------------------------------

_FORGED_POINTER = b"A" * 8


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        pytest.param(  # the reported 257-byte file: ndarray(..., buffer=...) of object dtype inside DataFrame({...})
            _Call(pd.DataFrame, {"a": _Call(np.ndarray, (1,), np.dtype("O"), _FORGED_POINTER)}),
            ["refused call numpy.ndarray(...)", "raw memory"],
            id="ndarray-buffer-in-DataFrame-call",
        ),
        pytest.param(
            _in_a_cell(_Call(np.ndarray, (1,), np.dtype("O"), _FORGED_POINTER)),
            ["refused call numpy.ndarray(...)"],
            id="ndarray-buffer-in-a-cell",
        ),
        pytest.param(
            _in_a_cell(_NewObject(np.ndarray, (1,), dtype=np.dtype("O"), buffer=_FORGED_POINTER)),
            ["refused object creation numpy.ndarray.__new__"],
            id="ndarray-new-with-buffer-kwarg",
        ),
        pytest.param(
            _in_a_cell(_Call(_frombuffer, _FORGED_POINTER, np.dtype("O"), (1,), "C")),
            ["_frombuffer with an object dtype", "object arrays may only come from pickled Python objects"],
            id="frombuffer-object-dtype",
        ),
        pytest.param(  # numpy's own path (_reconstruct + BUILD) with a bytes payload for an object dtype
            _in_a_cell(_Call(_reconstruct, np.ndarray, (0,), b"b",
                             state=(1, (1,), np.dtype("O"), False, _FORGED_POINTER))),
            ["an object array of shape (1,) from a 8-byte bytes payload"],
            id="reconstruct-object-state-from-bytes",
        ),
        pytest.param(  # a structured dtype whose field is an object pointer
            _in_a_cell(_Call(np.dtype, "V8", False, True,
                             state=(3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))),
            ["refused numpy dtype('V8'"],
            id="void-dtype-with-object-field",
        ),
        pytest.param(  # the same through the state of an allowed plain dtype
            _in_a_cell(_Call(np.dtype, "f8", False, True,
                             state=(3, "<", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 63))),
            ["numpy dtype state", "fields"],
            id="plain-dtype-given-fields",
        ),
        pytest.param(  # object pointers declared big-endian would be byte-swapped into other addresses
            _in_a_cell(_Call(np.dtype, "O8", False, True, state=(3, ">", None, None, None, -1, -1, 63))),
            ["byte order '>' for object"],
            id="object-dtype-swapped",
        ),
        pytest.param(  # a finished array given a second state (BUILD) after it was checked
            _in_a_cell(_Call(_frombuffer, bytes(64), np.dtype("f8"), (8,), "C",
                             state=(1, (1,), np.dtype("O"), False, [0]))),
            ["state (BUILD) for a numpy.ndarray that is not waiting for it"],
            id="second-state-on-a-finished-array",
        ),
        pytest.param(  # pandas indexes block placements without bounds checks
            _Call(BlockManager,
                  (_Call(_unpickle_block, np.empty((4, 1), dtype=object), np.array([0, 1, 2, 10**9]), 2),),
                  [_Call(_new_Index, pd.Index, {"data": np.array(list(LUNGRADS_COLUMNS), dtype=object)}),
                   _Call(_new_Index, pd.RangeIndex, {"start": 0, "stop": 1, "step": 1})]),
            ["pandas BlockManager: blocks placed at columns [0, 1, 2, 1000000000] for 4 columns"],
            id="block-placement-out-of-range",
        ),
        pytest.param(  # an array where numpy writes (0,): refused by the check, not by an elementwise ==
            _Call(_reconstruct, np.ndarray, np.zeros(2), b"b"),
            ["refused numpy _reconstruct"],
            id="reconstruct-with-array-arguments",
        ),
        pytest.param(
            _Call(pd._libs.arrays.__pyx_unpickle_NDArrayBacked, np.ndarray, 0, None),
            ["__pyx_unpickle_NDArrayBacked with other arguments"],
            id="ndarray-backed-of-another-class",
        ),
        pytest.param(
            _Call(_unpickle_block, np.empty((4, 1), dtype=object), slice(0, 4, 1), 2,
                  state={"values": np.empty((4, 1), dtype=object)}),
            ["state (BUILD) for a", "not waiting for it"],
            id="state-on-a-block",
        ),
    ],
)
def test_object_arrays_from_raw_memory_are_refused(tmp_path, payload, fragments):
    path = _write(payload, tmp_path / "lung_cancer_train.pkl")
    _assert_refused(path, *fragments)


def test_a_hand_assembled_forged_pointer_frame_is_refused(tmp_path):
    """The reported exploit assembled from opcodes (119 bytes).

    ``DataFrame({'a': ndarray((1,), dtype('O'), buffer=b'A' * 8)})``: the old reader died of SIGSEGV on it.
    """

    def short_bytes(data):
        return b"C" + bytes([len(data)]) + data

    payload = (
        b"\x80\x04"
        + global_("pandas.core.frame", "DataFrame")
        + b"}\x8c\x01a"  # EMPTY_DICT, key 'a'
        + global_("numpy", "ndarray")
        + b"K\x01\x85"  # (1,)
        + global_("numpy", "dtype") + b"\x8c\x02O8\x89\x88\x87R"  # dtype('O8', False, True)
        + b"(K\x03\x8c\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb"  # its state (BUILD)
        + short_bytes(_FORGED_POINTER)
        + b"\x87R"  # ndarray((1,), dtype('O'), b'AAAAAAAA')
        + b"s\x85R."  # d['a'] = ...; DataFrame(d)
    )
    path = tmp_path / "lung_cancer_test.pkl"
    path.write_bytes(payload)
    _assert_refused(path, "refused call numpy.ndarray(...)")


def test_every_allowed_global_called_with_junk_is_refused(tmp_path):
    """No allowed global may be called with arguments numpy / pandas never write (one child loads every file)."""
    junk_arguments = {"one-string": b"\x8c\x04junk\x85", "five-ints": b"(K\x01K\x02K\x03K\x04K\x05t"}
    paths = []
    for index, (module, name) in enumerate(sorted(ALLOWED_GLOBALS)):
        for label, arguments in junk_arguments.items():
            path = tmp_path / f"{index:02d}-{label}.pkl"
            path.write_bytes(b"\x80\x04" + global_(module, name) + arguments + b"R.")
            paths.append((f"{module}.{name}({label})", path))
    result = subprocess.run([sys.executable, "-c", _MANY_LOADER, *(str(p) for _, p in paths)], capture_output=True,
                            text=True, timeout=120, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, f"the reader crashed (exit {result.returncode}): {result.stderr}"
    lines = result.stdout.splitlines()
    assert len(lines) == 2 * len(paths)
    for (call, path), kind, message in zip(paths, lines[0::2], lines[1::2]):
        assert kind == "UnsafePickleError" and f"{path}: refused" in message, f"{call}: {kind}: {message}"


# -- defect 2: a 60-byte pickle that hangs ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        pytest.param(_Call(pd.DataFrame, None, _Call(pd.RangeIndex, 0, 10**15)),
                     ["refused call pandas.RangeIndex(...)"], id="RangeIndex-called"),
        pytest.param(_Call(_new_Index, pd.RangeIndex, {"start": 0, "stop": 10**15, "step": 1}),
                     [f"a RangeIndex of 1000000000000000 rows (at most MAX_ROWS = {MAX_ROWS})"], id="huge-RangeIndex"),
        pytest.param(_Call(pd.DataFrame, None, None), ["refused call pandas.DataFrame(...)"], id="DataFrame-called"),
    ],
)
def test_absurd_row_counts_are_refused_at_construction(tmp_path, payload, fragments):
    path = _write(payload, tmp_path / "lung_cancer_train.pkl")
    _assert_refused(path, *fragments)


def test_validator_checks_columns_and_row_count_before_any_row(tmp_path):
    """A frame of 10**15 rows and no columns is reported at once, not after looping over every row."""
    code = (
        "import pandas as pd\n"
        "from lungkit.data.lungrads import validate_lungrads_frame, LungRadsSchemaError\n"
        "try:\n"
        "    validate_lungrads_frame(pd.DataFrame(None, pd.RangeIndex(0, 10**15)), 'huge.pkl')\n"
        "except LungRadsSchemaError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
    assert "huge.pkl: columns: missing ['label1', 'mask', 'hu_array', 'hu_array_old']" in result.stdout
    assert f"expected at most MAX_ROWS = {MAX_ROWS} rows, found 1000000000000000" in result.stdout
    assert "row 0" not in result.stdout


# -- defect 3: arrays not backed by bytes in the file, and size caps -----------------------------------------------

@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        pytest.param(_in_a_cell(_Call(np.ndarray, (10000, 10000), np.dtype("f8"))),
                     ["refused call numpy.ndarray(...)"], id="uninitialised-ndarray"),
        pytest.param(_in_a_cell(_Call(_reconstruct, np.ndarray, (0,), b"b",
                                      state=(1, (2000, 2000), np.dtype("f8"), False, b""))),
                     ["a float64 array of shape (2000, 2000): it needs 32000000 bytes but the file supplies 0"],
                     id="state-without-bytes"),
        pytest.param(_in_a_cell(_Call(_reconstruct, np.ndarray, (0,), b"b",
                                      state=(1, (10000, 10000), np.dtype("f8"), False, b""))),
                     ["shape (10000, 10000) (at most MAX_IMAGE_SIDE = 4096 px a side)"], id="side-above-cap"),
        pytest.param(_in_a_cell(_Call(_frombuffer, b"", np.dtype("f8"), (200000, 200000), "C")),
                     ["(at most MAX_IMAGE_SIDE = 4096 px a side)"], id="320-GB-declared"),
        pytest.param(_in_a_cell(_Call(_frombuffer, bytes(8 * 4096), np.dtype("f8"), (4096, 4096), "C")),
                     ["it needs 134217728 bytes but the file supplies 32768"], id="frombuffer-short"),
        pytest.param(_in_a_cell(_Call(_reconstruct, np.ndarray, (0,), b"b",
                                      state=(1, (3, 3), np.dtype("O"), False, [1, 2]))),
                     ["an object array of shape (3, 3) with 2 elements supplied"], id="object-list-short"),
    ],
)
def test_arrays_must_be_backed_by_the_file_and_within_caps(tmp_path, payload, fragments):
    path = _write(payload, tmp_path / "lung_cancer_train.pkl")
    _assert_refused(path, *fragments)


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x96"], ids=["BINBYTES8", "BYTEARRAY8"])
def test_a_declared_length_beyond_the_file_is_refused_before_allocating(tmp_path, opcode):
    path = tmp_path / "lung_cancer_test.pkl"
    path.write_bytes(b"\x80\x05" + opcode + struct.pack("<Q", 320 * 10**9) + b".")
    _assert_refused(path, "truncated or not a pickle", "320000000000 bytes wanted", kind="CorruptPickleError")


# -- defect 7: empty arrays and a DataFrame without state ----------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 0), (0, 8)])
def test_empty_arrays_are_a_schema_violation(tmp_path, shape):
    frame = _valid_frame()
    for column in (1, 2, 3):
        frame.iat[1, column] = np.zeros(shape, dtype=np.int64 if column == 1 else np.float64)
    path = _write(frame, tmp_path / "lung_cancer_test.pkl")
    with pytest.raises(LungRadsSchemaError) as caught:
        load_lungrads_pickle(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"row 1: column 'mask': expected an image of 1 to 4096 pixels a side, found shape {shape}" in message
    assert f"row 1: column 'hu_array_old': expected an image of 1 to 4096 pixels a side, found shape {shape}" in message
    assert "row 0" not in message


def test_a_dataframe_without_state_is_a_clear_error(tmp_path):
    # DataFrame.__new__(DataFrame) and no BUILD (the pickler will not write this for a _NewObject stand-in)
    path = tmp_path / "lung_cancer_test.pkl"
    path.write_bytes(b"\x80\x04" + global_("pandas.core.frame", "DataFrame") + b")\x81.")
    message = _assert_refused(path, "creates pandas.DataFrame but never sets its state", kind="CorruptPickleError")
    assert "AttributeError" not in message
    with pytest.raises(CorruptPickleError, match="never sets its state"):
        load_lungrads_pickle(path)


def test_the_validator_names_a_dataframe_without_data():
    with pytest.raises(LungRadsSchemaError, match="x.pkl: a pandas DataFrame without data"):
        validate_lungrads_frame(pd.DataFrame.__new__(pd.DataFrame), "x.pkl")


# -- defect 9: a bounded search for the pickles --------------------------------------------------------------------

def test_search_is_one_walk_and_bounded_in_depth(tmp_path, monkeypatch):
    deep = tmp_path.joinpath("a", "b", "c", "d", "e")
    deep.mkdir(parents=True)
    for name in ("lung_cancer_train.pkl", "lung_cancer_test.pkl"):
        (deep / name).write_bytes(b"x")
    listed = []
    real_scandir = os.scandir

    def counting_scandir(path):
        listed.append(os.path.realpath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    with pytest.raises(FileNotFoundError, match=r"searched this folder and 4 folder levels below") as caught:
        find_lungrads_pickles(tmp_path)
    assert "stopped after" not in str(caught.value)
    assert len(listed) == len(set(listed)) == 5  # tmp_path, a, b, c, d: each folder listed once, e not at all
    listed.clear()
    assert find_lungrads_pickles(tmp_path, max_depth=5)["test"] == deep / "lung_cancer_test.pkl"
    assert len(listed) == 6


def test_search_stops_after_max_entries_and_says_so(tmp_path):
    for index in range(30):
        (tmp_path / f"file{index:02d}.txt").write_text("x")
    with pytest.raises(FileNotFoundError) as caught:
        find_lungrads_pickles(tmp_path, max_entries=10)
    message = str(caught.value)
    assert "stopped after visiting 10 files and folders" in message and "not a system or home folder" in message


def test_search_hint_names_only_plausible_archives(tmp_path):
    (tmp_path / "downloads").mkdir()
    for name in ("photos.zip", "python-3.11.tar.gz", "downloads/Lung Cancer CT.zip", "5rr22hgzwr-1.zip",
                 "downloads/lungrads.tar"):
        (tmp_path / name).write_bytes(b"PK")
    with pytest.raises(FileNotFoundError) as caught:
        find_lungrads_pickles(tmp_path)
    hint = str(caught.value).split("unpack the archive(s)")[1]
    assert "5rr22hgzwr-1.zip" in hint and "Lung Cancer CT.zip" in hint and "lungrads.tar" in hint
    assert "photos" not in hint and "python" not in hint


def test_search_follows_a_link_loop_only_once(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "loop").symlink_to(tmp_path)
    (tmp_path / "data" / "lung_cancer_train.pkl").write_bytes(b"x")
    (tmp_path / "lung_cancer_test.pkl").write_bytes(b"x")
    found = find_lungrads_pickles(tmp_path)
    assert found == {"train": tmp_path / "data" / "lung_cancer_train.pkl", "test": tmp_path / "lung_cancer_test.pkl"}
