"""Paper 001: Lung cancer segmentation, student final project (``001_9d9cbae29b806300.txt``).

Data only: the paper's setup, its results table and its table of others' work quoted exactly as printed, the dataset
authors' own U-Net baseline on the same data (GUIDE section 3) as a reference table, and the three training recipes.

Table numbering: the extraction prints "Table 2: Results" above the results table, "Table 3: Metrics and Model
Performance" between the two tables and "Table 4: Comparison of other's work ..." below the second. Captions in this
report sit below their table ("Table 1: Augmented Images" follows its lost images, and Table 4's caption names exactly
the second table's columns), so the results table is Table 3 and "Table 2: Results" captions a lost figure.
papers/README.md calls the results table "Table 2"; that id is kept as an alias.
"""

_NOT_PRINTED = "Not printed in the paper"

PAPER = dict(
    id="paper001",
    title="Final project: Lung cancer segmentation",
    title_printed=True,
    short_title="Swin-UNet / UNETR / ResNet50-UNet on Lung-RADS",
    file="001_9d9cbae29b806300.txt",
    authors=(
        "Bui Dinh Lam, Dao Hoang Dung, Bui Dang Quang, Nguyen Minh Tuan (University of Science and Technology of "
        "Ha Noi)"
    ),
    data=(
        "Lung cancer segmentation dataset with Lung-RADS class [7] (Nam, Panina, Pak 2024): 708 training and 264 test "
        "CT slices in pickle files (lines 25-29). Converted .pkl -> .png, augmented offline (rotation within +-30 "
        "degrees, horizontal and vertical flips, elastic transformation, brightness and contrast) to about 3,400 "
        "samples, all resized to 256x256 (lines 40-44)."
    ),
    systems=[
        "Swin-UNet: Adam lr 0.005, 224x224 input, patch 4, embedding 96, BCE loss (Dice+BCE did not converge), early "
        "stopping after 10 epochs without validation improvement once 100 epochs have passed; P100 GPU (line 117)",
        "UNETR: SGD lr 0.1, batch 8, 100 epochs, ModelCheckpoint (best), ReduceLROnPlateau on validation loss with "
        "floor '1e-7 (0.000001)', EarlyStopping patience 20; P100 GPU (lines 178-182)",
        "ResNet50-UNet (segmentation_models_pytorch, ImageNet-pretrained encoder, 3-channel input): BCEWithLogitsLoss, "
        "Adam lr 1e-4, 100 epochs, validation after each epoch; RTX 3050 laptop GPU (line 231)",
    ],
    notes=[
        "Section 3 defines RMSE, Dice and IoU (lines 235-254); Recall is in the table but never defined.",
        "How validation was carved from the 708 training slices is not stated; whether augmentation happened before "
        "or after the split is not stated either (a leakage risk if augmented copies crossed splits).",
        "The dataset authors' own U-Net reached mean per-image Dice 0.371 on the same test split (table "
        "'lungrads_baseline' below), far from the ~0.80 of Table 3; GUIDE section 4 warns that Dice above ~0.90 on "
        "these tasks usually means leakage.",
    ],
)

_DICE_IOU_PER_IMAGE = (
    "For one image IoU = Dice/(2-Dice); for means over images Jensen gives Dice/(2-Dice) <= mean IoU <= mean Dice, "
    "for pooled counts equality."
)

TABLES = {
    "table3": {
        "title": "Metrics and Model Performance",
        "printed_caption": "Table 3: Metrics and Model Performance",
        "aliases": ["table2"],
        "numbering_note": (
            "The extraction prints 'Table 2: Results' above this table and 'Table 3: Metrics and Model Performance' "
            "below it. Captions in this report sit below their tables (Table 1's caption follows its lost images; "
            "Table 4's caption names exactly the next table's columns), so this is Table 3 and 'Table 2: Results' "
            "captions a lost figure. papers/README.md calls it Table 2, kept as the alias table2."
        ),
        "row_header": "Model",
        "columns": ["Dice Coefficient", "IoU", "RMSE", "Recall"],
        "metrics": ["dice", "iou", "rmse", "recall"],
        "value_scale": "fraction",
        "protocol": (
            "Lung-RADS test split (264 slices) after the paper's preprocessing (256x256; Swin-UNet at 224x224); "
            "threshold, averaging (per image or pooled) and which checkpoint was tested are not stated."
        ),
        "metric_definitions": {
            "dice": (
                "Dice = 2|A n B| / (|A| + |B|) (section 3.2, line 248). Per-image or pooled: not stated; the IoU "
                "column is consistent with per-image means. " + _DICE_IOU_PER_IMAGE
            ),
            "iou": "IoU = |A n B| / |A u B| (section 3.3, line 254). Per-image or pooled: not stated.",
            "rmse": (
                "RMSE = sqrt(1/n sum (y_i - yhat_i)^2) (section 3.1, line 242), presumably over pixels between the "
                "predicted map and the 0/1 mask (for binary predictions RMSE^2 is the fraction of wrong pixels)."
            ),
            "recall": "Recall: printed in the table but not defined; taken as tumour-pixel TP/(TP+FN).",
        },
        "rows": [
            {
                "row": "SwinUNET",
                "line": 264,
                "origin": "this paper",
                "reported": {"dice": "0.7969", "iou": "0.7143", "rmse": "0.01193", "recall": "0.7927"},
                "reproduced_by": {"notebook": "20_swin_unet", "model": "swin_unet", "result_key": "swin_unet"},
                "remarks": [
                    "IoU 0.7143 is above Dice/(2-Dice) = 0.662, so the Dice and IoU cannot both be pooled over "
                    "pixels; they fit per-image means.",
                    "The only result with five significant digits in RMSE (0.01193 vs 0.0223 and 0.0147).",
                ],
            },
            {
                "row": "UNETR",
                "line": 265,
                "origin": "this paper",
                "reported": {"dice": "0.8063", "iou": "0.6772", "rmse": "0.0223", "recall": "0.7727"},
                "reproduced_by": {"notebook": "21_unetr", "model": "unetr", "result_key": "unetr"},
                "remarks": [
                    "Highest Dice of the three but lower IoU than SwinUNET and the lowest recall; IoU 0.6772 is close "
                    "to Dice/(2-Dice) = 0.676, i.e. almost equal per-image Dice values, while SwinUNET's IoU needs a "
                    "wide spread. Possible, but the two rows behave differently.",
                    "The UNETR input size is not printed (patch 16 and the 256x256 resizing suggest 256).",
                ],
            },
            {
                "row": "ResNet50-Unet",
                "line": 266,
                "origin": "this paper",
                "reported": {"dice": "0.7558", "iou": "0.6754", "rmse": "0.0147", "recall": "0.7760"},
                "reproduced_by": {
                    "notebook": "22_resnet50_unet",
                    "model": "resnet50_unet",
                    "result_key": "resnet50_unet",
                },
                "remarks": [
                    "IoU 0.6754 is well above Dice/(2-Dice) = 0.608: per-image means with a wide spread of Dice.",
                ],
            },
        ],
    },
    "table4": {
        "title": "Comparison of other's work based on Dice Coefficient, IoU, and RMSE.",
        "printed_caption": "Table 4: Comparison of other's work based on Dice Coefficient, IoU, and RMSE.",
        "row_header": "Model",
        "columns": ["Dice Coefficient", "IoU", "RMSE"],
        "metrics": ["dice", "iou", "rmse"],
        "value_scale": "fraction",
        "protocol": "Numbers quoted from the cited works, each on its own data and protocol (not the Lung-RADS data).",
        "metric_definitions": {
            "dice": "Dice as reported by the cited work; its averaging is the cited work's.",
            "iou": "IoU as reported by the cited work.",
            "rmse": "RMSE as reported by the cited work (none given).",
        },
        "rows": [
            {
                "row": "Unet[5]",
                "line": 271,
                "origin": "others' work",
                "reported": {"dice": "0.862", "iou": "-", "rmse": "-"},
                "reproduced_by": None,
                "remarks": ["[5] Li et al. 2024 (ICMHI), lung nodule CT: different data."],
            },
            {
                "row": "RRc-UNet [4]",
                "line": 272,
                "origin": "others' work",
                "reported": {"dice": "0.8777", "iou": "0.7274", "rmse": "-"},
                "reproduced_by": None,
                "remarks": [
                    "[4] Le and Saut 2023, RRc-UNet 3D on NSCLC CT volumes: 3-D, different data.",
                    "IoU 0.7274 is below Dice/(2-Dice) = 0.782, which neither pooled nor per-image averaging of the "
                    "same cases allows (Jensen); the two numbers probably come from different experiments.",
                ],
            },
        ],
    },
    "lungrads_baseline": {
        "title": "Dataset authors' U-Net baseline on the Lung-RADS data",
        "printed_caption": None,
        "source": "guide",
        "source_note": (
            "Not printed in paper 001: the dataset authors' own baseline (Nam, Panina, Pak 2024, Mendeley Data doi "
            "10.17632/5rr22hgzwr.1) as summarised in GUIDE.md section 3. Same data and test split as Table 3."
        ),
        "row_header": "Model",
        "columns": ["Dice", "Dice LR2", "Dice LR3", "Dice LR4A", "Dice LR4B"],
        "metrics": ["dice", "dice@LR2", "dice@LR3", "dice@LR4A", "dice@LR4B"],
        "value_scale": "fraction",
        "protocol": (
            "U-Net with a VGG11 encoder at 512x512, per-image min-max scaling + CLAHE; mean per-image Dice on the "
            "given 264-slice test split (35 LR2 / 37 LR3 / 97 LR4A / 95 LR4B); per-class values are means over "
            "that class's test slices."
        ),
        "metric_definitions": {
            "dice": "Mean of per-image Dice over the 264 test slices.",
            "dice@LR2": "Mean per-image Dice over the 35 LR2 test slices (3-6 mm nodules).",
            "dice@LR3": "Mean per-image Dice over the 37 LR3 test slices.",
            "dice@LR4A": "Mean per-image Dice over the 97 LR4A test slices.",
            "dice@LR4B": "Mean per-image Dice over the 95 LR4B test slices.",
        },
        "rows": [
            {
                "row": "U-Net (VGG11 encoder)",
                "origin": "dataset authors",
                "reported": {
                    "dice": "0.371",
                    "dice@LR2": "0.20",
                    "dice@LR3": "0.37",
                    "dice@LR4A": "0.20",
                    "dice@LR4B": "0.61",
                },
                "reproduced_by": None,
                "remarks": [
                    "The per-class values belong to this row: weighted by the test class counts (35/37/97/95) they "
                    "average to (35*0.20 + 37*0.37 + 97*0.20 + 95*0.61)/264 = 0.371.",
                ],
            },
            {
                "row": "U-Net (VGG11 encoder) with augmentation",
                "origin": "dataset authors",
                "reported": {"dice": "0.428", "dice@LR2": "-", "dice@LR3": "-", "dice@LR4A": "-", "dice@LR4B": "-"},
                "reproduced_by": None,
                "remarks": ["Per-class Dice not given for the augmented run."],
            },
        ],
    },
}

RECIPES = {
    "swin_unet": {
        "model": "swin_unet",
        "image_size": 224,
        "input_channels": 1,
        "preprocessing": "hu_window_unit",
        "optimizer": "adam",
        "learning_rate": 0.005,
        "lr_schedule": None,
        "loss": "bce",
        "loss_kwargs": {},
        "from_logits": False,
        "batch_size": 8,
        "epochs": 200,
        "min_epochs": 100,
        "early_stopping_patience": 10,
        "reduce_lr_patience": None,
        "reduce_lr_factor": 0.1,
        "min_lr": 0.0,
        "monitor": "val_loss",
        "augment_on_the_fly": False,
        "notes": (
            "Paper (line 117): 'Adam optimizer and a learning rate of 0.005', 'input size is 224x224 with a patch size "
            "of 4 and embedding dimension of 96', Binary Cross-Entropy loss because Dice+BCE 'couldn't converge', "
            "early stopping 'if the model does not improve on the validation set after 10 times after surpassing a "
            "minimum amount of training epochs of 100 epochs'. Offline augmentation to ~3,400 samples (lines 42-44), "
            "so no on-the-fly augmentation. " + _NOT_PRINTED + ": batch_size (8 chosen), maximum epochs (200 chosen "
            "so that early stopping decides), monitored quantity (val_loss chosen), input channels (1), intensity "
            "mapping of the pkl->png conversion (lungkit uses the fixed HU window [-1000, 400] -> [0, 1]). lungkit "
            "choice beyond the paper: a bias on the 1x1 head (one parameter; the reference head has none), started at "
            "the foreground prior p = 0.01. Departure at the smoke and quick profiles (profile_overrides, measured on "
            "the quick phantom data at the small scale, from scratch): with Adam lr 0.005 lungkit's Swin-UNet could "
            "not fit even one batch of 8 slices (loss stuck at the empty prediction's for 150 steps, and again once "
            "a 100-step linear warm-up reached 0.005), while lr 5e-4 fitted that batch (Dice 1.0) in 125 steps. On "
            "the full data lr 5e-4 still predicted nothing above 0.5 for 560 steps and first predicted tumour after "
            "about 600 (whole 128 px slices, before patch training); it then trained for 1,000 steps. Since the quick "
            "profile trains on patches with a third of them near a tumour, it gets the profile's common step budget. Dice + "
            "BCE at lr 5e-4 did no better in 400 steps, nor lr 1e-3 in 520. The paper profile keeps the printed lr "
            "0.005. At the paper's scale (224 px, C = 96) the same one-batch check on CPU fitted nothing in 150 steps "
            "at either 0.005 or 5e-4 (loss near the empty prediction's); what the paper profile reaches needs a GPU "
            "run, not done here. Second departure at the quick profile: 120 optimizer steps (three 40-step epochs) "
            "instead of the profile's 200, as for UNETR and ResNet50-UNet. With 200 steps it was the main job's "
            "second costliest notebook (197 s: 35 s of tracing, then 0.47 s per step) and scored test Dice 0.00 with "
            "the validation Dice flat from the first epoch (fresh-clone main job, 2026-12-01); the quick number says "
            "only that the model runs, and 80 fewer steps keep the main job within its time. Pretrained start: the "
            "paper does not say whether its Swin-UNet started from ImageNet weights (Cao et al.'s code does, Swin-T); "
            "lungkit trains from scratch unless a local keras-hub Swin preset is given (notebook 20's "
            "swin_preset_dir), and the protocol line says which. On real CT (the LIDC sample, benchmarks.real_data, "
            "2026-12-03) this quick recipe's BCE learned nothing in 600 steps, while Dice + BCE for 600 steps did "
            "(reports/real_data.md has the rows): the quick profile keeps BCE, since 600 steps do not fit the main "
            "job."
        ),
        "profile_overrides": {
            "smoke": {"learning_rate": 5e-4},
            "quick": {"learning_rate": 5e-4, "max_steps": 120},
        },
    },
    "unetr": {
        "model": "unetr",
        "image_size": 256,
        "input_channels": 1,
        "preprocessing": "hu_window_unit",
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "momentum": 0.0,
        "lr_schedule": None,
        "loss": "dice_bce",
        "loss_kwargs": {"dice_weight": 1.0, "bce_weight": 1.0},
        "from_logits": False,
        "batch_size": 8,
        "epochs": 100,
        "min_epochs": 0,
        "early_stopping_patience": 20,
        "reduce_lr_patience": 10,
        "reduce_lr_factor": 0.1,
        "min_lr": 1e-7,
        "monitor": "val_loss",
        "augment_on_the_fly": False,
        "notes": (
            "Paper (lines 178-182): batch size 8, 'initial learning rate of 0.1, using the Stochastic Gradient Descent "
            "(SGD) optimizer', 100 epochs, ModelCheckpoint of the best model, ReduceLROnPlateau 'when validation loss "
            "plateaued' with the floor written as '1e-7 (0.000001)' (the two disagree: 1e-7 is 0.0000001; lungkit "
            "takes 1e-7), EarlyStopping after 'no improvement for 20 consecutive epochs'. " + _NOT_PRINTED + ": loss "
            "(Dice + BCE chosen, weights 1 and 1: the UNETR authors' DiceCE loss (Hatamizadeh et al. 2022, MONAI "
            "DiceCELoss). BCE alone, as the paper uses for the other two models, was tried first and measured: over "
            "the quick profile's 400 steps the validation loss stayed at the base rate of an empty prediction and "
            "validation Dice at 0, while Dice + BCE reached validation Dice 0.23), input size (256, the paper's "
            "resize, 16x16 patches of 16), "
            "SGD momentum (0.0, the Keras default), ReduceLROnPlateau patience and factor (Keras defaults 10 and 0.1), "
            "input channels (1), intensity mapping (HU window [-1000, 400] -> [0, 1]). Departure at the quick "
            "profile (profile_overrides): 120 optimizer steps (three 40-step epochs) instead of the profile's 200, "
            "because a step of this "
            "model (128 px patches, batch 8) was measured at 1.37 s on the 2-core CI machine, 2.5 times the U-Net's "
            "0.55 s. Measured at quick on the phantom: Dice 0.00 after these 120 steps (0.08 after 400), and 0.00 with "
            "SGD momentum 0.9. Second departure at the quick profile: Adam at lr 5e-4 instead of the paper's SGD at "
            "0.1, measured on real CT from patients never seen, 120 steps, seed 0 (2026-12-02, training code of "
            "aedbd11): LIDC sample fold A per-image Dice 0.22 against 0.02 with the paper's SGD, MSD lung patches "
            "0.55 against 0.27, LIDC fold B 0.12 against 0.16 (the one fold where SGD did better; on fold A the "
            "paper's SGD found 9% of the nodule pixels). The paper profile keeps SGD 0.1. The UNETR authors trained "
            "with AdamW at 1e-4 (Hatamizadeh et al. 2022): at 120 steps that gave 0.03 on LIDC fold A."
        ),
        "profile_overrides": {
            "quick": {"max_steps": 120, "optimizer": "adam", "learning_rate": 5e-4, "momentum": None},
        },
    },
    "resnet50_unet": {
        "model": "resnet50_unet",
        "image_size": 256,
        "input_channels": 3,
        "preprocessing": "hu_window_unit",
        "optimizer": "adam",
        "learning_rate": 1e-4,
        "lr_schedule": None,
        "loss": "bce_logits",
        "loss_kwargs": {},
        "from_logits": True,
        "batch_size": 8,
        "epochs": 100,
        "min_epochs": 0,
        "early_stopping_patience": None,
        "reduce_lr_patience": None,
        "reduce_lr_factor": 0.1,
        "min_lr": 0.0,
        "monitor": "val_loss",
        "augment_on_the_fly": False,
        "notes": (
            "Paper (line 231): U-Net with a ResNet50 encoder from segmentation_models_pytorch, ImageNet pre-trained, "
            "'configured to accept 3-channel input images while producing a single-channel binary segmentation mask', "
            "BCEWithLogitsLoss, Adam with initial learning rate 1e-4, 100 epochs, validation after each epoch. "
            "lungkit downloads no weights: the encoder is ImageNet-initialised only when the weights are already "
            "available locally, otherwise random (the protocol line says which). " + _NOT_PRINTED + ": batch_size "
            "(8 chosen), image size (256, the paper's resize), which checkpoint was tested (best val_loss chosen), "
            "intensity mapping (HU window [-1000, 400] -> [0, 1], replicated to 3 channels). lungkit choices beyond "
            "the paper: BatchNorm momentum 0.9 everywhere (PyTorch's default 0.1 in Keras terms: the paper trained in "
            "PyTorch; Keras' 0.99 left the inference-mode model predicting nothing after a few hundred steps) and the "
            "head's bias started at the foreground prior p = 0.01 (smp starts near p = 0.5). Departure at the quick "
            "profile (profile_overrides): 120 optimizer steps (three 40-step epochs) instead of the profile's 200, "
            "because on the 2-core CI "
            "machine a step (128 px patches, batch 8, the whole ResNet50 encoder) was measured at 1.8 s, 3.3 times "
            "the U-Net's 0.55 s, after 106 s of tracing. Measured at quick on the phantom: Dice 0.05 after these 120 "
            "steps (0.16 after 400), 0.00 with Adam 1e-3; on the LIDC sample (fold A) 0.29 after 120."
        ),
        "profile_overrides": {"quick": {"max_steps": 120}},
    },
}

# Section 2 of the paper: all three models train on the slices expanded by offline augmentation (about 3,400).
TRAINING_DATA = {"swin_unet": "augmented", "unetr": "augmented", "resnet50_unet": "augmented"}
