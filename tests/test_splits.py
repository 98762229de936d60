"""Validation split: stratified, in blocks of neighbouring rows, never touching test, reproducible; patient-wise
splits: every patient in exactly one split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungkit.data.splits import (
    assign_patient_splits,
    assign_validation_split,
    describe_patient_split,
    split_counts,
)

TRAIN_CLASS_SIZES = {"LR2": 40, "LR3": 30, "LR4A": 52, "LR4B": 21}


def _manifest() -> pd.DataFrame:
    """Train rows grouped by class (as in the pickles), then test rows."""
    rows = []
    position = 0
    for label, count in TRAIN_CLASS_SIZES.items():
        for _ in range(count):
            rows.append({"split": "train", "label1": label, "source_file": "lung_cancer_train.pkl",
                         "source_row": position})
            position += 1
    for index, label in enumerate(["LR2"] * 5 + ["LR3"] * 5 + ["LR4A"] * 10 + ["LR4B"] * 10):
        rows.append({"split": "test", "label1": label, "source_file": "lung_cancer_test.pkl", "source_row": index})
    manifest = pd.DataFrame(rows)
    manifest.insert(0, "id", [f"{s}_{r:06d}" for s, r in zip(manifest["split"], manifest["source_row"])])
    return manifest


def test_stratified_blockwise_and_disjoint_from_test():
    manifest = _manifest()
    result = assign_validation_split(manifest, fraction=0.15, seed=0, block_size=4)
    test = manifest["split"] == "test"
    pd.testing.assert_frame_equal(result[test], manifest[test])
    assert set(result.loc[~test, "split"]) == {"train", "val"}
    for label, count in TRAIN_CLASS_SIZES.items():
        rows = result[(~test) & (result["label1"] == label)]
        n_val = int((rows["split"] == "val").sum())
        assert 1 <= n_val and abs(n_val - 0.15 * count) <= 4, (label, n_val)
        # blocks, counted independently: consecutive groups of 4 from the start of the class
        block_of_row = np.arange(len(rows)) // 4
        for block in np.unique(block_of_row):
            assert rows["split"].to_numpy()[block_of_row == block].tolist() in (
                ["val"] * int((block_of_row == block).sum()),
                ["train"] * int((block_of_row == block).sum()),
            )
    assert abs((result["split"] == "val").sum() / (~test).sum() - 0.15) < 0.05


def test_reproducible_with_seed_and_different_with_another():
    manifest = _manifest()
    first = assign_validation_split(manifest, seed=7)
    pd.testing.assert_frame_equal(first, assign_validation_split(manifest, seed=7))
    assert not first["split"].equals(assign_validation_split(manifest, seed=8)["split"])
    # reassigning a manifest that already has val rows gives the same answer
    pd.testing.assert_frame_equal(assign_validation_split(first, seed=7), first)


def test_input_is_not_modified_and_zero_fraction_gives_no_val():
    manifest = _manifest()
    before = manifest.copy()
    assign_validation_split(manifest, fraction=0.3)
    pd.testing.assert_frame_equal(manifest, before)
    assert (assign_validation_split(manifest, fraction=0.0)["split"] != "val").all()


def test_blocks_do_not_cross_gaps_in_row_numbers():
    # rows 0-5 and 100-105 of one class: a block must not join row 5 with row 100
    small = pd.DataFrame({"split": "train", "label1": "LR2", "source_file": "f.pkl",
                          "source_row": [0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105]})
    blocks = [{0, 1, 2, 3}, {4, 5}, {100, 101, 102, 103}, {104, 105}]
    for seed in range(6):
        result = assign_validation_split(small, fraction=0.3, seed=seed, block_size=4)
        val_rows = set(result.loc[result["split"] == "val", "source_row"])
        assert val_rows
        for block in blocks:
            assert block <= val_rows or not (block & val_rows), (seed, val_rows)


def test_bad_arguments():
    manifest = _manifest()
    with pytest.raises(ValueError, match="fraction"):
        assign_validation_split(manifest, fraction=1.0)
    with pytest.raises(ValueError, match="block_size"):
        assign_validation_split(manifest, block_size=0)
    with pytest.raises(ValueError, match="missing columns"):
        assign_validation_split(manifest.drop(columns=["source_row"]))
    with pytest.raises(ValueError, match="unknown split"):
        assign_validation_split(manifest.assign(split="holdout"))


def test_split_counts_against_manual_counts():
    result = assign_validation_split(_manifest(), seed=3)
    table = split_counts(result)
    assert list(table.index) == ["train", "val", "test"]
    assert list(table.columns) == ["LR2", "LR3", "LR4A", "LR4B", "total"]
    for split in ("train", "val", "test"):
        for label in TRAIN_CLASS_SIZES:
            assert table.loc[split, label] == ((result["split"] == split) & (result["label1"] == label)).sum()
        assert table.loc[split, "total"] == (result["split"] == split).sum()


# -- patient-wise splits ---------------------------------------------------------------------------------------------


def _patients_manifest(slices_per_patient: dict[str, int], test: tuple[str, ...] = ()) -> pd.DataFrame:
    rows = [{"split": "test" if patient in test else "train", "label1": "nodule", "patient": patient,
             "source_file": f"{patient}.png", "source_row": -1}
            for patient, count in slices_per_patient.items() for _ in range(count)]
    return pd.DataFrame(rows)


def _patients_by_split(result: pd.DataFrame) -> dict[str, set]:
    return {split: set(result.loc[result["split"] == split, "patient"]) for split in ("train", "val", "test")}


@pytest.mark.parametrize("n_patients", [2, 3, 7, 20])
def test_patient_split_never_leaks_a_patient(n_patients):
    rng = np.random.default_rng(n_patients)
    sizes = {f"P{i:02d}": int(rng.integers(1, 9)) for i in range(n_patients)}
    manifest = _patients_manifest(sizes)
    for seed in range(5):
        for test_fraction in (0.0, 0.2, 0.5, 0.9):
            for val_fraction in (0.0, 0.15, 0.5, 0.9):
                result = assign_patient_splits(manifest, test_fraction=test_fraction, val_fraction=val_fraction,
                                               seed=seed)
                by_split = _patients_by_split(result)
                assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                            or by_split["val"] & by_split["test"]), (seed, test_fraction, val_fraction)
                assert set(result["split"]) <= {"train", "val", "test"} and len(result) == len(manifest)
                assert set().union(*by_split.values()) == set(sizes)  # every patient, hence every row, assigned
                assert by_split["train"], (seed, test_fraction, val_fraction)
                # a non-zero fraction takes at least one patient when there are two to choose from
                assert bool(by_split["test"]) == (test_fraction > 0)
                if val_fraction > 0 and n_patients - len(by_split["test"]) >= 2:
                    assert by_split["val"]
                pd.testing.assert_frame_equal(result.drop(columns="split"), manifest.drop(columns="split"))


def test_patient_split_fractions_count_patients_and_are_seeded():
    manifest = _patients_manifest({f"P{i}": 1 + 10 * (i == 0) for i in range(10)})  # P0 holds 11 slices
    result = assign_patient_splits(manifest, test_fraction=0.2, val_fraction=0.25, seed=4)
    by_split = _patients_by_split(result)
    assert len(by_split["test"]) == 2 and len(by_split["val"]) == 2 and len(by_split["train"]) == 6
    pd.testing.assert_frame_equal(result, assign_patient_splits(manifest, test_fraction=0.2, val_fraction=0.25,
                                                                seed=4))
    draws = {tuple(sorted(_patients_by_split(assign_patient_splits(manifest, test_fraction=0.2, seed=s))["test"]))
             for s in range(8)}
    assert len(draws) > 1


def test_patient_split_honours_named_patients():
    manifest = _patients_manifest({"a": 3, "b": 2, "c": 4, "d": 1})
    result = assign_patient_splits(manifest, test_patients=["c"], val_patients=["a", "d"])
    assert _patients_by_split(result) == {"train": {"b"}, "val": {"a", "d"}, "test": {"c"}}
    assert (result.loc[result["patient"] == "c", "split"] == "test").sum() == 4
    # named patients win over fractions, and an empty list means none
    result = assign_patient_splits(manifest, test_patients=[], val_patients=["b"], test_fraction=0.5)
    assert _patients_by_split(result) == {"train": {"a", "c", "d"}, "val": {"b"}, "test": set()}
    # ids are compared as text: a numeric patient column works with string names
    numeric = manifest.assign(patient=manifest["patient"].map({"a": 1, "b": 2, "c": 3, "d": 4}))
    result = assign_patient_splits(numeric, test_patients=["3"], val_fraction=0.0)
    assert set(result.loc[result["split"] == "test", "patient"]) == {3}


def test_patient_split_refusals():
    manifest = _patients_manifest({"a": 3, "b": 2, "c": 4})
    with pytest.raises(ValueError, match=r"\['zz'\] not among"):
        assign_patient_splits(manifest, test_patients=["zz"])
    with pytest.raises(ValueError, match=r"validation patient\(s\) \['q'\]"):
        assign_patient_splits(manifest, val_patients=["q"])
    with pytest.raises(ValueError, match="both test and validation"):
        assign_patient_splits(manifest, test_patients=["a"], val_patients=["a"])
    with pytest.raises(ValueError, match="no training patient"):
        assign_patient_splits(manifest, test_patients=["a"], val_patients=["b", "c"])
    with pytest.raises(ValueError, match="no 'patient' column"):
        assign_patient_splits(manifest.drop(columns="patient"))
    with pytest.raises(ValueError, match="test_fraction"):
        assign_patient_splits(manifest, test_fraction=1.0)


def test_given_test_set_is_kept_and_leaks_refused():
    manifest = _patients_manifest({"a": 3, "b": 2, "c": 4, "t1": 2, "t2": 1}, test=("t1", "t2"))
    for seed in range(4):
        result = assign_patient_splits(manifest, test_fraction=0.0, val_fraction=0.4, seed=seed)
        by_split = _patients_by_split(result)
        assert by_split["test"] == {"t1", "t2"}
        assert len(by_split["val"]) == 1 and len(by_split["train"]) == 2
    # more test patients may be drawn from the rest; the given ones stay
    result = assign_patient_splits(manifest, test_fraction=0.3, val_fraction=0.0)
    assert {"t1", "t2"} < _patients_by_split(result)["test"]
    # naming a patient that is already test is harmless
    result = assign_patient_splits(manifest, test_patients=["t1", "a"], val_fraction=0.0)
    assert _patients_by_split(result)["test"] == {"t1", "t2", "a"}
    # rows marked val by an earlier run are free again: the result depends only on the inputs
    again = assign_patient_splits(result, test_patients=["a"], val_fraction=0.0)
    pd.testing.assert_frame_equal(again, result)
    leaking = manifest.copy()
    leaking.loc[leaking.index[0], "patient"] = "t1"  # one slice of test patient t1 sits in train
    with pytest.raises(ValueError, match=r"\['t1'\] are in the given test set"):
        assign_patient_splits(leaking)
    only_test = _patients_manifest({"t": 2, "u": 1}, test=("t", "u"))
    with pytest.raises(ValueError, match="no training patient"):
        assign_patient_splits(only_test)


def test_describe_patient_split_names_unit_and_test_patients():
    manifest = _patients_manifest({"LIDC-IDRI-2": 28, "LIDC-IDRI-19": 24, "LIDC-IDRI-29": 19, "LIDC-IDRI-72": 21,
                                   "LIDC-IDRI-313": 17})
    result = assign_patient_splits(manifest, test_patients=["LIDC-IDRI-313", "LIDC-IDRI-72"], val_fraction=0.0)
    assert describe_patient_split(result) == (
        "by patient: train 3 patient(s) (71 slices), val 0, test 2 patient(s) (38 slices: LIDC-IDRI-313, LIDC-IDRI-72)"
    )
    many = _patients_manifest({f"P{i}": 1 for i in range(10)})
    text = describe_patient_split(assign_patient_splits(many, test_fraction=0.8, val_fraction=0.0))
    assert "test 8 patient(s) (8 slices)" in text and "P" not in text.split("test")[1]  # too many to list
