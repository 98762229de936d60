"""The papers registry: quotes checked against the paper texts, tables well formed, recipes complete.

The quote checks read the extracted paper texts in ``shared/papers`` beside the repository and skip when that
folder is absent. The consistency checks recompute, independently of the registry's remarks, which printed numbers
contradict each other (F1 vs harmonic mean, IoU vs Dice, accuracy vs sensitivity/specificity) and require a remark
exactly where a contradiction exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lungkit import papers
from lungkit.models import available_models
from lungkit.papers import (
    all_paper_ids,
    find_rows_for_result,
    get_paper,
    get_postprocessing,
    get_recipe,
    get_table,
    get_zero_shot,
    parse_reported_value,
    reported_rows,
    resolve_table_id,
    result_keys,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
PAPERS_DIR = SHARED / "papers"

SEGMENTATION_METRICS = {"dice", "iou", "precision", "recall", "specificity", "accuracy", "f1", "rmse",
                        "small_tumour_recall", "intensity_robustness_std"}
CLASSIFICATION_METRICS = {"accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"}
# Recipe keys of the contract (lungkit.training.Recipe.from_dict); momentum is optional (SGD only), and so are
# profile_overrides (a measured departure at a small profile, explained in the notes).
RECIPE_KEYS = {"model", "image_size", "input_channels", "preprocessing", "optimizer", "learning_rate", "momentum",
               "lr_schedule", "loss", "loss_kwargs", "from_logits", "batch_size", "epochs", "min_epochs",
               "early_stopping_patience", "reduce_lr_patience", "reduce_lr_factor", "min_lr", "monitor",
               "augment_on_the_fly", "notes"}
LOSSES = {"bce", "bce_logits", "dice", "focal", "hybrid_dice_focal", "dice_bce", "set_prediction"}
PREPROCESSING = {"hu_window_zscore", "minmax", "lung_masked_hu", "hu_window_unit"}


@pytest.fixture(scope="module")
def paper_texts() -> dict[str, str]:
    if not PAPERS_DIR.is_dir():
        pytest.skip(f"paper texts {PAPERS_DIR} not present")
    return {pid: (PAPERS_DIR / get_paper(pid).PAPER["file"]).read_text(encoding="utf-8") for pid in all_paper_ids()}


@pytest.fixture(scope="module")
def guide_text() -> str:
    path = SHARED / "GUIDE.md"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path.read_text(encoding="utf-8")


def all_tables():
    return [(pid, tid, table) for pid in all_paper_ids() for tid, table in get_paper(pid).TABLES.items()]


def normalise(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------ registry API


def test_registry_has_the_five_papers_in_order():
    assert all_paper_ids() == ["paper000", "paper001", "paper002", "paper003", "paper004"]
    for pid in all_paper_ids():
        paper = get_paper(pid).PAPER
        assert paper["id"] == pid
        assert {"id", "title", "short_title", "file", "data", "systems"} <= set(paper)
        assert paper["systems"], pid
    with pytest.raises(ValueError, match="paper009"):
        get_paper("paper009")


def test_paper_files_exist_and_printed_titles_occur(paper_texts):
    for pid in all_paper_ids():
        paper = get_paper(pid).PAPER
        assert (PAPERS_DIR / paper["file"]).is_file()
        if paper["title_printed"]:
            assert normalise(paper["title"]) in normalise(paper_texts[pid]), pid


def test_parse_reported_value_handles_every_printed_form():
    assert parse_reported_value("0.01193") == pytest.approx(0.01193)
    assert parse_reported_value("92%") == pytest.approx(0.92)
    assert parse_reported_value("90.10%", "percent") == pytest.approx(0.901)
    assert parse_reported_value("97.87", "percent") == pytest.approx(0.9787)
    for missing in ("-", "--", "---", " "):
        assert parse_reported_value(missing) is None
    with pytest.raises(ValueError, match="abc"):
        parse_reported_value("abc")
    with pytest.raises(ValueError, match="value_scale"):
        parse_reported_value("0.5", "per-mille")


def test_table_aliases_resolve_and_unknown_tables_are_named():
    assert resolve_table_id("paper001", "table2") == "table3"  # papers/README.md's name for the results table
    assert get_table("paper001", "table2")["title"] == "Metrics and Model Performance"
    with pytest.raises(ValueError, match="table9"):
        resolve_table_id("paper004", "table9")
    with pytest.raises(ValueError, match="none printed"):
        resolve_table_id("paper002", "table1")


def test_registry_returns_copies():
    recipe = get_recipe("paper004", "unet")
    recipe["epochs"] = -1
    assert get_recipe("paper004", "unet")["epochs"] != -1
    rows = reported_rows("paper000")
    rows[0]["reported"]["f1"] = "1.0"
    assert get_paper("paper000").TABLES["table1"]["rows"][0]["reported"]["f1"] == "0.87"


# ------------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("pid,tid,table", all_tables(), ids=lambda v: v if isinstance(v, str) else "")
def test_tables_are_well_formed(pid, tid, table):
    assert len(table["columns"]) == len(table["metrics"]), (pid, tid)
    assert table["value_scale"] in ("fraction", "percent")
    assert set(table["metric_definitions"]) == set(table["metrics"]), (pid, tid)
    for metric in table["metrics"]:
        name, _, class_name = metric.partition("@")
        assert name in SEGMENTATION_METRICS | CLASSIFICATION_METRICS, (pid, tid, metric)
        assert class_name in ("", "LR2", "LR3", "LR4A", "LR4B"), metric
    assert set(table.get("compare_with", {})) <= set(table["metrics"])
    assert table["rows"]
    for row in table["rows"]:
        assert set(row["reported"]) == set(table["metrics"]), (pid, tid, row["row"])
        for printed in row["reported"].values():
            assert isinstance(printed, str)
            parse_reported_value(printed, table["value_scale"])  # raises on anything unparseable
        assert row["origin"]
        assert set(row.get("extra", {})) == set(table.get("extra_columns", {}))
        if row["reproduced_by"] is not None:
            assert set(row["reproduced_by"]) == {"notebook", "model", "result_key"}


def test_printed_values_and_names_occur_on_their_lines(paper_texts):
    """Each row's values, in column order, are consecutive tokens of the row's printed line(s)."""
    checked = 0
    for pid, tid, table in all_tables():
        if table.get("source") == "guide":
            continue
        lines = paper_texts[pid].splitlines()
        assert normalise(table["title"]) in normalise(paper_texts[pid]), (pid, tid)
        for row in table["rows"]:
            printed_lines = lines[row["line"] - 1: row.get("line_end", row["line"])]
            tokens = " ".join(printed_lines).split()
            values = [row["reported"][metric] for metric in table["metrics"]]
            assert any(tokens[i:i + len(values)] == values for i in range(len(tokens))), (pid, tid, row["row"], tokens)
            for word in row["row"].split():
                assert word in tokens, (pid, tid, row["row"], word)
            for value in values:
                assert value in paper_texts[pid]
            checked += 1
    assert checked == 30  # 3 + 5 + 11 + 11 rows printed in the papers


def test_guide_values_occur_in_the_guide(guide_text):
    table = get_table("paper001", "lungrads_baseline")
    assert table["source"] == "guide"
    for row in table["rows"]:
        for printed in row["reported"].values():
            if parse_reported_value(printed) is not None:
                assert printed in guide_text, printed
    with_classes = table["rows"][0]["reported"]
    assert [with_classes[f"dice@{c}"] for c in ("LR2", "LR3", "LR4A", "LR4B")] == ["0.20", "0.37", "0.20", "0.61"]


def test_per_class_baseline_belongs_to_the_unaugmented_row():
    """The class-count-weighted mean of the per-class Dice gives the row's overall Dice (test counts 35/37/97/95)."""
    reported = get_table("paper001", "lungrads_baseline")["rows"][0]["reported"]
    counts = {"LR2": 35, "LR3": 37, "LR4A": 97, "LR4B": 95}
    weighted = sum(float(reported[f"dice@{c}"]) * n for c, n in counts.items()) / sum(counts.values())
    assert weighted == pytest.approx(float(reported["dice"]), abs=0.0005)


def test_paper002_prints_no_table(paper_texts):
    module = get_paper("paper002")
    assert module.TABLES == {}
    assert "no results table" in module.PAPER["no_table_note"]
    for printed in module.PAPER["printed_numbers"].values():
        assert printed in paper_texts["paper002"]


# ------------------------------------------------------------------------------ consistency of printed numbers


def printed_interval(printed: str, value_scale: str) -> tuple[float, float]:
    """The interval a rounded printed number stands for (half a unit of its last digit)."""
    text = printed.strip().rstrip("%")
    decimals = len(text.split(".")[1]) if "." in text else 0
    half_unit = 0.5 * 10.0 ** -decimals
    divisor = 100.0 if (value_scale == "percent" or printed.strip().endswith("%")) else 1.0
    value = float(text)
    return (value - half_unit) / divisor, (value + half_unit) / divisor


def numeric_rows():
    for pid, tid, table in all_tables():
        for row in table["rows"]:
            intervals = {
                metric: printed_interval(printed, table["value_scale"])
                for metric, printed in row["reported"].items()
                if parse_reported_value(printed, table["value_scale"]) is not None
            }
            yield pid, tid, row, intervals


def remarks_text(row) -> str:
    return " ".join(row.get("remarks", []))


def test_f1_that_is_not_the_harmonic_mean_is_remarked():
    checked = 0
    for pid, tid, row, iv in numeric_rows():
        if not {"precision", "recall", "f1"} <= set(iv):
            continue
        checked += 1
        harmonic_low = 2 * iv["precision"][0] * iv["recall"][0] / (iv["precision"][0] + iv["recall"][0])
        harmonic_high = 2 * iv["precision"][1] * iv["recall"][1] / (iv["precision"][1] + iv["recall"][1])
        consistent = iv["f1"][0] <= harmonic_high and iv["f1"][1] >= harmonic_low
        assert ("not the harmonic mean" in remarks_text(row) or "far below the harmonic mean" in remarks_text(row)) \
            == (not consistent), (pid, tid, row["row"])
    assert checked == 7
    # The guide's example: MaskFormer's F1 0.619 against P 0.898 / R 0.772.
    maskformer = next(r for r in reported_rows("paper000") if r["row"] == "MaskFormer")
    assert maskformer["reported"] == {"precision": "0.898", "recall": "0.772", "f1": "0.619"}
    assert "0.830" in remarks_text(maskformer)


def test_iou_outside_what_dice_allows_is_remarked():
    """Per image IoU = D/(2-D); over images Jensen gives D/(2-D) <= mean IoU <= mean D (pooled: equality)."""
    checked = 0
    for pid, tid, row, iv in numeric_rows():
        if not {"dice", "iou"} <= set(iv):
            continue
        checked += 1
        lowest_possible = iv["dice"][0] / (2 - iv["dice"][0])
        impossible = iv["iou"][1] < lowest_possible or iv["iou"][0] > iv["dice"][1]
        remark = remarks_text(row)
        assert (("impossible" in remark or "neither" in remark) and "Dice/(2-Dice)" in remark) == impossible, (
            pid, tid, row["row"])
    assert checked == 11


def test_accuracy_outside_sensitivity_and_specificity_is_remarked():
    """Accuracy is the prevalence-weighted mean of sensitivity and specificity, so it lies between them."""
    checked = 0
    for pid, tid, row, iv in numeric_rows():
        if not {"accuracy", "sensitivity", "specificity"} <= set(iv):
            continue
        checked += 1
        low = min(iv["sensitivity"][0], iv["specificity"][0])
        high = max(iv["sensitivity"][1], iv["specificity"][1])
        outside = not (low <= iv["accuracy"][1] and iv["accuracy"][0] <= high)
        assert ("must lie between" in remarks_text(row)) == outside, (pid, tid, row["row"])
    assert checked == 5


# ------------------------------------------------------------------------------------------------ recipes


def test_every_reproducible_row_names_an_existing_recipe_or_zero_shot_setup():
    for pid in all_paper_ids():
        module = get_paper(pid)
        zero_shot = getattr(module, "ZERO_SHOT", {})
        for row in reported_rows(pid):
            if row["reproduced_by"] is None:
                continue
            key = row["reproduced_by"]["result_key"]
            assert key in module.RECIPES or key in zero_shot, (pid, key)
            setup = module.RECIPES.get(key) or zero_shot[key]
            assert setup["model"] == row["reproduced_by"]["model"], (pid, key)
        # and every recipe is used by some row
        assert set(module.RECIPES) | set(zero_shot) == set(result_keys(pid)), pid


@pytest.mark.parametrize("pid", ["paper000", "paper001", "paper002", "paper003", "paper004"])
def test_recipes_use_the_contract_keys_and_registered_names(pid):
    for key, recipe in get_paper(pid).RECIPES.items():
        assert set(recipe) <= RECIPE_KEYS | {"profile_overrides", "weight_decay"}, set(recipe) - RECIPE_KEYS
        assert RECIPE_KEYS - {"momentum"} <= set(recipe), RECIPE_KEYS - set(recipe)
        assert recipe["model"] in available_models()
        assert recipe["optimizer"] in ("adam", "adamw", "sgd")
        assert ("momentum" in recipe) == (recipe["optimizer"] == "sgd")
        assert ("weight_decay" in recipe) == (recipe["optimizer"] == "adamw")
        assert recipe["loss"] in LOSSES
        assert recipe["from_logits"] == (recipe["loss"] == "bce_logits")
        assert recipe["preprocessing"] in PREPROCESSING
        assert recipe["lr_schedule"] in (None, "cosine")
        assert recipe["monitor"] in ("val_loss", "val_dice")
        assert recipe["input_channels"] in (1, 2, 3)
        assert recipe["min_epochs"] <= recipe["epochs"]
        assert "not printed in the paper" in recipe["notes"].lower(), key
        # the paper profile is the paper's configuration; a departure names its profile and says why
        overrides = recipe.get("profile_overrides", {})
        assert "paper" not in overrides, key
        for profile in overrides:
            assert profile in recipe["notes"] and "measured" in recipe["notes"], (key, profile)


def test_recipes_carry_the_papers_printed_settings():
    swin = get_recipe("paper001", "swin_unet")
    assert (swin["optimizer"], swin["learning_rate"], swin["loss"], swin["image_size"]) == ("adam", 0.005, "bce", 224)
    assert (swin["min_epochs"], swin["early_stopping_patience"]) == (100, 10)
    unetr = get_recipe("paper001", "unetr")
    assert (unetr["optimizer"], unetr["learning_rate"], unetr["batch_size"], unetr["epochs"]) == ("sgd", 0.1, 8, 100)
    assert (unetr["min_lr"], unetr["early_stopping_patience"]) == (1e-7, 20)
    assert unetr["reduce_lr_patience"] is not None
    resnet = get_recipe("paper001", "resnet50_unet")
    assert (resnet["loss"], resnet["from_logits"], resnet["optimizer"], resnet["learning_rate"]) == (
        "bce_logits", True, "adam", 1e-4)
    assert (resnet["epochs"], resnet["input_channels"]) == (100, 3)
    densenet = get_recipe("paper003", "densenet121_classifier")
    assert (densenet["optimizer"], densenet["learning_rate"], densenet["batch_size"], densenet["epochs"]) == (
        "sgd", 0.001, 32, 100)
    assert densenet["lr_schedule"] is not None
    unet, attention = get_recipe("paper004", "unet"), get_recipe("paper004", "attention_unet")
    assert (unet["loss"], attention["loss"]) == ("dice", "hybrid_dice_focal")
    for recipe in (unet, attention):
        assert (recipe["optimizer"], recipe["image_size"], recipe["preprocessing"]) == ("adam", 256, "hu_window_zscore")
    assert set(attention["loss_kwargs"]) == {"lam", "alpha", "gamma"}
    assert get_postprocessing("paper004", "attention_unet") == "dense_crf"
    assert get_postprocessing("paper004", "unet") == "none"
    assert set(get_paper("paper000").RECIPES) == {"mask2former", "maskformer", "vit_segmenter"}
    assert get_recipe("paper000", "mask2former")["loss"] == "set_prediction"


def test_zero_shot_sam_is_not_a_recipe():
    with pytest.raises(ValueError, match="zero-shot"):
        get_recipe("paper003", "sam_luna16")
    assert get_zero_shot("paper003", "sam_luna16")["model"] == "sam"
    with pytest.raises(ValueError, match="no recipe"):
        get_recipe("paper004", "swin_unet")
    with pytest.raises(ValueError, match="no zero-shot"):
        get_zero_shot("paper004", "sam")


def test_find_rows_for_result_spans_tables():
    rows = find_rows_for_result("paper004", "attention_unet")
    assert [(r["table"], r["row"]) for r in rows] == [
        ("table2", "Proposed Attention U-Net"),
        ("table3", "Proposed Attention U-Net"),
        ("table4", "Proposed Attention U-Net (This Paper)"),
    ]
    assert [(r["table"], r["row"]) for r in find_rows_for_result("paper001", "swin_unet")] == [("table3", "SwinUNET")]
    assert [r["row"] for r in find_rows_for_result("paper000", "mask2former")] == ["Proposed Model"]
    assert papers.PAPERS["paper003"] is get_paper("paper003")


def test_paper002_lungkit_rows_carry_valid_recipes_and_notebooks():
    """The slides print no table, so paper 002's systems are lungkit rows (BASELINES), never RECIPES; each has a
    valid recipe for a registered model, a notebook that exists, and says it is lungkit's."""
    from lungkit.models.mobilenet_unet import ENCODER_NAME
    from lungkit.training import Recipe

    module = get_paper("paper002")
    assert module.RECIPES == {} and module.TABLES == {}
    assert set(module.BASELINES) == {"mobilenetv2_unet", "cnn_from_scratch", "crop_cnn_classifier",
                                     "mobilenetv2_classifier"}
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    for key, baseline in module.BASELINES.items():
        recipe = Recipe.from_dict(baseline["recipe"], source=f"paper002 BASELINES[{key!r}]")
        assert recipe.model == key and recipe.model in available_models()
        assert "lungkit" in baseline["row"] and "no number" in baseline["row"]
        assert "not printed in the paper" in recipe.notes.lower()
        assert (notebooks / f"{baseline['notebook']}.ipynb").is_file(), baseline["notebook"]
    schedule = module.BASELINES["mobilenetv2_unet"]["recipe"]["fine_tuning"]
    assert schedule["frozen_layer"] == ENCODER_NAME
    assert schedule["unfrozen_learning_rate"] < module.BASELINES["mobilenetv2_unet"]["recipe"]["learning_rate"]
    # the two segmentation systems differ only in the network and the schedule
    mobilenet, scratch = (dict(module.BASELINES[k]["recipe"]) for k in ("mobilenetv2_unet", "cnn_from_scratch"))
    for recipe in (mobilenet, scratch):
        for key in ("model", "notes", "fine_tuning"):
            recipe.pop(key, None)
    assert mobilenet == scratch
    # and so do the two crop classifiers (the transfer model adds its schedule, on its own encoder)
    transfer, cnn = (dict(module.BASELINES[k]["recipe"]) for k in ("mobilenetv2_classifier", "crop_cnn_classifier"))
    assert transfer["fine_tuning"]["frozen_layer"] == ENCODER_NAME
    assert transfer["profile_overrides"] == {"quick": {"max_steps": 120}}  # the recorded quick departure
    for recipe in (transfer, cnn):
        for key in ("model", "notes", "fine_tuning", "profile_overrides"):
            recipe.pop(key, None)
    assert transfer == cnn
