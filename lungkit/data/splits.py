"""Train / validation / test splits of a kit manifest.

The given train/test split of the Lung-RADS pickles is the test protocol and is never changed: test rows stay
test. Validation is carved out of train.

Why blocks: the pickles have no patient id, and neighbouring rows of one class very likely come from one patient
and scan (adjacent slices through the same nodule). Drawing single rows at random would put near-duplicate slices
on both sides of the train/validation line, so validation scores would flatter the model and early stopping would
stop late. Taking whole runs of ``block_size`` neighbouring rows keeps most such slices together; only slices at a
block edge can still have a neighbour on the other side. Larger blocks leak less and stratify more coarsely.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungkit.data.kit_dataset import LUNGRADS_LABELS, SPLITS

#: The protocol's split line for the Lung-RADS pickles (and the phantom in their schema).
LUNGRADS_SPLIT_DESCRIPTION = (
    "given train/test split; validation = 15% of train, class-stratified blocks of neighbouring rows"
)


def _runs_of_neighbours(source_rows: np.ndarray) -> list[np.ndarray]:
    """Split sorted row numbers into runs of consecutive numbers (positions into ``source_rows``)."""
    breaks = np.flatnonzero(np.diff(source_rows) != 1) + 1
    return np.split(np.arange(len(source_rows)), breaks)


def assign_validation_split(
    manifest: pd.DataFrame, fraction: float = 0.15, seed: int = 0, block_size: int = 4
) -> pd.DataFrame:
    """Mark about ``fraction`` of each class's train rows as ``val``, in blocks of neighbouring rows.

    For each class, train rows (ordered by source file and row) are cut into blocks of ``block_size`` rows that
    never cross a gap in the row numbers or a class boundary. Blocks are drawn in a seeded random order until the
    class's validation count is as close as possible to ``fraction`` of its train rows; a class with at least two
    blocks always gives at least one, so every class is validated (for small classes the share is then above
    ``fraction``). Rows already marked ``val`` are first returned to train, so the result depends only on the
    inputs. Test rows are never touched.

    Args:
        manifest: kit manifest with ``split``, ``label1``, ``source_file`` and ``source_row`` columns.
        fraction: target share of each class's train rows, in [0, 1).
        seed: random seed for the choice of blocks.
        block_size: rows per block (>= 1). 1 gives plain stratified sampling, which leaks neighbouring slices.

    Returns:
        A copy of the manifest with ``split`` updated.

    Raises:
        ValueError: for a missing column, an unknown split value, ``fraction`` outside [0, 1) or ``block_size < 1``.
    """
    missing = [c for c in ("split", "label1", "source_file", "source_row") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest: missing columns {missing} needed to carve the validation split")
    unknown = sorted(set(manifest["split"]) - set(SPLITS))
    if unknown:
        raise ValueError(f"manifest: unknown split value(s) {unknown}; expected among {SPLITS}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), found {fraction}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, found {block_size}")
    result = manifest.copy()
    trainable = result["split"].isin(("train", "val"))
    result.loc[trainable, "split"] = "train"
    rng = np.random.default_rng(seed)
    labels = [c for c in LUNGRADS_LABELS if c in set(result.loc[trainable, "label1"])]
    labels += sorted(set(result.loc[trainable, "label1"]) - set(LUNGRADS_LABELS))
    for label in labels:
        rows = result[trainable & (result["label1"] == label)].sort_values(["source_file", "source_row"])
        blocks = []
        for _, per_file in rows.groupby("source_file", sort=True):
            source_rows = per_file["source_row"].to_numpy()
            for run in _runs_of_neighbours(source_rows):
                for start in range(0, len(run), block_size):
                    blocks.append(per_file.index[run[start : start + block_size]])
        target = fraction * len(rows)
        if target <= 0 or len(blocks) < 2:
            continue
        chosen, count = [], 0
        for block_index in rng.permutation(len(blocks)):
            size = len(blocks[block_index])
            # take a block when that brings the count closer to the target (and always the first one)
            if not chosen or abs(count + size - target) < abs(count - target):
                chosen.append(blocks[block_index])
                count += size
        for block in chosen:
            result.loc[block, "split"] = "val"
    return result


def split_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Slices per split and class.

    Args:
        manifest: kit manifest with ``split`` and ``label1``.

    Returns:
        DataFrame indexed by split (train, val, test, then any other) with one column per class (Lung-RADS order)
        and a ``total`` column; zero where a split has no slice of a class.
    """
    table = pd.crosstab(manifest["split"], manifest["label1"])
    splits = [s for s in SPLITS if s in table.index] + sorted(set(table.index) - set(SPLITS))
    classes = [c for c in LUNGRADS_LABELS if c in table.columns] + sorted(set(table.columns) - set(LUNGRADS_LABELS))
    table = table.reindex(index=splits, columns=classes, fill_value=0)
    table["total"] = table.sum(axis=1)
    table.index.name = "split"
    table.columns.name = None
    return table


def assign_patient_splits(
    manifest: pd.DataFrame,
    test_patients: list[str] | None = None,
    val_patients: list[str] | None = None,
    test_fraction: float = 0.0,
    val_fraction: float = 0.15,
    seed: int = 0,
    patient_column: str = "patient",
) -> pd.DataFrame:
    """Split a manifest by patient: every slice of a patient lands in one split.

    Neighbouring slices of one nodule are near-copies, so a split by slice lets the test set peek at training
    images; only patients the model never saw tell how it does on new scans.

    Rows whose ``split`` is already ``test`` (a source's given test set, e.g. separate test files) stay test, and
    their patients may not appear elsewhere (``test_patients`` may name them again). Then ``test_patients`` (or,
    when None, a seeded ``test_fraction`` of the remaining patients) become test, ``val_patients`` (or
    ``val_fraction`` of the rest) validation; everything else is train. Fractions count patients, rounded to the
    nearest whole patient; a non-zero fraction always takes at least one patient and always leaves at least one for
    training.

    Args:
        manifest: kit manifest with ``split`` and the patient column.
        test_patients: patients to hold out for test (their order does not matter).
        val_patients: patients for validation.
        test_fraction: share of patients for test when ``test_patients`` is None.
        val_fraction: share of the remaining patients for validation when ``val_patients`` is None (0: none).
        seed: seed of the draw.
        patient_column: the column naming the patient.

    Returns:
        A copy of the manifest with ``split`` set.

    Raises:
        ValueError: for a missing column, an unknown patient, a patient asked for two splits or one found in the
            given test set and elsewhere, or a split that would leave no training patient.
    """
    if patient_column not in manifest.columns:
        raise ValueError(f"manifest: no {patient_column!r} column; a patient-wise split needs the patient of each slice")
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), found {value}")
    result = manifest.copy()
    patients = result[patient_column].astype(str)
    given_test = set(patients[result["split"] == "test"])
    leaked = sorted(given_test & set(patients[result["split"] != "test"]))
    if leaked:
        raise ValueError(f"manifest: patient(s) {leaked} are in the given test set and in train/val; "
                         "a patient-wise split cannot mend that")
    if test_patients is not None and val_patients is not None:
        both = sorted({str(p) for p in test_patients} & {str(p) for p in val_patients})
        if both:
            raise ValueError(f"patient(s) {both} named for both test and validation; each patient goes to one split")
    rng = np.random.default_rng(seed)
    free = sorted(set(patients) - given_test)

    def chosen(named, fraction, pool, what):
        if named is not None:
            named = [str(p) for p in named]
            unknown = sorted(set(named) - set(pool))
            if unknown:
                raise ValueError(f"{what} patient(s) {unknown} not among the available patients {pool}")
            return set(named)
        if fraction <= 0 or len(pool) < 2:
            return set()
        count = min(max(1, round(fraction * len(pool))), len(pool) - 1)
        return {pool[i] for i in rng.permutation(len(pool))[:count]}

    # naming a patient of the given test set again is harmless: it is test either way
    named_test = None if test_patients is None else [p for p in map(str, test_patients) if p not in given_test]
    test = chosen(named_test, test_fraction, free, "test") | given_test
    remaining = [p for p in free if p not in test]
    val = chosen(val_patients, val_fraction, remaining, "validation")
    train = set(remaining) - val
    if not train:
        raise ValueError(f"patient-wise split leaves no training patient (test {sorted(test)}, val {sorted(val)})")
    result["split"] = np.where(patients.isin(test), "test", np.where(patients.isin(val), "val", "train"))
    return result


def describe_patient_split(manifest: pd.DataFrame, patient_column: str = "patient") -> str:
    """One protocol line: the unit of the split and the patients / slices per split, e.g.
    ``by patient: train 3 patients (71 slices), val 0, test 2 (38 slices: LIDC-IDRI-313, LIDC-IDRI-72)``."""
    parts = []
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            parts.append(f"{split} 0")
            continue
        names = sorted(rows[patient_column].astype(str).unique())
        listed = f": {', '.join(names)}" if split == "test" and len(names) <= 6 else ""
        parts.append(f"{split} {len(names)} patient(s) ({len(rows)} slices{listed})")
    return "by patient: " + ", ".join(parts)


__all__ = ["assign_patient_splits", "assign_validation_split", "describe_patient_split", "split_counts"]
