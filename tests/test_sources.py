"""What a data_dir holds (lungkit.data.sources) and the run dataset built from slice folders and arrays
(lungkit.data.prepare.prepare_lungrads_dataset): kind detection, declared intensity, patient-wise splits."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lungkit import cli
from lungkit.data.kit_dataset import read_manifest
from lungkit.data.prepare import prepare_lungrads_dataset, read_dataset_info
from lungkit.data.sources import (
    MAX_SOURCE_FILE_BYTES,
    SOURCE_FILE_NAME,
    SourceError,
    describe_source,
)

PATIENTS = ("p1", "p2", "p3", "p4", "p5")


def _slice_folder(root, patients=PATIENTS, per_patient=2):
    for p_index, patient in enumerate(patients):
        for k in range(per_patient):
            for sub, array in (("image", np.full((16, 16), 40 + p_index, np.uint8)),
                               ("label", np.pad(np.full((4, 4), 255, np.uint8), 6))):
                path = root / sub / patient / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(path), array)
    return root


def _declare(root, **spec):
    (root / SOURCE_FILE_NAME).write_text(json.dumps(spec))
    return root


def test_a_slice_folder_without_a_declaration_says_which_file_to_write(tmp_path):
    root = _slice_folder(tmp_path / "data")
    with pytest.raises(SourceError, match=SOURCE_FILE_NAME) as error:
        describe_source(root)
    assert '"kind": "slice_folder"' in str(error.value) and '"intensity"' in str(error.value)


def test_a_folder_of_npz_files_without_a_declaration_is_refused(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((1, 4, 4)), masks=np.zeros((1, 4, 4)))
    with pytest.raises(SourceError, match='"kind": "arrays"'):
        describe_source(tmp_path)


def test_a_plain_folder_is_taken_for_the_lungrads_pickles(tmp_path):
    source = describe_source(tmp_path)
    assert source.kind == "lungrads" and source.root == tmp_path


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"kind": "slice_folder"}', 'declare what the pixels mean with "intensity"'),
        ('{"kind": "slice_folder", "intensity": "hu", "intesity": "hu"}', "unknown key(s) ['intesity']"),
        ('{"kind": "volumes", "intensity": "hu"}', "expected one of"),
        ('["slice_folder"]', "expected a JSON object, found list"),
        ('{"kind": "slice_folder", ', "not readable JSON"),
        ('{"kind": "slice_folder", "intensity": "hu", "root": "elsewhere"}', "does not exist"),
    ],
)
def test_a_bad_source_file_names_itself_and_what_is_wrong(tmp_path, content, expected):
    (tmp_path / SOURCE_FILE_NAME).write_text(content)
    with pytest.raises((SourceError, FileNotFoundError)) as error:
        describe_source(tmp_path)
    assert str(tmp_path / SOURCE_FILE_NAME) in str(error.value) and expected in str(error.value)


def test_an_oversized_source_file_is_refused_before_it_is_parsed(tmp_path):
    (tmp_path / SOURCE_FILE_NAME).write_bytes(b" " * (MAX_SOURCE_FILE_BYTES + 1))
    with pytest.raises(SourceError, match="a source file is a small JSON object"):
        describe_source(tmp_path)


def test_the_source_file_itself_can_be_the_data_dir_and_point_at_a_read_only_folder(tmp_path):
    data = _slice_folder(tmp_path / "readonly")
    declaration = tmp_path / "my_source.json"
    declaration.write_text(json.dumps({"kind": "slice_folder", "root": "readonly", "intensity": "display8"}))
    source = describe_source(declaration)
    assert source.kind == "slice_folder" and source.root == data.resolve()
    assert source.options == {"intensity": "display8"} and source.declared_in == declaration


def test_a_declared_slice_folder_becomes_a_patient_wise_run_dataset(tmp_path):
    data = _declare(_slice_folder(tmp_path / "data"), kind="slice_folder", intensity="display8",
                    test_patients=["p5"], val_fraction=0.25)
    dataset = prepare_lungrads_dataset(str(data), tmp_path / "run", "smoke", seed=3)
    manifest = read_manifest(dataset)
    patients_per_split = manifest.groupby("split")["patient"].unique().map(set)
    assert patients_per_split["test"] == {"p5"}
    assert len(patients_per_split["val"]) == 1
    assert not patients_per_split["train"] & (patients_per_split["val"] | patients_per_split["test"])
    assert (manifest["tumour_area_px"] == 16).all()
    info = read_dataset_info(dataset)
    assert info["data_source"] == "slice_folder"
    assert info["split_description"].startswith("by patient: train 3 patient(s)")
    assert "p5" in info["split_description"]
    # reused as it is; another declaration for the same run folder is refused
    assert prepare_lungrads_dataset(str(data), tmp_path / "run", "smoke", seed=3) == dataset
    _declare(data, kind="slice_folder", intensity="hu", test_patients=["p5"], val_fraction=0.25)
    with pytest.raises(ValueError, match="already built with other settings"):
        prepare_lungrads_dataset(str(data), tmp_path / "run", "smoke", seed=3)


def test_without_named_test_patients_a_seeded_share_of_patients_is_held_out(tmp_path):
    data = _declare(_slice_folder(tmp_path / "data"), kind="slice_folder", intensity="hu")
    splits = [read_manifest(prepare_lungrads_dataset(str(data), tmp_path / f"run{i}", "smoke", seed=7))
              .groupby("patient")["split"].agg(set).to_dict() for i in range(2)]
    assert splits[0] == splits[1], "the same seed must hold out the same patients"
    assert all(len(splits_of_patient) == 1 for splits_of_patient in splits[0].values())
    assert sum(s == {"test"} for s in splits[0].values()) == 1  # 20% of 5 patients


def test_declared_arrays_keep_their_test_file_as_the_test_split(tmp_path):
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), np.float32)
    masks[:, 2:5, 2:5] = 1
    np.savez(tmp_path / "a.npz", images=rng.random((4, 8, 8)), masks=masks, patients=np.array(["a", "a", "b", "c"]))
    np.savez(tmp_path / "b.npz", images=rng.random((3, 8, 8)), masks=masks[:3], patients=np.array(["d", "d", "e"]))
    _declare(tmp_path, kind="arrays", intensity="unit", files={"train": "a.npz", "test": "b.npz"}, val_fraction=0.34)
    manifest = read_manifest(prepare_lungrads_dataset(str(tmp_path), tmp_path / "run", "smoke"))
    assert set(manifest.loc[manifest["split"] == "test", "patient"]) == {"d", "e"}
    assert len(set(manifest.loc[manifest["split"] == "val", "patient"])) == 1
    assert (manifest["tumour_area_px"] == 9).all()


def test_the_cli_refuses_an_undeclared_slice_folder_before_any_run_folder(tmp_path, capsys):
    data = _slice_folder(tmp_path / "data")
    runs_root = tmp_path / "runs"
    with pytest.raises(SystemExit) as leave:
        cli.main(["reproduce", "--runs-root", str(runs_root), "--data-dir", str(data)])
    assert leave.value.code == 2
    assert SOURCE_FILE_NAME in capsys.readouterr().err
    assert not runs_root.exists()
