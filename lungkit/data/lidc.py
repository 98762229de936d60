"""LIDC-IDRI nodules with malignancy through pylidc (optional; pylidc is not a lungkit dependency).

Paper 003 labels LIDC nodules by the readers' malignancy scores (1-5): > 3 malignant, < 3 benign, 3 dropped
(:func:`lungkit.data.luna16.malignancy_to_label`, re-exported here). pylidc reads the LIDC-IDRI XML reads and
groups the up-to-four readers' annotations of one nodule; it needs the DICOM files on disk and a
``~/.pylidcrc`` naming their folder.

This module is untested in lungkit's CI (no pylidc, no LIDC-IDRI there). The rest of lungkit never imports it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungkit.data.luna16 import malignancy_to_label

__all__ = ["malignancy_to_label", "lidc_nodule_table"]

PYLIDC_HELP = (
    "pylidc is needed for LIDC-IDRI: `pip install pylidc`. It also needs the LIDC-IDRI DICOM collection "
    "(TCIA, doi 10.7937/K9/TCIA.2015.LO9QL9SX, downloaded with the NBIA Data Retriever) and a file ~/.pylidcrc "
    "with the lines `[dicom]` and `path = /path/to/LIDC-IDRI` (the folder holding LIDC-IDRI-0001, ...)."
)


def _import_pylidc():
    try:
        import pylidc
    except ImportError as error:
        raise ImportError(PYLIDC_HELP) from error
    return pylidc


def lidc_nodule_table(patient_ids=None, min_readers: int = 1, clustering_tolerance_mm: float | None = None):
    """One row per LIDC-IDRI nodule (readers' annotations clustered by pylidc) with paper 003's label.

    Args:
        patient_ids: e.g. ``["LIDC-IDRI-0001"]``; all scans when None.
        min_readers: keep nodules marked by at least this many readers.
        clustering_tolerance_mm: passed to ``Scan.cluster_annotations(tol=...)``; pylidc's default when None.

    Returns:
        DataFrame: patient_id, seriesuid, nodule_index, n_readers, malignancy (mean of the readers' scores),
        label_binary (1 / 0 / <NA> for a mean of exactly 3), diameter_mm (mean of the readers'),
        centre_i, centre_j, centre_k (mean centroid in pylidc's (row, column, slice) voxel index),
        slice_thickness_mm, pixel_spacing_mm.

    Raises:
        ImportError: if pylidc is not installed (the message says how to install and configure it).
    """
    pylidc = _import_pylidc()
    query = pylidc.query(pylidc.Scan)
    if patient_ids is not None:
        query = query.filter(pylidc.Scan.patient_id.in_(list(patient_ids)))
    rows = []
    for scan in query:
        kwargs = {} if clustering_tolerance_mm is None else {"tol": clustering_tolerance_mm}
        for nodule_index, readings in enumerate(scan.cluster_annotations(**kwargs)):
            if len(readings) < min_readers:
                continue
            malignancy = float(np.mean([a.malignancy for a in readings]))
            label = malignancy_to_label(malignancy)
            centroid = np.mean([a.centroid for a in readings], axis=0)
            rows.append(
                {
                    "patient_id": scan.patient_id,
                    "seriesuid": scan.series_instance_uid,
                    "nodule_index": nodule_index,
                    "n_readers": len(readings),
                    "malignancy": malignancy,
                    "label_binary": label if label is not None else pd.NA,
                    "diameter_mm": float(np.mean([a.diameter for a in readings])),
                    "centre_i": float(centroid[0]),
                    "centre_j": float(centroid[1]),
                    "centre_k": float(centroid[2]),
                    "slice_thickness_mm": float(scan.slice_thickness),
                    "pixel_spacing_mm": float(scan.pixel_spacing),
                }
            )
    table = pd.DataFrame(rows)
    if len(table):
        table["label_binary"] = table["label_binary"].astype("Int64")
    return table
