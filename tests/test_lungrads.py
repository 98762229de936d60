"""Lung-RADS pickle reader: restricted unpickling, old-pandas compatibility, schema validation, clear errors."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import subprocess

import numpy as np
import pandas as pd
import pytest

from lungkit.data.lungrads import (
    LUNGRADS_COLUMNS,
    CorruptPickleError,
    LungRadsSchemaError,
    UnsafePickleError,
    find_lungrads_pickles,
    iter_lungrads_slices,
    load_lungrads_pickle,
)


def _valid_frame(n_rows: int = 3, size: int = 8, mask_dtype=np.int64) -> pd.DataFrame:
    """A small frame in the exact Lung-RADS layout (object columns, object column labels)."""
    rng = np.random.default_rng(0)
    table = np.empty((n_rows, 4), dtype=object)
    for row in range(n_rows):
        hu = np.rint(rng.uniform(-1024, 400, size=(size, size)))
        lungs = np.zeros((size, size), dtype=bool)
        lungs[2:6, 1:7] = True
        mask = np.zeros((size, size), dtype=mask_dtype)
        mask[3:5, 3:5] = 1
        table[row] = ["LR2", mask, hu * lungs, hu]
    return pd.DataFrame(table, columns=pd.Index(list(LUNGRADS_COLUMNS), dtype=object), dtype=object)


def _dump(obj, path, protocol=4):
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=protocol)
    return path


class _RunsShellCommand:
    """A pickle payload that would run a shell command when unpickled by an unrestricted unpickler."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsSubprocess:
    def __reduce__(self):
        return (subprocess.check_call, (["true"],))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_refuses_os_system_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = _dump(_RunsShellCommand(f"touch {marker}"), tmp_path / "evil.pkl")
    with pytest.raises(UnsafePickleError) as caught:
        load_lungrads_pickle(path)
    message = str(caught.value)
    assert str(path) in message
    assert "refused global" in message and "system" in message  # os.system pickles as posix.system on Linux
    assert not marker.exists()


def test_refuses_payload_hidden_in_a_dataframe_cell(tmp_path):
    marker = tmp_path / "pwned"
    frame = _valid_frame()
    frame.iat[1, 0] = _RunsShellCommand(f"touch {marker}")
    path = _dump(frame, tmp_path / "lung_cancer_train.pkl")
    with pytest.raises(UnsafePickleError, match="refused global"):
        load_lungrads_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize(("payload", "refused"), [(_Evaluates(), "builtins.eval"), (_RunsSubprocess(), "subprocess")])
def test_refuses_other_callables(tmp_path, payload, refused):
    path = _dump(payload, tmp_path / "x.pkl")
    with pytest.raises(UnsafePickleError, match=refused):
        load_lungrads_pickle(path)


def test_reads_the_real_samples_written_by_pandas_1_5(lungrads_sample):
    pickles = find_lungrads_pickles(lungrads_sample)
    expected = {"train": (11, "LR4B", np.int64), "test": (3, "LR4A", np.int8)}
    for split, (n_rows, label, mask_dtype) in expected.items():
        frame = load_lungrads_pickle(pickles[split])
        assert list(frame.columns) == list(LUNGRADS_COLUMNS)
        assert len(frame) == n_rows
        assert set(frame["label1"]) == {label}
        for row in range(n_rows):
            mask, hu_lung, hu = frame.iat[row, 1], frame.iat[row, 2], frame.iat[row, 3]
            assert mask.shape == hu_lung.shape == hu.shape == (512, 512)
            assert mask.dtype == mask_dtype and hu.dtype == np.float64 and hu_lung.dtype == np.float64
        # the same frame as pandas' own (unrestricted) reader gives
        reference = pd.read_pickle(pickles[split])
        for row in range(n_rows):
            for column in range(4):
                np.testing.assert_array_equal(frame.iat[row, column], reference.iat[row, column])


def test_slices_of_the_real_samples(lungrads_sample):
    path = find_lungrads_pickles(lungrads_sample)["test"]
    reference = pd.read_pickle(path)
    slices = list(iter_lungrads_slices(path))
    assert [s.source_row for s in slices] == [0, 1, 2]
    for item in slices:
        row = reference.iloc[item.source_row]
        assert item.hu.dtype == np.float32 and item.mask.dtype == np.uint8 and item.lung_mask.dtype == np.uint8
        np.testing.assert_array_equal(item.hu, row["hu_array_old"].astype(np.float32))
        np.testing.assert_array_equal(item.mask, row["mask"].astype(np.uint8))
        np.testing.assert_array_equal(item.lung_mask, (row["hu_array"] != 0).astype(np.uint8))
        assert item.mask.sum() > 0 and 0 < item.lung_mask.mean() < 1
        assert item.label1 == "LR4A" and item.source_file == "lung_cancer_test.pkl"


@pytest.mark.parametrize("protocol", [4, 5])
def test_reads_frames_written_by_todays_pandas(tmp_path, protocol):
    frame = _valid_frame()
    # today's pandas default: label column as the str dtype, column labels as str
    modern = pd.DataFrame({c: list(frame[c]) for c in LUNGRADS_COLUMNS})
    path = tmp_path / "modern.pkl"
    modern.to_pickle(path, protocol=protocol)
    loaded = load_lungrads_pickle(path)
    assert list(loaded["label1"]) == ["LR2"] * 3
    np.testing.assert_array_equal(loaded.iat[2, 3], frame.iat[2, 3])


class _Pandas1_0Pickler(pickle.Pickler):
    """Writes a DataFrame the way pandas 1.0-1.2 did: block manager state as the "0.14.1" tuple, ``_data`` key."""

    def reducer_override(self, obj):
        from pandas.core.internals.managers import BlockManager

        if type(obj) is BlockManager:
            axes = list(obj.axes)
            blocks = [{"values": b.values, "mgr_locs": b.mgr_locs.indexer} for b in obj.blocks]
            state = (axes, [b["values"] for b in blocks], [obj.items[b["mgr_locs"]] for b in blocks],
                     {"0.14.1": {"axes": axes, "blocks": blocks}})
            return (copyreg.__newobj__, (BlockManager,), state)
        if type(obj) is pd.DataFrame:
            return (copyreg.__newobj__, (pd.DataFrame,), {"_data": obj._mgr, "_typ": "dataframe", "_metadata": []})
        return NotImplemented


def test_reads_the_block_manager_layout_of_pandas_1_0(tmp_path):
    frame = _valid_frame()
    buffer = io.BytesIO()
    _Pandas1_0Pickler(buffer, protocol=4).dump(frame)
    assert b"_unpickle_block" not in buffer.getvalue()  # really the old layout
    path = tmp_path / "lung_cancer_train.pkl"
    path.write_bytes(buffer.getvalue())
    loaded = load_lungrads_pickle(path)
    assert list(loaded.columns) == list(LUNGRADS_COLUMNS)
    for row in range(3):
        for column in range(4):
            np.testing.assert_array_equal(loaded.iat[row, column], frame.iat[row, column])


def _schema_error(frame, tmp_path, name="lung_cancer_test.pkl") -> LungRadsSchemaError:
    path = _dump(frame, tmp_path / name)
    with pytest.raises(LungRadsSchemaError) as caught:
        load_lungrads_pickle(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_missing_column(tmp_path):
    error = _schema_error(_valid_frame().drop(columns=["hu_array"]), tmp_path)
    assert "missing ['hu_array']" in str(error)


def test_extra_and_misordered_columns(tmp_path):
    frame = _valid_frame()
    frame = frame[["mask", "label1", "hu_array", "hu_array_old"]].assign(patient="x")
    message = str(_schema_error(frame, tmp_path))
    assert "unexpected extra ['patient']" in message
    assert "expected the order ['label1', 'mask', 'hu_array', 'hu_array_old']" in message


def test_wrong_shape_within_a_row(tmp_path):
    frame = _valid_frame()
    frame.iat[1, 3] = np.zeros((8, 9))
    message = str(_schema_error(frame, tmp_path))
    assert "row 1" in message and "one shape" in message and "(8, 9)" in message
    assert "row 0" not in message and "row 2" not in message


def test_not_two_dimensional(tmp_path):
    frame = _valid_frame()
    frame.iat[0, 1] = np.zeros((8, 8, 1), dtype=np.int64)
    message = str(_schema_error(frame, tmp_path))
    assert "row 0: column 'mask': expected a 2-D array, found shape (8, 8, 1)" in message


def test_nan_in_hu(tmp_path):
    frame = _valid_frame()
    hu = frame.iat[2, 3].copy()
    hu[0, 0] = np.nan
    hu[1, 1] = np.inf
    frame.iat[2, 3] = hu
    message = str(_schema_error(frame, tmp_path))
    assert "row 2: column 'hu_array_old': expected finite HU, found 2 NaN/inf value(s)" in message


def test_mask_value_seven(tmp_path):
    frame = _valid_frame()
    mask = frame.iat[0, 1].copy()
    mask[0, 0] = 7
    frame.iat[0, 1] = mask
    message = str(_schema_error(frame, tmp_path))
    assert "row 0: column 'mask': expected values in {0, 1} or {0, 255}, found [0, 1, 7]" in message


def test_mask_0_255_is_accepted_and_read_as_0_1(tmp_path):
    frame = _valid_frame()
    frame.iat[0, 1] = frame.iat[0, 1] * 255
    path = _dump(frame, tmp_path / "ok.pkl")
    first = next(iter_lungrads_slices(path))
    assert set(np.unique(first.mask)) == {0, 1}


def test_unknown_label(tmp_path):
    frame = _valid_frame()
    frame.iat[1, 0] = "LR5"
    message = str(_schema_error(frame, tmp_path))
    assert "row 1: column 'label1': expected one of ['LR2', 'LR3', 'LR4A', 'LR4B'], found 'LR5'" in message


def test_every_violation_is_collected(tmp_path):
    frame = _valid_frame(n_rows=4)
    frame.iat[0, 0] = "LR9"
    frame.iat[1, 1] = np.full((8, 8), 3, dtype=np.int64)
    hu = frame.iat[3, 2].copy()
    hu[4, 4] = np.nan
    frame.iat[3, 2] = hu
    error = _schema_error(frame, tmp_path)
    assert len(error.violations) == 3
    assert [v.split(": ")[1] for v in error.violations] == ["row 0", "row 1", "row 3"]


def test_not_a_dataframe(tmp_path):
    error = _schema_error([np.zeros((2, 2))], tmp_path)
    assert "expected a pandas DataFrame, found list" in str(error)


def test_truncated_file(tmp_path):
    full = _dump(_valid_frame(), tmp_path / "full.pkl").read_bytes()
    path = tmp_path / "lung_cancer_train.pkl"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(CorruptPickleError, match="truncated or not a pickle") as caught:
        load_lungrads_pickle(path)
    assert str(path) in str(caught.value)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "lung_cancer_test.pkl"
    path.write_text("label1,mask\nLR2,0\n")
    with pytest.raises(CorruptPickleError, match="truncated or not a pickle"):
        load_lungrads_pickle(path)


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "lung_cancer_train.pkl"
    with pytest.raises(FileNotFoundError, match=str(path)):
        load_lungrads_pickle(path)


def test_find_pickles_in_a_nested_download_folder(tmp_path):
    nested = tmp_path / "5rr22hgzwr-1" / "data"
    nested.mkdir(parents=True)
    for name in ("lung_cancer_train.pkl", "lung_cancer_test.pkl"):
        _dump(_valid_frame(), nested / name)
    found = find_lungrads_pickles(tmp_path)
    assert found == {"train": nested / "lung_cancer_train.pkl", "test": nested / "lung_cancer_test.pkl"}


def test_find_pickles_reports_what_is_missing(tmp_path):
    _dump(_valid_frame(), tmp_path / "lung_cancer_train.pkl")
    (tmp_path / "5rr22hgzwr-1.zip").write_bytes(b"PK")
    with pytest.raises(FileNotFoundError) as caught:
        find_lungrads_pickles(tmp_path)
    message = str(caught.value)
    assert "lung_cancer_test.pkl" in message and "lung_cancer_train.pkl" not in message.split("missing")[1]
    assert "unpack" in message
    with pytest.raises(FileNotFoundError, match="no such folder"):
        find_lungrads_pickles(tmp_path / "absent")
