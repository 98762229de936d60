"""Reports from results: reported vs measured, differences, statuses, verdicts, caveats, leaderboard and figures.

Every test writes a small synthetic run (summary.json files in the contract's schema) under tmp_path.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lungkit import reports
from lungkit.figures import gallery_indices, plot_prediction_gallery, plot_reported_vs_reproduced
from lungkit.papers import all_paper_ids, get_paper

CLASSES = ("LR2", "LR3", "LR4A", "LR4B")


def stat(mean: float, half_width: float = 0.05, n: int = 48) -> dict:
    return {"mean": mean, "ci_low": mean - half_width, "ci_high": mean + half_width, "n": n}


def write_summary(run_dir: Path, paper: str, result_key: str, paper_field: str | None = None, **fields) -> Path:
    """One summary.json in the contract schema under results/<paper>/<result_key>; ``fields`` override the
    defaults and ``paper_field`` the summary's own ``paper`` value."""
    summary = {
        "paper": paper_field or paper,
        "tables": [],
        "row": "",
        "model": result_key,
        "task": "segmentation",
        "status": "measured",
        "protocol": {
            "profile": "quick", "data_source": "phantom", "split": "given test split; val 15% of train",
            "image_size": 128, "epochs": 12, "seed": 0, "model_scale": "small", "loss": "bce",
            "optimizer": "adam", "postprocess": "none", "data_fingerprint": "0123456789ab",
            "git_commit": "abc1234", "wall_time_s": 12.5, "notes": "synthetic test run",
        },
        "n_images": 48,
        "metrics": {"dice": stat(0.7012), "iou": stat(0.6)},
        "pooled": {"dice": 0.74},
        "per_class": {c: {"dice": stat(0.5 + 0.1 * i, n=12)} for i, c in enumerate(CLASSES)},
        "per_image_csv": "per_image.csv",
    }
    summary.update(fields)
    path = run_dir / "results" / paper / result_key / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary), encoding="utf-8")
    return path


def table_line(markdown: str, row_name: str) -> str:
    """The markdown table line of one row (its first cell is the row name)."""
    lines = [line for line in markdown.splitlines() if line.startswith(f"| {row_name} |")]
    assert lines, f"no table line for {row_name!r}"
    return lines[0]


# -------------------------------------------------------------------------------------------------- reading


def test_collect_summaries_reads_and_tags_each_result(tmp_path):
    write_summary(tmp_path, "paper004", "unet")
    write_summary(tmp_path, "paper001", "swin_unet")
    summaries = reports.collect_summaries(tmp_path)
    assert [(s["paper"], s["_result_key"]) for s in summaries] == [("paper001", "swin_unet"), ("paper004", "unet")]
    assert summaries[0]["_path"].endswith("results/paper001/swin_unet/summary.json")


def test_collect_summaries_of_empty_and_missing_run_dirs(tmp_path):
    assert reports.collect_summaries(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="nope"):
        reports.collect_summaries(tmp_path / "nope")


def test_bad_json_is_reported_with_the_file_name(tmp_path):
    path = write_summary(tmp_path, "paper004", "unet")
    path.write_text('{"paper": "paper004", ', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not valid JSON"):
        reports.collect_summaries(tmp_path)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"status": "done"}, "status 'done'"),
        ({"paper_field": "paper001"}, "sits under results/paper004"),
        ({"metrics": None}, "needs a 'metrics' object"),
    ],
)
def test_inconsistent_summaries_are_refused_with_the_file_name(tmp_path, fields, message):
    path = write_summary(tmp_path, "paper004", "unet", **fields)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        reports.collect_summaries(tmp_path)


def test_missing_keys_are_named(tmp_path):
    path = write_summary(tmp_path, "paper004", "unet")
    data = json.loads(path.read_text())
    del data["protocol"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['protocol'\]"):
        reports.read_summary(path)


# ------------------------------------------------------------------------------------------------ table frames


def test_table_frame_computes_reported_measured_difference_and_verdict(tmp_path):
    write_summary(tmp_path, "paper001", "swin_unet",
                  metrics={"dice": stat(0.7012), "iou": stat(0.6), "recall": stat(0.81)})
    frame = reports.paper_table_frame("paper001", "table2", reports.collect_summaries(tmp_path))  # alias of table3
    assert list(frame["row"]) == ["SwinUNET", "UNETR", "ResNet50-Unet"]
    swin = frame.iloc[0]
    assert swin["status"] == reports.STATUS_MEASURED == "measured"
    assert swin["dice_reported_printed"] == "0.7969"
    assert swin["dice_reported"] == pytest.approx(0.7969)
    assert swin["dice_measured"] == pytest.approx(0.7012)
    assert (swin["dice_ci_low"], swin["dice_ci_high"]) == pytest.approx((0.6512, 0.7512))
    assert swin["dice_difference"] == pytest.approx(0.7012 - 0.7969)
    assert swin["dice_verdict"] == "below paper"  # CI [0.6512, 0.7512] lies below the printed 0.7969
    assert swin["recall_difference"] == pytest.approx(0.81 - 0.7927)
    assert swin["recall_verdict"] == "within CI"  # [0.76, 0.86] holds 0.7927
    assert swin["rmse_reported_printed"] == "0.01193"
    assert math.isnan(swin["rmse_measured"]) and math.isnan(swin["rmse_difference"])  # not in the summary
    assert swin["rmse_verdict"] == ""  # nothing measured, nothing to judge
    assert "profile quick" in swin["protocol"] and "data fingerprint 0123456789ab" in swin["protocol"]
    assert "departs" not in swin["protocol"]
    for _, other in frame.iloc[1:].iterrows():
        assert other["status"] == reports.STATUS_NOT_YET
        assert math.isnan(other["dice_measured"]) and math.isnan(other["dice_difference"])
        assert other["dice_verdict"] == ""


def test_protocol_line_names_a_profile_departure_from_the_recipe(tmp_path):
    summary = json.loads(write_summary(tmp_path, "paper001", "swin_unet").read_text())
    summary["protocol"]["overridden"] = {"learning_rate": {"recipe": 0.005, "used": 0.0005}}
    line = reports.protocol_line(summary)
    assert "departs from the paper's recipe: learning_rate 0.005 -> 0.0005" in line


def test_protocol_line_says_how_training_saw_the_data_when_recorded(tmp_path):
    summary = json.loads(write_summary(tmp_path, "paper004", "unet").read_text())
    assert "optimizer steps" not in reports.protocol_line(summary)  # not recorded: not claimed
    summary["protocol"].update(steps_trained=200, sampling="patches of 128 px from slices at 256 px, flips",
                               test_time_flips="off")
    line = reports.protocol_line(summary)
    assert "optimizer steps 200; sampling patches of 128 px from slices at 256 px, flips; test-time flips off" in line



def test_protocol_line_says_what_a_pretrainable_encoder_started_from(tmp_path):
    summary = json.loads(write_summary(tmp_path, "paper001", "resnet50_unet").read_text())
    assert "encoder weights" not in reports.protocol_line(summary)  # a model without a pretrainable part: nothing
    summary["protocol"]["pretrained_encoder"] = {"pretrained": False, "source": None, "sha256": None}
    assert "encoder weights random (no local pretrained weights given" in reports.protocol_line(summary)
    summary["protocol"]["pretrained_encoder"] = {
        "pretrained": True, "source": "/home/me/weights/resnet50_notop.h5", "sha256": "0123456789abcdef",
        "official_imagenet_file": True}
    line = reports.protocol_line(summary)
    # the file by its name and digest, never the user's folder
    assert "encoder weights pretrained from resnet50_notop.h5, sha256 0123456789ab, the official ImageNet file" in line
    assert "/home/me" not in line
    summary["protocol"]["pretrained_encoder"] = {"pretrained": True, "source": "/p/swin_tiny", "sha256": None,
                                                 "window_resized": True}
    assert "pretrained from swin_tiny, relative position tables resized" in reports.protocol_line(summary)
    summary["protocol"]["model_settings"] = {"weights": "swin_tiny", "embed_dim": 96}
    assert "model settings given at build: embed_dim 96, weights swin_tiny" in reports.protocol_line(summary)
    del summary["protocol"]["pretrained_encoder"]
    summary["protocol"]["pretrained"] = "/data/densenet121_notop.h5"  # paper 003's classifiers record a string
    assert "pretrained weights densenet121_notop.h5" in reports.protocol_line(summary)

def test_reference_rows_and_rows_lungkit_lacks(tmp_path):
    others = reports.paper_table_frame("paper001", "table4", [])
    assert set(others["status"]) == {reports.STATUS_REFERENCE}
    assert list(others["iou_reported_printed"]) == ["-", "0.7274"]
    assert math.isnan(others["iou_reported"].iloc[0])
    paper000 = reports.paper_table_frame("paper000", "table1", [])
    # all three rows are in the kit now (notebooks 41-43); in this empty run none has a result yet
    assert reports.STATUS_NOT_IN_KIT not in set(paper000["status"])


def test_percent_tables_compare_in_fractions_and_print_in_percent(tmp_path):
    write_summary(tmp_path, "paper003", "densenet121_classifier", task="classification", pooled={}, per_class={},
                  metrics={"accuracy": stat(0.9), "sensitivity": stat(0.95), "specificity": stat(0.85)})
    summaries = reports.collect_summaries(tmp_path)
    frame = reports.paper_table_frame("paper003", "table3", summaries)
    proposed = frame[frame["row"] == "Proposed Model"].iloc[0]
    assert proposed["accuracy_reported"] == pytest.approx(0.9734)
    assert proposed["accuracy_difference"] == pytest.approx(0.9 - 0.9734)
    md_path, _ = reports.write_paper_report("paper003", summaries, tmp_path / "reports")
    line = table_line(md_path.read_text(), "Proposed Model")
    assert "| 97.34 | 90.00 [85.00, 95.00] | -7.34, below paper |" in line
    assert "| 96.15 | 85.00 [80.00, 90.00] | -11.15, below paper |" in line
    assert line.endswith("| measured |")


def test_pooled_metrics_are_compared_where_the_paper_pools(tmp_path):
    write_summary(tmp_path, "paper004", "unet", metrics={"precision": stat(0.5), "recall": stat(0.6)},
                  pooled={"precision": 0.77})
    frame = reports.paper_table_frame("paper004", "table3", reports.collect_summaries(tmp_path))
    unet = frame[frame["row"] == "Traditional U-Net"].iloc[0]
    assert unet["precision_measured"] == pytest.approx(0.77) and unet["precision_basis"] == "pooled"
    assert math.isnan(unet["precision_ci_low"])
    assert unet["precision_difference"] == pytest.approx(0.77 - 0.79)
    assert unet["precision_verdict"] == "below paper (no CI)"  # a pooled value has no CI: the point decides
    # no pooled recall in the summary: the per-image mean stands in, and says so
    assert unet["recall_measured"] == pytest.approx(0.6) and unet["recall_basis"] == "per_image"
    md = reports.write_paper_report("paper004", reports.collect_summaries(tmp_path), tmp_path / "r")[0].read_text()
    assert "0.770 (pooled)" in md and "(per-image: no pooled value)" in md
    assert "| Traditional U-Net | 0.87 | not computed |  | 0.79 | 0.770 (pooled) | -0.020, below paper (no CI) |" in md


# ------------------------------------------------------------------------------------------------------ verdicts


@pytest.mark.parametrize(
    "reported,measured,low,high,n,verdict",
    [
        (0.80, 0.78, 0.70, 0.85, 48, "within CI"),  # the CI holds the paper's value, though the mean is lower
        (0.80, 0.70, 0.70, 0.80, 48, "within CI"),  # bounds count as inside
        (0.80, 0.60, 0.50, 0.79, 48, "below paper"),
        (0.80, 0.90, 0.81, 0.95, 48, "above paper"),
        (0.80, 0.70, math.nan, math.nan, 48, "below paper (no CI)"),  # pooled: only a point value
        (0.80, 0.85, math.nan, math.nan, 48, "above paper (no CI)"),
        (0.80, 0.80, math.nan, math.nan, 48, "equals paper (no CI)"),
        (0.80, 0.85, 0.85, 0.85, 1, "above paper (no CI)"),  # one test image: low == high == mean is no CI
        (math.nan, 0.85, 0.80, 0.90, 48, "n/a"),  # the paper printed no value ("-")
        (0.80, math.nan, math.nan, math.nan, math.nan, ""),  # nothing measured
    ],
)
def test_metric_verdict_words(reported, measured, low, high, n, verdict):
    assert reports.metric_verdict(reported, measured, low, high, n) == verdict


def test_a_dice_of_zero_against_the_papers_number_is_measured_and_below_paper(tmp_path):
    """The issue's example: 0.00 [0.00, 0.00] beside a printed 0.8x must not read as a success."""
    write_summary(tmp_path, "paper004", "unet", metrics={"dice": stat(0.0, half_width=0.0), "iou": stat(0.0, 0.0)})
    summaries = reports.collect_summaries(tmp_path)
    frame = reports.paper_table_frame("paper004", "table2", summaries)
    unet = frame[frame["row"] == "Traditional U-Net"].iloc[0]
    assert unet["status"] == "measured"
    assert (unet["dice_reported"], unet["dice_measured"]) == pytest.approx((0.82, 0.0))
    assert unet["dice_verdict"] == "below paper" and unet["iou_verdict"] == "below paper"
    md = reports.write_paper_report("paper004", summaries, tmp_path / "reports")[0].read_text()
    line = table_line(md, "Traditional U-Net")
    assert "| 0.82 | 0.000 [0.000, 0.000] | -0.820, below paper |" in line and line.endswith("| measured |")
    assert "reproduced |" not in md
    assert "`measured`" in md and "`below paper`" in md and "`within CI`" in md and "`n/a`" in md  # the legend
    board = reports.leaderboard_frame(summaries)
    assert board.loc[0, "vs_paper"].startswith("2 below paper")
    assert "table2 Traditional U-Net: Dice Score below paper" in board.loc[0, "paper_verdicts"]


def test_verdicts_compare_at_the_printed_precision(tmp_path):
    # 0.8196 prints as 0.820 beside the paper's 0.82: the reader sees the printed value at the CI's edge
    write_summary(tmp_path, "paper004", "unet", metrics={
        "dice": {"mean": 0.80, "ci_low": 0.78, "ci_high": 0.8196, "n": 48},
        "iou": {"mean": 0.70, "ci_low": 0.68, "ci_high": 0.7349, "n": 48}})  # 0.735 < 0.74: below
    frame = reports.paper_table_frame("paper004", "table2", reports.collect_summaries(tmp_path))
    unet = frame[frame["row"] == "Traditional U-Net"].iloc[0]
    assert unet["dice_verdict"] == "within CI"
    assert unet["iou_verdict"] == "below paper"


def test_verdict_is_na_where_the_paper_printed_no_value(tmp_path, monkeypatch):
    table = get_paper("paper004").TABLES["table2"]
    monkeypatch.setitem(table["rows"][0]["reported"], "iou", "-")
    write_summary(tmp_path, "paper004", "unet")
    summaries = reports.collect_summaries(tmp_path)
    unet = reports.paper_table_frame("paper004", "table2", summaries).iloc[0]
    assert unet["iou_verdict"] == "n/a" and unet["dice_verdict"] == "below paper"
    md = reports.write_paper_report("paper004", summaries, tmp_path / "reports")[0].read_text()
    assert "| - | 0.600 [0.550, 0.650] | n/a |" in table_line(md, "Traditional U-Net")


def test_dataset_level_metrics_without_a_ci_get_a_point_verdict(tmp_path):
    write_summary(tmp_path, "paper004", "unet", metrics={
        "dice": stat(0.6), "intensity_robustness_std": {"mean": 0.004, "ci_low": None, "ci_high": None, "n": 48}})
    unet = reports.paper_table_frame("paper004", "table2", reports.collect_summaries(tmp_path)).iloc[0]
    assert unet["intensity_robustness_std_verdict"] == "below paper (no CI)"  # 0.004 against 0.07


def test_summaries_written_as_reproduced_read_as_measured(tmp_path):
    """summary.json files and reports/results.json entries from before the rename say "reproduced"."""
    path = write_summary(tmp_path, "paper004", "unet", status="reproduced")
    summaries = reports.collect_summaries(tmp_path)
    assert summaries[0]["status"] == "measured"
    row = reports.paper_table_frame("paper004", "table2", summaries).iloc[0]
    assert row["status"] == "measured" and row["dice_verdict"] == "below paper"
    # a summary passed in directly (not read from a file) counts too
    raw = json.loads(path.read_text())
    assert reports.paper_table_frame("paper004", "table2", [raw]).iloc[0]["status"] == "measured"
    assert list(reports.leaderboard_frame([raw])["result_key"]) == ["unet"]
    # an index written before the rename: its rows show as measured and are written back so
    reports_dir = tmp_path / "reports"
    reports.write_all_reports(tmp_path, reports_dir, say=lambda line: None)
    index_path = reports_dir / "results.json"
    index_path.write_text(index_path.read_text().replace('"status": "measured"', '"status": "reproduced"'))
    assert reports.read_results_index(reports_dir)["paper004/unet"]["status"] == "measured"
    partial = tmp_path / "run-b"
    write_summary(partial, "paper004", "attention_unet")
    reports.write_all_reports(partial, reports_dir, say=lambda line: None)
    md = (reports_dir / "paper004.md").read_text()
    assert table_line(md, "Traditional U-Net").endswith("| measured |")  # kept from the first run
    assert '"reproduced"' not in index_path.read_text()


def test_old_reports_saying_reproduced_are_not_erased_by_a_partial_run(tmp_path):
    reports_dir = tmp_path / "reports"
    reports.write_all_reports(_full_run(tmp_path), reports_dir, say=lambda line: None)
    (reports_dir / "results.json").unlink()  # the committed reports: no index, and the old status word
    csv_path = reports_dir / "paper004.csv"
    csv_path.write_text(csv_path.read_text().replace(",measured,", ",reproduced,"))
    before = _snapshot(reports_dir)
    partial = tmp_path / "run-b"
    write_summary(partial, "paper004", "unet", metrics={"dice": stat(0.65)})
    said = []
    reports.write_all_reports(partial, reports_dir, say=said.append)
    assert _snapshot(reports_dir) == before
    assert any("paper004/attention_unet" in line and "left untouched" in line for line in said)


def test_per_class_metrics_come_from_per_class(tmp_path):
    summary = json.loads(write_summary(tmp_path, "paper001", "swin_unet").read_text())
    assert reports.metric_from_summary(summary, "dice@LR4A")["mean"] == pytest.approx(0.7)
    assert reports.metric_from_summary(summary, "dice@LR9") is None
    assert reports.metric_from_summary(summary, "dice", basis="pooled")["mean"] == pytest.approx(0.74)


def test_wiring_only_rows_show_no_numbers(tmp_path):
    write_summary(tmp_path, "paper003", "sam_luna16", model="sam", status="wiring_only",
                  metrics={"dice": stat(0.5123), "iou": stat(0.4321)}, pooled={"dice": 0.5123}, per_class={})
    summaries = reports.collect_summaries(tmp_path)
    frame = reports.paper_table_frame("paper003", "table2", summaries)
    ours = frame[(frame["row"] == "Ours") & (frame["dataset"] == "LUNA16")].iloc[0]
    assert ours["status"] == reports.STATUS_WIRING
    assert math.isnan(ours["dice_measured"]) and math.isnan(ours["iou_measured"])
    assert ours["dice_verdict"] == "" and ours["iou_verdict"] == ""  # no number, so no verdict either
    md_path, csv_path = reports.write_paper_report("paper003", summaries, tmp_path / "reports")
    leaderboard_md, leaderboard_csv = reports.write_leaderboard(summaries, tmp_path / "reports")
    for path in (md_path, csv_path, leaderboard_md, leaderboard_csv):
        text = path.read_text()
        for number in ("0.5123", "51.23", "0.4321", "43.21", "0.512", "0.432"):
            assert number not in text, (path.name, number)
    md = md_path.read_text()
    assert "wiring only (no weights)" in table_line(md, "Ours")
    assert "**Wiring only.**" in md


# ------------------------------------------------------------------------------------------------ paper reports


def test_paper_report_has_reported_vs_measured_protocol_and_caveats(tmp_path):
    write_summary(tmp_path, "paper001", "swin_unet",
                  metrics={"dice": stat(0.7012), "iou": stat(0.6), "recall": stat(0.81)})
    summaries = reports.collect_summaries(tmp_path)
    md_path, csv_path = reports.write_paper_report("paper001", summaries, tmp_path / "reports", run_dir=tmp_path)
    assert (md_path.name, csv_path.name) == ("paper001.md", "paper001.csv")
    md = md_path.read_text()
    assert md.startswith("# paper001: Final project: Lung cancer segmentation")
    assert f"the results of run `{tmp_path.name}`" in md and str(tmp_path) not in md  # no machine paths
    # printed to the paper's precision (4 decimals here): reported, measured [CI], difference and verdict
    assert "| SwinUNET | 0.7969 | 0.7012 [0.6512, 0.7512] | -0.0957, below paper |" in md
    assert "| Dice: paper | Dice: lungkit [95% CI] | Dice: Δ, verdict |" in md
    assert table_line(md, "SwinUNET").endswith("| measured |")
    # the words are explained once, at the top, before the paper's own story
    assert md.index(reports.VERDICT_LEGEND) < md.index("## What the paper did")
    assert md.count(reports.VERDICT_LEGEND) == 1
    assert "| 0.01193 | not computed |  |" in table_line(md, "SwinUNET")  # RMSE not in the summary
    assert table_line(md, "UNETR").endswith("| not reproduced yet |")
    assert "not reproduced yet (no results/paper001/unetr/summary.json)" in md
    assert "reference only (others' work)" in table_line(md, "RRc-UNet [4]")
    for field in ("profile quick", "data phantom", "image size 128", "epochs 12", "seed 0", "split given test split",
                  "data fingerprint 0123456789ab", "commit abc1234", "post-processing none"):
        assert field in md, field
    assert reports.PHANTOM_CAVEAT in md
    assert "**Reduced run.**" in md and "`quick`" in md
    assert "Dataset authors' U-Net baseline" in md and "| 0.371 |" in md
    frame = pd.read_csv(csv_path)
    assert len(frame) == 3 + 2 + 2  # tables 3, 4 and the dataset authors' baseline
    assert frame.loc[frame["row"] == "SwinUNET", "dice_difference"].item() == pytest.approx(0.7012 - 0.7969)


def test_no_caveats_for_a_paper_profile_run_on_real_data(tmp_path):
    protocol = {"profile": "paper", "data_source": "lungrads", "image_size": 256, "epochs": 50, "seed": 0}
    write_summary(tmp_path, "paper004", "unet", protocol=protocol)
    md = reports.write_paper_report("paper004", reports.collect_summaries(tmp_path), tmp_path / "r")[0].read_text()
    assert "## Read this first" not in md
    assert "model scale not recorded" in md  # missing protocol fields are said, not hidden


def test_paper_without_tables_still_gets_a_report(tmp_path):
    write_summary(tmp_path, "paper002", "unet_from_scratch", model="unet")
    summaries = reports.collect_summaries(tmp_path)
    md_path, csv_path = reports.write_paper_report("paper002", summaries, tmp_path / "reports")
    md = md_path.read_text()
    assert "print no results table" in md and "| CT images | 972 |" in md
    assert reports.VERDICT_LEGEND not in md  # no table, no verdict words to explain
    assert "`unet_from_scratch` (model `unet`): dice 0.701 [0.651, 0.751]" in md
    assert pd.read_csv(csv_path).empty


def test_write_all_reports_on_an_empty_run_writes_every_paper(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    written = reports.write_all_reports(run_dir, tmp_path / "reports")
    names = sorted(path.name for path in written)
    expected = sorted([f"{pid}.{ext}" for pid in all_paper_ids() for ext in ("md", "csv")]
                      + ["leaderboard.md", "leaderboard.csv", "results.json"])
    assert names == expected
    for pid in all_paper_ids():
        assert (tmp_path / "reports" / f"{pid}.md").read_text().startswith(f"# {pid}: ")
    assert "not reproduced yet" in (tmp_path / "reports" / "paper004.md").read_text()
    assert "No measured results yet." in (tmp_path / "reports" / "leaderboard.md").read_text()
    assert not list((tmp_path / "reports").glob("**/*.tmp"))  # atomic writes leave no temporaries


def test_write_all_reports_draws_bars_and_galleries_when_data_exists(tmp_path):
    path = write_summary(tmp_path, "paper004", "unet")
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), dtype=np.uint8)
    masks[:, 5:9, 5:9] = 1
    np.savez(path.parent / "predictions.npz", images=rng.normal(size=(4, 16, 16)), masks=masks,
             probabilities=rng.random((4, 16, 16)))
    pd.DataFrame({"dice": [0.2, 0.9, 0.5, 0.1]}).to_csv(path.parent / "per_image.csv", index=False)
    written = reports.write_all_reports(tmp_path, tmp_path / "reports")
    figures = sorted(p.name for p in written if p.suffix == ".png")
    assert figures == ["paper004_table2_reported_vs_reproduced.png", "paper004_table3_reported_vs_reproduced.png",
                       "paper004_table4_reported_vs_reproduced.png", "paper004_unet_gallery.png"]
    for name in figures:
        assert (tmp_path / "reports" / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "reports" / "paper004.md").read_text()
    assert "](figures/paper004_table2_reported_vs_reproduced.png)" in md
    assert "](figures/paper004_unet_gallery.png)" in md


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _save_predictions(summary_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), dtype=np.uint8)
    masks[:, 5:9, 5:9] = 1
    np.savez(summary_path.parent / "predictions.npz", images=rng.normal(size=(4, 16, 16)), masks=masks,
             probabilities=rng.random((4, 16, 16)), dice=np.array([0.2, 0.9, 0.5, 0.1]))


def _full_run(tmp_path: Path) -> Path:
    run = tmp_path / "run-a"
    _save_predictions(write_summary(run, "paper004", "unet", metrics={"dice": stat(0.6), "iou": stat(0.5)}))
    write_summary(run, "paper004", "attention_unet", metrics={"dice": stat(0.7), "iou": stat(0.55)})
    write_summary(run, "paper001", "swin_unet", metrics={"dice": stat(0.7012), "iou": stat(0.6)})
    return run


def test_a_run_without_results_leaves_the_reports_as_they_were(tmp_path):
    reports_dir = tmp_path / "reports"
    reports.write_all_reports(_full_run(tmp_path), reports_dir, say=lambda line: None)
    before = _snapshot(reports_dir)
    assert "figures/paper004_unet_gallery.png" in before and "results.json" in before
    only_90 = tmp_path / "run-90"
    only_90.mkdir()
    said = []
    assert reports.write_all_reports(only_90, reports_dir, say=said.append) == []
    assert _snapshot(reports_dir) == before  # nothing rewritten, nothing turned into "not reproduced yet"
    assert any("paper004/attention_unet from run run-a" in line for line in said)


def test_a_partial_run_updates_its_rows_and_keeps_the_others_with_their_run(tmp_path):
    reports_dir = tmp_path / "reports"
    reports.write_all_reports(_full_run(tmp_path), reports_dir, say=lambda line: None)
    before = _snapshot(reports_dir)
    partial = tmp_path / "run-b"  # --only 10: the U-Net again, no predictions saved this time
    write_summary(partial, "paper004", "unet", metrics={"dice": stat(0.65), "iou": stat(0.52)})
    said = []
    written = reports.write_all_reports(partial, reports_dir, say=said.append)
    after = _snapshot(reports_dir)

    md = after["paper004.md"].decode()
    assert "| 0.82 | 0.650 [0.600, 0.700] |" in table_line(md, "Traditional U-Net")  # updated from run-b
    attention = table_line(md, "Proposed Attention U-Net")
    assert "| 0.89 | 0.700 [0.650, 0.750] |" in attention and attention.endswith("| measured |")  # kept
    assert "`attention_unet` from run `run-a`" in md and "results of run `run-b`" in md
    frame = pd.read_csv(reports_dir / "paper004.csv")
    protocols = dict(zip(frame.loc[frame["table"] == "table2", "result_key"],
                         frame.loc[frame["table"] == "table2", "protocol"]))
    assert "run run-b" in protocols["unet"] and "run run-a" in protocols["attention_unet"]
    assert any("kept paper004/attention_unet from run run-a" in line for line in said)
    # paper 001 had nothing from this run: its report and chart are the earlier bytes
    for name in ("paper001.md", "paper001.csv", "figures/paper001_table3_reported_vs_reproduced.png"):
        assert after[name] == before[name], name
    # paper 004's charts were redrawn with the new U-Net number; the stale U-Net gallery is gone, not left beside it
    assert after["figures/paper004_table2_reported_vs_reproduced.png"] != \
        before["figures/paper004_table2_reported_vs_reproduced.png"]
    assert "figures/paper004_unet_gallery.png" not in after
    assert "paper004_unet_gallery.png" not in md
    index = reports.read_results_index(reports_dir)
    assert {key: summary["_run"] for key, summary in index.items()} == {
        "paper001/swin_unet": "run-a", "paper004/attention_unet": "run-a", "paper004/unet": "run-b"}
    leaderboard = pd.read_csv(reports_dir / "leaderboard.csv")
    assert dict(zip(leaderboard["result_key"], leaderboard["run"])) == {
        "attention_unet": "run-a", "unet": "run-b", "swin_unet": "run-a"}
    assert reports_dir / "paper001.md" not in written


def test_reports_without_an_index_are_not_overwritten_by_a_partial_run(tmp_path):
    reports_dir = tmp_path / "reports"
    reports.write_all_reports(_full_run(tmp_path), reports_dir, say=lambda line: None)
    (reports_dir / "results.json").unlink()  # reports written before the index existed (the committed ones)
    before = _snapshot(reports_dir)
    partial = tmp_path / "run-b"
    write_summary(partial, "paper004", "unet", metrics={"dice": stat(0.65)})
    said = []
    reports.write_all_reports(partial, reports_dir, say=said.append)
    assert _snapshot(reports_dir) == before
    assert any("paper004/attention_unet" in line and "left untouched" in line for line in said)
    assert "0.650" in table_line((partial / "reports" / "paper004.md").read_text(), "Traditional U-Net")


# ------------------------------------------------------------------------------------------------ leaderboard


def test_leaderboard_columns_order_and_grouping(tmp_path):
    write_summary(tmp_path, "paper004", "unet", metrics={"dice": stat(0.6), "iou": stat(0.5)},
                  pooled={"precision": 0.9})
    write_summary(tmp_path, "paper004", "attention_unet", metrics={"dice": stat(0.7), "iou": stat(0.55)})
    other_split = dict(json.loads(write_summary(tmp_path, "paper001", "unetr").read_text())["protocol"],
                       data_fingerprint="ffffffffffff")
    write_summary(tmp_path, "paper001", "unetr", protocol=other_split, metrics={"dice": stat(0.9)})
    write_summary(tmp_path, "paper003", "sam_luna16", model="sam", status="wiring_only")
    summaries = reports.collect_summaries(tmp_path)
    frame = reports.leaderboard_frame(summaries)
    for column in ("split_group", "task", "paper", "result_key", "model", "paper_rows", "profile", "data_source",
                   "image_size", "epochs", "seed", "n_images", "dice_mean", "dice_ci_low", "dice_ci_high",
                   "iou_mean", "precision_mean", "recall_mean", "specificity_mean", "rmse_mean", "accuracy_mean",
                   "dice_LR2_mean", "dice_LR3_mean", "dice_LR4A_mean", "dice_LR4B_mean", "dice_LR4B_ci_high"):
        assert column in frame.columns, column
    assert "sam_luna16" not in set(frame["result_key"])  # wiring only: never on the leaderboard
    # grouped by test set (sorted by the group's description), best Dice first inside a group
    assert list(frame["result_key"]) == ["attention_unet", "unet", "unetr"]
    assert frame["split_group"].nunique() == 2
    assert frame.loc[frame["result_key"] == "unet", "dice_LR4A_mean"].item() == pytest.approx(0.7)
    assert "table2: Proposed Attention U-Net" in frame.loc[frame["result_key"] == "attention_unet",
                                                           "paper_rows"].item()
    md_path, csv_path = reports.write_leaderboard(summaries, tmp_path / "reports")
    md = md_path.read_text()
    assert md.count("## segmentation:") == 2
    assert "| Dice LR2 | Dice LR3 | Dice LR4A | Dice LR4B |" in md
    assert "0.700 [0.650, 0.750]" in md
    assert "`paper003/sam_luna16`" in md
    assert list(pd.read_csv(csv_path).columns) == list(frame.columns)
    # the verdicts travel with each result: counted in the markdown, one by one in the CSV
    unet = frame.loc[frame["result_key"] == "unet"].iloc[0]
    # Dice and IoU of table 2 against their CIs; the pooled precision of tables 3 and 4 (0.90 against 0.79 and 79%)
    assert unet["vs_paper"] == "2 below paper, 2 above paper (no CI)"
    assert unet["paper_verdicts"].split("; ") == [
        "table2 Traditional U-Net: Dice Score below paper", "table2 Traditional U-Net: IoU below paper",
        "table3 Traditional U-Net: Precision above paper (no CI)",
        "table4 Traditional U-Net (Baseline): Precision above paper (no CI)"]
    assert "| n | vs paper | dice |" in md and "| 2 below paper, 2 above paper (no CI) |" in md
    assert "`within CI`" in md  # the words are explained above the tables


# ---------------------------------------------------------------------------------------------------- figures


def test_reported_vs_reproduced_figure(tmp_path):
    write_summary(tmp_path, "paper001", "swin_unet")
    figure = plot_reported_vs_reproduced("paper001", "table3", reports.collect_summaries(tmp_path))
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 4  # one panel per printed metric column
    dice_axis = figure.axes[0]
    heights = sorted(round(patch.get_height(), 4) for patch in dice_axis.patches)
    # three paper bars (as printed) and one lungkit bar; the rows not reproduced yet draw zero-height bars
    assert heights == [0.0, 0.0, 0.7012, 0.7558, 0.7969, 0.8063]
    with pytest.raises(ValueError, match="no row lungkit reproduces"):
        plot_reported_vs_reproduced("paper001", "table4", [])


def test_gallery_picks_best_median_worst_ignoring_nan():
    assert gallery_indices(np.array([0.5, np.nan, 0.9, 0.1, 0.7])) == {"best": 2, "median": 0, "worst": 3}
    with pytest.raises(ValueError, match="no finite"):
        gallery_indices(np.array([np.nan]))


def test_prediction_gallery_checks_shapes():
    images = np.zeros((3, 8, 8))
    figure = plot_prediction_gallery(images, np.zeros((3, 8, 8, 1)), np.zeros((3, 8, 8)), [0.1, 0.2, 0.3])
    assert len(figure.axes) == 9
    with pytest.raises(ValueError, match="shapes disagree"):
        plot_prediction_gallery(images, np.zeros((3, 8, 8)), np.zeros((2, 8, 8)), [0.1, 0.2, 0.3])


def test_paper000_table1_shows_every_reading_beside_the_printed_row(tmp_path):
    lesion = {"lesion_precision": 0.5, "lesion_recall": 0.25, "lesion_f1": 1 / 3, "f1_of_mean_precision_recall": 0.61}
    write_summary(tmp_path, "paper000", "maskformer",
                  metrics={"precision": stat(0.8), "recall": stat(0.7), "f1": stat(0.55),
                           **{k: {"mean": v, "ci_low": None, "ci_high": None, "n": 48} for k, v in lesion.items()}},
                  pooled={"precision": 0.9, "recall": 0.6, "f1": 0.72, **lesion})
    summaries = reports.collect_summaries(tmp_path)
    frame = reports.paper_table_frame("paper000", "table1", summaries)
    maskformer = frame[frame["row"] == "MaskFormer"].set_index("reading")
    # no box-derived ground truth in this result: the box reading is left out for it, kept for none
    assert list(maskformer.index) == ["pixel, per image", "pixel, per image, F1 of the mean P and R",
                                      "pixel, pooled", "lesion, IoU >= 0.5"]
    assert maskformer.loc["pixel, per image", "f1_measured"] == pytest.approx(0.55)
    assert maskformer.loc["pixel, per image, F1 of the mean P and R", "f1_measured"] == pytest.approx(0.61)
    assert math.isnan(maskformer.loc["pixel, per image, F1 of the mean P and R", "precision_measured"])
    assert maskformer.loc["pixel, pooled", "recall_measured"] == pytest.approx(0.6)
    assert maskformer.loc["lesion, IoU >= 0.5", "precision_measured"] == pytest.approx(0.5)
    assert (maskformer["f1_reported_printed"] == "0.619").all()
    # rows without a result keep one line each, saying so
    assert list(frame.loc[frame["row"] == "ViT", "status"]) == [reports.STATUS_NOT_YET] * 4
    md_path, _ = reports.write_paper_report("paper000", summaries, tmp_path / "reports")
    md = md_path.read_text()
    assert "| MaskFormer | lesion, IoU >= 0.5 | 0.898 | 0.500 | -0.398, below paper (no CI) |" in md
    assert "| MaskFormer | pixel, per image, F1 of the mean P and R | 0.898 | - |  |" in md
    assert "*lesion, box IoU >= 0.5*:" in md and "one to one" in md  # every definition written out
    rows = reports.result_table_rows(summaries[0], "maskformer")
    assert list(rows["reading"])[-1] == "lesion, IoU >= 0.5" and rows["F1-Score: paper"].eq("0.619").all()
    # box-derived ground truth adds the box reading
    write_summary(tmp_path, "paper000", "maskformer", metrics={"precision": stat(0.8)},
                  pooled={"lesion_box_precision": 0.75, "lesion_box_recall": 0.5, "lesion_box_f1": 0.6})
    frame = reports.paper_table_frame("paper000", "table1", reports.collect_summaries(tmp_path))
    assert "lesion, box IoU >= 0.5" in set(frame.loc[frame["row"] == "MaskFormer", "reading"])


def test_a_lungkit_ablation_filed_under_table1_shows_its_readings_without_a_paper_side(tmp_path):
    write_summary(tmp_path, "paper000", "mask2former_ct_only", model="mask2former", tables=["table1"],
                  row="Mask2Former, CT only", metrics={"precision": stat(0.8), "recall": stat(0.7), "f1": stat(0.6)},
                  pooled={"lesion_precision": 0.5, "lesion_recall": 0.25, "lesion_f1": 1 / 3})
    summaries = reports.collect_summaries(tmp_path)
    rows = reports.result_table_rows(summaries[0], "mask2former_ct_only").set_index("reading")
    assert rows.loc["pixel, per image", "F1-Score: lungkit"] == pytest.approx(0.6)
    assert rows.loc["lesion, IoU >= 0.5", "Recall: lungkit"] == pytest.approx(0.25)
    assert set(rows["Precision: paper"]) == {"not printed"} and "lesion, box IoU >= 0.5" not in rows.index
    md_path, _ = reports.write_paper_report("paper000", summaries, tmp_path / "reports")
    assert "`mask2former_ct_only` (model `mask2former`)" in md_path.read_text()  # listed below the table


def test_a_notebooks_classifier_figures_reach_the_report_only_with_their_results(tmp_path):
    """paper002.REPORT_FIGURES: the ROC figure notebook 52 saves is copied and shown when the run produced its
    results; a run that produced none of them leaves it out (no stale figure beside new numbers)."""
    run = tmp_path / "run"
    write_summary(run, "paper002", "crop_cnn_image_predicted", task="classification", tables=["lungkit_classification"],
                  metrics={"accuracy": stat(0.8), "roc_auc": stat(0.9)})
    (run / "figures").mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + b"roc"
    (run / "figures" / "paper002_segment_then_classify_roc.png").write_bytes(png)
    reports.write_all_reports(run, tmp_path / "reports")
    copied = tmp_path / "reports" / "figures" / "paper002_segment_then_classify_roc.png"
    assert copied.read_bytes() == png
    md = (tmp_path / "reports" / "paper002.md").read_text()
    assert "## Figures from the notebooks" in md and "](figures/paper002_segment_then_classify_roc.png)" in md
    assert "ROC curves on the test tumour slices" in md
    assert "segment_then_classify_confusion" not in md  # not saved by this run: not shown

    other = tmp_path / "other"
    write_summary(other, "paper002", "mobilenetv2_unet")
    (other / "figures").mkdir(parents=True)
    (other / "figures" / "paper002_segment_then_classify_roc.png").write_bytes(b"\x89PNG\r\n\x1a\nstale")
    reports.write_all_reports(other, tmp_path / "reports2")
    assert not (tmp_path / "reports2" / "figures" / "paper002_segment_then_classify_roc.png").exists()
