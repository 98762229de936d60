"""A small synthetic Lung-PET-CT-Dx: CT + PET studies as real DICOM files with VOC boxes, in TCIA's layout.

:func:`write_phantom_petct` writes what the real reader (:mod:`lungkit.data.petct`) expects, so the default run
goes through every line of it::

    <root>/metadata.csv                                   TCIA's columns (Series UID, Subject ID, ..., File Location)
    <root>/Lung-PET-CT-Dx/Lung_Dx-A0001/<study>/<series>/1-NN.dcm    CT (int16 + RescaleIntercept -1024) and PET
    <root>/Annotation/A0001/<SOPInstanceUID>.xml          one VOC file per annotated CT image (LabelImg's layout)
    <root>/phantom_truth.json                             tumour centres (world mm), diameters, SUVmax (for tests)
    <root>/COMPLETE

Each subject: a chest CT (body, lungs and vessels of :mod:`lungkit.data.phantom_volumes`; 1-2 solid tumours of
12-30 mm, drawn with partial volume over each slice's slab), and, except for every fourth subject (CT-only studies,
as the collection has), a PET of the same frame of reference on a coarser grid (4.07 mm pixels, 4 mm slices, a
larger field of view with its own origin), in Bq/ml with every tag SUVbw needs (Units BQML, DecayCorrection START,
PatientWeight, injected dose, half-life, injection one hour before the series). Its uptake is FDG-like: tumours
SUVmax 4-12, and physiological uptake so PET alone is no give-away: myocardium about 5, blood pool and mediastinum
about 1.8, soft tissue 0.7, lung 0.35; blurred to a 6 mm resolution, with 5 % noise.

Like the collection, the files are not in geometric order (instance numbers run head to feet, positions along z
descend) and one annotation carries an extra box named ``Q`` (skipped and counted by the reader). Subject letters
cycle through the histologies A, G, A, B, E, ...; every value is seeded (same seed, same pixels and UIDs).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from lungkit.data.phantom_volumes import _make_volume
from lungkit.data.volumes import Volume
from lungkit.profiles import Profile, get_profile

#: Per profile: subjects, CT side (px), CT pixel (mm), CT slices, CT slice spacing (mm).
PHANTOM_PETCT_SIZES = {
    "smoke": {"subjects": 4, "side": 96, "pixel_mm": 3.2, "slices": 20, "slice_mm": 3.0},
    "quick": {"subjects": 12, "side": 192, "pixel_mm": 1.6, "slices": 36, "slice_mm": 2.5},
    "paper": {"subjects": 24, "side": 256, "pixel_mm": 1.2, "slices": 48, "slice_mm": 2.0},
}
PET_PIXEL_MM = 4.07283
PET_SLICE_MM = 4.0
PET_RESOLUTION_FWHM_MM = 6.0
TUMOUR_DIAMETER_RANGE_MM = (12.0, 30.0)
TUMOUR_SUVMAX_RANGE = (4.0, 12.0)
SUV_LUNG, SUV_TISSUE, SUV_BLOOD, SUV_MYOCARDIUM = 0.35, 0.7, 1.8, 5.0
TUMOUR_HU = 35.0
#: Sections smaller than this many pixels get no box (a reader does not box a sliver).
MIN_BOXED_PIXELS = 4
HISTOLOGY_CYCLE = ("A", "G", "A", "B", "E", "A", "G", "A")
HALF_LIFE_F18_S = 6586.2
INJECTED_DOSE_BQ = 370e6
UPTAKE_SECONDS = 3600.0
COMPLETE_MARKER = "COMPLETE"
MARKER_TEXT = "lungkit phantom_petct"
TRUTH_NAME = "phantom_truth.json"
COLLECTION = "Lung-PET-CT-Dx"
ANNOTATION = "Annotation"
#: Slab depths (fractions of a slice) sampled for partial volume along z, as in phantom_volumes.
SLAB_SAMPLES = (-0.5, -0.3, -0.1, 0.1, 0.3, 0.5)

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


def _uid(seed: int, *parts) -> str:
    """A seeded UID under 2.25 (the UUID-derived root): a 128-bit hash of the seed and the parts, so the same seed
    gives the same UIDs (pydicom's ``generate_uid`` is random under 2.25)."""
    text = "/".join(["lungkit-phantom-petct", str(seed), *map(str, parts)])
    return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))


def _replaceable(root: Path) -> bool:
    if not root.is_dir():
        return False
    marker = root / COMPLETE_MARKER
    if marker.is_file():
        return marker.read_text().startswith(MARKER_TEXT)
    return not any(root.iterdir())


def _tumours(rng, lungs, spacing, count):
    """Centres (continuous x, y, z index) and diameters of tumours that fit inside the lungs."""
    spacing_x, spacing_y, spacing_z = spacing
    room = ndimage.distance_transform_edt(lungs, sampling=(spacing_z, spacing_y, spacing_x))
    depth = lungs.shape[0]
    # keep tumours off the first and last slices so each spans whole slabs inside the volume
    room[: 2], room[depth - 2:] = 0, 0
    placed = []
    for _ in range(count):
        diameter = float(rng.uniform(*TUMOUR_DIAMETER_RANGE_MM))
        free = room.copy()
        for other in placed:
            zz, yy, xx = np.ogrid[: free.shape[0], : free.shape[1], : free.shape[2]]
            gap = np.sqrt(((xx - other["x"]) * spacing_x) ** 2 + ((yy - other["y"]) * spacing_y) ** 2
                          + ((zz - other["z"]) * spacing_z) ** 2)
            free[gap < (other["diameter_mm"] + diameter) / 2 + 6] = 0
        fits = np.argwhere(free >= 0.6 * diameter / 2)
        while len(fits) == 0 and diameter > TUMOUR_DIAMETER_RANGE_MM[0] / 2:
            diameter *= 0.8
            fits = np.argwhere(free >= 0.6 * diameter / 2)
        if len(fits) == 0:
            continue
        z0, y0, x0 = fits[rng.integers(len(fits))]
        centre = np.array([x0, y0, z0], dtype=np.float64) + rng.uniform(-0.4, 0.4, size=3)
        placed.append({"x": centre[0], "y": centre[1], "z": centre[2], "diameter_mm": diameter,
                       "suv_max": float(rng.uniform(*TUMOUR_SUVMAX_RANGE))})
    return placed


def _draw_tumours(hu, suv, tumours, spacing):
    """Tumours into the CT (partial volume over each slab) and the SUV map; returns the label a reader would box."""
    spacing_x, spacing_y, spacing_z = spacing
    depth, height, width = hu.shape
    label = np.zeros(hu.shape, dtype=np.uint8)
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    for number, tumour in enumerate(tumours, start=1):
        radius = tumour["diameter_mm"] / 2
        occupancy = np.zeros(hu.shape, dtype=np.float32)
        for depth_offset in SLAB_SAMPLES:
            distance2 = (((xx - tumour["x"]) * spacing_x) ** 2 + ((yy - tumour["y"]) * spacing_y) ** 2
                         + ((zz + depth_offset - tumour["z"]) * spacing_z) ** 2)
            occupancy += (distance2 <= radius ** 2) / len(SLAB_SAMPLES)
        hu[:] = occupancy * TUMOUR_HU + (1.0 - occupancy) * hu
        # what a reader would box: pixels where the tumour fills two thirds of the slab (faint caps are not drawn)
        label[occupancy >= 0.65] = number
        # FDG: hottest in the centre, 60 % of SUVmax at the rim
        distance2 = (((xx - tumour["x"]) * spacing_x) ** 2 + ((yy - tumour["y"]) * spacing_y) ** 2
                     + ((zz - tumour["z"]) * spacing_z) ** 2)
        profile = tumour["suv_max"] * (0.6 + 0.4 * np.clip(1.0 - distance2 / radius ** 2, 0.0, 1.0))
        suv[:] = np.where(distance2 <= radius ** 2, np.maximum(suv, profile), suv)
    return label


def _physiological_suv(hu_body, lungs, spacing, side):
    """SUV of soft tissue, lungs, mediastinal blood pool and a heart (myocardium shell) on the CT grid."""
    depth = lungs.shape[0]
    spacing_x, spacing_y, spacing_z = spacing
    body = hu_body > -500
    suv = np.where(body, SUV_TISSUE, 0.0).astype(np.float32)
    suv[lungs] = SUV_LUNG
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(side), np.arange(side), indexing="ij")
    centre = (side - 1) / 2
    # mediastinum: the soft tissue between the lungs (as far front and back as the lungs reach)
    mediastinum = body & ~lungs & (np.abs(xx - centre) < 0.07 * side) & (np.abs(yy - centre) < 0.24 * side)
    suv[mediastinum] = SUV_BLOOD
    # heart: an ellipsoid in the lower half, anterior (smaller y) and to the patient's left (larger x)
    heart_centre = (centre + 0.06 * side, centre - 0.08 * side, 0.3 * depth)
    semi_axes_mm = (0.12 * side * spacing_x, 0.10 * side * spacing_y, 0.35 * depth * spacing_z)
    radius = np.sqrt(((xx - heart_centre[0]) * spacing_x / semi_axes_mm[0]) ** 2
                     + ((yy - heart_centre[1]) * spacing_y / semi_axes_mm[1]) ** 2
                     + ((zz - heart_centre[2]) * spacing_z / semi_axes_mm[2]) ** 2)
    suv[(radius <= 1.0) & body] = SUV_MYOCARDIUM
    suv[(radius <= 0.6) & body] = SUV_BLOOD
    return suv


def _ct_dataset(common: dict, hu_slice: np.ndarray, position, instance: int, sop_uid: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in common.items():
        setattr(ds, key, value)
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.SliceLocation = f"{position[2]:.4f}"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    stored = np.clip(np.rint(hu_slice) + 1024, 0, 4095).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    return ds


def _pet_dataset(common: dict, activity_slice: np.ndarray, position, instance: int, sop_uid: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for key, value in common.items():
        setattr(ds, key, value)
    ds.SOPClassUID = PET_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance
    ds.ImageIndex = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.SliceLocation = f"{position[2]:.4f}"
    peak = float(activity_slice.max())
    slope = peak / 32000.0 if peak > 0 else 1.0  # PET scanners pick a slope per slice to use the int16 range
    ds.RescaleSlope = f"{slope:.6g}"
    ds.RescaleIntercept = "0"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    stored = np.clip(np.rint(activity_slice / float(ds.RescaleSlope)), 0, 32767).astype(np.int16)
    ds.PixelData = stored.tobytes()
    return ds


def _save(ds, path: Path) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def voc_xml(width: int, height: int, boxes) -> str:
    """A VOC annotation in LabelImg's layout (the collection's): ``boxes`` = ``[(name, xmin, ymin, xmax, ymax)]``."""
    objects = "".join(
        f"""  <object>
    <name>{name}</name>
    <pose>Unspecified</pose>
    <truncated>0</truncated>
    <Difficult>0</Difficult>
    <bndbox>
      <xmin>{xmin}</xmin>
      <ymin>{ymin}</ymin>
      <xmax>{xmax}</xmax>
      <ymax>{ymax}</ymax>
    </bndbox>
  </object>
""" for name, xmin, ymin, xmax, ymax in boxes)
    return f"""<annotation verified="no">
  <folder>Unknow</folder>
  <filename>Unknow</filename>
  <path>Unknow</path>
  <source>Unknow<database>Unknown</database>
  </source>
  <size>
    <width>{width}</width>
    <height>{height}</height>
    <depth>1</depth>
  </size>
  <segmented>0</segmented>
{objects}</annotation>
"""


def _pet_grid(rng, ct_origin, ct_extent_mm, ct_depth_mm):
    """Size and origin of a PET grid covering the CT with margin, not aligned with the CT's voxels."""
    side = int(math.ceil(ct_extent_mm * 1.15 / PET_PIXEL_MM))
    slices = int(math.ceil(ct_depth_mm / PET_SLICE_MM)) + 2
    centre_x = ct_origin[0] + ct_extent_mm / 2 + rng.uniform(-6, 6)
    centre_y = ct_origin[1] + ct_extent_mm / 2 + rng.uniform(-6, 6)
    origin = (centre_x - (side - 1) * PET_PIXEL_MM / 2, centre_y - (side - 1) * PET_PIXEL_MM / 2,
              ct_origin[2] - PET_SLICE_MM + rng.uniform(0, PET_SLICE_MM))
    return side, slices, origin


def _resample_to_grid(volume: Volume, size_xyz, spacing, origin) -> np.ndarray:
    import SimpleITK as sitk

    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(tuple(int(v) for v in size_xyz))
    resampler.SetOutputSpacing(tuple(float(v) for v in spacing))
    resampler.SetOutputOrigin(tuple(float(v) for v in origin))
    resampler.SetOutputDirection(tuple(np.eye(3).ravel()))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(volume.to_sitk()))


def write_phantom_petct(
    root: str | os.PathLike,
    profile: str | Profile = "smoke",
    seed: int = 0,
    n_subjects: int | None = None,
    side: int | None = None,
    slices: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a seeded phantom Lung-PET-CT-Dx collection (see the module docstring).

    Args:
        root: folder to create.
        profile: gives the sizes (:data:`PHANTOM_PETCT_SIZES`).
        seed: random seed; same seed, same files.
        n_subjects, side, slices: override the profile's subject count, CT side (px) and CT slice count.
        overwrite: rewrite a complete folder; otherwise a complete folder is returned untouched.

    Returns:
        ``root``.

    Raises:
        FileExistsError: if ``root`` exists, is not empty and was not written by this function.
    """
    root = Path(root)
    profile = get_profile(profile) if isinstance(profile, str) else profile
    sizes = dict(PHANTOM_PETCT_SIZES.get(profile.name, PHANTOM_PETCT_SIZES["quick"]))
    sizes.update({k: v for k, v in (("subjects", n_subjects), ("side", side), ("slices", slices)) if v is not None})
    marker_line = (f"{MARKER_TEXT} seed={seed} subjects={sizes['subjects']} side={sizes['side']} "
                   f"slices={sizes['slices']} pixel_mm={sizes['pixel_mm']}")
    marker = root / COMPLETE_MARKER
    if marker.is_file() and not overwrite and marker.read_text().strip() == marker_line:
        return root
    if root.exists() and not _replaceable(root):
        raise FileExistsError(f"{root}: exists and is not a lungkit PET/CT phantom folder; refusing to replace it")
    if sizes["subjects"] < 1:
        raise ValueError(f"n_subjects must be at least 1, got {sizes['subjects']}")
    root.parent.mkdir(parents=True, exist_ok=True)
    temp = root.parent / f".{root.name}.tmp{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    rng = np.random.default_rng(seed)
    metadata, truth = [], {}
    side_px, depth = int(sizes["side"]), int(sizes["slices"])
    pixel, slice_mm = float(sizes["pixel_mm"]), float(sizes["slice_mm"])
    spacing = (pixel, pixel, slice_mm)
    letter_counts: dict[str, int] = {}
    for number in range(sizes["subjects"]):
        letter = HISTOLOGY_CYCLE[number % len(HISTOLOGY_CYCLE)]
        letter_counts[letter] = letter_counts.get(letter, 0) + 1
        short = f"{letter}{letter_counts[letter]:04d}"
        subject = f"Lung_Dx-{short}"
        with_pet = number % 4 != 3
        origin = (round(-(side_px - 1) * pixel / 2 + rng.uniform(-20, 20), 3),
                  round(-(side_px - 1) * pixel / 2 + rng.uniform(-30, 0), 3),
                  round(-rng.uniform(150, 300), 3))
        hu, lungs, _ = _make_volume(rng, depth, side_px, spacing)
        suv = _physiological_suv(hu, lungs, spacing, side_px)
        tumours = _tumours(rng, lungs, spacing, count=int(rng.integers(1, 3)))
        label = _draw_tumours(hu, suv, tumours, spacing)
        hu = ndimage.gaussian_filter(hu, sigma=(0.3, 0.6, 0.6)) + rng.normal(0, 15, hu.shape)

        date = dt.date(2007, 1, 1) + dt.timedelta(days=int(rng.integers(0, 700)))
        series_start = dt.datetime.combine(date, dt.time(10, 0)) + dt.timedelta(minutes=int(rng.integers(0, 300)))
        injection = series_start - dt.timedelta(seconds=UPTAKE_SECONDS + float(rng.uniform(-600, 600)))
        weight_kg = round(float(rng.uniform(50, 95)), 1)
        study_uid, frame_uid = _uid(seed, subject, "study"), _uid(seed, subject, "frame")
        study_folder = f"{date:%m-%d-%Y}-NA-PET-CT Chest-{number + 10000:05d}"
        common = {
            "PatientName": subject, "PatientID": subject, "PatientSex": "O", "PatientWeight": f"{weight_kg}",
            "StudyInstanceUID": study_uid, "StudyDate": f"{date:%Y%m%d}", "StudyTime": f"{series_start:%H%M%S}",
            "StudyDescription": "PET-CT Chest", "FrameOfReferenceUID": frame_uid, "PositionReferenceIndicator": "",
            "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"], "PatientPosition": "HFS",
            "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "Manufacturer": "lungkit phantom",
        }
        # ---- CT: instance numbers run head to feet (z descending), as the collection's files do
        ct_uid = _uid(seed, subject, "ct")
        ct_folder = Path(COLLECTION) / subject / study_folder / f"2.000000-CT {slice_mm:g}mm-{number + 20000:05d}"
        ct_common = {**common, "Modality": "CT", "SeriesInstanceUID": ct_uid, "SeriesNumber": 2,
                     "SeriesDescription": f"CT {slice_mm:g}mm", "SeriesDate": f"{date:%Y%m%d}",
                     "SeriesTime": f"{series_start - dt.timedelta(minutes=5):%H%M%S}",
                     "Rows": side_px, "Columns": side_px, "PixelSpacing": [f"{pixel:g}", f"{pixel:g}"],
                     "SliceThickness": f"{slice_mm:g}", "KVP": "120"}
        digits = max(2, len(str(depth)))
        annotations = []
        for instance in range(1, depth + 1):
            z = depth - instance  # array index: instance 1 is the top (largest z) slice
            position = (origin[0], origin[1], origin[2] + z * slice_mm)
            sop = _uid(seed, subject, "ct", z)
            _save(_ct_dataset(ct_common, hu[z], position, instance, sop),
                  temp / ct_folder / f"1-{instance:0{digits}d}.dcm")
            boxes = []
            for number_in_slice in np.unique(label[z][label[z] > 0]):
                rows, cols = np.nonzero(label[z] == number_in_slice)
                if len(rows) < MIN_BOXED_PIXELS:
                    continue  # a sliver at the tumour's end: nobody draws a box around two pixels
                boxes.append((letter, int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())))
            if boxes:
                annotations.append((sop, boxes))
        if number == 0 and annotations:
            # the collection has boxes named Q; the reader must skip and count them
            sop, boxes = annotations[0]
            annotations[0] = (sop, boxes + [("Q", 2, 2, 6, 6)])
        for sop, boxes in annotations:
            xml_path = temp / ANNOTATION / short / f"{sop}.xml"
            xml_path.parent.mkdir(parents=True, exist_ok=True)
            xml_path.write_text(voc_xml(side_px, side_px, boxes))
        metadata.append(_metadata_row(ct_uid, subject, study_uid, date, "CT", "CT Image Storage", CT_STORAGE, depth,
                                      ct_folder))

        subject_truth = {
            "histology": letter, "with_pet": with_pet, "ct_origin": list(origin), "ct_spacing": list(spacing),
            "tumours": [
                {"centre_world_mm": [origin[0] + t["x"] * pixel, origin[1] + t["y"] * pixel,
                                     origin[2] + t["z"] * slice_mm],
                 "diameter_mm": t["diameter_mm"], "suv_max": t["suv_max"]} for t in tumours
            ],
            "annotated_slices": len(annotations),
        }
        if with_pet:
            # ---- PET: SUV map blurred to the PET resolution, sampled on the coarser PET grid, stored as Bq/ml
            sigma_mm = PET_RESOLUTION_FWHM_MM / (2 * math.sqrt(2 * math.log(2)))
            blurred = ndimage.gaussian_filter(suv, sigma=(sigma_mm / slice_mm, sigma_mm / pixel, sigma_mm / pixel))
            blurred_volume = Volume(blurred.astype(np.float32), spacing, origin)
            pet_side, pet_slices, pet_origin = _pet_grid(rng, origin, side_px * pixel, depth * slice_mm)
            pet_suv = _resample_to_grid(blurred_volume, (pet_side, pet_side, pet_slices),
                                        (PET_PIXEL_MM, PET_PIXEL_MM, PET_SLICE_MM), pet_origin)
            pet_suv = np.clip(pet_suv * (1.0 + rng.normal(0, 0.05, pet_suv.shape)), 0, None)
            seconds = (series_start - injection).total_seconds()
            bq_per_suv = INJECTED_DOSE_BQ * 2.0 ** (-seconds / HALF_LIFE_F18_S) / (weight_kg * 1000.0)
            activity = pet_suv * bq_per_suv
            pet_uid = _uid(seed, subject, "pet")
            pet_folder = Path(COLLECTION) / subject / study_folder / f"3.000000-PET AC-{number + 30000:05d}"
            from pydicom.dataset import Dataset

            radiopharmaceutical = Dataset()
            radiopharmaceutical.Radiopharmaceutical = "Fluorodeoxyglucose"
            radiopharmaceutical.RadiopharmaceuticalStartTime = f"{injection:%H%M%S}.{injection.microsecond:06d}"
            radiopharmaceutical.RadionuclideTotalDose = f"{INJECTED_DOSE_BQ:.1f}"
            radiopharmaceutical.RadionuclideHalfLife = f"{HALF_LIFE_F18_S}"
            radiopharmaceutical.RadionuclidePositronFraction = "0.97"
            pet_common = {**common, "Modality": "PT", "SeriesInstanceUID": pet_uid, "SeriesNumber": 3,
                          "SeriesDescription": "PET AC", "SeriesDate": f"{date:%Y%m%d}",
                          "SeriesTime": f"{series_start:%H%M%S}", "AcquisitionTime": f"{series_start:%H%M%S}",
                          "Rows": pet_side, "Columns": pet_side,
                          "PixelSpacing": [f"{PET_PIXEL_MM:g}", f"{PET_PIXEL_MM:g}"],
                          "SliceThickness": f"{PET_SLICE_MM:g}", "Units": "BQML", "DecayCorrection": "START",
                          "CorrectedImage": ["NORM", "DTIM", "ATTN", "SCAT", "DECY"], "NumberOfSlices": pet_slices,
                          "RadiopharmaceuticalInformationSequence": [radiopharmaceutical]}
            pet_digits = max(2, len(str(pet_slices)))
            for instance in range(1, pet_slices + 1):
                z = pet_slices - instance
                position = (pet_origin[0], pet_origin[1], pet_origin[2] + z * PET_SLICE_MM)
                _save(_pet_dataset(pet_common, activity[z], position, instance, _uid(seed, subject, "pet", z)),
                      temp / pet_folder / f"1-{instance:0{pet_digits}d}.dcm")
            metadata.append(_metadata_row(pet_uid, subject, study_uid, date, "PT",
                                          "Positron Emission Tomography Image Storage", PET_STORAGE, pet_slices,
                                          pet_folder))
            subject_truth.update(pet_origin=list(pet_origin), pet_size=[pet_side, pet_side, pet_slices],
                                 injected_dose_bq=INJECTED_DOSE_BQ, uptake_seconds=seconds, weight_kg=weight_kg)
        truth[subject] = subject_truth

    pd.DataFrame(metadata).to_csv(temp / "metadata.csv", index=False)
    (temp / TRUTH_NAME).write_text(json.dumps(truth, indent=2))
    (temp / COLLECTION).mkdir(exist_ok=True)
    (temp / ANNOTATION).mkdir(exist_ok=True)
    (temp / COMPLETE_MARKER).write_text(marker_line + "\n")
    if root.exists():
        shutil.rmtree(root)
    os.replace(temp, root)
    return root


def _metadata_row(series_uid, subject, study_uid, date, modality, class_name, class_uid, count, folder) -> dict:
    return {
        "Series UID": series_uid, "Collection": "Lung-PET-CT-Dx (lungkit phantom)", "3rd Party Analysis": "null",
        "Data Description URI": "", "Subject ID": subject, "Study UID": study_uid,
        "Study Description": "PET-CT Chest", "Study Date": f"{date:%m-%d-%Y}",
        "Series Description": "CT" if modality == "CT" else "PET AC", "Manufacturer": "lungkit phantom",
        "Modality": modality, "SOP Class Name": class_name, "SOP Class UID": class_uid, "Number of Images": count,
        "File Size": "", "File Location": "./" + folder.as_posix(), "Download Timestamp": "",
    }


def read_phantom_truth(root: str | os.PathLike) -> dict:
    """The phantom's ``phantom_truth.json`` (tumour centres in world mm, diameters, SUVmax, PET geometry)."""
    return json.loads((Path(root) / TRUTH_NAME).read_text())


__all__ = ["PHANTOM_PETCT_SIZES", "read_phantom_truth", "voc_xml", "write_phantom_petct"]
