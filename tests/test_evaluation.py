"""lungkit.evaluation: per-image tables, bootstrap CIs, summaries, summary.json round trip."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from lungkit import evaluation as E
from lungkit import metrics as M


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def toy_test_set(n=8, size=32, seed=0):
    """n slices at 32 px from 512 px sources of 0.7 mm/px (so 11.2 mm/px when evaluated)."""
    rng = np.random.default_rng(seed)
    targets = np.stack([disc((size, size), (10 + i % 5, 12 + i % 7), 1 + i % 4) for i in range(n)])
    noise = rng.normal(0.0, 0.25, targets.shape)
    probabilities = np.clip(0.7 * targets + 0.15 + noise, 0.0, 1.0)
    manifest = pd.DataFrame(
        {
            "id": [f"test_{i:03d}" for i in range(n)],
            "split": "test",
            "label1": [("LR2", "LR3", "LR4A", "LR4B")[i % 4] for i in range(n)],
            "height": 512,
            "width": 512,
            "pixel_spacing_mm": 0.7,
            "tumour_area_px": targets.sum(axis=(1, 2)) * 256,
            "equivalent_diameter_px": 0.0,
            "equivalent_diameter_mm": 0.0,
        }
    )
    return probabilities, targets, manifest


# --- bootstrap ------------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.random(20), rng.random(2000)
    mean_s, low_s, high_s = E.bootstrap_ci(small)
    mean_l, low_l, high_l = E.bootstrap_ci(large)
    assert low_s <= mean_s <= high_s and low_l <= mean_l <= high_l
    assert mean_s == pytest.approx(small.mean())
    assert (high_l - low_l) < 0.4 * (high_s - low_s)  # width shrinks like 1/sqrt(n): sqrt(20/2000) = 0.1
    assert E.bootstrap_ci(small) == E.bootstrap_ci(small)  # seeded


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(2).random(200)
    _, low, high = E.bootstrap_ci(values, n_boot=4000)
    reference = stats.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=0)
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.01)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.01)


def test_bootstrap_ci_edge_cases():
    assert E.bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
    assert E.bootstrap_ci([np.nan, 0.4, np.nan]) == (0.4, 0.4, 0.4)
    assert all(math.isnan(v) for v in E.bootstrap_ci([np.nan, np.nan]))
    assert E.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    mean, low, high = E.bootstrap_ci([0.0, 1.0, np.nan, 0.5])
    assert mean == pytest.approx(0.5) and 0.0 <= low <= high <= 1.0
    with pytest.raises(ValueError, match="confidence"):
        E.bootstrap_ci([1.0, 2.0], confidence=95)


# --- segmentation ---------------------------------------------------------------------------------------------


def test_evaluate_segmentation_table():
    probabilities, targets, manifest = toy_test_set()
    table = E.evaluate_segmentation(probabilities[..., None], targets, manifest, small_tumour_max_diameter_px=10)
    assert list(table["id"]) == list(manifest["id"]) and list(table["label1"]) == list(manifest["label1"])
    for key in M.SEGMENTATION_METRIC_KEYS:
        assert key in table.columns
    for i in (0, 3, 6):
        pred = (probabilities[i] >= 0.5).astype(int)
        assert table.at[i, "dice"] == pytest.approx(skm.f1_score(targets[i].ravel(), pred.ravel()))
        assert table.at[i, "iou"] == pytest.approx(skm.jaccard_score(targets[i].ravel(), pred.ravel()))
        assert table.at[i, "rmse"] == pytest.approx(math.sqrt(np.mean((probabilities[i] - targets[i]) ** 2)))
    assert table["eval_spacing_mm"].iloc[0] == pytest.approx(0.7 * 512 / 32)
    assert (table["small_tumours_total"] == 1).all()  # one disc per slice, all under 10 px across (radius <= 4)
    assert table["tumour_area_px"].tolist() == manifest["tumour_area_px"].tolist()


def test_evaluate_segmentation_spacing_masks_and_errors():
    probabilities, targets, manifest = toy_test_set(n=4)
    # with the derived 11.2 mm/px every disc (>= 1 px) is larger than 10 mm: no small tumours
    derived = E.evaluate_segmentation(probabilities, targets, manifest)
    assert (derived["small_tumours_total"] == 0).all() and derived["small_tumour_recall"].isna().all()
    explicit = E.evaluate_segmentation(probabilities, targets, manifest, spacing_mm=1.0)
    assert (explicit["small_tumours_total"] == 1).all()
    masks = np.zeros_like(targets)
    with_masks = E.evaluate_segmentation(probabilities, targets, manifest, masks=masks)
    assert (with_masks["dice"] == 0).all() and (with_masks["pred_area_px"] == 0).all()
    np.testing.assert_allclose(with_masks["rmse"], derived["rmse"])
    no_spacing = manifest.assign(pixel_spacing_mm=np.nan)
    with pytest.warns(UserWarning, match="no pixel spacing"):
        E.evaluate_segmentation(probabilities, targets, no_spacing)
    bad_targets = targets.copy()
    bad_targets[2, 0, 0] = 255
    with pytest.raises(ValueError, match=r"slice 2 \(id 'test_002'\)"):
        E.evaluate_segmentation(probabilities, bad_targets, manifest)
    with pytest.raises(ValueError, match="lengths differ"):
        E.evaluate_segmentation(probabilities[:3], targets, manifest)
    with pytest.raises(ValueError, match="sigmoid"):
        E.evaluate_segmentation(probabilities * 4 - 2, targets, manifest)


def test_pooled_from_table_equals_metrics_over_all_pixels():
    probabilities, targets, manifest = toy_test_set()
    table = E.evaluate_segmentation(probabilities, targets, manifest, small_tumour_max_diameter_px=10)
    pooled = E.pooled_from_per_image(table)
    flat_target, flat_pred = targets.ravel(), (probabilities >= 0.5).ravel().astype(int)
    assert pooled["dice"] == pytest.approx(skm.f1_score(flat_target, flat_pred))
    assert pooled["precision"] == pytest.approx(skm.precision_score(flat_target, flat_pred))
    assert pooled["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(flat_target, probabilities.ravel())))
    assert pooled["small_tumour_recall"] == pytest.approx(
        table["small_tumours_detected"].sum() / table["small_tumours_total"].sum()
    )


def test_summarize_overall_per_class_and_extra():
    probabilities, targets, manifest = toy_test_set()
    table = E.evaluate_segmentation(probabilities, targets, manifest, small_tumour_max_diameter_px=10)
    summary = E.summarize(table, extra_metrics={"intensity_robustness_std": 0.03}, n_boot=500)
    assert summary["n_images"] == 8
    dice = summary["metrics"]["dice"]
    assert dice["mean"] == pytest.approx(table["dice"].mean()) and dice["n"] == 8
    assert dice["ci_low"] <= dice["mean"] <= dice["ci_high"]
    assert set(summary["per_class"]) == {"LR2", "LR3", "LR4A", "LR4B"}
    lr3 = summary["per_class"]["LR3"]
    assert lr3["dice"]["n"] == 2 and all(isinstance(block, dict) for block in lr3.values())
    assert lr3["dice"]["mean"] == pytest.approx(table.loc[table.label1 == "LR3", "dice"].mean())
    robustness = summary["metrics"]["intensity_robustness_std"]
    assert robustness == {"mean": 0.03, "ci_low": None, "ci_high": None, "n": 8}
    assert summary["pooled"]["dice"] == pytest.approx(E.pooled_from_per_image(table)["dice"])
    assert E.summarize(table, by=None, n_boot=100)["per_class"] == {}


# --- classification -------------------------------------------------------------------------------------------


def test_evaluate_classification_matches_sklearn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, 40)
    y_score = np.clip(0.3 * y_true + 0.7 * rng.random(40), 0, 1)
    labels = ["A" if i % 2 else "B" for i in range(40)]
    table, summary = E.evaluate_classification(y_true, y_score, 0.5, ids=[f"c{i}" for i in range(40)], labels=labels,
                                               n_boot=500)  # fmt: skip
    y_pred = (y_score >= 0.5).astype(int)
    assert summary["metrics"]["roc_auc"]["mean"] == pytest.approx(skm.roc_auc_score(y_true, y_score))
    assert summary["metrics"]["sensitivity"]["mean"] == pytest.approx(skm.recall_score(y_true, y_pred))
    assert summary["metrics"]["accuracy"]["mean"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for block in summary["metrics"].values():
        assert block["ci_low"] <= block["mean"] <= block["ci_high"] and block["n"] == 40
    assert table["correct"].mean() == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert set(summary["per_class"]) == {"A", "B"} and summary["per_class"]["A"]["accuracy"]["n"] == 20
    assert summary["pooled"] == dict(zip(("tn", "fp", "fn", "tp"), skm.confusion_matrix(y_true, y_pred).ravel()))


def test_vectorised_bootstrap_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 2, (5, 30))
    y_score = np.round(rng.random((5, 30)), 1)  # many ties
    expected = [skm.roc_auc_score(y_true[i], y_score[i]) for i in range(5)]
    np.testing.assert_allclose(E._roc_auc_rows(y_true.astype(float), y_score), expected)
    assert np.isnan(E._roc_auc_rows(np.ones((1, 4)), np.random.default_rng(0).random((1, 4))))[0]


# --- files ----------------------------------------------------------------------------------------------------


PROTOCOL = {
    "profile": "smoke", "data_source": "phantom", "split": "given test split; val 15% of train in class blocks",
    "image_size": 32, "epochs": 1, "seed": 0, "model_scale": "tiny", "loss": "hybrid_dice_focal",
    "optimizer": "adam", "postprocess": "none", "notes": "test",
}  # fmt: skip


def test_write_results_and_load_summary_round_trip(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.csv").write_text("id,split\na,test\n")
    probabilities, targets, manifest = toy_test_set()
    table = E.evaluate_segmentation(probabilities, targets, manifest)  # small_tumour_recall all NaN -> null
    summary = E.summarize(table, n_boot=200)
    results = tmp_path / "results" / "paper004" / "attention_unet"
    path = E.write_results(
        results, table, summary, paper="paper004", tables=["table2", "table3"], row="Proposed Attention U-Net",
        model="attention_unet", task="segmentation", protocol=PROTOCOL, dataset_dir=dataset, wall_time_s=12.34,
    )  # fmt: skip
    assert path == results / "summary.json"
    assert sorted(p.name for p in results.iterdir()) == ["per_image.csv", "summary.json"]  # no temp files left
    assert (results / "per_image.csv").stat().st_mtime_ns <= path.stat().st_mtime_ns  # csv first
    raw = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert raw["metrics"]["small_tumour_recall"]["mean"] is None
    loaded = E.load_summary(results)
    for key in ("paper", "table", "tables", "row", "model", "task", "status", "protocol", "n_images", "metrics",
                "pooled", "per_class", "per_image_csv"):  # fmt: skip
        assert key in loaded
    assert loaded["table"] == "table2" and loaded["tables"] == ["table2", "table3"]
    assert raw["status"] == "measured" and loaded["status"] == "measured" and loaded["n_images"] == 8
    protocol = loaded["protocol"]
    expected_fingerprint = hashlib.sha256((dataset / "manifest.csv").read_bytes()).hexdigest()[:12]
    assert protocol["data_fingerprint"] == expected_fingerprint
    assert protocol["wall_time_s"] == 12.3 and protocol["profile"] == "smoke"
    assert isinstance(protocol["git_commit"], str) and protocol["git_commit"]
    assert loaded["metrics"]["dice"]["mean"] == pytest.approx(summary["metrics"]["dice"]["mean"])
    assert loaded["per_class"]["LR4B"]["dice"]["n"] == 2
    per_image = E.load_per_image(results)
    assert per_image["id"].tolist() == manifest["id"].tolist()
    np.testing.assert_allclose(per_image["dice"], table["dice"])


def test_write_results_refuses_incomplete_protocol_and_bad_fields(tmp_path):
    probabilities, targets, manifest = toy_test_set(n=2)
    table = E.evaluate_segmentation(probabilities, targets, manifest, spacing_mm=1.0)
    summary = E.summarize(table, n_boot=50)
    common = dict(paper="paper001", tables=["table2"], row="SwinUNET", model="swin_unet", task="segmentation")
    with pytest.raises(ValueError, match="data_fingerprint"):
        E.write_results(tmp_path / "a", table, summary, protocol=PROTOCOL, **common)
    full = PROTOCOL | {"data_fingerprint": "0123456789ab"}
    with pytest.raises(ValueError, match="status"):
        E.write_results(tmp_path / "b", table, summary, protocol=full, status="done", **common)
    with pytest.raises(ValueError, match="paper"):
        E.write_results(tmp_path / "c", table, summary, protocol=full, **(common | {"paper": "001"}))
    with pytest.raises(ValueError, match="method_used"):
        E.write_results(tmp_path / "e", table, summary, protocol=full | {"postprocess": "crf"}, **common)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    E.write_results(tmp_path / "d", table, summary, protocol=full, status="wiring_only", **common)
    assert E.load_summary(tmp_path / "d" / "summary.json")["status"] == "wiring_only"


def test_the_older_status_name_reproduced_is_read_and_written_as_measured(tmp_path):
    """Producers and summaries from before the rename say "reproduced": a ran result is "measured", no more."""
    probabilities, targets, manifest = toy_test_set(n=2)
    table = E.evaluate_segmentation(probabilities, targets, manifest, spacing_mm=1.0)
    summary = E.summarize(table, n_boot=50)
    common = dict(paper="paper001", tables=["table2"], row="SwinUNET", model="swin_unet", task="segmentation",
                  protocol=PROTOCOL | {"data_fingerprint": "0123456789ab"})
    path = E.write_results(tmp_path / "new", table, summary, status="reproduced", **common)
    assert json.loads(path.read_text())["status"] == "measured"
    old = json.loads(path.read_text()) | {"status": "reproduced"}  # a summary.json written before the rename
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps(old))
    assert E.load_summary(tmp_path / "old")["status"] == "measured"
    assert E.STATUSES == ("measured", "wiring_only") and E.current_status("wiring_only") == "wiring_only"


def test_load_summary_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        E.load_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"paper": "paper000"}))
    with pytest.raises(ValueError, match="lacks keys"):
        E.load_summary(tmp_path)


def test_provenance_helpers(tmp_path):
    assert E.git_commit(tmp_path) == "unknown"
    with pytest.raises(FileNotFoundError):
        E.data_fingerprint(tmp_path)


def test_git_commit_marks_uncommitted_code_only(tmp_path):
    import shutil

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "lungkit").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "lungkit" / "code.py").write_text("x = 1\n")
    (tmp_path / "reports" / "table.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    clean = E.git_commit(tmp_path)
    assert clean != "unknown" and not clean.endswith("-dirty")
    (tmp_path / "reports" / "table.md").write_text("rewritten by a run\n")  # a report is not code
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert E.git_commit(tmp_path) == clean
    (tmp_path / "lungkit" / "code.py").write_text("x = 2\n")
    assert E.git_commit(tmp_path) == f"{clean}-dirty"


def test_data_fingerprint_does_not_depend_on_where_the_sources_were(tmp_path):
    # LUNA16 / DICOM conversions keep absolute source paths in the manifest; the same data converted in another run
    # folder must name the same data
    def manifest(folder, root, label="A"):
        folder.mkdir(parents=True)
        (folder / "manifest.csv").write_text(
            "id,split,label1,source_file\n"
            f"a,train,{label},{root}/subset0/one.mhd\n"
            f"b,test,{label},{root}/subset1/two.mhd\n")
        return folder

    here = manifest(tmp_path / "run1" / "kit", "/runs/run1/luna16")
    there = manifest(tmp_path / "run2" / "kit", "/elsewhere/data/luna16")
    assert E.data_fingerprint(here) == E.data_fingerprint(there)
    assert E.data_fingerprint(here) != E.data_fingerprint(manifest(tmp_path / "run3" / "kit", "/x", label="B"))
    # one source file for every row: relative to its folder
    single = tmp_path / "single"
    single.mkdir()
    (single / "manifest.csv").write_text("id,split,source_file\na,train,/data/one.mhd\nb,test,/data/one.mhd\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.csv").write_text("id,split,source_file\na,train,/mnt/x/one.mhd\nb,test,/mnt/x/one.mhd\n")
    assert E.data_fingerprint(single) == E.data_fingerprint(other)
