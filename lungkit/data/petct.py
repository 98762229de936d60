"""Lung-PET-CT-Dx (TCIA): CT and PET DICOM studies with PASCAL-VOC boxes -> two-channel slices (CT HU, PET SUV).

The collection (doi 10.7937/TCIA.2020.NNC20461; paper 000's data) is laid out as::

    <root>/metadata.csv                                             TCIA's series table (optional here)
    <root>/Lung-PET-CT-Dx/Lung_Dx-<letter><4 digits>/<study>/<series>/<n>.dcm
    <root>/Annotation/<letter><4 digits>/<SOPInstanceUID>.xml       one VOC file per annotated image

The subject letter is the histology (:data:`HISTOLOGY`); every subject has cancer, so there is no benign class,
and there are **no masks, only boxes**: :func:`masks_from_boxes` derives masks by a named method, and every result
built on them carries the flag :func:`mask_flag` (``MASKS FROM BOXES (<method>)``).

Reading, in the order :func:`iter_subject_slices` does it:

1. :func:`index_collection`: the series of each subject from ``metadata.csv`` (its ``File Location`` column) or,
   without it, a bounded walk over the DICOM headers; the annotation files per subject.
2. :func:`parse_voc_xml`: each annotation, parsed with a size cap and refused when it declares a DOCTYPE or an
   ENTITY (ElementTree would expand internal entities); boxes with no name, a name that is not a histology letter
   (the collection has ``Q`` boxes) or impossible coordinates are skipped **and counted**, never dropped silently.
3. :class:`DicomSeries`: the headers of a series, sorted by position along the slice normal (geometry, not file
   names), checked for one orientation, one size and one spacing; CT pixels become HU
   (``stored * RescaleSlope + RescaleIntercept``), PET pixels SUVbw (:func:`suv_factor`). pydicom rather than the
   SimpleITK series reader of :mod:`lungkit.predict` (which wants whole volumes only), because annotations name
   images by SOPInstanceUID and only the annotated slice is read (:class:`DicomSeries` says more); the slice-gap
   check is the one both use (:func:`lungkit.data.volumes.uneven_slice_gaps`).
4. Pairing: a PET series is used for a CT only when both share the ``FrameOfReferenceUID`` (one hybrid scanner's
   coordinates). A PET in another frame is refused (:class:`FrameOfReferenceMismatch`): resampling it by its
   coordinates would mis-register it silently.
5. :func:`resample_onto_slice`: the PET volume resampled (SimpleITK, linear, DICOM geometry) onto the annotated CT
   slice's plane and pixel grid; an annotation on a PET image gets the CT resampled onto the PET slice instead.

Problems are collected in a :class:`ProblemLog` (a count per kind and the messages, each naming the file and the
tag or row) and reported by the conversion (:mod:`lungkit.data.petct_kit`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lungkit.data.volumes import AIR_HU, Volume, uneven_slice_gaps

#: Subject letter -> histology (TCIA's description of Lung-PET-CT-Dx). All are cancers: no benign class.
HISTOLOGY = {
    "A": "adenocarcinoma",
    "B": "small cell carcinoma",
    "E": "large cell carcinoma",
    "G": "squamous cell carcinoma",
}
SUBJECT_PATTERN = re.compile(r"^Lung_Dx-([A-Z])(\d{4})$")
ANNOTATION_FOLDER_PATTERN = re.compile(r"^([A-Z])(\d{4})$")
COLLECTION_FOLDER = "Lung-PET-CT-Dx"
ANNOTATION_FOLDER = "Annotation"
METADATA_NAME = "metadata.csv"
#: metadata.csv columns the index needs (TCIA's NBIA data retriever writes more).
METADATA_COLUMNS = ("Series UID", "Subject ID", "Study UID", "Modality", "File Location")

#: A VOC file of this collection is about 600 bytes; anything beyond this cap is not an annotation.
MAX_XML_BYTES = 256 * 1024
#: Largest image side decoded (CT is 512, PET about 200; a larger claim is a mistake or a hostile file).
MAX_SLICE_SIDE = 4096
#: The DICOM walk (used without metadata.csv) goes at most this deep below the root ...
MAX_WALK_DEPTH = 6
#: ... and reads at most this many files (the collection has about 250,000).
MAX_WALK_FILES = 400_000

#: Relative tolerance of the slice spacing check: a series whose gaps differ by more is not one volume.
SPACING_TOLERANCE = 0.01

#: Problem kinds. Box-level ones and notes (a partial download, an unannotated series that cannot be read, a PET in
#: another study) are expected in the real collection and only counted; the others lose an annotation or a study's
#: annotations, and ``strict`` conversions stop at them.
BOX_PROBLEMS = ("box_unnamed", "box_unknown_label", "box_invalid", "box_outside_image", "box_label_differs")
NOTE_PROBLEMS = (
    "series_folder_missing",
    "subject_without_images",
    "series_unreadable_unannotated",
    "ct_only_pet_in_other_study",
)
COUNTED_ONLY = BOX_PROBLEMS + NOTE_PROBLEMS
FILE_PROBLEMS = (
    "metadata_row_invalid",
    "annotation_folder_unknown",
    "xml_unparsable",
    "xml_refused",
    "annotation_sop_missing",
    "annotation_series_unreadable",
    "annotation_size_mismatch",
    "annotation_unsupported_modality",
    "annotation_no_boxes",
    "series_unreadable",
    "pet_unreadable",
    "pet_frame_mismatch",
    "ct_partner_missing",
)


class PetCtError(ValueError):
    """Bad Lung-PET-CT-Dx input; the message names the file and the tag, row or element at fault."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class FrameOfReferenceMismatch(PetCtError):
    """A PET series and a CT series of one study do not share a frame of reference."""

    def __init__(self, message: str):
        super().__init__("pet_frame_mismatch", message)


@dataclass
class ProblemLog:
    """Counts and messages of everything skipped or refused while reading.

    Args:
        strict: raise :class:`PetCtError` at the first file-level problem instead of counting it (the kinds in
            :data:`COUNTED_ONLY` are always only counted).
        max_messages: messages kept per kind (counts are always complete).
    """

    strict: bool = False
    max_messages: int = 50
    counts: Counter = field(default_factory=Counter)
    messages: dict = field(default_factory=dict)

    def add(self, kind: str, message: str) -> None:
        """Count one problem of ``kind`` (and raise it when strict, unless it is in :data:`COUNTED_ONLY`)."""
        if self.strict and kind not in COUNTED_ONLY:
            raise FrameOfReferenceMismatch(message) if kind == "pet_frame_mismatch" else PetCtError(kind, message)
        self.counts[kind] += 1
        kept = self.messages.setdefault(kind, [])
        if len(kept) < self.max_messages:
            kept.append(message)

    def add_error(self, error: PetCtError) -> None:
        self.add(error.kind, str(error))

    def merge(self, other: "ProblemLog | dict") -> None:
        """Add another log's counts and messages (or its :meth:`as_dict` form)."""
        data = other.as_dict() if isinstance(other, ProblemLog) else other
        for kind, count in data.get("counts", {}).items():
            self.counts[kind] += int(count)
        for kind, messages in data.get("messages", {}).items():
            kept = self.messages.setdefault(kind, [])
            kept.extend(messages[: max(self.max_messages - len(kept), 0)])

    def as_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "messages": {k: list(v) for k, v in self.messages.items()}}

    def table(self) -> pd.DataFrame:
        """One row per problem kind: count and the first message."""
        rows = [
            {"problem": kind, "count": count, "first message": (self.messages.get(kind) or [""])[0]}
            for kind, count in sorted(self.counts.items())
        ]
        return pd.DataFrame(rows, columns=["problem", "count", "first message"])


# ============================================================================================ subjects, histology


def histology_letter(subject: str) -> str:
    """The histology letter of a subject id (``Lung_Dx-A0001`` -> ``A``).

    Raises:
        ValueError: for an id not of the form ``Lung_Dx-<letter><4 digits>`` or a letter not in :data:`HISTOLOGY`.
    """
    match = SUBJECT_PATTERN.match(str(subject))
    if not match:
        raise ValueError(f"subject {subject!r}: expected Lung_Dx-<letter><4 digits>, e.g. Lung_Dx-A0001")
    letter = match.group(1)
    if letter not in HISTOLOGY:
        raise ValueError(f"subject {subject!r}: letter {letter!r} is not a histology letter {sorted(HISTOLOGY)}")
    return letter


# ================================================================================================= VOC XML


@dataclass(frozen=True)
class Box:
    """One VOC box: inclusive pixel bounds (column ``xmin..xmax``, row ``ymin..ymax``) and its name."""

    label: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)


@dataclass
class VocAnnotation:
    """A parsed annotation file: image size and the boxes kept (the skipped ones are in the problem log)."""

    path: Path
    width: int
    height: int
    boxes: list[Box]


# '<!--' comments and CDATA sections are harmless; any other '<!' declaration (DOCTYPE, ENTITY, ELEMENT...) is not
_DECLARATION = re.compile(r"<!(?!--|\[CDATA\[)")


def _element_int(element, name: str) -> int | None:
    child = element.find(name)
    if child is None or child.text is None:
        return None
    try:
        value = float(child.text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or abs(value - round(value)) > 1e-6:
        return None
    return int(round(value))


def parse_voc_xml(path: str | os.PathLike, problems: ProblemLog | None = None) -> VocAnnotation:
    """Parse one PASCAL-VOC annotation file safely.

    The file is read only up to :data:`MAX_XML_BYTES`, must be UTF-8 (or ASCII), and is refused before parsing
    when it holds a DOCTYPE, ENTITY or any other ``<!`` declaration: ElementTree expands internal entities, and a
    VOC file never needs one. Boxes are checked one by one: an ``<object>`` without ``<name>``, with a name that
    is not a histology letter (the collection has ``Q`` boxes), without four whole-number coordinates, with
    ``xmin > xmax`` or ``ymin > ymax``, or outside the image (coordinates may equal ``width`` / ``height``, as
    LabelImg writes at the border; they are then clipped) is skipped and counted in ``problems``.

    Args:
        path: the ``<SOPInstanceUID>.xml`` file.
        problems: where skipped boxes are counted; a fresh log when None.

    Returns:
        The :class:`VocAnnotation` with the boxes kept.

    Raises:
        PetCtError: ``xml_refused`` (too large, not UTF-8, a declaration) or ``xml_unparsable`` (not well-formed,
            not an ``<annotation>``, no valid ``<size>``), naming the file.
    """
    path = Path(path)
    problems = problems if problems is not None else ProblemLog()
    try:
        size = path.stat().st_size
    except OSError as error:
        raise PetCtError("xml_unparsable", f"{path}: cannot read annotation file ({error})") from error
    if size > MAX_XML_BYTES:
        raise PetCtError("xml_refused", f"{path}: {size} bytes, over the {MAX_XML_BYTES} byte cap of a VOC file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PetCtError("xml_refused", f"{path}: not UTF-8 text ({error}); refusing to parse it") from error
    declaration = _DECLARATION.search(text)
    if declaration:
        snippet = text[declaration.start(): declaration.start() + 20].split("\n")[0]
        raise PetCtError(
            "xml_refused",
            f"{path}: holds a declaration {snippet!r} (DOCTYPE / ENTITY); VOC files need none, refusing to parse it",
        )
    try:
        # parse the checked text, not the bytes: a str is fed to expat as UTF-8 whatever encoding the file declares,
        # so the parser sees exactly the characters the declaration check saw
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise PetCtError("xml_unparsable", f"{path}: not well-formed XML ({error})") from error
    if root.tag != "annotation":
        raise PetCtError("xml_unparsable", f"{path}: root element <{root.tag}>, expected <annotation>")
    size_element = root.find("size")
    width = _element_int(size_element, "width") if size_element is not None else None
    height = _element_int(size_element, "height") if size_element is not None else None
    if not width or not height or width <= 0 or height <= 0:
        raise PetCtError("xml_unparsable", f"{path}: <size> lacks a positive whole <width> and <height>")
    boxes = []
    for index, obj in enumerate(root.findall("object")):
        where = f"{path}: <object> {index}"
        name_element = obj.find("name")
        name = (name_element.text or "").strip() if name_element is not None else ""
        if not name:
            problems.add("box_unnamed", f"{where}: no <name>; box skipped")
            continue
        if name not in HISTOLOGY:
            problems.add("box_unknown_label", f"{where}: <name> {name!r} is not a histology letter; box skipped")
            continue
        bndbox = obj.find("bndbox")
        coords = [_element_int(bndbox, key) if bndbox is not None else None for key in ("xmin", "ymin", "xmax", "ymax")]
        if any(c is None for c in coords):
            problems.add("box_invalid", f"{where}: <bndbox> lacks four whole-number coordinates; box skipped")
            continue
        xmin, ymin, xmax, ymax = coords
        if xmin > xmax or ymin > ymax:
            problems.add("box_invalid", f"{where}: xmin {xmin} > xmax {xmax} or ymin {ymin} > ymax {ymax}; skipped")
            continue
        if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
            problems.add(
                "box_outside_image",
                f"{where}: box ({xmin}, {ymin}, {xmax}, {ymax}) outside the {width} x {height} image; skipped",
            )
            continue
        boxes.append(Box(name, xmin, ymin, min(xmax, width - 1), min(ymax, height - 1)))
    return VocAnnotation(path=path, width=width, height=height, boxes=boxes)


def format_boxes(boxes) -> str:
    """Boxes as the manifest's ``boxes`` text: ``"xmin ymin xmax ymax"`` (inclusive pixels) joined by ``;``."""
    return ";".join(" ".join(str(int(v)) for v in (b.as_tuple() if isinstance(b, Box) else b)) for b in boxes)


def parse_boxes(text) -> np.ndarray:
    """Inverse of :func:`format_boxes`: int array ``(n, 4)`` of ``xmin, ymin, xmax, ymax``.

    Raises:
        ValueError: when a box does not hold four integers.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        return np.zeros((0, 4), dtype=np.int64)
    boxes = []
    for part in str(text).split(";"):
        values = part.split()
        if len(values) != 4:
            raise ValueError(f"boxes {text!r}: {part!r} is not four integers 'xmin ymin xmax ymax'")
        boxes.append([int(v) for v in values])
    return np.asarray(boxes, dtype=np.int64)


# ============================================================================================ DICOM headers


def _tag_name(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


def _require(dataset, keyword: str, path, kind: str = "series_unreadable"):
    value = dataset.get(keyword)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PetCtError(kind, f"{path}: DICOM tag {_tag_name(keyword)} is missing or empty")
    return value


def _require_number(dataset, keyword: str, path, kind: str = "series_unreadable", positive: bool = False) -> float:
    raw = _require(dataset, keyword, path, kind)
    try:
        value = float(raw)
    except (TypeError, ValueError) as error:
        raise PetCtError(kind, f"{path}: DICOM tag {_tag_name(keyword)} = {raw!r} is not a number") from error
    if not math.isfinite(value) or (positive and value <= 0):
        raise PetCtError(kind, f"{path}: DICOM tag {_tag_name(keyword)} = {raw!r} must be a positive finite number"
                         if positive else f"{path}: DICOM tag {_tag_name(keyword)} = {raw!r} is not finite")
    return value


def _read_dicom(path: Path, header_only: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=header_only)
    except InvalidDicomError as error:
        raise PetCtError("series_unreadable", f"{path}: not a DICOM file ({error})") from error
    except Exception as error:  # corrupt files raise struct, type and value errors from deep inside pydicom
        raise PetCtError("series_unreadable", f"{path}: not a readable DICOM file ({type(error).__name__}: "
                         f"{error})") from error


@dataclass
class SliceHeader:
    """What the reader needs from one DICOM image's header."""

    path: Path
    sop_uid: str
    modality: str
    series_uid: str
    study_uid: str
    subject: str
    frame_of_reference_uid: str
    position: np.ndarray  # ImagePositionPatient, mm: world centre of the first transmitted pixel
    orientation: np.ndarray  # ImageOrientationPatient: row direction (3), column direction (3)
    pixel_spacing: tuple[float, float]  # DICOM order: (between rows = y, between columns = x), mm
    rows: int
    columns: int
    instance_number: int | None


def read_slice_header(path: str | os.PathLike) -> SliceHeader:
    """Read the geometry and identity of one DICOM image (no pixels).

    Raises:
        PetCtError: ``series_unreadable`` naming the file and the missing or bad tag.
    """
    path = Path(path)
    dataset = _read_dicom(path, header_only=True)
    position = np.asarray([float(v) for v in _require(dataset, "ImagePositionPatient", path)], dtype=np.float64)
    orientation = np.asarray([float(v) for v in _require(dataset, "ImageOrientationPatient", path)], dtype=np.float64)
    spacing = [float(v) for v in _require(dataset, "PixelSpacing", path)]
    if position.shape != (3,) or orientation.shape != (6,) or len(spacing) != 2 or min(spacing) <= 0:
        raise PetCtError(
            "series_unreadable",
            f"{path}: ImagePositionPatient needs 3 values, ImageOrientationPatient 6, PixelSpacing 2 positive "
            f"(found {position.tolist()}, {orientation.tolist()}, {spacing})",
        )
    row_direction, column_direction = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_direction) - 1) > 1e-3 or abs(np.linalg.norm(column_direction) - 1) > 1e-3
            or abs(float(row_direction @ column_direction)) > 1e-3):
        raise PetCtError(
            "series_unreadable",
            f"{path}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors",
        )
    instance = dataset.get("InstanceNumber")
    return SliceHeader(
        path=path,
        sop_uid=str(_require(dataset, "SOPInstanceUID", path)),
        modality=str(_require(dataset, "Modality", path)),
        series_uid=str(_require(dataset, "SeriesInstanceUID", path)),
        study_uid=str(dataset.get("StudyInstanceUID", "")),
        subject=str(dataset.get("PatientID", "")),
        frame_of_reference_uid=str(_require(dataset, "FrameOfReferenceUID", path)),
        position=position,
        orientation=orientation,
        pixel_spacing=(spacing[0], spacing[1]),
        rows=int(_require(dataset, "Rows", path)),
        columns=int(_require(dataset, "Columns", path)),
        instance_number=int(instance) if instance not in (None, "") else None,
    )


# ================================================================================================= SUV


def _dicom_datetime(date_text: str, time_text: str, path, keyword: str) -> dt.datetime:
    from pydicom.valuerep import DA, TM

    try:
        date = DA(str(date_text).strip())
        time = TM(str(time_text).strip())
    except ValueError as error:
        raise PetCtError("pet_unreadable", f"{path}: DICOM tag {_tag_name(keyword)}: cannot read date "
                         f"{date_text!r} / time {time_text!r} ({error})") from error
    if date is None or time is None:
        raise PetCtError("pet_unreadable", f"{path}: DICOM tag {_tag_name(keyword)}: empty date or time")
    return dt.datetime.combine(date, time)


def _dicom_datetime_text(text: str, path, keyword: str) -> dt.datetime:
    from pydicom.valuerep import DT

    try:
        value = DT(str(text).strip())
    except ValueError as error:
        raise PetCtError("pet_unreadable", f"{path}: DICOM tag {_tag_name(keyword)} = {text!r} is not a "
                         f"date-time ({error})") from error
    return value.replace(tzinfo=None)


@dataclass(frozen=True)
class SuvParameters:
    """What SUVbw is computed from, as read from one PET file (for provenance and tests)."""

    units: str
    decay_correction: str
    patient_weight_kg: float
    injected_dose_bq: float
    half_life_s: float
    injection_time: dt.datetime
    series_time: dt.datetime
    decay_seconds: float
    decay_factor: float  # 2 ** (-decay_seconds / half_life_s): the fraction of the dose left at series start
    factor: float  # SUVbw = activity (Bq/ml) * factor


def suv_parameters(dataset, path: str | os.PathLike = "PET file") -> SuvParameters:
    """SUVbw parameters of one PET image, read from its tags.

    ``SUVbw = activity [Bq/ml] * weight [g] / (injected dose [Bq] * 2 ** (-dt / half-life))``, where the activity
    is ``stored * RescaleSlope + RescaleIntercept`` (``Units`` BQML) and ``dt`` runs from
    ``RadiopharmaceuticalStartDateTime`` (or ``SeriesDate`` + ``RadiopharmaceuticalStartTime``) to the series start
    (``SeriesDate`` + ``SeriesTime``), because ``DecayCorrection`` START means the scanner corrected the activity to
    the series start. ``DecayCorrection`` ADMIN (already corrected to the injection) uses ``dt = 0``. ``Units`` GML
    means the values are already SUVbw (factor 1).

    Args:
        dataset: a pydicom Dataset of a PET image (header is enough).
        path: the file, for messages.

    Returns:
        :class:`SuvParameters`.

    Raises:
        PetCtError: ``pet_unreadable`` naming the file and the missing or inconsistent tag (e.g. a missing
            PatientWeight, Units other than BQML / GML, DecayCorrection NONE, an injection after the series start).
    """
    units = str(_require(dataset, "Units", path, "pet_unreadable")).strip().upper()
    if units == "GML":
        zero = dt.datetime(1900, 1, 1)
        return SuvParameters(units, str(dataset.get("DecayCorrection", "")), math.nan, math.nan, math.nan,
                             zero, zero, 0.0, 1.0, 1.0)
    if units != "BQML":
        raise PetCtError("pet_unreadable", f"{path}: DICOM tag {_tag_name('Units')} = {units!r}; SUVbw needs BQML "
                         "(activity concentration) or GML (already SUVbw)")
    decay = str(_require(dataset, "DecayCorrection", path, "pet_unreadable")).strip().upper()
    if decay not in ("START", "ADMIN"):
        raise PetCtError("pet_unreadable", f"{path}: DICOM tag {_tag_name('DecayCorrection')} = {decay!r}; only "
                         "START (corrected to the series start) and ADMIN (to the injection) are supported")
    weight_kg = _require_number(dataset, "PatientWeight", path, "pet_unreadable", positive=True)
    sequence = _require(dataset, "RadiopharmaceuticalInformationSequence", path, "pet_unreadable")
    if len(sequence) < 1:
        raise PetCtError("pet_unreadable", f"{path}: DICOM tag "
                         f"{_tag_name('RadiopharmaceuticalInformationSequence')} has no item")
    radiopharmaceutical = sequence[0]
    dose = _require_number(radiopharmaceutical, "RadionuclideTotalDose", path, "pet_unreadable", positive=True)
    half_life = _require_number(radiopharmaceutical, "RadionuclideHalfLife", path, "pet_unreadable", positive=True)
    series_date = _require(dataset, "SeriesDate", path, "pet_unreadable")
    series_time = _dicom_datetime(series_date, _require(dataset, "SeriesTime", path, "pet_unreadable"), path,
                                  "SeriesTime")
    if radiopharmaceutical.get("RadiopharmaceuticalStartDateTime"):
        injection = _dicom_datetime_text(radiopharmaceutical.RadiopharmaceuticalStartDateTime, path,
                                         "RadiopharmaceuticalStartDateTime")
    else:
        start_time = _require(radiopharmaceutical, "RadiopharmaceuticalStartTime", path, "pet_unreadable")
        injection = _dicom_datetime(series_date, start_time, path, "RadiopharmaceuticalStartTime")
    seconds = (series_time - injection).total_seconds() if decay == "START" else 0.0
    if seconds < 0:
        raise PetCtError(
            "pet_unreadable",
            f"{path}: DICOM tag {_tag_name('RadiopharmaceuticalStartTime')}: injection at {injection} is after the "
            f"series start {series_time} (SeriesDate/SeriesTime); cannot decay-correct the dose",
        )
    decay_factor = 2.0 ** (-seconds / half_life)
    factor = weight_kg * 1000.0 / (dose * decay_factor)
    return SuvParameters(units, decay, weight_kg, dose, half_life, injection, series_time, seconds, decay_factor,
                         factor)


def read_pet_suv(path: str | os.PathLike) -> np.ndarray:
    """One PET image as float32 SUVbw (the file's own RescaleSlope / Intercept times :func:`suv_parameters`).

    Raises:
        PetCtError: naming the file and tag when a tag SUV needs is missing or inconsistent, or the pixels
            cannot be decoded.
    """
    path = Path(path)
    dataset = _read_dicom(path, header_only=False)
    if str(dataset.get("Modality", "")) != "PT":
        raise PetCtError("pet_unreadable", f"{path}: DICOM tag {_tag_name('Modality')} = "
                         f"{dataset.get('Modality')!r}, expected PT")
    parameters = suv_parameters(dataset, path)
    activity = _rescaled_pixels(dataset, path, "pet_unreadable")
    return (activity * parameters.factor).astype(np.float32)


def _rescaled_pixels(dataset, path: Path, kind: str) -> np.ndarray:
    slope = _require_number(dataset, "RescaleSlope", path, kind)
    intercept = _require_number(dataset, "RescaleIntercept", path, kind)
    # checked before decoding: a compressed PixelData can claim any size, and decoding it would allocate that much
    declared = {keyword: dataset.get(keyword) for keyword in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel")}
    try:
        too_large = (int(declared["Rows"] or 0) > MAX_SLICE_SIDE or int(declared["Columns"] or 0) > MAX_SLICE_SIDE
                     or int(declared["NumberOfFrames"] or 1) != 1 or int(declared["SamplesPerPixel"] or 1) != 1)
    except (TypeError, ValueError):
        too_large = True
    if too_large:
        raise PetCtError(kind, f"{path}: image tags {declared}; expected one single-sample frame of at most "
                         f"{MAX_SLICE_SIDE} x {MAX_SLICE_SIDE} pixels")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for missing handlers / corrupt data
        raise PetCtError(kind, f"{path}: cannot decode PixelData ({type(error).__name__}: {error})") from error
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if stored.shape != (rows, columns):
        raise PetCtError(kind, f"{path}: PixelData has shape {stored.shape}, Rows/Columns say {(rows, columns)} "
                         "(multi-frame or colour images are not slices)")
    return stored.astype(np.float64) * slope + intercept


def read_ct_hu(path: str | os.PathLike) -> np.ndarray:
    """One CT image as float32 HU (``stored * RescaleSlope + RescaleIntercept``).

    Raises:
        PetCtError: naming the file and tag when the rescale tags are missing or the pixels cannot be decoded.
    """
    path = Path(path)
    dataset = _read_dicom(path, header_only=False)
    return _rescaled_pixels(dataset, path, "series_unreadable").astype(np.float32)


# ============================================================================================ series


@dataclass
class DicomSeries:
    """One DICOM series as a stack of slices sorted along the slice normal.

    Why not SimpleITK's ``ImageSeriesReader`` (GDCM sorts by geometry too): the reader must know each image's
    SOPInstanceUID (annotations name images by it), read only the annotated CT slice rather than the whole volume,
    apply each PET file's own RescaleSlope and the SUV factor from its tags, and say which file breaks a series
    (mixed orientations, sizes, duplicate positions, gaps). SimpleITK then does the geometry-aware resampling.

    Attributes:
        modality: ``CT`` or ``PT`` (or what the files say).
        series_uid, study_uid, subject, frame_of_reference_uid: identity.
        headers: one :class:`SliceHeader` per file, sorted by position along the normal (ascending).
        direction: 3x3, columns = world directions of the column index (x), row index (y) and the normal.
        spacing_xy: in-plane pixel size (x = between columns, y = between rows), mm.
        offsets_mm: position of each sorted slice along the normal, mm.
    """

    modality: str
    series_uid: str
    study_uid: str
    subject: str
    frame_of_reference_uid: str
    headers: list[SliceHeader]
    direction: np.ndarray
    spacing_xy: tuple[float, float]
    offsets_mm: np.ndarray

    @classmethod
    def from_files(cls, paths) -> "DicomSeries":
        """Read the headers of one series' files and sort them by geometry.

        Raises:
            PetCtError: ``series_unreadable`` naming the files when they hold several series or modalities,
                mixed orientations, sizes or pixel spacings, or two images at one position.
        """
        paths = [Path(p) for p in paths]
        if not paths:
            raise PetCtError("series_unreadable", "empty series: no files")
        headers = [read_slice_header(p) for p in paths]
        first = headers[0]
        for header in headers[1:]:
            for name, a, b in (
                ("SeriesInstanceUID", first.series_uid, header.series_uid),
                ("Modality", first.modality, header.modality),
                ("FrameOfReferenceUID", first.frame_of_reference_uid, header.frame_of_reference_uid),
                ("Rows/Columns", (first.rows, first.columns), (header.rows, header.columns)),
            ):
                if a != b:
                    raise PetCtError("series_unreadable",
                                     f"{header.path}: {name} {b} differs from {first.path}'s {a}; not one series")
            if not np.allclose(header.orientation, first.orientation, atol=1e-4):
                raise PetCtError(
                    "series_unreadable",
                    f"{header.path}: mixed orientations in one series: ImageOrientationPatient "
                    f"{header.orientation.tolist()} here, {first.orientation.tolist()} in {first.path}",
                )
            if not np.allclose(header.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
                raise PetCtError("series_unreadable", f"{header.path}: PixelSpacing {header.pixel_spacing} differs "
                                 f"from {first.path}'s {first.pixel_spacing}")
        row_direction, column_direction = first.orientation[:3], first.orientation[3:]
        normal = np.cross(row_direction, column_direction)
        offsets = np.asarray([float(h.position @ normal) for h in headers])
        order = np.argsort(offsets, kind="stable")
        headers = [headers[i] for i in order]
        offsets = offsets[order]
        repeated = np.flatnonzero(np.diff(offsets) < 1e-3)
        if repeated.size:
            i = int(repeated[0])
            raise PetCtError("series_unreadable", f"{headers[i + 1].path} and {headers[i].path}: two images at one "
                             f"position ({offsets[i]:.3f} mm along the normal) in one series")
        return cls(
            modality=first.modality,
            series_uid=first.series_uid,
            study_uid=first.study_uid,
            subject=first.subject,
            frame_of_reference_uid=first.frame_of_reference_uid,
            headers=headers,
            direction=np.stack([row_direction, column_direction, normal], axis=1),
            spacing_xy=(first.pixel_spacing[1], first.pixel_spacing[0]),
            offsets_mm=offsets,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return (len(self.headers), self.headers[0].rows, self.headers[0].columns)

    def index_of(self, sop_uid: str) -> int | None:
        for index, header in enumerate(self.headers):
            if header.sop_uid == sop_uid:
                return index
        return None

    def slice_spacing(self) -> float:
        """The one slice spacing of the series (mm).

        Raises:
            PetCtError: ``series_unreadable`` when the gaps between slices differ by more than
                :data:`SPACING_TOLERANCE` (a missing slice, or two stacks in one series), naming the files.
        """
        if len(self.headers) < 2:
            raise PetCtError("series_unreadable", f"{self.headers[0].path}: a single image is not a volume")
        # sorted ascending without repeats (from_files), so the gaps are positive and their median is the spacing
        gaps, median, bad = uneven_slice_gaps(self.offsets_mm, SPACING_TOLERANCE)
        if bad.size:
            i = int(bad[0])
            raise PetCtError(
                "series_unreadable",
                f"{self.headers[i].path} -> {self.headers[i + 1].path}: gap of {gaps[i]:.3f} mm between slices where "
                f"the series has {median:.3f} mm (a missing slice?); not one regular volume",
            )
        return median

    def read_slice(self, index: int) -> np.ndarray:
        """The pixels of one sorted slice: HU for CT, SUVbw for PET (float32)."""
        path = self.headers[index].path
        return read_pet_suv(path) if self.modality == "PT" else read_ct_hu(path)

    def volume(self) -> Volume:
        """The whole series as a :class:`~lungkit.data.volumes.Volume` (float32 HU or SUVbw).

        Raises:
            PetCtError: for an irregular slice spacing (:meth:`slice_spacing`) or unreadable pixels.
        """
        spacing_z = self.slice_spacing()
        array = np.stack([self.read_slice(i) for i in range(len(self.headers))])
        return Volume(
            array=array,
            spacing=(self.spacing_xy[0], self.spacing_xy[1], spacing_z),
            origin=tuple(self.headers[0].position),
            direction=self.direction,
            source_path=str(self.headers[0].path.parent),
        )


def resample_onto_slice(volume: Volume, target: DicomSeries, index: int, default_value: float) -> np.ndarray:
    """Resample a volume (SimpleITK, linear) onto the pixel grid of one slice of another series.

    The output grid is the target slice's: origin its ImagePositionPatient, directions from its
    ImageOrientationPatient, its pixel spacing and size; world coordinates (one frame of reference) connect the two.

    Args:
        volume: e.g. the PET volume in SUV.
        target: the series holding the slice, e.g. the CT.
        index: sorted slice index in ``target``.
        default_value: value where the slice leaves the volume (0 SUV outside the PET field of view, air for CT).

    Returns:
        float32 array ``(rows, columns)`` of the target slice.
    """
    import SimpleITK as sitk

    header = target.headers[index]
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(tuple(float(v) for v in header.position))
    resampler.SetOutputDirection(tuple(float(v) for v in target.direction.ravel()))
    resampler.SetOutputSpacing((target.spacing_xy[0], target.spacing_xy[1], 1.0))
    resampler.SetSize((header.columns, header.rows, 1))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    image = volume.to_sitk()
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(image))[0].astype(np.float32)


def coverage_onto_slice(volume: Volume, target: DicomSeries, index: int) -> np.ndarray:
    """Bool mask of the target slice's pixels that lie inside ``volume`` (e.g. the PET field of view)."""
    ones = Volume(np.ones(volume.array.shape, np.float32), volume.spacing, volume.origin, volume.direction)
    return resample_onto_slice(ones, target, index, default_value=0.0) > 0.5


def check_same_frame(ct: DicomSeries, pet: DicomSeries) -> None:
    """Refuse to pair a PET and a CT series that do not share a FrameOfReferenceUID.

    Raises:
        FrameOfReferenceMismatch: naming both series' folders and both UIDs.
    """
    if ct.frame_of_reference_uid != pet.frame_of_reference_uid:
        raise FrameOfReferenceMismatch(
            f"{pet.headers[0].path.parent}: PET FrameOfReferenceUID {pet.frame_of_reference_uid} differs from the "
            f"CT's {ct.frame_of_reference_uid} ({ct.headers[0].path.parent}); their coordinates are not one space, "
            "so the PET is not resampled onto this CT (no silent mis-registration)"
        )


# ============================================================================================ collection index


@dataclass
class CollectionIndex:
    """What :func:`index_collection` found.

    Attributes:
        root: the collection folder.
        series: one row per series: ``subject, study_uid, series_uid, modality, folder, source``.
        annotations: one row per annotation file: ``subject, sop_uid, xml_path``.
        source: ``metadata.csv`` or ``dicom walk``.
        problems: index-level problems (rows of metadata.csv, missing folders, unknown annotation folders).
    """

    root: Path
    series: pd.DataFrame
    annotations: pd.DataFrame
    source: str
    problems: ProblemLog


def _inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _series_from_metadata(root: Path, csv_path: Path, problems: ProblemLog) -> pd.DataFrame:
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in METADATA_COLUMNS if c not in table.columns]
    if missing:
        raise PetCtError("metadata_row_invalid", f"{csv_path}: missing columns {missing}; TCIA's metadata.csv has "
                         f"{list(METADATA_COLUMNS)} (found {list(table.columns)})")
    rows = []
    for row_number, record in table.iterrows():
        where = f"{csv_path}: row {row_number} (line {row_number + 2})"
        # the NBIA retriever writes '.\\Lung-PET-CT-Dx\\...' on Windows and './Lung-PET-CT-Dx/...' elsewhere
        location = record["File Location"].strip().replace("\\", "/")
        if not location or not record["Series UID"].strip():
            problems.add("metadata_row_invalid", f"{where}: empty 'File Location' or 'Series UID'")
            continue
        folder = (csv_path.parent / location).resolve()
        if not _inside(csv_path.parent, folder):
            problems.add("metadata_row_invalid", f"{where}: 'File Location' {location!r} leaves the collection folder")
            continue
        if not folder.is_dir():
            problems.add("series_folder_missing", f"{where}: 'File Location' {location!r}: no such folder")
            continue
        rows.append({
            "subject": record["Subject ID"].strip(),
            "study_uid": record["Study UID"].strip(),
            "series_uid": record["Series UID"].strip(),
            "modality": record["Modality"].strip(),
            "folder": str(folder),
            "source": f"{METADATA_NAME} row {row_number}",
        })
    return pd.DataFrame(rows, columns=["subject", "study_uid", "series_uid", "modality", "folder", "source"])


def _series_from_walk(root: Path, max_files: int, problems: ProblemLog) -> pd.DataFrame:
    found: dict[str, dict] = {}
    count = 0
    base_depth = len(root.parts)
    for folder, subfolders, files in os.walk(root):
        depth = len(Path(folder).parts) - base_depth
        if depth >= MAX_WALK_DEPTH:
            subfolders[:] = []
        subfolders[:] = sorted(d for d in subfolders if d != ANNOTATION_FOLDER)
        for name in sorted(files):
            if not name.lower().endswith(".dcm"):
                continue
            count += 1
            if count > max_files:
                raise PetCtError("series_unreadable", f"{root}: more than {max_files} DICOM files and no "
                                 f"{METADATA_NAME}; add TCIA's {METADATA_NAME} or raise max_files")
            path = Path(folder) / name
            try:
                header = read_slice_header(path)
            except PetCtError as error:
                problems.add_error(error)
                continue
            entry = found.setdefault(header.series_uid, {
                "subject": header.subject, "study_uid": header.study_uid, "series_uid": header.series_uid,
                "modality": header.modality, "folder": str(path.parent), "source": "dicom walk",
            })
            if entry["folder"] != str(path.parent):
                problems.add("series_unreadable", f"{path}: series {header.series_uid} is split over the folders "
                             f"{entry['folder']} and {path.parent}; only the first is read")
    return pd.DataFrame(list(found.values()), columns=["subject", "study_uid", "series_uid", "modality", "folder",
                                                       "source"])


def _annotation_files(annotation_dir: Path, problems: ProblemLog) -> pd.DataFrame:
    rows = []
    for folder in sorted(p for p in annotation_dir.iterdir() if p.is_dir()):
        match = ANNOTATION_FOLDER_PATTERN.match(folder.name)
        if not match:
            problems.add("annotation_folder_unknown",
                         f"{folder}: not <letter><4 digits> (e.g. A0001); its annotations are not read")
            continue
        subject = f"Lung_Dx-{folder.name}"
        for xml_path in sorted(folder.glob("*.xml")):
            rows.append({"subject": subject, "sop_uid": xml_path.stem, "xml_path": str(xml_path)})
    return pd.DataFrame(rows, columns=["subject", "sop_uid", "xml_path"])


def index_collection(
    root: str | os.PathLike,
    annotation_dir: str | os.PathLike | None = None,
    max_files: int = MAX_WALK_FILES,
    strict: bool = False,
) -> CollectionIndex:
    """Index a Lung-PET-CT-Dx folder: its series and its annotation files.

    Series come from ``<root>/metadata.csv`` when present (TCIA's table; ``File Location`` is relative to it and
    may not leave the folder; rows whose folder is missing, as in a partial download, are counted), else from a
    walk over ``*.dcm`` headers at most :data:`MAX_WALK_DEPTH` folders deep and ``max_files`` files.

    Args:
        root: the collection folder (holding ``metadata.csv`` and/or ``Lung-PET-CT-Dx/``).
        annotation_dir: the ``Annotation`` folder; ``<root>/Annotation`` when None.
        max_files: cap on the DICOM walk.
        strict: raise at the first index-level problem instead of counting it.

    Returns:
        A :class:`CollectionIndex`.

    Raises:
        FileNotFoundError: when the root or the annotation folder is missing.
        PetCtError: for a metadata.csv without the needed columns, a walk over the cap, or (strict) any problem.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Lung-PET-CT-Dx folder not found")
    annotation_dir = Path(annotation_dir) if annotation_dir else root / ANNOTATION_FOLDER
    if not annotation_dir.is_dir():
        raise FileNotFoundError(
            f"{annotation_dir}: no annotation folder; Lung-PET-CT-Dx's boxes come as a separate download "
            f"('{ANNOTATION_FOLDER}/<letter><4 digits>/<SOPInstanceUID>.xml'): put it there or pass annotation_dir"
        )
    problems = ProblemLog(strict=strict)
    csv_path = root / METADATA_NAME
    if csv_path.is_file():
        series, source = _series_from_metadata(root, csv_path, problems), METADATA_NAME
    else:
        series, source = _series_from_walk(root, max_files, problems), "dicom walk"
    annotations = _annotation_files(annotation_dir, problems)
    return CollectionIndex(root=root, series=series, annotations=annotations, source=source, problems=problems)


# ============================================================================================ slices


@dataclass
class PetCtSlice:
    """One annotated image as a two-channel slice with its boxes.

    Attributes:
        ct_hu: float32 ``(rows, columns)`` HU on the annotated image's grid.
        pet_suv: float32 SUVbw on the same grid, or None for a CT-only study.
        pet_coverage: bool mask of pixels inside the PET field of view (None without PET).
        boxes: int ``(n, 4)`` ``xmin, ymin, xmax, ymax`` (inclusive pixels).
        subject, histology: ``Lung_Dx-A0001``, ``A``.
        annotated_modality: ``CT`` or ``PT``: the image the boxes were drawn on (the grid of both channels).
        provenance: study / series / SOP uids, files, slice position, PET pairing, SUV parameters.
    """

    ct_hu: np.ndarray
    pet_suv: np.ndarray | None
    pet_coverage: np.ndarray | None
    boxes: np.ndarray
    subject: str
    histology: str
    annotated_modality: str
    pixel_spacing_mm: tuple[float, float]
    provenance: dict


def _files_of(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() == ".dcm")


def _sop_uids(files) -> list[str]:
    """The SOPInstanceUIDs of files whose series failed to load (best effort, to name the annotations it costs)."""
    import pydicom

    uids = []
    for path in files:
        try:
            uids.append(str(pydicom.dcmread(str(path), stop_before_pixels=True,
                                            specific_tags=["SOPInstanceUID"]).SOPInstanceUID))
        except Exception:  # an unreadable file names no annotation; the series error is already counted
            continue
    return uids


def _partner(candidates: list[DicomSeries], annotated: DicomSeries) -> DicomSeries | None:
    """The series of the other modality to pair with: same study and frame of reference; most slices first.

    Raises:
        FrameOfReferenceMismatch: when the study has series of that modality but none in the same frame.
    """
    same_study = [s for s in candidates if s.study_uid == annotated.study_uid]
    if not same_study:
        return None
    same_frame = [s for s in same_study if s.frame_of_reference_uid == annotated.frame_of_reference_uid]
    if not same_frame:
        pet, ct = (same_study[0], annotated) if annotated.modality == "CT" else (annotated, same_study[0])
        check_same_frame(ct, pet)
    return max(same_frame, key=lambda s: (len(s.headers), s.series_uid))


def iter_subject_slices(index: CollectionIndex, subject: str, problems: ProblemLog) -> Iterator[PetCtSlice]:
    """Yield the annotated slices of one subject, counting every problem in ``problems``.

    Per annotated image: its series (found by SOPInstanceUID among the subject's CT and PET series), its boxes
    (checked against the image size), the CT in HU and the paired PET in SUVbw resampled onto the annotated CT
    slice (or, for an annotation on a PET image, the CT resampled onto it). A study without PET yields CT-only
    slices (``pet_suv`` None); a PET in another frame of reference is refused and the annotations of that series
    are skipped (counted ``pet_frame_mismatch``).

    Args:
        index: from :func:`index_collection`.
        subject: e.g. ``Lung_Dx-A0001``.
        problems: the log (strict logs raise at the first file-level problem).

    Yields:
        :class:`PetCtSlice` in annotation-file order.
    """
    try:
        histology = histology_letter(subject)
    except ValueError as error:
        problems.add("annotation_folder_unknown", str(error))
        return
    annotation_rows = index.annotations[index.annotations["subject"] == subject]
    parsed: dict[str, VocAnnotation] = {}
    for record in annotation_rows.itertuples(index=False):
        try:
            annotation = parse_voc_xml(record.xml_path, problems)
        except PetCtError as error:
            problems.add_error(error)
            continue
        for box in annotation.boxes:
            if box.label != histology:
                problems.add("box_label_differs", f"{record.xml_path}: box named {box.label!r} in subject {subject} "
                             f"({histology}); kept, the subject's letter is the histology")
        if not annotation.boxes:
            problems.add("annotation_no_boxes", f"{record.xml_path}: no usable box; annotation skipped")
            continue
        parsed[record.sop_uid] = annotation
    if not parsed:
        return

    series_rows = index.series[(index.series["subject"] == subject) & index.series["modality"].isin(("CT", "PT"))]
    if series_rows.empty:
        problems.add("subject_without_images", f"{subject}: {len(parsed)} annotation file(s) but no CT or PET series "
                     "of this subject in the index (not downloaded?); its annotations are skipped")
        return
    series_list: list[DicomSeries] = []
    unreadable: dict[str, str] = {}  # SOP uid -> why its series could not be read
    for record in series_rows.itertuples(index=False):
        files = _files_of(record.folder)
        try:
            series_list.append(DicomSeries.from_files(files))
        except PetCtError as error:
            sop_uids = _sop_uids(files)
            if parsed.keys() & set(sop_uids):
                problems.add_error(error)
            else:  # e.g. a fused or secondary-capture series nobody annotated: it costs nothing
                problems.add("series_unreadable_unannotated", f"{record.folder}: not read, no annotated image in "
                             f"it ({error})")
            for sop_uid in sop_uids:
                unreadable[sop_uid] = str(error)
            continue
    where: dict[str, tuple[DicomSeries, int]] = {}
    for series in series_list:
        for position, header in enumerate(series.headers):
            where[header.sop_uid] = (series, position)
    volumes: dict[str, Volume | PetCtError] = {}

    def volume_of(series: DicomSeries) -> Volume:
        if series.series_uid not in volumes:
            try:
                volumes[series.series_uid] = series.volume()
            except PetCtError as error:
                volumes[series.series_uid] = error
        result = volumes[series.series_uid]
        if isinstance(result, PetCtError):
            raise result
        return result

    for sop_uid, annotation in parsed.items():
        if sop_uid in unreadable:
            problems.add("annotation_series_unreadable", f"{annotation.path}: its image {sop_uid} is in a series "
                         f"that could not be read ({unreadable[sop_uid]}); annotation skipped")
            continue
        if sop_uid not in where:
            problems.add("annotation_sop_missing", f"{annotation.path}: names SOPInstanceUID {sop_uid}, which no CT "
                         f"or PET file of {subject} holds; annotation skipped")
            continue
        series, position = where[sop_uid]
        header = series.headers[position]
        if (annotation.width, annotation.height) != (header.columns, header.rows):
            problems.add("annotation_size_mismatch", f"{annotation.path}: <size> {annotation.width} x "
                         f"{annotation.height}, but {header.path} has Columns x Rows {header.columns} x {header.rows}")
            continue
        other_modality = "PT" if series.modality == "CT" else "CT"
        if series.modality not in ("CT", "PT"):
            problems.add("annotation_unsupported_modality", f"{annotation.path}: annotated image {header.path} has "
                         f"Modality {series.modality!r}; only CT and PT images are read")
            continue
        try:
            partner = _partner([s for s in series_list if s.modality == other_modality], series)
            own = series.read_slice(position)
            provenance = {
                "study_uid": series.study_uid, "series_uid": series.series_uid, "sop_uid": sop_uid,
                "source_file": str(header.path), "annotation_file": str(annotation.path),
                "slice_position_mm": float(series.offsets_mm[position]), "instance_number": header.instance_number,
                "frame_of_reference_uid": series.frame_of_reference_uid,
                "partner_series_uid": partner.series_uid if partner is not None else "",
                "partner_folder": str(partner.headers[0].path.parent) if partner is not None else "",
            }
            if series.modality == "CT":
                ct_hu, pet_suv, coverage = own, None, None
                if partner is None and any(s.modality == "PT" for s in series_list):
                    problems.add("ct_only_pet_in_other_study", f"{annotation.path}: {subject} has PET only in "
                                 "another study (another day, another frame of reference); this slice is CT-only")
                if partner is not None:
                    pet_volume = volume_of(partner)
                    pet_suv = resample_onto_slice(pet_volume, series, position, default_value=0.0)
                    coverage = coverage_onto_slice(pet_volume, series, position)
                    provenance["suv"] = _suv_provenance(partner)
            else:
                if partner is None:
                    problems.add("ct_partner_missing", f"{annotation.path}: annotated PET image {header.path} has no "
                                 "CT series in its study and frame of reference; annotation skipped")
                    continue
                pet_suv, coverage = own, np.ones(own.shape, dtype=bool)
                ct_hu = resample_onto_slice(volume_of(partner), series, position, default_value=AIR_HU)
                provenance["suv"] = _suv_provenance(series)
        except PetCtError as error:
            problems.add(error.kind, f"{annotation.path}: {error}")
            continue
        yield PetCtSlice(
            ct_hu=ct_hu,
            pet_suv=pet_suv,
            pet_coverage=coverage,
            boxes=np.asarray([b.as_tuple() for b in annotation.boxes], dtype=np.int64),
            subject=subject,
            histology=histology,
            annotated_modality=series.modality,
            pixel_spacing_mm=series.spacing_xy,
            provenance=provenance,
        )


def iter_collection_slices(
    root: str | os.PathLike,
    problems: ProblemLog | None = None,
    annotation_dir: str | os.PathLike | None = None,
) -> Iterator[PetCtSlice]:
    """Every annotated slice of a Lung-PET-CT-Dx folder, subject by subject (sorted).

    Args:
        root: the collection folder.
        problems: collects index- and slice-level problems (a fresh, lenient log when None).
        annotation_dir: the ``Annotation`` folder when not ``<root>/Annotation``.

    Yields:
        :class:`PetCtSlice`, see :func:`iter_subject_slices`.
    """
    problems = problems if problems is not None else ProblemLog()
    index = index_collection(root, annotation_dir=annotation_dir, strict=problems.strict)
    problems.merge(index.problems)
    for subject in sorted(index.annotations["subject"].unique()):
        yield from iter_subject_slices(index, subject, problems)


def _suv_provenance(pet: DicomSeries) -> dict:
    dataset = _read_dicom(pet.headers[0].path, header_only=True)
    parameters = suv_parameters(dataset, pet.headers[0].path)
    return {
        "units": parameters.units,
        "decay_correction": parameters.decay_correction,
        "patient_weight_kg": parameters.patient_weight_kg,
        "injected_dose_bq": parameters.injected_dose_bq,
        "half_life_s": parameters.half_life_s,
        "decay_seconds": parameters.decay_seconds,
        "decay_factor": parameters.decay_factor,
    }


# ============================================================================================ masks from boxes

#: The named ways to turn a box into a mask (see :func:`masks_from_boxes`).
MASK_METHODS = ("box", "box_ct_threshold", "box_pet_threshold")
#: Default: soft-tissue CT inside the box. Every annotated slice has CT (PET is missing in CT-only studies and is
#: resampled from 4 mm voxels, so 40 % of SUVmax draws blurred, blocky outlines that spill into the lung), and the
#: filled box overstates every tumour (a round one fills pi/4 of its box; the rest is lung or chest wall), so a
#: model scored against filled boxes is rewarded for drawing boxes.
DEFAULT_MASK_METHOD = "box_ct_threshold"
#: Soft tissue in HU: solid tumour, vessels and wall (about -100..100, enhancing up to ~250); lung is below -500
#: and bone above ~300.
SOFT_TISSUE_HU = (-300.0, 300.0)
#: Paper-independent PET rule: the fixed 40 % of SUVmax threshold common in FDG tumour delineation.
PET_THRESHOLD_FRACTION = 0.4


def mask_flag(method: str) -> str:
    """The flag every result and report on these masks carries: ``MASKS FROM BOXES (<method>): ...``.

    Raises:
        ValueError: for an unknown method.
    """
    if method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {method!r}; expected one of {MASK_METHODS}")
    how = {
        "box": "the filled boxes",
        "box_ct_threshold": f"soft-tissue CT ({SOFT_TISSUE_HU[0]:.0f}..{SOFT_TISSUE_HU[1]:.0f} HU) inside each box, "
                            "largest component",
        "box_pet_threshold": f"PET SUV >= {PET_THRESHOLD_FRACTION:.0%} of the box's SUVmax inside each box, "
                             "largest component",
    }[method]
    return (f"MASKS FROM BOXES ({method}): Lung-PET-CT-Dx has boxes, not outlines; the targets are {how} "
            "(mask_source in the manifest), not traced tumours.")


def _largest_component(mask: np.ndarray, seed_yx: tuple[int, int] | None = None) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    if seed_yx is not None and labels[seed_yx]:
        return labels == labels[seed_yx]
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def box_mask(shape, box) -> np.ndarray:
    """The filled box (inclusive pixel bounds ``xmin, ymin, xmax, ymax``) as a bool mask of ``shape``."""
    mask = np.zeros(shape, dtype=bool)
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    mask[max(ymin, 0): ymax + 1, max(xmin, 0): xmax + 1] = True
    return mask


def masks_from_boxes(
    boxes,
    method: str = DEFAULT_MASK_METHOD,
    ct_hu: np.ndarray | None = None,
    pet_suv: np.ndarray | None = None,
    shape=None,
) -> tuple[np.ndarray, str]:
    """A tumour mask from boxes, by a named method (union over boxes).

    - ``box``: the filled box.
    - ``box_ct_threshold``: pixels in :data:`SOFT_TISSUE_HU` inside the box, the largest connected component.
    - ``box_pet_threshold``: pixels with SUV >= :data:`PET_THRESHOLD_FRACTION` x the box's SUVmax inside the box,
      the component holding the maximum.

    A box where the method finds nothing (no soft tissue, no PET for a CT-only study, SUVmax 0) falls back to
    the filled box, and the returned source says so, so no box ever becomes an empty target unnoticed.

    Args:
        boxes: ``(n, 4)`` ``xmin, ymin, xmax, ymax`` inclusive pixels.
        method: one of :data:`MASK_METHODS`.
        ct_hu: the CT slice (needed by ``box_ct_threshold``).
        pet_suv: the PET slice on the same grid (``box_pet_threshold``), or None.
        shape: the slice shape when neither image is given.

    Returns:
        ``(mask, source)``: bool mask and the method actually used: ``method``, or ``method+box_fallback`` when at
        least one box fell back to the filled box.

    Raises:
        ValueError: for an unknown method or a missing CT where it is needed.
    """
    if method not in MASK_METHODS:
        raise ValueError(f"unknown mask method {method!r}; expected one of {MASK_METHODS}")
    reference = ct_hu if ct_hu is not None else pet_suv
    shape = tuple(np.shape(reference)) if reference is not None else tuple(shape)
    if method == "box_ct_threshold" and ct_hu is None:
        raise ValueError("box_ct_threshold needs the CT slice (ct_hu)")
    mask = np.zeros(shape, dtype=bool)
    fell_back = False
    for box in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        inside = box_mask(shape, box)
        if method == "box":
            part = inside
        elif method == "box_ct_threshold":
            low, high = SOFT_TISSUE_HU
            part = _largest_component(inside & (ct_hu >= low) & (ct_hu <= high))
        else:
            part = np.zeros(shape, dtype=bool)
            if pet_suv is not None:
                values = np.where(inside, pet_suv, -np.inf)
                peak = float(values.max())
                if peak > 0:
                    seed = np.unravel_index(int(np.argmax(values)), shape)
                    part = _largest_component(inside & (pet_suv >= PET_THRESHOLD_FRACTION * peak), seed)
        if not part.any():
            part, fell_back = inside, True
        mask |= part
    return mask, (f"{method}+box_fallback" if fell_back else method)


__all__ = [
    "BOX_PROBLEMS",
    "COUNTED_ONLY",
    "NOTE_PROBLEMS",
    "Box",
    "CollectionIndex",
    "DEFAULT_MASK_METHOD",
    "DicomSeries",
    "FILE_PROBLEMS",
    "FrameOfReferenceMismatch",
    "HISTOLOGY",
    "MASK_METHODS",
    "PET_THRESHOLD_FRACTION",
    "PetCtError",
    "PetCtSlice",
    "ProblemLog",
    "SOFT_TISSUE_HU",
    "SuvParameters",
    "VocAnnotation",
    "box_mask",
    "check_same_frame",
    "coverage_onto_slice",
    "format_boxes",
    "histology_letter",
    "index_collection",
    "iter_collection_slices",
    "iter_subject_slices",
    "mask_flag",
    "masks_from_boxes",
    "parse_boxes",
    "parse_voc_xml",
    "read_ct_hu",
    "read_pet_suv",
    "read_slice_header",
    "resample_onto_slice",
    "suv_parameters",
]
