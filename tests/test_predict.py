"""``lungkit predict`` and the model card: geometry kept exactly, tumours.csv measured from the mask, PNG round trip,
bad inputs refused with nothing written, and the inference helpers the command stands on.

The model is the registry's ``tiny`` U-Net trained for two steps on random data: enough to be a real saved, compiled
and reloaded model, while the tests that check numbers force the probabilities (``predict_hu_slices`` patched) so
that the expected mask is known.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")
sitk = pytest.importorskip("SimpleITK")

from conftest import shared_sample  # noqa: E402
from lungkit import cli, inference  # noqa: E402
from lungkit.model_card import (  # noqa: E402
    CARD_FILE,
    MODEL_FILE,
    ModelCardError,
    load_model_card,
    load_model_with_card,
    make_card,
    save_model_with_card,
)
from lungkit.predict import (  # noqa: E402
    PredictInputError,
    lungrads_size_class,
    predict,
    tumour_table,
)

SLICE_SIZE, WINDOW = 64, 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny U-Net trained two steps, saved with its card (64 px slices, 32 px sliding window)."""
    from lungkit.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("unet", "tiny", input_shape=(WINDOW, WINDOW, 1))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, WINDOW, WINDOW, 1)).astype(np.float32)
    masks = (rng.random((4, WINDOW, WINDOW, 1)) > 0.9).astype(np.float32)
    model.fit(images, masks, batch_size=2, epochs=1, verbose=0)
    card = make_card(architecture="unet", scale="tiny", slice_size=SLICE_SIZE, channels=1,
                     preprocessing="hu_window_zscore", window=WINDOW, threshold=0.5, data_source="random",
                     data_fingerprint="none", split="none", protocol_line="two steps on noise (tests only)",
                     test_metrics={"dice": 0.0})
    folder = tmp_path_factory.mktemp("model") / "tiny_unet"
    save_model_with_card(model, folder, card)
    return folder


def forced_probabilities(monkeypatch, make):
    """Replace the model's probabilities by ``make(hu_stack) -> probabilities`` (records the stacks it saw)."""
    seen = []

    def fake(model, hu_slices, settings, batch_size=8, progress=False, description=""):
        seen.append(np.asarray(hu_slices).shape)
        return make(np.asarray(hu_slices)).astype(np.float32)

    monkeypatch.setattr(inference, "predict_hu_slices", fake)
    return seen


def write_volume_file(path, array, spacing=(0.7, 0.8, 2.5), origin=(-120.25, 33.5, -410.0),
                      direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return image


def assert_same_geometry(expected, written):
    assert written.GetSize() == expected.GetSize()
    assert written.GetSpacing() == expected.GetSpacing()
    assert written.GetOrigin() == expected.GetOrigin()
    assert written.GetDirection() == expected.GetDirection()
    assert written.GetPixelIDValue() == sitk.sitkUInt8


def nothing_written(out):
    siblings = [path.name for path in out.parent.iterdir() if path.name.startswith(out.name)]
    return not out.exists() and siblings == []


# -- the model card ----------------------------------------------------------------------------------------------


def test_card_round_trip_and_refusals(model_dir, tmp_path):
    model, card = load_model_with_card(model_dir)
    assert model.input_shape == (None, WINDOW, WINDOW, 1)
    assert card["input"] == {"slice_size": SLICE_SIZE, "window": WINDOW, "channels": 1,
                             "preprocessing": "hu_window_zscore", "hu_window": [-1000.0, 400.0], "from_logits": False}
    assert card["model"]["parameters"] == model.count_params()
    assert card["keras_version"] == keras.__version__ and card["lungkit_version"]

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / MODEL_FILE, bare / MODEL_FILE)
    with pytest.raises(ModelCardError, match=r"model_card.json: missing: a model without its card"):
        load_model_card(bare)

    def broken(name, change):
        folder = tmp_path / name
        shutil.copytree(model_dir, folder)
        data = json.loads((folder / CARD_FILE).read_text())
        change(data)
        (folder / CARD_FILE).write_text(json.dumps(data))
        return folder

    with pytest.raises(ModelCardError, match=r"model card version 99 .* not the version this kit reads \(1\)"):
        load_model_card(broken("future", lambda data: data.update(card_version=99)))
    with pytest.raises(ModelCardError, match=r"lacks \['input.preprocessing'\]"):
        load_model_card(broken("incomplete", lambda data: data["input"].pop("preprocessing")))
    no_model = broken("no_model", lambda data: None)
    (no_model / MODEL_FILE).unlink()
    with pytest.raises(ModelCardError, match=r"model.keras: missing"):
        load_model_card(no_model)
    mismatch = broken("mismatch", lambda data: data["input"].update(window=16))
    with pytest.raises(ModelCardError, match=r"does not match its card"):
        load_model_with_card(mismatch)
    # a CT + PET card is a valid card, but prediction (CT only) refuses it
    from lungkit.model_card import inference_settings

    petct = load_model_card(broken("petct", lambda data: data["input"].update(channels=2)))
    with pytest.raises(ModelCardError, match=r"CT \+ PET model"):
        inference_settings(petct)
    with pytest.raises(ModelCardError, match=r"is inconsistent"):
        load_model_card(broken("four", lambda data: data["input"].update(channels=4)))


def test_segmentation_experiment_writes_the_card(tmp_path):
    from lungkit.experiments.segmentation import SegmentationExperiment
    from lungkit.models import build_model

    experiment = SegmentationExperiment("paper004", "unet", "smoke", tmp_path / "run")
    recipe = experiment.recipe
    model = build_model("unet", "tiny", input_shape=(recipe.input_size, recipe.input_size, recipe.input_channels))
    summary = {
        "n_images": 3,
        "metrics": {"dice": {"mean": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 3}},
        "protocol": {"profile": "smoke", "data_source": "phantom", "split": "the given split", "image_size": 64,
                     "epochs": 1, "seed": 0, "data_fingerprint": "abc123", "postprocess": "none",
                     "lung_restriction": "none"},
    }
    experiment.save_model_card(model, summary)
    model_back, card = load_model_with_card(experiment.model_dir)
    assert card["model"] == {"architecture": "unet", "scale": recipe.model_scale, "parameters": model.count_params()}
    assert card["input"]["slice_size"] == recipe.image_size and card["input"]["window"] == recipe.patch_size
    assert card["input"]["preprocessing"] == recipe.preprocessing
    assert card["training_data"] == {"source": "phantom", "fingerprint": "abc123", "split": "the given split"}
    assert card["result"]["test_metrics"] == {"dice": 0.25}
    assert card["result"]["paper"] == "paper004" and "profile smoke" in card["result"]["protocol_line"]
    assert card["postprocessing"]["paper"] == experiment.postprocess


# -- inference helpers -------------------------------------------------------------------------------------------


def test_flips_average_the_mirrored_predictions(model_dir):
    model, _ = load_model_with_card(model_dir)
    images = np.random.default_rng(1).normal(size=(3, WINDOW, WINDOW, 1)).astype(np.float32)
    plain = inference.predict_probabilities(model, images, batch_size=2)
    flipped = inference.predict_probabilities(model, images, batch_size=2, flips=True)
    left_right = model.predict(images[:, :, ::-1], verbose=0)[:, :, ::-1]
    up_down = model.predict(images[:, ::-1], verbose=0)[:, ::-1]
    np.testing.assert_allclose(flipped, (plain + left_right + up_down) / 3.0, atol=1e-5)
    assert not np.allclose(flipped, plain)  # an untrained-ish model is not mirror-symmetric


def test_predict_hu_slices_returns_the_input_size(model_dir):
    model, card = load_model_with_card(model_dir)
    from lungkit.model_card import inference_settings

    hu = np.random.default_rng(2).uniform(-1000, 400, size=(5, 80, 96)).astype(np.float32)
    probabilities = inference.predict_hu_slices(model, hu, inference_settings(card), batch_size=3)
    assert probabilities.shape == (5, 80, 96) and probabilities.dtype == np.float32
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0


# -- geometry on the real samples --------------------------------------------------------------------------------


def test_predict_nrrd_and_mhd_keep_the_geometry_exactly(model_dir, tmp_path, pyradiomics_sample, luna16_sample):
    nrrd = pyradiomics_sample / "lung1_image.nrrd"
    mhd = next((luna16_sample / "subset0").glob("*.mhd"))
    out = tmp_path / "out"
    table = predict(model_dir, [nrrd, mhd], out, progress=False)
    assert_same_geometry(sitk.ReadImage(str(nrrd)), sitk.ReadImage(str(out / "lung1_image" / "mask.nrrd")))
    written_mhd = out / mhd.name[: -len(".mhd")] / "mask.mhd"
    assert (written_mhd.with_suffix(".raw")).is_file()
    assert_same_geometry(sitk.ReadImage(str(mhd)), sitk.ReadImage(str(written_mhd)))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(written_mhd)))
    assert set(np.unique(mask)) <= {0, 1}
    run = json.loads((out / "prediction.json").read_text())
    assert [case["slices"] for case in run["cases"]] == [48, 48]
    assert run["model_input"]["window"] == WINDOW and "sliding window of 32 px" in run["inference"]
    assert list(pd.read_csv(out / "tumours.csv").columns)[:2] == ["case", "component"]
    assert len(table) == len(pd.read_csv(out / "tumours.csv"))


def test_predict_dicom_series_keeps_the_geometry_exactly(model_dir, tmp_path, petct_sample):
    series = next(path for path in sorted(petct_sample.rglob("*")) if path.is_dir() and any(path.glob("*.dcm")))
    out = tmp_path / "out"
    predict(model_dir, [series], out, progress=False)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    expected = reader.Execute()
    assert_same_geometry(expected, sitk.ReadImage(str(out / series.name / "mask.nrrd")))
    record = json.loads((out / series.name / "prediction.json").read_text())
    assert record["kind"] == "dicom" and record["slices"] == expected.GetSize()[2]


# -- tumours.csv against the mask --------------------------------------------------------------------------------


def test_tumours_csv_matches_the_written_mask(model_dir, tmp_path, monkeypatch):
    shape = (12, 40, 48)  # z, y, x
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    spacing_x, spacing_y, spacing_z = 0.7, 0.8, 2.5
    # a ball of radius 6 mm (a solid LR3-sized nodule in the axial plane) and a 2-voxel speck elsewhere, drawn into
    # the scan as soft tissue; the forced "model" calls soft tissue tumour, wherever the slices are turned
    ball = (((x - 20) * spacing_x) ** 2 + ((y - 18) * spacing_y) ** 2 + ((z - 6) * spacing_z) ** 2) <= 6.0 ** 2
    speck = (z == 1) & (y == 35) & ((x == 44) | (x == 45))
    volume_file = tmp_path / "scan.nii.gz"
    write_volume_file(volume_file, np.where(ball | speck, 40, -800).astype(np.int16))
    forced_probabilities(monkeypatch, lambda hu: np.where(hu > -100, 0.9, 0.1))

    out = tmp_path / "out"
    predict(model_dir, [volume_file], out, progress=False)
    written = sitk.ReadImage(str(out / "scan" / "mask.nii.gz"))
    assert_same_geometry(sitk.ReadImage(str(volume_file)), written)
    mask = sitk.GetArrayFromImage(written)
    np.testing.assert_array_equal(mask, (ball | speck).astype(np.uint8))

    table = pd.read_csv(out / "scan" / "tumours.csv").sort_values("voxels", ascending=False)
    assert len(table) == 2
    nodule = table.iloc[0]
    voxels = int(ball.sum())
    volume_mm3 = voxels * spacing_x * spacing_y * spacing_z
    largest_area = ball.sum(axis=(1, 2)).max() * spacing_x * spacing_y
    assert nodule["voxels"] == voxels
    assert nodule["volume_mm3"] == pytest.approx(volume_mm3)
    assert nodule["equivalent_diameter_mm"] == pytest.approx((6 * volume_mm3 / math.pi) ** (1 / 3))
    assert nodule["largest_axial_diameter_mm"] == pytest.approx(2 * math.sqrt(largest_area / math.pi))
    assert nodule["lungrads_size_class"] == lungrads_size_class(nodule["largest_axial_diameter_mm"])
    assert (nodule["slice_first"], nodule["slice_last"]) == (int(z[ball].min()), int(z[ball].max()))
    centroid = (x[ball].mean(), y[ball].mean(), z[ball].mean())
    assert (nodule["centroid_x"], nodule["centroid_y"], nodule["centroid_z"]) == pytest.approx(centroid)
    world = written.TransformContinuousIndexToPhysicalPoint(centroid)  # the direction flips x and y
    assert (nodule["world_x"], nodule["world_y"], nodule["world_z"]) == pytest.approx(world, abs=1e-4)
    assert nodule["mean_probability"] == pytest.approx(0.9)
    assert table.iloc[1]["voxels"] == 2 and table.iloc[1]["lungrads_size_class"] == "LR2"
    overlays = sorted(path.name for path in (out / "scan" / "overlays").iterdir())
    expected_slices = sorted({int(s) for s in z[ball | speck]})
    assert overlays == [f"slice{index:04d}.png" for index in expected_slices]
    assert pd.read_csv(out / "tumours.csv")["case"].tolist() == ["scan", "scan"]


def test_lungrads_size_classes_and_2d_table():
    assert [lungrads_size_class(d) for d in (3.0, 5.99, 6.0, 7.99, 8.0, 14.9, 15.0, 40.0, float("nan"))] == [
        "LR2", "LR2", "LR3", "LR3", "LR4A", "LR4A", "LR4B", "LR4B", "unknown"]
    mask = np.zeros((2, 20, 20), np.uint8)
    mask[1, 5:9, 5:9] = 1  # 16 px at 0.5 mm: 4 mm^2, diameter 2 sqrt(4 / pi) mm
    table = tumour_table(mask, mask * 0.8, pixel_spacing_mm=0.5, files=["a.png", "b.png"])
    assert table[["file", "slice_first", "voxels"]].values.tolist() == [["b.png", 1, 16]]
    assert table["area_mm2"].iloc[0] == pytest.approx(4.0)
    assert table["equivalent_diameter_mm"].iloc[0] == pytest.approx(2 * math.sqrt(4.0 / math.pi))
    unknown = tumour_table(mask, mask * 0.8, files=["a.png", "b.png"])
    assert unknown["lungrads_size_class"].iloc[0] == "unknown" and math.isnan(unknown["area_mm2"].iloc[0])


# -- slices ------------------------------------------------------------------------------------------------------


def test_png_folder_round_trip(model_dir, tmp_path, monkeypatch):
    import cv2

    from lungkit.data.slices import binarise_mask, read_slice_file

    folder = tmp_path / "slices"
    folder.mkdir()
    rng = np.random.default_rng(3)
    names = ["1.png", "2.png", "10.png"]  # natural order, not 1, 10, 2
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(60, 200, size=(50, 60), dtype=np.uint8))
    np.save(folder / "extra.npy", rng.uniform(-1000, 300, size=(50, 60)).astype(np.float32))
    square = np.zeros((50, 60), bool)
    square[10:20, 30:40] = True
    calls = iter(range(100))

    def make(hu):  # tumour on the second slice of the stack only
        assert next(calls) == 0, "slices of one size are predicted as one stack"
        probabilities = np.zeros(hu.shape, np.float32)
        probabilities[1][square] = 0.8
        return probabilities

    seen = forced_probabilities(monkeypatch, make)
    out = tmp_path / "out"
    code = cli.main(["predict", str(model_dir), str(folder), "--out", str(out), "--intensity", "display8",
                     "--pixel-spacing", "0.7", "--no-progress"])
    assert code == 0 and seen == [(4, 50, 60)]
    masks = out / "slices" / "masks"
    assert sorted(path.name for path in masks.iterdir()) == sorted(names + ["extra.npy"])
    second = read_slice_file(masks / "2.png")
    assert second.dtype == np.uint8 and set(np.unique(second)) == {0, 255}
    np.testing.assert_array_equal(binarise_mask(second), square.astype(np.uint8))  # the kit reads it back
    assert not read_slice_file(masks / "1.png").any() and not np.load(masks / "extra.npy").any()
    assert [path.name for path in (out / "slices" / "overlays").iterdir()] == ["2.png"]
    table = pd.read_csv(out / "slices" / "tumours.csv")
    assert table[["file", "voxels"]].values.tolist() == [["2.png", 100]]
    assert table["equivalent_diameter_mm"].iloc[0] == pytest.approx(2 * math.sqrt(100 * 0.49 / math.pi))
    assert table["lungrads_size_class"].iloc[0] == "LR3"  # 49 mm^2: a 7.9 mm circle


def test_lungrads_pickle_gets_a_mask_column(model_dir, tmp_path, lungrads_sample):
    out = tmp_path / "out"
    predict(model_dir, [lungrads_sample / "lung_cancer_test.pkl"], out, progress=False)
    frame = pd.read_pickle(out / "lung_cancer_test" / "predicted_masks.pkl")
    assert list(frame.columns) == ["label1", "predicted_mask"] and len(frame) == 3
    assert frame["predicted_mask"].iloc[0].shape == (512, 512) and frame["predicted_mask"].iloc[0].dtype == np.uint8


def test_lung_only_keeps_tumour_inside_the_lungs(model_dir, tmp_path, monkeypatch, pyradiomics_sample):
    forced_probabilities(monkeypatch, lambda hu: np.full(hu.shape, 0.9))
    out = tmp_path / "out"
    predict(model_dir, [pyradiomics_sample / "lung1_image.nrrd"], out, lung_only=True, progress=False)
    from lungkit.postprocess import lung_region

    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "lung1_image" / "mask.nrrd")))
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(pyradiomics_sample / "lung1_image.nrrd")))
    middle = len(hu) // 2
    lungs = lung_region(hu[middle].astype(np.float32), 10)
    assert lungs is not None and 0.05 < lungs.mean() < 0.6
    np.testing.assert_array_equal(mask[middle], lungs.astype(np.uint8))  # everything else on that slice removed
    record = json.loads((out / "prediction.json").read_text())["cases"][0]["lung_restriction"]
    assert record.startswith("inside the lungs from HU grown by 10 px")


# -- refusals: a clear error and nothing written -----------------------------------------------------------------


def refused(capsys, arguments, out, message):
    code = cli.main(["predict", *map(str, arguments), "--out", str(out), "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert message in error, error
    assert nothing_written(out)
    return error


def test_folder_without_dicom_is_refused(model_dir, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    refused(capsys, [model_dir, folder], tmp_path / "out", f"{folder}: no DICOM series found (1 file(s)")


def test_mixed_series_are_refused(model_dir, tmp_path, capsys, petct_sample):
    folders = [path for path in sorted(petct_sample.rglob("*")) if path.is_dir() and any(path.glob("*.dcm"))][:2]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for number, folder in enumerate(folders):
        for file in folder.glob("*.dcm"):
            shutil.copy(file, mixed / f"s{number}-{file.name}")
    refused(capsys, [model_dir, mixed], tmp_path / "out", "mixed series in one folder: 2 SeriesInstanceUIDs")


def test_non_orthogonal_volume_is_refused(model_dir, tmp_path, capsys, monkeypatch):
    good, skewed = tmp_path / "good.nrrd", tmp_path / "skewed.nrrd"
    write_volume_file(good, np.zeros((4, 16, 16), np.int16))
    write_volume_file(skewed, np.zeros((4, 16, 16), np.int16), direction=(1, 0.5, 0, 0, 0.8660254, 0, 0, 0, 1))
    seen = forced_probabilities(monkeypatch, lambda hu: np.zeros(hu.shape))
    refused(capsys, [model_dir, good, skewed], tmp_path / "out", f"{skewed}: the direction matrix")
    assert seen == []  # refused from the headers, before the good input was predicted


def test_sagittal_volume_is_refused(model_dir, tmp_path, capsys):
    sagittal = tmp_path / "sagittal.nrrd"
    write_volume_file(sagittal, np.zeros((4, 16, 16), np.int16), direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    refused(capsys, [model_dir, sagittal], tmp_path / "out", "the slices are not axial")


def test_gpu_asked_for_where_there_is_none(model_dir, tmp_path, capsys):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    volume = tmp_path / "small.nrrd"
    write_volume_file(volume, np.full((3, 40, 40), -700, np.int16))
    refused(capsys, [model_dir, volume, "--device", "gpu"], tmp_path / "out", "TensorFlow sees no GPU")


def test_model_without_card_is_refused(model_dir, tmp_path, capsys, pyradiomics_sample):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / MODEL_FILE, bare / MODEL_FILE)
    refused(capsys, [bare, pyradiomics_sample / "lung1_image.nrrd"], tmp_path / "out", "a model without its card")


def test_existing_output_is_refused_unless_overwrite(model_dir, tmp_path, capsys):
    volume = tmp_path / "small.nrrd"
    write_volume_file(volume, np.full((3, 40, 40), -700, np.int16))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli.main(["predict", str(model_dir), str(volume), "--out", str(out), "--no-progress"])
    assert code == 2 and "output folder exists" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    assert cli.main(["predict", str(model_dir), str(volume), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["prediction.json", "small", "tumours.csv"]


def test_slices_without_declared_intensity_are_refused(model_dir, tmp_path, capsys):
    folder = tmp_path / "slices"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((20, 20), np.float32))
    refused(capsys, [model_dir, folder], tmp_path / "out", "need their intensity declared (--intensity")


def test_a_crash_leaves_nothing_that_looks_finished(model_dir, tmp_path, monkeypatch):
    first, second = tmp_path / "first.nrrd", tmp_path / "second.nrrd"
    for path in (first, second):
        write_volume_file(path, np.full((3, 40, 40), -700, np.int16))
    calls = []

    def crash_on_second(hu):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return np.zeros(hu.shape)

    forced_probabilities(monkeypatch, crash_on_second)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated"):
        predict(model_dir, [first, second], out, progress=False)
    assert nothing_written(out)


def test_unknown_input_kind_names_the_file(model_dir, tmp_path):
    odd = tmp_path / "scan.dcm"
    odd.write_bytes(b"")
    with pytest.raises(PredictInputError, match=r"scan.dcm: a single DICOM file; pass the folder of its series"):
        predict(model_dir, [odd], tmp_path / "out", progress=False)
    assert nothing_written(tmp_path / "out")


# -- export ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("export_format", ["savedmodel", "tflite"])
def test_export_matches_keras_within_the_stated_tolerance(model_dir, tmp_path, capsys, export_format):
    from lungkit.serving import TOLERANCES, check_input

    out = tmp_path / f"export_{export_format}"
    assert cli.main(["export", str(model_dir), "--format", export_format, "--out", str(out)]) == 0
    card = json.loads((out / CARD_FILE).read_text())
    block = card["export"]
    assert block["format"] == export_format and block["tolerance"] == TOLERANCES[export_format]
    assert 0.0 <= block["max_abs_difference"] <= block["tolerance"]
    model, _ = load_model_with_card(model_dir)
    inputs = check_input(card)
    expected = model.predict(inputs, verbose=0)
    if export_format == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(out))  # keep a reference: its variables die with the object
        exported = loaded.serve(tf.constant(inputs)).numpy()
    else:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice in favour of ai_edge_litert
            interpreter = tf.lite.Interpreter(model_path=str(out / "model.tflite"))
        entry = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(entry["index"], inputs.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(entry["index"], inputs)
        interpreter.invoke()
        exported = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(exported, expected, atol=TOLERANCES[export_format], rtol=0)
    # a second export into the same folder is refused, and leaves the first untouched
    assert cli.main(["export", str(model_dir), "--format", export_format, "--out", str(out)]) == 2
    assert "export folder exists" in capsys.readouterr().err
    assert json.loads((out / CARD_FILE).read_text()) == card


def test_export_refuses_a_model_without_card(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model_dir / MODEL_FILE, bare / MODEL_FILE)
    assert cli.main(["export", str(bare), "--format", "savedmodel"]) == 2
    assert "a model without its card" in capsys.readouterr().err
    assert sorted(path.name for path in bare.iterdir()) == [MODEL_FILE]


def _round_trip(architecture, tmp_path):
    from lungkit.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(architecture, "tiny")
    side, channels = model.input_shape[1], model.input_shape[-1]
    card = make_card(architecture=architecture, scale="tiny", slice_size=side, channels=channels,
                     preprocessing="hu_window_unit", from_logits=model.layers[-1].activation is keras.activations.linear
                     if hasattr(model.layers[-1], "activation") else False)
    save_model_with_card(model, tmp_path / architecture, card)
    loaded, _ = load_model_with_card(tmp_path / architecture)
    inputs = np.random.default_rng(0).uniform(size=(2, side, side, channels)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-6)


@pytest.mark.parametrize("architecture", ["unet", "attention_unet", "swin_unet", "unetr"])
def test_every_segmentation_model_reloads_from_its_card(architecture, tmp_path):
    # SegmentationExperiment.evaluate saves every model it scores: each architecture must survive the round trip
    _round_trip(architecture, tmp_path)


@pytest.mark.slow
def test_resnet50_unet_reloads_from_its_card(tmp_path):
    _round_trip("resnet50_unet", tmp_path)  # the full ResNet50 encoder even at tiny scale: ~95 MB on disk


# -- DICOM series written by the kit (no sample needed) ----------------------------------------------------------


def test_written_dicom_series_reads_back_and_a_gap_is_refused(model_dir, tmp_path, capsys):
    from lungkit.data.volumes import Volume, write_dicom_series
    from lungkit.predict import read_dicom_series

    rng = np.random.default_rng(4)
    volume = Volume(rng.integers(-1000, 400, size=(5, 24, 32)).astype(np.int16), spacing=(0.75, 0.8, 2.5),
                    origin=(120.5, -80.25, -300.0), direction=np.diag([-1.0, -1.0, 1.0]))
    import locale

    before = locale.setlocale(locale.LC_ALL)
    series = write_dicom_series(volume, tmp_path / "series")
    assert locale.setlocale(locale.LC_ALL) == before  # GDCM's writer sets "C"; the kit puts the locale back
    back = read_dicom_series(series)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing)
    np.testing.assert_allclose(back.origin, volume.origin)
    np.testing.assert_allclose(back.direction, volume.direction)

    (series / "slice0002.dcm").unlink()  # a missing slice: the mask's regular grid would misplace the rest
    refused(capsys, [model_dir, series], tmp_path / "out", "slices are not evenly spaced along their normal")


def test_slices_reach_the_model_in_the_training_orientation(model_dir, tmp_path, monkeypatch):
    from lungkit.predict import canonical_axial_view

    stack = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    swapped = np.array([[0, -1, 0], [-1, 0, 0], [0, 0, 1]], float)  # columns along -y, rows along -x
    for direction in (np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, -1.0, -1.0]), swapped):
        to_canonical, from_canonical, _ = canonical_axial_view(direction)
        np.testing.assert_array_equal(from_canonical(to_canonical(stack)), stack)

    # a RAS-style NIfTI (x and y index axes point right and anterior): the array's first row and column is the
    # patient's left-posterior corner, which training slices hold in their last row and column; the model must see
    # the marker there, and the mask must come back in the file's own orientation
    array = np.full((3, 20, 30), -800, np.int16)
    array[1, 0, 0] = 100
    scan = tmp_path / "ras.nii.gz"
    write_volume_file(scan, array, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    seen = []

    def make(hu):
        seen.append(hu)
        return (hu > 0).astype(np.float32)

    forced_probabilities(monkeypatch, make)
    predict(model_dir, [scan], tmp_path / "out", progress=False)
    assert seen[0][1, -1, -1] == 100 and seen[0][1, 0, 0] == -800
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "ras" / "mask.nii.gz")))
    np.testing.assert_array_equal(np.argwhere(mask), [[1, 0, 0]])
    note = json.loads((tmp_path / "out" / "prediction.json").read_text())["cases"][0]["input_note"]
    assert "rows flipped, columns flipped" in note


def test_lidc_png_patient_folder_is_calibrated_like_the_conversion(model_dir, tmp_path):
    patient = sorted((shared_sample("lidc-png-sample") / "image").iterdir())[0]
    out = tmp_path / "out"
    predict(model_dir, [patient], out, intensity="display8", progress=False)
    record = json.loads((out / "prediction.json").read_text())["cases"][0]
    assert "calibrated on this patient's histogram" in record["input_note"]
    written = sorted(path.name for path in (out / patient.name / "masks").iterdir())
    assert written == sorted(path.name for path in patient.iterdir()) and record["slices"] == len(written)


def test_lung_masked_preprocessing_finds_the_lungs_from_hu():
    from lungkit.postprocess import lung_region

    settings = inference.InferenceSettings(slice_size=64, channels=3, preprocessing="lung_masked_hu")
    y, x = np.mgrid[:64, :64]
    body = np.where(((y - 32) / 28) ** 2 + ((x - 32) / 30) ** 2 <= 1, 40.0, -1000.0)  # soft tissue in air
    lungs = (((y - 32) / 14) ** 2 + ((x - 18) / 8) ** 2 <= 1) | (((y - 32) / 14) ** 2 + ((x - 46) / 8) ** 2 <= 1)
    chest = np.where(lungs, -850.0, body).astype(np.float32)
    inputs, without_lungs = inference.model_inputs_from_hu(np.stack([chest, np.full((64, 64), 40.0)]), settings)
    assert inputs.shape == (2, 64, 64, 3) and without_lungs == 1  # the all-tissue slice has no lungs: left whole
    region = lung_region(chest, margin_px=0)
    np.testing.assert_allclose(inputs[0, ..., 0][~region], 0.0)  # outside the lungs: air, the window's 0
    np.testing.assert_allclose(inputs[0, ..., 0][lungs], (-850.0 + 1000.0) / 1400.0, atol=1e-6)
    np.testing.assert_array_equal(inputs[0, ..., 1], inputs[0, ..., 0])  # channels repeat the slice


# -- ensembles ---------------------------------------------------------------------------------------------------


def _second_model(model_dir, tmp_path, **card_changes):
    """A copy of the tiny model's folder, its card changed by ``card_changes`` (top-level fields)."""
    folder = tmp_path / "second_model"
    shutil.copytree(model_dir, folder)
    card = json.loads((folder / CARD_FILE).read_text())
    card.update(card_changes)
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


def _one_slice_folder(tmp_path):
    import cv2

    folder = tmp_path / "slices"
    folder.mkdir()
    cv2.imwrite(str(folder / "1.png"), np.full((40, 40), 120, np.uint8))
    return folder


def test_an_ensemble_thresholds_the_mean_of_its_models_probabilities(model_dir, tmp_path, monkeypatch):
    first_square, second_square = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    first_square[5:10, 5:10] = True
    second_square[25:30, 25:30] = True
    calls = iter(range(2))

    def make(hu):  # model 1: 0.8 on both squares; model 2: 0.4 on the first, 0 on the second
        probabilities = np.zeros(hu.shape, np.float32)
        if next(calls) == 0:
            probabilities[:, first_square | second_square] = 0.8
        else:
            probabilities[:, first_square] = 0.4
        return probabilities

    seen = forced_probabilities(monkeypatch, make)
    second = _second_model(model_dir, tmp_path)
    out = tmp_path / "out"
    code = cli.main(["predict", str(model_dir), str(_one_slice_folder(tmp_path)), "--ensemble-with", str(second),
                     "--out", str(out), "--intensity", "display8", "--no-progress"])
    assert code == 0 and seen == [(1, 40, 40), (1, 40, 40)]  # each model saw the slices once
    from lungkit.data.slices import binarise_mask, read_slice_file

    # means 0.6 (kept) and 0.4 (dropped) at the threshold 0.5
    mask = binarise_mask(read_slice_file(out / "slices" / "masks" / "1.png"))
    np.testing.assert_array_equal(mask, first_square.astype(np.uint8))
    run = json.loads((out / "prediction.json").read_text())
    assert [member["model_dir"] for member in run["ensemble"]["members"]] == [str(model_dir.resolve()),
                                                                             str(second.resolve())]
    assert run["ensemble"]["combination"].startswith("mean of 2 models' probabilities")


def test_an_ensemble_of_identical_models_predicts_as_one(model_dir, tmp_path):
    """The real inference path, no forced probabilities: two copies of one model average to that model."""
    from lungkit.model_card import inference_settings
    from lungkit.predict import ensemble_probabilities

    model, card = load_model_with_card(model_dir)
    settings = inference_settings(card)
    hu = np.random.default_rng(0).uniform(-1000, 400, size=(3, SLICE_SIZE, SLICE_SIZE)).astype(np.float32)
    single = inference.predict_hu_slices(model, hu, settings)
    both = ensemble_probabilities([(model, settings), (model, settings)], hu)
    np.testing.assert_array_equal(both, single)


@pytest.mark.parametrize("change,message", [
    ({"threshold": 0.3}, "different thresholds"),
    ({"postprocessing": {"used": "dense_crf"}}, "different post-processing"),
])
def test_an_ensemble_whose_cards_disagree_is_refused_before_anything_is_read(model_dir, tmp_path, capsys, change,
                                                                              message):
    second = _second_model(model_dir, tmp_path, **change)
    out = tmp_path / "out"
    refused(capsys, [str(model_dir), str(tmp_path / "no_such_input.nrrd"), "--ensemble-with", str(second)],
            out, message)
    # the way out the message names works
    way_out = ["--threshold", "0.5"] if "threshold" in change else ["--no-postprocess"]
    code = cli.main(["predict", str(model_dir), str(_one_slice_folder(tmp_path)), "--ensemble-with", str(second),
                     "--out", str(out), "--intensity", "display8", "--no-progress", *way_out])
    assert code == 0


def test_an_ensemble_naming_one_folder_twice_is_refused(model_dir, tmp_path, capsys):
    refused(capsys, [str(model_dir), str(tmp_path / "x.nrrd"), "--ensemble-with", str(model_dir)],
            tmp_path / "out", "the same model folder twice")
