"""Lung-PET-CT-Dx: the real samples (CT + VOC boxes, two PET slices), the DICOM phantom, and bad input.

The real-data tests skip, saying why, when ``../shared/data`` is absent. Bad input is made from copies of a small
phantom collection: each case must give a message naming the file and a count, and nothing half-written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import shared_sample
from lungkit.data import kit_dataset
from lungkit.data.export import staging_dir
from lungkit.data.petct import (
    DEFAULT_MASK_METHOD,
    MASK_METHODS,
    DicomSeries,
    FrameOfReferenceMismatch,
    PetCtError,
    ProblemLog,
    box_mask,
    check_same_frame,
    histology_letter,
    index_collection,
    iter_collection_slices,
    mask_flag,
    masks_from_boxes,
    parse_voc_xml,
    read_ct_hu,
    read_pet_suv,
    resample_onto_slice,
    suv_parameters,
)
from lungkit.data.petct_kit import (
    PET_SUV_SCALE,
    convert_petct_to_kit,
    mask_source_flag,
    png16_to_suv,
    read_petct_info,
    read_petct_manifest,
    read_petct_row,
    suv_to_png16,
)
from lungkit.data.phantom_petct import read_phantom_truth, write_phantom_petct

SMALL = {"profile": "smoke", "n_subjects": 2, "side": 64, "slices": 14}


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory) -> Path:
    """Two subjects, both with PET (64 px CT at 3.2 mm, 14 slices): the source every bad-input copy starts from."""
    return write_phantom_petct(tmp_path_factory.mktemp("petct") / "small", **SMALL)


@pytest.fixture(scope="module")
def smoke_phantom(tmp_path_factory) -> Path:
    """The smoke profile's phantom: 4 subjects, the fourth a CT-only study."""
    return write_phantom_petct(tmp_path_factory.mktemp("petct") / "smoke", "smoke")


@pytest.fixture
def phantom_copy(small_phantom, tmp_path) -> Path:
    return Path(shutil.copytree(small_phantom, tmp_path / "collection"))


def _all_slices(root, strict=False):
    problems = ProblemLog(strict=strict)
    return list(iter_collection_slices(root, problems)), problems


# ============================================================================== real CT + VOC sample


def test_sample_boxes_land_on_the_annotated_slice(petct_sample):
    slices, problems = _all_slices(petct_sample)
    xml_files = sorted(petct_sample.glob("Annotation/*/*.xml"))
    assert len(slices) == len(xml_files) == 38
    assert not problems.counts, problems.as_dict()
    for item in slices:
        source = Path(item.provenance["source_file"])
        header = pydicom.dcmread(source, stop_before_pixels=True)
        # the slice read is the image the XML names (its file name is that image's SOPInstanceUID)
        assert Path(item.provenance["annotation_file"]).stem == header.SOPInstanceUID == item.provenance["sop_uid"]
        assert np.array_equal(item.ct_hu, read_ct_hu(source))
        assert item.provenance["slice_position_mm"] == pytest.approx(float(header.ImagePositionPatient[2]))
        annotation = parse_voc_xml(item.provenance["annotation_file"])
        assert (annotation.width, annotation.height) == (header.Columns, header.Rows) == item.ct_hu.shape[::-1]
        for xmin, ymin, xmax, ymax in item.boxes:
            assert 0 <= xmin <= xmax < annotation.width and 0 <= ymin <= ymax < annotation.height
            inside = item.ct_hu[ymin: ymax + 1, xmin: xmax + 1]
            # a box drawn on this slice frames a tumour: much of it is soft tissue, not lung
            assert ((inside > -300) & (inside < 300)).mean() > 0.3
        assert item.histology == "A" and item.subject in ("Lung_Dx-A0001", "Lung_Dx-A0002")
        assert item.pet_suv is None  # the sample holds CT only: recorded as a CT-only slice


def test_histology_letter_is_read_from_the_subject():
    assert histology_letter("Lung_Dx-A0001") == "A"
    assert histology_letter("Lung_Dx-G0012") == "G"
    with pytest.raises(ValueError, match="not a histology letter"):
        histology_letter("Lung_Dx-Q0001")
    with pytest.raises(ValueError, match="Lung_Dx-<letter><4 digits>"):
        histology_letter("A0001")


def test_sample_converts_to_a_kit_dataset(petct_sample, tmp_path):
    manifest = convert_petct_to_kit(petct_sample, tmp_path / "kit", progress=False)
    assert len(manifest) == 38 and set(manifest["label1"]) == {"A"} and set(manifest["histology"]) == {"A"}
    assert manifest.groupby("patient")["split"].nunique().max() == 1  # every subject on one side
    assert (manifest["has_pet"] == 0).all()
    for row in manifest.itertuples(index=False):
        boxes = read_petct_row(row._asdict())["boxes"]
        assert (boxes[:, [0, 2]] < row.width).all() and (boxes[:, [1, 3]] < row.height).all() and (boxes >= 0).all()
    info = read_petct_info(tmp_path / "kit")
    assert info["pet_channel"]["slices_ct_only"] == 38 and info["pet_channel"]["scale"] == PET_SUV_SCALE
    assert info["index_source"] == "metadata.csv"
    assert mask_source_flag(tmp_path / "kit").startswith(f"MASKS FROM BOXES ({DEFAULT_MASK_METHOD})")


# ============================================================================== real PET sample


def _pet_file(name: str) -> Path:
    return shared_sample("pet-sample") / name


def test_suv_from_tags_matches_a_hand_calculation():
    path = _pet_file("pet_1.dcm")
    dataset = pydicom.dcmread(path)
    # by hand, from the values printed by `dcmdump pet_1.dcm`: injection 14:17:00, series start 15:23:16.921
    decay_seconds = (15 * 3600 + 23 * 60 + 16.921) - (14 * 3600 + 17 * 60 + 0.0)
    decayed_dose = 178340011.59668 * 2.0 ** (-decay_seconds / 6586.2)
    factor = 69.7344 * 1000.0 / decayed_dose
    parameters = suv_parameters(dataset, path)
    assert parameters.decay_seconds == pytest.approx(3976.921, abs=1e-3)
    assert parameters.factor == pytest.approx(factor, rel=1e-9)
    suv = read_pet_suv(path)
    expected = (dataset.pixel_array.astype(np.float64) * 9.12329 + 0.0) * factor
    np.testing.assert_allclose(suv, expected, rtol=1e-6)
    assert 0 < float(suv.max()) < 30  # a plausible SUV range (FLT breast PET)


def test_injection_at_series_time_gives_no_decay():
    parameters = suv_parameters(pydicom.dcmread(_pet_file("pet_2.dcm")), "pet_2.dcm")
    # RadiopharmaceuticalStartTime 11:19:59.000, SeriesTime 11:19:59.109
    assert parameters.decay_seconds == pytest.approx(0.109, abs=1e-3)
    assert parameters.decay_factor == pytest.approx(1.0, abs=2e-5)


@pytest.mark.parametrize(
    "keyword, in_sequence",
    [("PatientWeight", False), ("Units", False), ("SeriesTime", False), ("DecayCorrection", False),
     ("RadionuclideTotalDose", True), ("RadionuclideHalfLife", True), ("RadiopharmaceuticalStartTime", True)],
)
def test_pet_with_a_tag_removed_names_file_and_tag(tmp_path, keyword, in_sequence):
    dataset = pydicom.dcmread(_pet_file("pet_1.dcm"))
    target = dataset.RadiopharmaceuticalInformationSequence[0] if in_sequence else dataset
    delattr(target, keyword)
    broken = tmp_path / f"without_{keyword}.dcm"
    dataset.save_as(broken)
    with pytest.raises(PetCtError) as caught:
        read_pet_suv(broken)
    assert str(broken) in str(caught.value) and keyword in str(caught.value)
    assert caught.value.kind == "pet_unreadable"


def test_pet_with_inconsistent_tags_is_refused(tmp_path):
    dataset = pydicom.dcmread(_pet_file("pet_1.dcm"))
    dataset.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "163000.000000"  # after series
    dataset.save_as(tmp_path / "late.dcm")
    with pytest.raises(PetCtError, match=r"late\.dcm.*after the series start"):
        read_pet_suv(tmp_path / "late.dcm")
    dataset = pydicom.dcmread(_pet_file("pet_1.dcm"))
    dataset.Units = "CNTS"
    dataset.save_as(tmp_path / "counts.dcm")
    with pytest.raises(PetCtError, match=r"counts\.dcm.*Units \(0054,1001\) = 'CNTS'"):
        read_pet_suv(tmp_path / "counts.dcm")


def test_an_image_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
    dataset = pydicom.dcmread(_pet_file("pet_1.dcm"))
    dataset.Rows, dataset.Columns = 60000, 60000  # a decoder would allocate 7 GB for this claim
    dataset.save_as(tmp_path / "huge.dcm")
    with pytest.raises(PetCtError, match=r"huge\.dcm: image tags .*at most 4096 x 4096"):
        read_pet_suv(tmp_path / "huge.dcm")


# ============================================================================== phantom: geometry, PET on CT


def test_pet_resampled_onto_ct_puts_the_hot_sphere_at_the_nodule(smoke_phantom):
    truth = read_phantom_truth(smoke_phantom)
    index = index_collection(smoke_phantom)
    checked = 0
    for subject, facts in truth.items():
        if not facts["with_pet"]:
            continue
        folders = index.series[index.series["subject"] == subject].set_index("modality")["folder"]
        ct = DicomSeries.from_files(sorted(Path(folders["CT"]).glob("*.dcm")))
        pet = DicomSeries.from_files(sorted(Path(folders["PT"]).glob("*.dcm")))
        check_same_frame(ct, pet)
        pet_volume = pet.volume()
        assert pet_volume.spacing[0] == pytest.approx(4.07283) and pet.shape[1] < ct.shape[1]
        on_ct = np.stack([resample_onto_slice(pet_volume, ct, i, 0.0) for i in range(ct.shape[0])])
        # world position of every CT voxel centre
        zz, yy, xx = np.meshgrid(*(np.arange(n) for n in on_ct.shape), indexing="ij")
        origin = ct.headers[0].position
        world = (origin[None, None, None, :] + xx[..., None] * ct.spacing_xy[0] * ct.direction[:, 0]
                 + yy[..., None] * ct.spacing_xy[1] * ct.direction[:, 1]
                 + (ct.offsets_mm[zz] - ct.offsets_mm[0])[..., None] * ct.direction[:, 2])
        for tumour in facts["tumours"]:
            centre = np.asarray(tumour["centre_world_mm"])
            near = np.linalg.norm(world - centre, axis=-1) <= tumour["diameter_mm"]
            values = np.where(near, on_ct, 0.0)
            hot = values >= 0.5 * values.max()
            weights = values[hot]
            hot_centre = (world[hot] * weights[:, None]).sum(axis=0) / weights.sum()
            # within one PET voxel (4.07 mm in-plane, 4 mm between slices) of the CT nodule's world position
            assert np.all(np.abs(hot_centre - centre) <= np.array([4.07283, 4.07283, 4.0])), (subject, hot_centre,
                                                                                               centre)
            assert values.max() > 0.6 * tumour["suv_max"]
            checked += 1
    assert checked >= 2


def test_phantom_reads_like_the_collection(smoke_phantom):
    slices, problems = _all_slices(smoke_phantom)
    truth = read_phantom_truth(smoke_phantom)
    assert problems.counts == {"box_unknown_label": 1}  # the phantom's one Q box, skipped and counted
    assert len(slices) == sum(f["annotated_slices"] for f in truth.values())
    for item in slices:
        assert item.histology == truth[item.subject]["histology"]
        if truth[item.subject]["with_pet"]:
            assert item.pet_suv is not None and item.pet_suv.shape == item.ct_hu.shape
            assert item.pet_coverage.all()  # the phantom's PET field of view covers the CT
        else:
            assert item.pet_suv is None and item.provenance["partner_series_uid"] == ""


def test_series_are_sorted_by_geometry_not_file_names(small_phantom, tmp_path):
    index = index_collection(small_phantom)
    folder = Path(index.series[index.series["modality"] == "CT"]["folder"].iloc[0])
    series = DicomSeries.from_files(sorted(folder.glob("*.dcm")))
    assert np.all(np.diff(series.offsets_mm) > 0)
    # the files are named by instance number, which runs head to feet: sorted names are in descending z
    assert [h.instance_number for h in series.headers] == sorted((h.instance_number for h in series.headers),
                                                                 reverse=True)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(0)
    for position, path in enumerate(rng.permutation(sorted(folder.glob("*.dcm")))):
        shutil.copy(path, shuffled / f"x{position:03d}.dcm")
    again = DicomSeries.from_files(sorted(shuffled.glob("*.dcm")))
    assert [h.sop_uid for h in again.headers] == [h.sop_uid for h in series.headers]


def test_dicom_walk_without_metadata_finds_the_same_slices(phantom_copy):
    with_csv, _ = _all_slices(phantom_copy)
    (phantom_copy / "metadata.csv").unlink()
    index = index_collection(phantom_copy)
    assert index.source == "dicom walk"
    without_csv, problems = _all_slices(phantom_copy)
    assert not problems.counts.get("series_unreadable")
    assert [s.provenance["sop_uid"] for s in without_csv] == [s.provenance["sop_uid"] for s in with_csv]


# ============================================================================== masks from boxes


def test_masks_from_boxes_by_method():
    ct = np.full((40, 40), -850.0)
    ct[10:20, 10:20] = 30.0  # tumour
    ct[10:12, 25:27] = 40.0  # a small vessel inside the box, not connected to the tumour
    pet = np.full((40, 40), 0.5)
    pet[12:18, 12:18] = 8.0
    pet[14:16, 14:16] = 10.0
    box = [[8, 8, 28, 22]]
    filled, source = masks_from_boxes(box, "box", ct_hu=ct)
    assert source == "box" and filled.sum() == 21 * 15 and np.array_equal(filled, box_mask(ct.shape, box[0]))
    by_ct, source = masks_from_boxes(box, "box_ct_threshold", ct_hu=ct, pet_suv=pet)
    assert source == "box_ct_threshold" and by_ct.sum() == 100 and by_ct[10:20, 10:20].all()  # largest component
    by_pet, source = masks_from_boxes(box, "box_pet_threshold", ct_hu=ct, pet_suv=pet)
    assert source == "box_pet_threshold" and by_pet.sum() == 36  # >= 40 % of SUVmax 10
    # CT-only study: the PET method cannot work and says so
    fallback, source = masks_from_boxes(box, "box_pet_threshold", ct_hu=ct, pet_suv=None)
    assert source == "box_pet_threshold+box_fallback" and np.array_equal(fallback, filled)
    with pytest.raises(ValueError, match="unknown mask method"):
        masks_from_boxes(box, "ellipse", ct_hu=ct)


@pytest.mark.parametrize("method", MASK_METHODS)
def test_every_mask_method_has_its_flag(method):
    assert mask_flag(method).startswith(f"MASKS FROM BOXES ({method}):")


# ============================================================================== kit dataset


def test_kit_dataset_has_a_pet_channel_and_subject_splits(smoke_phantom, tmp_path):
    manifest = convert_petct_to_kit(smoke_phantom, tmp_path / "kit", "box_pet_threshold", progress=False)
    truth = read_phantom_truth(smoke_phantom)
    assert set(manifest["patient"]) == set(truth)
    assert manifest.groupby("patient")["split"].nunique().max() == 1
    assert {"train", "test"} <= set(manifest["split"])
    assert (manifest["label1"] == manifest["histology"]).all()
    ct_only = [s for s, f in truth.items() if not f["with_pet"]]
    assert set(manifest.loc[manifest["has_pet"] == 0, "patient"]) == set(ct_only)
    assert manifest.loc[manifest["has_pet"] == 0, "mask_source"].eq("box_pet_threshold+box_fallback").all()
    rows = read_petct_manifest(tmp_path / "kit")
    with_pet = rows[rows["has_pet"] == 1].iloc[0]
    arrays = read_petct_row(with_pet)
    assert arrays["pet_suv"].shape == arrays["ct_hu"].shape and arrays["mask"].any()
    inside_boxes = np.zeros(arrays["ct_hu"].shape, bool)
    for xmin, ymin, xmax, ymax in arrays["boxes"]:
        inside_boxes[ymin: ymax + 1, xmin: xmax + 1] = True
    # the PNG keeps SUV to 1 / PET_SUV_SCALE
    assert float(arrays["pet_suv"][inside_boxes].max()) == pytest.approx(with_pet["pet_suv_max"],
                                                                         abs=0.5 / PET_SUV_SCALE + 1e-6)
    assert read_petct_row(rows[rows["has_pet"] == 0].iloc[0])["pet_suv"] is None
    assert mask_source_flag(tmp_path / "kit").startswith("MASKS FROM BOXES (box_pet_threshold)")


def test_suv_png_round_trip_and_clipping():
    suv = np.array([[0.0, 1.2345, 65.535], [70.0, -0.2, 3.0]])
    stored, clipped = suv_to_png16(suv)
    assert stored.dtype == np.uint16 and clipped == 2
    np.testing.assert_allclose(png16_to_suv(stored), [[0, 1.234, 65.535], [65.535, 0, 3]], atol=5e-4)
    with pytest.raises(ValueError, match="NaN"):
        suv_to_png16(np.array([[np.nan]]))


def test_conversion_resumes_subject_by_subject(phantom_copy, tmp_path, monkeypatch):
    import lungkit.data.petct_kit as petct_kit

    out = tmp_path / "kit"
    real = petct_kit.iter_subject_slices
    calls = []

    def failing_on_second(index, subject, problems):
        calls.append(subject)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        yield from real(index, subject, problems)

    monkeypatch.setattr(petct_kit, "iter_subject_slices", failing_on_second)
    with pytest.raises(KeyboardInterrupt):
        convert_petct_to_kit(phantom_copy, out, progress=False)
    assert not out.exists() and (staging_dir(out) / "subjects").is_dir()
    calls.clear()

    def counting(index, subject, problems):
        calls.append(subject)
        yield from real(index, subject, problems)

    monkeypatch.setattr(petct_kit, "iter_subject_slices", counting)
    manifest = convert_petct_to_kit(phantom_copy, out, progress=False)
    assert len(calls) == 1  # the first subject was done: not read again
    assert kit_dataset.is_complete(out) and manifest["patient"].nunique() == 2


# ============================================================================== bad input


def _convert_both_ways(root: Path, tmp_path: Path, kind: str):
    """Strict: raises naming the problem, nothing in out_dir. Lenient: counted, the rest written whole."""
    strict_out = tmp_path / "strict_kit"
    with pytest.raises(PetCtError) as caught:
        convert_petct_to_kit(root, strict_out, strict=True, progress=False)
    assert caught.value.kind == kind
    assert not strict_out.exists() and not kit_dataset.is_complete(staging_dir(strict_out))
    out = tmp_path / "kit"
    manifest = convert_petct_to_kit(root, out, progress=False)
    info = read_petct_info(out)
    for column in ("image_path", "mask_path", "lung_path"):
        assert all(Path(p).is_file() for p in manifest[column])
    return str(caught.value), manifest, info


def _first_subject_annotation_dir(root: Path) -> Path:
    return sorted((root / "Annotation").iterdir())[0]


def test_xml_naming_a_missing_sop(phantom_copy, tmp_path):
    missing = _first_subject_annotation_dir(phantom_copy) / "1.2.3.4.5.6.7.8.9.xml"
    shutil.copy(next(_first_subject_annotation_dir(phantom_copy).glob("*.xml")), missing)
    message, manifest, info = _convert_both_ways(phantom_copy, tmp_path, "annotation_sop_missing")
    assert str(missing) in message and "1.2.3.4.5.6.7.8.9" in message
    assert info["problems"]["counts"]["annotation_sop_missing"] == 1
    assert "1.2.3.4.5.6.7.8.9" not in set(manifest["sop_uid"])


def test_unparsable_xml(phantom_copy, tmp_path):
    broken = sorted(_first_subject_annotation_dir(phantom_copy).glob("*.xml"))[0]
    broken.write_text("<annotation><size><width>64</width>")
    message, manifest, info = _convert_both_ways(phantom_copy, tmp_path, "xml_unparsable")
    assert str(broken) in message and "not well-formed" in message
    assert info["problems"]["counts"]["xml_unparsable"] == 1
    assert broken.stem not in set(manifest["sop_uid"])


@pytest.mark.parametrize("declaration", [
    '<!DOCTYPE annotation [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    '<!ENTITY x SYSTEM "file:///etc/passwd">',
])
def test_xml_with_an_entity_declaration_is_refused(phantom_copy, tmp_path, declaration):
    hostile = sorted(_first_subject_annotation_dir(phantom_copy).glob("*.xml"))[0]
    hostile.write_text(declaration + "\n" + hostile.read_text().replace("<name>", "<name>&b;", 1))
    with pytest.raises(PetCtError, match="DOCTYPE / ENTITY") as caught:
        parse_voc_xml(hostile)
    assert str(hostile) in str(caught.value)
    message, manifest, info = _convert_both_ways(phantom_copy, tmp_path, "xml_refused")
    assert info["problems"]["counts"]["xml_refused"] == 1 and hostile.stem not in set(manifest["sop_uid"])


def test_oversized_xml_is_refused_unread(tmp_path):
    big = tmp_path / "big.xml"
    big.write_bytes(b"<annotation>" + b" " * (300 * 1024) + b"</annotation>")
    with pytest.raises(PetCtError, match="byte cap"):
        parse_voc_xml(big)


def test_pet_in_another_frame_of_reference_is_refused(phantom_copy, tmp_path):
    index = index_collection(phantom_copy)
    subject = sorted(index.annotations["subject"].unique())[0]
    pet_folder = Path(index.series[(index.series["subject"] == subject) & (index.series["modality"] == "PT")]
                      ["folder"].iloc[0])
    for path in pet_folder.glob("*.dcm"):
        dataset = pydicom.dcmread(path)
        dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
        dataset.save_as(path)
    annotated = len(index.annotations[index.annotations["subject"] == subject])
    message, manifest, info = _convert_both_ways(phantom_copy, tmp_path, "pet_frame_mismatch")
    assert "FrameOfReferenceUID" in message and str(pet_folder) in message and "mis-registration" in message
    assert info["problems"]["counts"]["pet_frame_mismatch"] == annotated
    assert subject not in set(manifest["patient"])  # refused, not silently turned into CT-only slices
    with pytest.raises(FrameOfReferenceMismatch):
        _all_slices(phantom_copy, strict=True)


def test_series_with_mixed_orientations(phantom_copy, tmp_path):
    index = index_collection(phantom_copy)
    subject = sorted(index.annotations["subject"].unique())[0]
    ct_folder = Path(index.series[(index.series["subject"] == subject) & (index.series["modality"] == "CT")]
                     ["folder"].iloc[0])
    tilted = sorted(ct_folder.glob("*.dcm"))[3]
    dataset = pydicom.dcmread(tilted)
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal image inside an axial series
    dataset.save_as(tilted)
    with pytest.raises(PetCtError, match="mixed orientations") as caught:
        DicomSeries.from_files(sorted(ct_folder.glob("*.dcm")))
    assert str(tilted) in str(caught.value) and "ImageOrientationPatient" in str(caught.value)
    annotated = len(index.annotations[index.annotations["subject"] == subject])
    message, manifest, info = _convert_both_ways(phantom_copy, tmp_path, "series_unreadable")
    counts = info["problems"]["counts"]
    assert counts["series_unreadable"] == 1 and counts["annotation_series_unreadable"] == annotated
    assert subject not in set(manifest["patient"])


def test_metadata_row_leaving_the_folder_is_counted(phantom_copy):
    csv = phantom_copy / "metadata.csv"
    lines = csv.read_text().splitlines()
    header, first = lines[0], lines[1]
    csv.write_text("\n".join([header, first.replace("./Lung-PET-CT-Dx", "../../etc"), *lines[2:]]) + "\n")
    index = index_collection(phantom_copy)
    assert index.problems.counts["metadata_row_invalid"] == 1
    assert "leaves the collection folder" in index.problems.messages["metadata_row_invalid"][0]
    assert "row 0 (line 2)" in index.problems.messages["metadata_row_invalid"][0]
    with pytest.raises(PetCtError, match="row 0"):
        index_collection(phantom_copy, strict=True)


def test_box_problems_are_counted_not_dropped(tmp_path):
    xml = tmp_path / "boxes.xml"
    objects = "".join(
        f"<object>{name}<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for name, a, b, c, d in [("<name>A</name>", 1, 2, 10, 12), ("<name>Q</name>", 1, 1, 3, 3),
                                 ("", 1, 1, 3, 3), ("<name>A</name>", 5, 5, 2, 9), ("<name>G</name>", 0, 0, 600, 9),
                                 ("<name>A</name>", 500, 500, 512, 512)]
    )
    xml.write_text(f"<annotation><size><width>512</width><height>512</height></size>{objects}</annotation>")
    problems = ProblemLog()
    annotation = parse_voc_xml(xml, problems)
    assert [b.as_tuple() for b in annotation.boxes] == [(1, 2, 10, 12), (500, 500, 511, 511)]
    assert problems.counts == {"box_unknown_label": 1, "box_unnamed": 1, "box_invalid": 1, "box_outside_image": 1}
    assert all(str(xml) in m for messages in problems.messages.values() for m in messages)


def test_annotation_on_a_pet_image_gets_the_ct_resampled_onto_it(phantom_copy):
    truth = read_phantom_truth(phantom_copy)
    index = index_collection(phantom_copy)
    subject = sorted(index.annotations["subject"].unique())[0]
    tumour = truth[subject]["tumours"][0]
    folder = Path(index.series[(index.series["subject"] == subject) & (index.series["modality"] == "PT")]
                  ["folder"].iloc[0])
    pet = DicomSeries.from_files(sorted(folder.glob("*.dcm")))
    centre = np.asarray(tumour["centre_world_mm"])
    position = int(np.argmin(np.abs(pet.offsets_mm - centre @ pet.direction[:, 2])))
    header = pet.headers[position]
    column, row = ((centre - header.position) @ pet.direction[:, :2]) / np.asarray(pet.spacing_xy)
    column, row = int(round(column)), int(round(row))
    from lungkit.data.phantom_petct import voc_xml

    annotation_dir = phantom_copy / "Annotation" / subject.split("-")[1]
    (annotation_dir / f"{header.sop_uid}.xml").write_text(
        voc_xml(header.columns, header.rows, [(histology_letter(subject), column - 2, row - 2, column + 2, row + 2)]))
    slices, problems = _all_slices(phantom_copy)
    on_pet = [s for s in slices if s.provenance["sop_uid"] == header.sop_uid]
    assert len(on_pet) == 1 and not problems.counts.get("annotation_sop_missing")
    item = on_pet[0]
    assert item.annotated_modality == "PT" and item.ct_hu.shape == item.pet_suv.shape == (header.rows, header.columns)
    assert np.array_equal(item.pet_suv, read_pet_suv(header.path))
    # the CT resampled onto the PET slice shows the tumour (soft tissue) at the box centre, lung around it
    assert item.ct_hu[row, column] > -400 and item.pet_suv[row, column] > 0.5 * tumour["suv_max"]


def test_partial_download_and_unannotated_broken_series_are_counted_not_fatal(phantom_copy, tmp_path):
    index = index_collection(phantom_copy)
    first, second = sorted(index.annotations["subject"].unique())
    shutil.rmtree(phantom_copy / "Lung-PET-CT-Dx" / second)  # a partial download: the subject's images are absent
    study = next((phantom_copy / "Lung-PET-CT-Dx" / first).iterdir())
    fused = study / "4.000000-Fused-40000"
    fused.mkdir()
    (fused / "1-1.dcm").write_bytes(b"not DICOM at all")
    csv = phantom_copy / "metadata.csv"
    row = csv.read_text().splitlines()[1].split(",")
    row[-2] = "./" + fused.relative_to(phantom_copy).as_posix()
    row[0] = "1.2.3.999"
    csv.write_text(csv.read_text() + ",".join(row) + "\n")
    manifest = convert_petct_to_kit(phantom_copy, tmp_path / "kit", strict=True, progress=False)
    counts = read_petct_info(tmp_path / "kit")["problems"]["counts"]
    assert counts["series_folder_missing"] == 2 and counts["subject_without_images"] == 1
    assert counts["series_unreadable_unannotated"] == 1
    assert set(manifest["patient"]) == {first}


def test_real_pet_slice_resampled_onto_a_finer_ct_grid():
    """The real PET file's geometry tags (position, orientation, spacing order) carry it onto a CT-like grid."""
    from lungkit.data.petct import SliceHeader, read_slice_header
    from lungkit.data.volumes import Volume

    path = _pet_file("pet_1.dcm")
    header = read_slice_header(path)
    suv = read_pet_suv(path)
    pet = DicomSeries.from_files([path])
    volume = Volume(suv[None], (*pet.spacing_xy, 5.0), tuple(header.position), pet.direction)
    # a 2x finer grid on the same plane, its first pixel on the PET's first pixel: every other pixel is a PET centre
    fine = SliceHeader(path=Path("ct.dcm"), sop_uid="1", modality="CT", series_uid="1", study_uid="1", subject="s",
                       frame_of_reference_uid=header.frame_of_reference_uid, position=header.position,
                       orientation=header.orientation,
                       pixel_spacing=(header.pixel_spacing[0] / 2, header.pixel_spacing[1] / 2),
                       rows=2 * header.rows - 1, columns=2 * header.columns - 1, instance_number=1)
    target = DicomSeries(modality="CT", series_uid="1", study_uid="1", subject="s",
                         frame_of_reference_uid=header.frame_of_reference_uid, headers=[fine],
                         direction=pet.direction, spacing_xy=(pet.spacing_xy[0] / 2, pet.spacing_xy[1] / 2),
                         offsets_mm=np.zeros(1))
    on_ct = resample_onto_slice(volume, target, 0, default_value=-1.0)
    np.testing.assert_allclose(on_ct[::2, ::2], suv, rtol=1e-5, atol=1e-5)
    # in between, linear interpolation of the two neighbours along a row
    np.testing.assert_allclose(on_ct[::2, 1::2], (suv[:, :-1] + suv[:, 1:]) / 2, rtol=1e-4, atol=1e-4)


def test_walk_is_bounded(phantom_copy):
    (phantom_copy / "metadata.csv").unlink()
    with pytest.raises(PetCtError, match="more than 5 DICOM files and no metadata.csv"):
        index_collection(phantom_copy, max_files=5)


def test_xml_size_differing_from_the_image_is_counted(phantom_copy):
    xml = sorted(_first_subject_annotation_dir(phantom_copy).glob("*.xml"))[0]
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>512</width>"))
    slices, problems = _all_slices(phantom_copy)
    assert problems.counts["annotation_size_mismatch"] == 1 and str(xml) in problems.messages[
        "annotation_size_mismatch"][0]
    assert xml.stem not in {s.provenance["sop_uid"] for s in slices}


def test_phantom_is_seeded(tmp_path):
    first = write_phantom_petct(tmp_path / "a", "smoke", n_subjects=1, side=48, slices=10, seed=3)
    second = write_phantom_petct(tmp_path / "b", "smoke", n_subjects=1, side=48, slices=10, seed=3)
    files_a = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert files_a == files_b
    assert all((first / p).read_bytes() == (second / p).read_bytes() for p in files_a)


def test_metadata_written_on_windows_is_read(phantom_copy):
    csv = phantom_copy / "metadata.csv"
    with_slashes, _ = _all_slices(phantom_copy)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0]] + [line.replace("/", "\\") for line in lines[1:]]) + "\n")
    with_backslashes, problems = _all_slices(phantom_copy)
    assert not problems.counts.get("series_folder_missing")
    assert [s.provenance["sop_uid"] for s in with_backslashes] == [s.provenance["sop_uid"] for s in with_slashes]


def test_two_channel_pipeline_feeds_ct_and_pet_suv(smoke_phantom, tmp_path):
    from lungkit.pipeline import load_split_arrays

    kit = tmp_path / "kit"
    convert_petct_to_kit(smoke_phantom, kit, progress=False)
    both, masks, manifest = load_split_arrays(kit, "train", "minmax", None, channels=2)
    ct_only, same_masks, _ = load_split_arrays(kit, "train", "minmax", None, channels=1)
    assert both.shape[-1] == 2
    np.testing.assert_array_equal(both[..., :1], ct_only)  # channel 0 is the CT-only input, unchanged
    np.testing.assert_array_equal(masks, same_masks)
    rows = read_petct_manifest(kit).set_index("id")
    for index, slice_id in enumerate(manifest["id"]):
        suv = read_petct_row(rows.loc[slice_id])["pet_suv"]
        if suv is None:  # a CT-only study: the PET channel is empty
            assert not both[index, ..., 1].any()
        else:  # SUV min-max scaled per slice
            expected = (suv - suv.min()) / (suv.max() - suv.min())
            np.testing.assert_allclose(both[index, ..., 1], expected, atol=1e-5)
    assert (manifest["has_pet"] == 0).any() and (manifest["has_pet"] == 1).any()
    # the paper profile's on-the-fly augmentation moves both channels (lungkit.augment.apply_augmentation's pet)
    from lungkit.pipeline import make_dataset

    augmented = make_dataset(kit, "train", "minmax", None, channels=2, augment=True, batch_size=len(manifest),
                             shuffle=False, include_ids=True)
    images, masks, ids = next(iter(augmented))
    images = images.numpy()
    assert images.shape == both.shape and np.isfinite(images).all()
    has_pet = rows.loc[[i.decode() for i in ids.numpy()], "has_pet"].to_numpy().astype(bool)
    assert not images[~has_pet, ..., 1].any()  # a slice without PET stays without PET
    assert all(images[k, ..., 1].max() == pytest.approx(1.0) for k in np.flatnonzero(has_pet))  # min-max after warping
