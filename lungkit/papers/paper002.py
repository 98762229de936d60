"""Paper 002: Lung Cancer Segmentation, project slides (``002_19078de01604c683.txt``).

Data only. The slides are a project proposal: they print no results table and no metric values, so ``TABLES`` is
empty and ``RECIPES`` (every recipe reproduces a printed row) is empty too. What they do print (dataset facts and the
planned systems) is recorded in ``PAPER``.

The two segmentation systems the slides plan are ``BASELINES``: lungkit-run results that no printed row holds (the
convention of paper 003's lungkit rows). Each has its recipe, built entirely from lungkit's choices because the
slides print no setting; its results go to ``results/paper002/<result_key>/`` and the report lists them as
lungkit's, with their protocol, under "lungkit results with no row in the paper's tables".
"""

_NOT_PRINTED = "Not printed in the paper"

PAPER = dict(
    id="paper002",
    title="Lung Cancer Segmentation",
    title_printed=True,
    short_title="Lung-RADS segmentation then classification (slides)",
    file="002_19078de01604c683.txt",
    authors="Salem AlAthari, Zehui Chen, Kat Desai, Manjit Singh (Deep Neural Networks Final Project, April 25, 2024)",
    data=(
        "Lung-RADS pickles (Nam, Panina, Pak 2024): '972 CT images labeled by radiologists using the Lung-RADS "
        "System', each with a mask (lines 19-25); lung_cancer_test.pkl 1.1 GB, lung_cancer_train.pkl 4.15 GB "
        "(lines 31-44); the train DataFrame shows columns label1, mask, hu_array, hu_array_old and '708 rows x 4 "
        "columns' (lines 50-63)."
    ),
    systems=[
        "Segmentation part: CT scan -> segmentation network -> segmentation output (lines 78-96)",
        "Classification part: segmented images -> classification network -> benign / malignant (lines 98-120)",
        "Planned: fine-tune a pretrained model (UNET-derived, e.g. MobileNetV2, per the literature review, lines 74-75 "
        "and 137)",
        "Planned: a CNN baseline developed from scratch (line 139)",
    ],
    no_table_note=(
        "The slides print no results table and no metric values (their schedule ends with 'Performance enhancement' "
        "and 'Presentation & Paper', lines 141-143). There is nothing to compare against; lungkit results filed under "
        "paper002 are listed without a reported counterpart."
    ),
    printed_numbers={
        "CT images": "972",
        "train rows": "708",
        "columns": "4",
        "lung_cancer_test.pkl size": "1.1 GB",
        "lung_cancer_train.pkl size": "4.15 GB",
    },
    notes=[
        "The DOI is printed as '10.17632/5rr22hgzw.1' (line 25); the dataset's DOI is 10.17632/5rr22hgzwr.1 "
        "(GUIDE section 3): one character is missing.",
        "972 = 708 train + 264 test, matching the dataset's given split.",
    ],
)

TABLES = {}

RECIPES = {}

#: The table name the lungkit rows of this paper are filed under (there is no printed table).
LUNGKIT_SEGMENTATION_TABLE = "lungkit_segmentation"

_SHARED_CHOICES = (
    _NOT_PRINTED + " (the slides print no setting at all): image size (256 px, as paper 001 on the same Lung-RADS "
    "data; the slices are 512 px), intensity mapping (HU window [-1000, 400] -> [0, 1]), loss (Dice + BCE with "
    "weights 1 and 1 on logits: the kit's measured choice where BCE alone stayed at the empty prediction, see paper "
    "001's UNETR recipe), Adam, batch size 8, at most 50 epochs with early stopping after 10 epochs without a better "
    "validation Dice, checkpoint on validation Dice, no augmentation. Both systems get the same settings so that "
    "the comparison is about the networks."
)

#: The settings both segmentation systems share, the ones :data:`_SHARED_CHOICES` describes (one dict, so that
#: the two recipes cannot drift apart: the comparison is about the networks).
_SHARED_SETTINGS = {
    "image_size": 256,
    "input_channels": 1,
    "preprocessing": "hu_window_unit",
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "lr_schedule": None,
    "loss": "dice_bce",
    "loss_kwargs": {"dice_weight": 1.0, "bce_weight": 1.0},
    "from_logits": True,
    "batch_size": 8,
    "epochs": 50,
    "min_epochs": 0,
    "early_stopping_patience": 10,
    "reduce_lr_patience": None,
    "reduce_lr_factor": 0.1,
    "min_lr": 0.0,
    "monitor": "val_dice",
    "augment_on_the_fly": False,
}

#: The training settings both crop classifiers share (the small CNN and the MobileNetV2 transfer model), so that the
#: comparison is about the networks; every one is lungkit's choice (see the crop CNN recipe's notes).
_CLASSIFIER_SETTINGS = {
    "image_size": 32,
    "input_channels": 1,
    "preprocessing": "hu_window_unit",
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "lr_schedule": None,
    "loss": "bce",
    "loss_kwargs": {},
    "from_logits": False,
    "batch_size": 32,
    "epochs": 50,
    "min_epochs": 0,
    "early_stopping_patience": 10,
    "reduce_lr_patience": None,
    "reduce_lr_factor": 0.1,
    "min_lr": 0.0,
    "monitor": "val_loss",
    "augment_on_the_fly": True,
}

#: Figures a notebook saves into ``<run_dir>/figures`` that the report shows (copied by lungkit.reports when the run
#: produced one of ``results``: a result-key prefix).
REPORT_FIGURES = {
    "paper002_segment_then_classify_roc.png": {
        "caption": ("ROC curves on the test tumour slices (notebook 52): the crop CNN's best view and the MobileNetV2 "
                    "transfer model on predicted and ground-truth masks, and the size-only baseline"),
        "results": ["crop_cnn_", "mobilenetv2_mask", "mobilenetv2_image", "size_baseline_"],
    },
    "paper002_segment_then_classify_confusion.png": {
        "caption": "Confusion matrices of the crop CNN's views at threshold 0.5 on the test tumour slices (notebook 52)",
        "results": ["crop_cnn_"],
    },
}

BASELINES = {
    "mobilenetv2_unet": {
        "row": "MobileNetV2 U-Net, transfer learning (lungkit's run of the slides' plan; the slides print no number)",
        "table": LUNGKIT_SEGMENTATION_TABLE,
        "notebook": "50_mobilenet_unet",
        "recipe": {
            "model": "mobilenetv2_unet",
            **_SHARED_SETTINGS,
            "fine_tuning": {
                "frozen_layer": "mobilenetv2_encoder",
                "frozen_fraction": 0.25,
                "unfrozen_learning_rate": 1e-4,
            },
            "notes": (
                "Slides: 'Finetune a pretrained model with this dataset' (line 137), models 'stem from the UNET "
                "architecture (E.G. MobileNetV2)' (line 75), citing Riaz et al. 2023 (MobileNetV2 U-Net, Dice "
                "0.8793 on MSD Task06 Lung, another dataset and protocol). lungkit: keras.applications MobileNetV2 "
                "with the TensorFlow segmentation tutorial's skips, ImageNet weights only from a local file. "
                "Fine-tuning schedule (the usual Keras transfer-learning recipe, not printed anywhere for this "
                "work): the first quarter of the epochs with the encoder frozen at Adam 1e-3, the rest with "
                "everything trainable at 1e-4. Without local ImageNet weights there is nothing to fine-tune: the "
                "whole network trains from scratch at 1e-3 for all the epochs, and the protocol says so. "
                + _SHARED_CHOICES
            ),
        },
    },
    "cnn_from_scratch": {
        "row": "CNN from scratch, plain encoder-decoder (lungkit's run of the slides' baseline; no number printed)",
        "table": LUNGKIT_SEGMENTATION_TABLE,
        "notebook": "51_cnn_from_scratch",
        "recipe": {
            "model": "cnn_from_scratch",
            **_SHARED_SETTINGS,
            "notes": (
                "Slides: 'Develop CNN baseline model from scratch' (line 139), no architecture given. lungkit: a "
                "plain encoder-decoder without skip connections (lungkit/models/cnn_from_scratch.py), randomly "
                "initialised. " + _SHARED_CHOICES
            ),
        },
    },
    # The classification step (lungkit/experiments/segment_classify.py): one recipe per classifier for every crop
    # view; results are filed per view and mask source (crop_cnn_<view>_<source>, mobilenetv2_<view>_<source>)
    # beside the size-only baseline.
    "crop_cnn_classifier": {
        "row": "Crop CNN, benign-like vs suspicious on segmented tumours (lungkit; the slides print no number)",
        "table": "lungkit_classification",
        "notebook": "52_segment_then_classify",
        "recipe": {
            "model": "crop_cnn_classifier",
            **_CLASSIFIER_SETTINGS,
            "notes": (
                "Slides: 'Segmented images -> Classification network -> benign / Malignant' (lines 98-120), nothing "
                "more. " + _NOT_PRINTED + ": every setting. lungkit: a small CNN (lungkit/models/crop_cnn.py) on 32 "
                "px crops around the tumour at the segmentation's pixel scale, binary cross entropy, Adam 1e-3, "
                "batch 32, at most 50 epochs with early stopping on the validation loss (patience 10), classes "
                "balanced by oversampling, flips, quarter turns, +-15 degree rotations and +-10 % zoom on the "
                "training split only. Labels are a Lung-RADS PROXY (the data has no malignancy)."
            ),
        },
    },
    "mobilenetv2_classifier": {
        "row": ("MobileNetV2 transfer model, benign-like vs suspicious on segmented tumours (lungkit; the slides "
                "print no number)"),
        "table": "lungkit_classification",
        "notebook": "52_segment_then_classify",
        "recipe": {
            "model": "mobilenetv2_classifier",
            **_CLASSIFIER_SETTINGS,
            "fine_tuning": {
                "frozen_layer": "mobilenetv2_encoder",
                "frozen_fraction": 0.25,
                "unfrozen_learning_rate": 1e-4,
            },
            "notes": (
                "Slides: a classification network on the segmented images (lines 98-120) and transfer learning "
                "with MobileNetV2 for the project (lines 74-75, 137); " + _NOT_PRINTED + ": the network and every "
                "setting. lungkit: keras.applications MobileNetV2 without its top, global average pooling, dropout "
                "0.2 and one sigmoid unit (lungkit/models/mobilenet_classifier.py); the 32 px crop is copied to "
                "three channels and upsampled inside the model (to 96 px at the paper scale, the smallest "
                "resolution ImageNet weights exist for; 64 px at the CPU scale), ImageNet weights only from a local "
                "file. Fine-tuning schedule as the MobileNetV2 U-Net's: the first quarter of the epochs with the "
                "encoder frozen at Adam 1e-3, the rest with everything trainable at 1e-4; without local ImageNet "
                "weights the whole network trains from scratch at 1e-3 for all the epochs, and the protocol says "
                "so. Every other setting is the crop CNN's (same crops, loss, batch, epochs, early stopping, "
                "balancing and augmentation), so that the comparison is about the networks. Departure at the quick "
                "profile (profile_overrides): a budget of 120 optimizer steps (three 40-step epochs) instead of the "
                "profile's 200, to keep the main job's growth near 30 s: training and testing measured 46 s with 200 "
                "steps and 36 s with 120 on the 2-core CI machine (nice 19, beside other jobs), about 25 s of it graph "
                "tracing and checkpoints that do not shrink with the steps. Labels "
                "are a Lung-RADS PROXY (the data has no malignancy)."
            ),
            "profile_overrides": {"quick": {"max_steps": 120}},
        },
    },
}
