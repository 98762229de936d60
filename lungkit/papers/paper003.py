"""Paper 003: SAM2 + DenseNet for lung nodule segmentation and classification (``003_c641fb9daf362573.txt``).

Data only: the paper's setup, its two results tables quoted exactly as printed (numbers are percentages), the
DenseNet-121 training recipe, and the zero-shot SAM evaluation (no training, so it is not a recipe).
"""

from lungkit.papers.paper004 import RECIPES as PAPER004_RECIPES

_NOT_PRINTED = "Not printed in the paper"

PAPER = dict(
    id="paper003",
    # The extraction starts inside the abstract (OCR noise 'NOISIAI'); the title is the index's description.
    title="SAM2 + DenseNet for nodule segmentation and classification",
    title_printed=False,
    short_title="SAM2 zero-shot + DenseNet-121",
    file="003_c641fb9daf362573.txt",
    data=(
        "LUNA16 (888 CT volumes in .mhd, annotations in world coordinates with diameters) and LIDC-IDRI (1018 scans, "
        "DICOM, four radiologists, malignancy 1-5; malignant if > 3, benign if < 3) (lines 94-105, 390-394). "
        "Resampling to common spacing (equations 1-4), min-max intensity scaling to [0, 255] (equation 5), "
        "world -> voxel coordinates (equation 6), nodule slices extracted (lines 215-216); rotations and flips to "
        "balance classes (lines 234-244)."
    ),
    systems=[
        "SAM2 zero-shot segmentation with box and mask prompts (lines 170-232)",
        "DenseNet-121 benign/malignant classifier, final layer of two neurons, fine-tuned on Google Colab, SGD "
        "lr 0.001 with a decaying schedule, batch 32, Cross Entropy, 100 epochs (lines 251-300)",
    ],
    notes=[
        "lungkit substitutes keras-hub SAM (v1) for SAM2, which keras-hub does not have (GUIDE section 5); the "
        "numbers cannot be expected to match SAM2's.",
        "SAM weights are never downloaded: without a local preset the SAM run is wiring only and shows no numbers.",
        "The text says both 'Adam optimizer and Stochastic Gradient Descent (SGD) were utilized' (line 268) and, in "
        "its Table 1, SGD only; it names the loss 'Cross Entropy' (Table 1) and 'Binary Cross Entropy' (equation 9).",
        "No train/test split is described for either task.",
        "LUNA16 has no nodule masks, only a centre and a diameter. lungkit's LUNA16 Dice is measured against the "
        "disc a sphere of that diameter shows on each slice (mask_source 'disc_from_diameter'), flagged in every "
        "result that uses it. The box prompt comes from the same annotation, so Dice against the disc measures "
        "agreement with the annotation's sphere model, not with the nodule's true outline; lungkit therefore also "
        "scores the ellipse inscribed in the box (no model) on the same slices.",
        "Table 3's labels are LIDC-IDRI malignancy scores (put a malignancy.csv with seriesuid, nodule_index, "
        "malignancy beside annotations.csv, e.g. from lungkit.data.lidc). The phantom's malignancy is a "
        "size/spiculation proxy, not biology. On the Lung-RADS data lungkit can use a Lung-RADS proxy (LR2/LR3 "
        "benign-like vs LR4A/LR4B suspicious); a result made with it names the proxy in its protocol.",
    ],
)

TABLES = {
    "table2": {
        "title": "Comparison with different segmentation models",
        "printed_caption": "Table 2. Comparison with different segmentation models",
        "row_header": "Techniques",
        "extra_columns": {"dataset": "Dataset"},
        "columns": ["Dice Score%", "IoU%"],
        "metrics": ["dice", "iou"],
        "value_scale": "percent",
        "protocol": (
            "SAM2 zero-shot on nodule slices with box prompts (LUNA16) and box/mask prompts (LIDC-IDRI, lines "
            "338-339); the other rows are quoted from the cited works on their own data."
        ),
        "metric_definitions": {
            "dice": (
                "Dice = 2TP/(2TP+FP+FN) (equation 7, lines 310-311; the sentence 'twice the TP divided by the total "
                "pixel count of the image' (line 306) contradicts it). The LUNA16 value is an 'average performance' "
                "(line 342): taken as a per-image mean."
            ),
            "iou": "IoU = TP/(TP+FP+FN) (equation 8, lines 318-319); averaged like Dice.",
        },
        "rows": [
            {
                "row": "Dual Branch Residual Network [25]",
                "line": 376,
                "line_end": 378,
                "origin": "others' work",
                "extra": {"dataset": "LIDC-IDRI"},
                "reported": {"dice": "82.74", "iou": "---"},
                "reproduced_by": None,
                "remarks": ["Row name is printed over two lines (376, 378)."],
            },
            {
                "row": "RFRVNet [21]",
                "line": 380,
                "origin": "others' work",
                "extra": {"dataset": "LUNA16"},
                "reported": {"dice": "95.01", "iou": "83.00"},
                "reproduced_by": None,
                "remarks": [
                    "Dataset printed 'LUNAIG6' (OCR of LUNA16).",
                    "IoU 83.00 is below Dice/(2-Dice) = 90.49: impossible for the same cases under pooled or per-image "
                    "averaging (Jensen).",
                ],
            },
            {
                "row": "EFCM [26]",
                "line": 382,
                "origin": "others' work",
                "extra": {"dataset": "LUNA16"},
                "reported": {"dice": "97.10", "iou": "91.96"},
                "reproduced_by": None,
                "remarks": [
                    "Dataset printed 'LUNAIG6' (OCR of LUNA16).",
                    "IoU 91.96 is below Dice/(2-Dice) = 94.36: impossible for the same cases under pooled or per-image "
                    "averaging (Jensen).",
                ],
            },
            {
                "row": "SAM [27]",
                "line": 384,
                "origin": "others' work",
                "extra": {"dataset": "LUNA16"},
                "reported": {"dice": "97.08", "iou": "95.60"},
                "reproduced_by": None,
                "remarks": [
                    "Dataset printed 'LUNAIG6' (OCR of LUNA16).",
                    "SAM (v1) is what lungkit actually runs (keras-hub), so this cited row is the closer comparison "
                    "for lungkit's SAM numbers than 'Ours' (SAM2).",
                ],
            },
            {
                "row": "Ours",
                "line": 386,
                "origin": "this paper",
                "extra": {"dataset": "LUNA16"},
                "reported": {"dice": "95.72", "iou": "91.77"},
                "reported_in_text": {"recall": "96.42%"},
                "reproduced_by": {"notebook": "30_sam_box_prompts", "model": "sam", "result_key": "sam_luna16"},
                "remarks": [
                    "Dataset printed 'LUNAIG' (OCR of LUNA16).",
                    "Box prompt; the text adds Sensitivity 96.42% (lines 341-343).",
                    "IoU 91.77 is a hair below Dice/(2-Dice) = 91.79 (beyond the rounding of the printed digits), "
                    "which neither pooled nor per-image averaging of the same predictions allows: a small slip, but "
                    "the two numbers were not computed from exactly the same predictions.",
                    "lungkit runs SAM (v1) from keras-hub instead of SAM2.",
                ],
            },
            {
                "row": "Ours",
                "line": 388,
                "origin": "this paper",
                "extra": {"dataset": "LIDC-IDRI"},
                "reported": {"dice": "97.87", "iou": "95.82"},
                "reported_in_text": {"recall": "97.9%"},
                "reproduced_by": None,
                "remarks": [
                    "The text adds Sensitivity 97.9% (line 349); the abstract repeats Dice 97.87% and IoU 95.82%.",
                    "LIDC-IDRI slices 'already cropped to lobes' (lines 350-352). LIDC-IDRI cannot be downloaded "
                    "here and lungkit's SAM evaluation runs on LUNA16 only, so this row is reference only.",
                ],
            },
        ],
    },
    "table3": {
        "title": "Comparison with different classification models",
        "printed_caption": "Table 3. Comparison with different classification models",
        "row_header": "Classification Method",
        "columns": ["Accuracy %", "Sensitivity %", "Specificity %"],
        "metrics": ["accuracy", "sensitivity", "specificity"],
        "value_scale": "percent",
        "protocol": (
            "DenseNet-121 benign/malignant on LIDC nodules labelled from malignancy scores (> 3 malignant, < 3 benign, "
            "lines 390-394); split not stated; the other rows are quoted from the cited works."
        ),
        "metric_definitions": {
            "accuracy": "Not defined in the paper; taken as (TP+TN)/N over nodules (malignant = positive).",
            "sensitivity": "Not defined in the paper; taken as TP/(TP+FN) over nodules.",
            "specificity": "Not defined in the paper; taken as TN/(TN+FP) over nodules.",
        },
        "rows": [
            {
                "row": "CLIP 28]",
                "line": 403,
                "origin": "others' work",
                "reported": {"accuracy": "70.96", "sensitivity": "86.77", "specificity": "56.33"},
                "reproduced_by": None,
                "remarks": ["Printed 'CLIP 28]': OCR lost the '[' of the reference [28]."],
            },
            {
                "row": "GCA+WIRN [29]",
                "line": 404,
                "origin": "others' work",
                "reported": {"accuracy": "94.32", "sensitivity": "91.49", "specificity": "93.69"},
                "reproduced_by": None,
                "remarks": [
                    "Accuracy 94.32 is above both sensitivity 91.49 and specificity 93.69; accuracy is a "
                    "prevalence-weighted mean of the two, so it must lie between them on the same test set."
                ],
            },
            {
                "row": "ResNet50 [30]",
                "line": 405,
                "origin": "others' work",
                "reported": {"accuracy": "92.56", "sensitivity": "93.78", "specificity": "90.14"},
                "reproduced_by": None,
                "remarks": ["Cites [30], as does 'Collaborative Deep Learning [30]'."],
            },
            {
                "row": "Collaborative Deep Learning [30]",
                "line": 406,
                "line_end": 407,
                "origin": "others' work",
                "reported": {"accuracy": "93.24", "sensitivity": "91.92", "specificity": "91.37"},
                "reproduced_by": None,
                "remarks": [
                    "Accuracy 93.24 is above both sensitivity 91.92 and specificity 91.37; accuracy must lie between "
                    "them on the same test set.",
                    "Row name printed over two lines (406-407); cites [30], as does 'ResNet50 [30]'.",
                ],
            },
            {
                "row": "Proposed Model",
                "line": 408,
                "origin": "this paper",
                "reported": {"accuracy": "97.34", "sensitivity": "98.52", "specificity": "96.15"},
                "reproduced_by": {
                    "notebook": "31_densenet_classifier",
                    "model": "densenet121_classifier",
                    "result_key": "densenet121_classifier",
                },
                "remarks": [
                    "97.34% is called the 'overall classification accuracy' next to 'a validation accuracy of 95.81%' "
                    "(line 396); which data gave 97.34% is not stated.",
                    "Implied malignant prevalence (accuracy - specificity)/(sensitivity - specificity) = 0.50: "
                    "consistent with the class balancing by augmentation (lines 236-239).",
                ],
            },
        ],
    },
}

RECIPES = {
    "densenet121_classifier": {
        "model": "densenet121_classifier",
        "image_size": 224,
        "input_channels": 3,
        "preprocessing": "minmax",
        "optimizer": "sgd",
        "learning_rate": 0.001,
        "momentum": 0.9,
        "lr_schedule": "cosine",
        "loss": "bce",
        "loss_kwargs": {},
        "from_logits": False,
        "batch_size": 32,
        "epochs": 100,
        "min_epochs": 0,
        "early_stopping_patience": None,
        "reduce_lr_patience": None,
        "reduce_lr_factor": 0.1,
        "min_lr": 0.0,
        "monitor": "val_loss",
        "augment_on_the_fly": True,
        "notes": (
            "Paper Table 1 (lines 292-300): Optimizer Stochastic Gradient Descent (SGD), Loss Function Cross Entropy, "
            "Epochs 100, Batch size 32, Learning rate 0.001; 'a learning rate scheduler implemented to gradually "
            "reduce the rate' (line 267); final layer of two neurons (line 265); min-max scaling (equation 5); "
            "rotations and flips to balance the classes (lines 236-244). Two-way softmax cross entropy equals one "
            "sigmoid output with binary cross entropy, which lungkit uses. " + _NOT_PRINTED + ": schedule type "
            "(cosine decay chosen), SGD momentum (0.9 chosen), input size (224, DenseNet's ImageNet size), channels "
            "(3, for an ImageNet-style backbone), whether augmentation was offline (on-the-fly flips and rotations "
            "chosen), which checkpoint was tested."
        ),
    },
}

# Zero-shot evaluations: no training, hence not recipes. Same result_key convention as RECIPES.
ZERO_SHOT = {
    "sam_luna16": {
        "model": "sam",
        "prompt": "box",
        "image_size": 1024,
        "preprocessing": "minmax",
        "data": "luna16",
        "notes": (
            "Paper: SAM2 'in a zero-shot manner' on nodule slices with box prompts on LUNA16 (lines 215-217, 341-343), "
            "boxes from the annotation's world coordinates and diameter (equation 6, Figure 6). lungkit: keras-hub "
            "SAM (v1; SAM2 is not in keras-hub), boxes from annotations.csv, image min-max scaled (equation 5); "
            "weights only from a local preset directory, else the run is wiring only."
        ),
    },
}

#: Figures a notebook saves into ``<run_dir>/figures`` that the report shows (see paper002.REPORT_FIGURES).
REPORT_FIGURES = {
    "paper003_classifier_confusion.png": {
        "caption": "Confusion matrix of the DenseNet-121 benign / malignant classifier on the test nodules (notebook 31)",
        "results": ["densenet121_classifier"],
    },
}

# lungkit-added rows: not in the paper, so nothing is quoted for them and they are neither TABLES rows nor RECIPES
# (every recipe reproduces a printed row). They sit beside Table 2's zero-shot row "Ours" (LUNA16): a model trained
# on the same LUNA16 nodule slices, and what the annotation alone scores. Their results are written to
# results/paper003/<key>/ and the report lists them under "lungkit results with no row in the paper's tables".
BASELINES = {
    "unet_luna16": {
        "row": "U-Net trained on LUNA16 nodule windows (lungkit baseline, not in the paper)",
        "table": "lungkit_baselines",
        "notebook": "30_sam_box_prompts",
        # paper 004's U-Net recipe, on 64 px windows
        "recipe": {
            **PAPER004_RECIPES["unet"],
            "image_size": 64,
            "notes": (
                "lungkit baseline, not in the paper: paper 004's U-Net recipe (Dice loss, Adam 1e-3, HU clipped to "
                "[-1000, 400] and z-scored) trained on 64 x 64 px windows (64 mm at the kit's 1 mm spacing) centred "
                "on each box prompt, so the U-Net gets the prompt's location (SAM gets location and size). Targets "
                "are the same masks SAM is scored against (discs from the annotated diameters on LUNA16)."
            ),
        },
    },
    "box_ellipse_luna16": {
        "row": "Ellipse inscribed in the box prompt (no model; lungkit reference, not in the paper)",
        "table": "lungkit_baselines",
        "notebook": "30_sam_box_prompts",
        "recipe": None,
        "notes": (
            "No model: the prediction is the ellipse inscribed in the box prompt. Box and disc mask come from the same "
            "annotation (centre + diameter), so this shows how much of a Dice against discs the prompt alone gives."
        ),
    },
}
