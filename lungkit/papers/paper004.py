"""Paper 004: Attention-enhanced residual U-Net with hybrid loss (``004_546da78adb6c0782.txt``).

Data only: the paper's setup, its three results tables quoted exactly as printed, the two training recipes (the
paper prints no learning rate, epochs or batch size: each such value is a lungkit default and the notes say so) and
the post-processing each result gets.
"""

_NOT_PRINTED = "Not printed in the paper"

PAPER = dict(
    id="paper004",
    title="Attention-Enhanced Residual U-Net with Hybrid Loss for Robust Lung Cancer Segmentation",
    title_printed=True,
    short_title="Attention U-Net + Dice/Focal loss + CRF",
    file="004_546da78adb6c0782.txt",
    authors="Jaya Shrivastav, Ranu Pandey (Shri Rawatpura Sarkar University); published 06 June 2025",
    data=(
        "Kaggle 'CT Scan Images for Lung Cancer' (D. Rathi, 2023) [20]: axial CT slices, DICOM and PNG, said to be "
        "annotated and organised by patient ID (lines 218-220). HU clipped to [-1000, 400], z-scored, resized to "
        "256x256 with bilinear interpolation (lines 99-112)."
    ),
    systems=[
        "Traditional U-Net baseline (two 3x3 conv + ReLU per block, max pooling, transposed-conv decoder), Dice loss "
        "(equation 4), Adam (lines 114-147)",
        "Attention U-Net: attention gates on the skip connections (equation 6), hybrid loss "
        "lambda*Dice + (1-lambda)*Focal (equations 7-9), dense CRF post-processing (equation 10) (lines 149-195)",
    ],
    notes=[
        "The title says 'Residual' U-Net, but the method describes no residual blocks.",
        "GUIDE section 3 lists the cited Kaggle set as classification only (class folders, no masks); the paper "
        "does not say where its tumour masks come from. It also clips Hounsfield units of a dataset it says comes as "
        "DICOM and PNG (PNG holds no HU).",
        "Not printed: train/validation/test split, learning rate, batch size, epochs, lambda, alpha, gamma, epsilon, "
        "CRF parameters, threshold, augmentation.",
        "z-score statistics are 'of the intensities in the dataset' (line 103) and also 'per scan' (line 105); "
        "lungkit's hu_window_zscore preprocessing decides this for lungkit.",
    ],
)

# Which lungkit result reproduces the paper's two models (notebook, registry model, results/paper004/<result_key>).
_BY_UNET = {"notebook": "10_unet_baseline", "model": "unet", "result_key": "unet"}
_BY_ATTENTION_UNET = {"notebook": "11_attention_unet", "model": "attention_unet", "result_key": "attention_unet"}

_SEG_COUNTS = (
    "TP/TN/FP/FN are tumour-pixel counts (Table 1 of the paper, lines 224-229); the formulas use counts, so the "
    "natural reading is pooled over the test set."
)

TABLES = {
    "table2": {
        "title": "Quantitative Performance Metrics for Traditional U-Net vs. Proposed Attention U-Net",
        "printed_caption": (
            "Table 2- Quantitative Performance Metrics for Traditional U-Net vs. Proposed Attention U-Net"
        ),
        "row_header": "Model",
        "columns": ["Dice Score", "IoU", "Small Tumor Recall", "Robustness to Intensity Variance (std)"],
        "metrics": ["dice", "iou", "small_tumour_recall", "intensity_robustness_std"],
        "value_scale": "fraction",
        # A recall of small tumours reads most naturally as detected / all small tumours of the test set.
        "compare_with": {"small_tumour_recall": "pooled"},
        "protocol": (
            "Kaggle CT slices at 256x256 after HU clipping and z-scoring; split, threshold and averaging not stated; "
            "CRF post-processing is part of the proposed pipeline (line 82), not said for the baseline."
        ),
        "metric_definitions": {
            "dice": (
                "Dice Score: no metric formula printed (equations 4 and 7 define the soft Dice loss); taken as "
                "2TP/(2TP+FP+FN) of the thresholded mask, mean over test images."
            ),
            "iou": "IoU: not defined; taken as TP/(TP+FP+FN), mean over test images.",
            "small_tumour_recall": (
                "Small Tumor Recall: not defined and no size threshold given; lungkit's small_tumour_recall "
                "(lungkit.metrics) is the stand-in, compared at lesion level over the test set (all small tumours "
                "detected / all small tumours)."
            ),
            "intensity_robustness_std": (
                "Robustness to Intensity Variance (std): 'measured via standard deviation of predictions' (line 262); "
                "the intensity perturbation is not described. Lower is better."
            ),
        },
        "rows": [
            {
                "row": "Traditional U-Net",
                "line": 257,
                "line_end": 259,
                "origin": "this paper",
                "reported": {
                    "dice": "0.82",
                    "iou": "0.74",
                    "small_tumour_recall": "0.68",
                    "intensity_robustness_std": "0.07",
                },
                "reproduced_by": dict(_BY_UNET),
                "remarks": [
                    "Row name printed over two lines ('Traditional', 'U-Net', lines 257 and 259).",
                    "Small Tumor Recall 0.68 equals the overall Sensitivity (Recall) of Table 3 (0.68), as 0.81 does "
                    "for the attention model: small-tumour recall and overall recall coincide exactly in both rows.",
                ],
            },
            {
                "row": "Proposed Attention U-Net",
                "line": 260,
                "origin": "this paper",
                "reported": {
                    "dice": "0.89",
                    "iou": "0.83",
                    "small_tumour_recall": "0.81",
                    "intensity_robustness_std": "0.03",
                },
                "reproduced_by": dict(_BY_ATTENTION_UNET),
                "remarks": [
                    "Small Tumor Recall 0.81 equals Table 3's Sensitivity (Recall) 0.81 exactly.",
                ],
            },
        ],
    },
    "table3": {
        "title": "Evaluation Metrics for Traditional U-Net and Proposed Attention U-Net",
        "printed_caption": "Table 3- Evaluation Metrics for Traditional U-Net and Proposed Attention U-Net",
        "row_header": "Model",
        "columns": ["Accuracy", "Precision", "Sensitivity (Recall)", "F-Score"],
        "metrics": ["accuracy", "precision", "recall", "f1"],
        "value_scale": "fraction",
        "compare_with": {"accuracy": "pooled", "precision": "pooled", "recall": "pooled", "f1": "pooled"},
        "protocol": "As Table 2; equations 11-14 in pixel counts.",
        "metric_definitions": {
            "accuracy": "Accuracy = (TP+TN)/(TP+TN+FP+FN) (equation 11). " + _SEG_COUNTS,
            "precision": "Precision = TP/(TP+FP) (equation 12). " + _SEG_COUNTS,
            "recall": "Sensitivity = TP/(TP+FN) (equation 13). " + _SEG_COUNTS,
            "f1": (
                "F-Score = 2TP/(2TP+FP+FN) (equation 14), which is the Dice coefficient of the pooled counts. "
                + _SEG_COUNTS
            ),
        },
        "rows": [
            {
                "row": "Traditional U-Net",
                "line": 274,
                "origin": "this paper",
                "reported": {"accuracy": "0.87", "precision": "0.79", "recall": "0.68", "f1": "0.73"},
                "reproduced_by": dict(_BY_UNET),
                "remarks": [
                    "F-Score 0.73 is the harmonic mean of P 0.79 and R 0.68 (0.731): consistent.",
                    "F-Score (equation 14) is the Dice coefficient, yet Table 2 gives Dice 0.82 for the same model: "
                    "the two must have been computed differently (e.g. per-image mean vs pooled) or on different data.",
                    "Pixel accuracy 0.87 with P 0.79 and R 0.68 means FP+FN = 0.50 x the tumour pixels = 13% of all "
                    "pixels, i.e. tumour is about 26% of the image (equations 11-13): implausible for whole CT slices "
                    "(tumours usually cover well under 1%); accuracy was probably computed on crops or another basis.",
                ],
            },
            {
                "row": "Proposed Attention U-Net",
                "line": 275,
                "origin": "this paper",
                "reported": {"accuracy": "0.92", "precision": "0.86", "recall": "0.81", "f1": "0.83"},
                "reproduced_by": dict(_BY_ATTENTION_UNET),
                "remarks": [
                    "F-Score 0.83 is the harmonic mean of P 0.86 and R 0.81 (0.834): consistent.",
                    "F-Score (equation 14) is the Dice coefficient, yet Table 2 gives Dice 0.89 for the same model.",
                    "Pixel accuracy 0.92 with P 0.86 and R 0.81 implies tumour is about 25% of all pixels "
                    "(equations 11-13): implausible for whole CT slices.",
                ],
            },
        ],
    },
    "table4": {
        "title": "Comparative Analysis of Lung Cancer Segmentation Techniques with Previous Research Works",
        "printed_caption": (
            "Table 4- Comparative Analysis of Lung Cancer Segmentation Techniques with Previous Research Works"
        ),
        "row_header": "Model / Technique",
        "columns": ["Accuracy", "Precision", "Recall (Sensitivity)", "F1-Score"],
        "metrics": ["accuracy", "precision", "recall", "f1"],
        "value_scale": "percent",
        "compare_with": {"accuracy": "pooled", "precision": "pooled", "recall": "pooled", "f1": "pooled"},
        "protocol": (
            "The last two rows repeat Table 3 in percent; the others are quoted from cited works on other data and, "
            "mostly, other tasks (classification, diagnosis)."
        ),
        "metric_definitions": {
            "accuracy": "Equation 11 for this paper's rows; the cited works' own definitions otherwise.",
            "precision": "Equation 12 for this paper's rows.",
            "recall": "Equation 13 for this paper's rows.",
            "f1": "Equation 14 for this paper's rows.",
        },
        "rows": [
            {
                "row": "SVM with miRNA biomarkers [9]",
                "line": 282,
                "origin": "others' work",
                "reported": {"accuracy": "90.10%", "precision": "--", "recall": "--", "f1": "--"},
                "reproduced_by": None,
                "remarks": [
                    "Reference [9] in the list is a hepatocellular-carcinoma texture study (line 310); the text "
                    "credits the miRNA SVM with 90.1% to [11] (line 49), which is a drug-carrier nanocomposite paper "
                    "(line 312).",
                ],
            },
            {
                "row": "SVM with Taxonomic Indexes [14]",
                "line": 283,
                "origin": "others' work",
                "reported": {"accuracy": "98.11%", "precision": "--", "recall": "--", "f1": "--"},
                "reproduced_by": None,
                "remarks": ["Reference [14] in the list is a review of intrusion detection systems (line 315)."],
            },
            {
                "row": "CNN on LIDC Database [19]",
                "line": 284,
                "origin": "others' work",
                "reported": {"accuracy": "86.84%", "precision": "--", "recall": "--", "f1": "--"},
                "reproduced_by": None,
                "remarks": [
                    "Reference [19] in the list is a cross-modality segmentation distillation paper (line 320)."
                ],
            },
            {
                "row": "Auto Encoder [17]",
                "line": 285,
                "origin": "others' work",
                "reported": {"accuracy": "75.01%", "precision": "--", "recall": "--", "f1": "--"},
                "reproduced_by": None,
                "remarks": ["Reference [17] is a prognostication radiomics study (line 318): a different task."],
            },
            {
                "row": "Deep Belief Network [18]",
                "line": 286,
                "origin": "others' work",
                "reported": {"accuracy": "--", "precision": "--", "recall": "73.40%", "f1": "82.20%"},
                "reproduced_by": None,
                "remarks": [
                    "The literature review says [18] reached 'a sensitivity rate of 73.40% and a specificity rate of "
                    "82.20%' (line 51): the 82.20% in the F1-Score column is a specificity.",
                ],
            },
            {
                "row": "Traditional U-Net (Baseline)",
                "line": 287,
                "origin": "this paper",
                "reported": {"accuracy": "87%", "precision": "79%", "recall": "68%", "f1": "73%"},
                "reproduced_by": dict(_BY_UNET),
                "remarks": ["Table 3's 'Traditional U-Net' row in percent."],
            },
            {
                "row": "Proposed Attention U-Net (This Paper)",
                "line": 288,
                "origin": "this paper",
                "reported": {"accuracy": "92%", "precision": "86%", "recall": "81%", "f1": "83%"},
                "reproduced_by": dict(_BY_ATTENTION_UNET),
                "remarks": ["Table 3's 'Proposed Attention U-Net' row in percent."],
            },
        ],
    },
}

_SHARED_NOT_PRINTED = (
    _NOT_PRINTED + ": learning_rate (1e-3, the Keras Adam default), batch_size (8), epochs (50), early stopping "
    "(patience 10 on val_dice chosen), validation split, augmentation (none mentioned, none used)."
)

RECIPES = {
    "unet": {
        "model": "unet",
        "image_size": 256,
        "input_channels": 1,
        "preprocessing": "hu_window_zscore",
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": None,
        "loss": "dice",
        "loss_kwargs": {},
        "from_logits": False,
        "batch_size": 8,
        "epochs": 50,
        "min_epochs": 0,
        "early_stopping_patience": 10,
        "reduce_lr_patience": None,
        "reduce_lr_factor": 0.1,
        "min_lr": 0.0,
        "monitor": "val_dice",
        "augment_on_the_fly": False,
        "notes": (
            "Paper: U-Net baseline with the Dice coefficient loss (equation 4), 'trained using the Adam optimizer' "
            "(equation 5), HU clipped to [-1000, 400] then z-scored (equation 1, lines 99-107), 256x256 bilinear "
            "(line 112). Post-processing for the baseline: not stated (lungkit: none). Dice epsilon: not printed in "
            "the paper (the loss registry's default). " + _SHARED_NOT_PRINTED + " Departure at the quick profile "
            "(profile_overrides): 400 optimizer steps instead of the profile's 200. Measured on the quick phantom, "
            "seed 0 (2026-12-03, code of 8711900): after 200 steps the U-Net gave every LR2 and LR3 nodule pixel a "
            "probability of at most 0.01 (Dice 0.00 on both; 0.00 too with a cosine learning-rate decay over the 200 "
            "steps), after 400 LR3 0.23 and LR2 0.02, all test slices 0.38 against 0.31; about 70 s more of the main "
            "job. On real CT "
            "from patients never seen (benchmarks.real_data at 8711900, 400 steps, against its 200-step rows measured at "
            "f141728; the training arithmetic is unchanged between them): LIDC sample fold A, "
            "seeds 0-2, per-image Dice 0.61, 0.76, 0.57 against 0.43, 0.48, 0.68 (mean 0.65 against 0.53); folds B "
            "and C, seed 0, 0.17 and 0.09 against 0.19 and 0.08; MSD lung patches, seeds 0-2, 0.62, 0.61, 0.64 "
            "against 0.48, 0.57, 0.54 (mean 0.62 against 0.53). The "
            "Attention U-Net keeps 200: at 400 it gained on the phantom (0.45 against 0.29, LR3 0.22) but not on "
            "real CT (seed 0: LIDC folds A, B, C 0.56, 0.19, 0.08 against 0.67, 0.19, 0.47; MSD 0.69 against 0.64), and "
            "it would add about 80 s to the main job."
        ),
        "profile_overrides": {"quick": {"max_steps": 400}},
    },
    "attention_unet": {
        "model": "attention_unet",
        "image_size": 256,
        "input_channels": 1,
        "preprocessing": "hu_window_zscore",
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": None,
        "loss": "hybrid_dice_focal",
        "loss_kwargs": {"lam": 0.5, "alpha": 0.25, "gamma": 2.0},
        "from_logits": False,
        "batch_size": 8,
        "epochs": 50,
        "min_epochs": 0,
        "early_stopping_patience": 10,
        "reduce_lr_patience": None,
        "reduce_lr_factor": 0.1,
        "min_lr": 0.0,
        "monitor": "val_dice",
        "augment_on_the_fly": False,
        "notes": (
            "Paper: attention gates on the skip connections (equation 6), hybrid loss lambda*Dice + (1-lambda)*Focal "
            "(equations 7-9), Adam, the same preprocessing as the baseline, dense CRF refinement (equation 10). "
            + _NOT_PRINTED + ": lambda (0.5 chosen), alpha (0.25) and gamma (2.0) (the focal-loss paper's values), "
            "CRF parameters. " + _SHARED_NOT_PRINTED
        ),
    },
}

# Post-processing of each result (recorded in the result's protocol as "postprocess"). The CRF belongs to the
# proposed pipeline (Fig. 1, line 82); the paper does not say the baseline got it.
POSTPROCESSING = {"unet": "none", "attention_unet": "dense_crf"}
