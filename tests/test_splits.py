"""Validation split: stratified, in blocks of neighbouring rows, never touching test, reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungkit.data.splits import assign_validation_split, split_counts

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
