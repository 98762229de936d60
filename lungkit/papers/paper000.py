"""Paper 000: Mask2Former lung cancer diagnosis on CT and PET (``000_136503e1e6225c60.txt``).

Data only: what the paper says it did, its one results table quoted exactly as printed, and its recipes. The three
rows are reproduced by notebooks ``41_mask2former``, ``42_maskformer`` and ``43_vit_segmenter`` on CT + PET (two
input channels) from the run's Lung-PET-CT-Dx kit dataset; ``41`` also trains the CT-only ablation row.
"""

PAPER = dict(
    id="paper000",
    # The extraction starts at the abstract; the title is the index's description (papers/README.md).
    title="Mask2Former lung cancer diagnosis on CT and PET",
    title_printed=False,
    short_title="Mask2Former on CT+PET",
    file="000_136503e1e6225c60.txt",
    data=(
        "An open dataset of CT and PET images from 355 patients [8] (Lung-PET-CT-Dx per papers/README.md); "
        "normalised, resized to 512x512, augmented with random rotations and cropping (lines 105-113)."
    ),
    systems=[
        "Mask2Former instance segmentation, PyTorch, AdamW lr 0.0001 with cosine annealing, batch 32, 100 epochs, "
        "weight decay 0.01, two NVIDIA GeForce RTX GPUs (lines 115-141)",
        "self-supervised benign/malignant classifier of the segmented output (abstract, lines 11-12; no numbers)",
        "MaskFormer baseline (Table 1)",
        "Vision Transformer (ViT) baseline (Table 1)",
    ],
    notes=[
        "The text quotes 'a notable precision of 94.87%' (line 49) and 'a segmentation precision of 94.87%' "
        "(line 140); 94.87% rounds to 0.949, Table 1 prints 0.948.",
        "Lung-PET-CT-Dx annotates slices with bounding boxes only (GUIDE section 3); the paper does not say where its "
        "segmentation masks come from, nor how train and test were split.",
        "No metric formulas are given; per-image versus pooled averaging is not stated.",
    ],
)

def _precision_recall_f1(prefix: str, basis: str) -> dict:
    """A reading's ``metrics``: Table 1's three columns read as the summary's ``<prefix>precision``,
    ``<prefix>recall`` and ``<prefix>f1`` on ``basis`` (``per_image`` or ``pooled``)."""
    return {metric: [f"{prefix}{metric}", basis] for metric in ("precision", "recall", "f1")}


TABLES = {
    "table1": {
        "title": "Comparison between others model",
        "printed_caption": "(Table 1) Comparison between others model",
        "row_header": "Model",
        "columns": ["Precision", "Recall", "F1-Score"],
        "metrics": ["precision", "recall", "f1"],
        "value_scale": "fraction",
        "protocol": (
            "Mask2Former and the two baselines on the paper's CT+PET data (355 patients, 512x512); split, averaging "
            "and thresholds are not stated."
        ),
        "metric_definitions": {
            "precision": (
                "Precision, no formula printed (section 4, lines 147-153); presumably tumour-pixel TP/(TP+FP). "
                "Per-image or pooled: not stated."
            ),
            "recall": (
                "Recall, called sensitivity to 'true positive cases' (lines 153-155); presumably tumour-pixel "
                "TP/(TP+FN). Per-image or pooled: not stated."
            ),
            "f1": (
                "F1-Score, 'effectively combining both Precision and Recall' (lines 155-157), i.e. the harmonic mean "
                "2PR/(P+R) when pooled. A mean of per-image F1 can differ from the harmonic mean of mean P and mean R; "
                "the paper does not say which it used."
            ),
        },
        # The paper defines none of its three metrics, so lungkit reads its numbers every way the text allows
        # (lungkit/lesion_metrics.py defines each once) and shows each reading beside the printed row.
        "readings": [
            {
                "name": "pixel, per image",
                "definition": (
                    "tumour-pixel TP/FP/FN counted on each test image, P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R) "
                    "per image, each then averaged over the images with a 95% bootstrap CI (an image with no tumour "
                    "and no prediction scores 1)"
                ),
                "metrics": _precision_recall_f1("", "per_image"),
            },
            {
                "name": "pixel, per image, F1 of the mean P and R",
                "definition": (
                    "the same per-image means of P and R, and F1 = 2PR/(P+R) of those two means: the other F1 a "
                    "paper can print from per-image scores. It differs from the mean of per-image F1; the gap "
                    "between the two is one way a printed F1 falls below both P and R (paper 000's MaskFormer row)"
                ),
                "metrics": {"f1": ["f1_of_mean_precision_recall", "pooled"]},
            },
            {
                "name": "pixel, pooled",
                "definition": (
                    "TP/FP/FN summed over every pixel of every test image, then P, R and F1 = 2PR/(P+R) once (no CI)"
                ),
                "metrics": _precision_recall_f1("", "pooled"),
            },
            {
                "name": "lesion, IoU >= 0.5",
                "definition": (
                    "tumours = connected components (8-neighbourhood) of the ground truth, predicted lesions = "
                    "connected components of the scored prediction; a pair matches at mask IoU >= 0.5, one to one "
                    "(Hungarian: most matches, then largest summed IoU); TP = matches, FP = unmatched predictions, "
                    "FN = unmatched tumours, summed over the test images, then P, R, F1 = 2TP/(2TP+FP+FN) (no CI)"
                ),
                "metrics": _precision_recall_f1("lesion_", "pooled"),
            },
            {
                "name": "lesion, box IoU >= 0.5",
                "definition": (
                    "as the lesion reading, but a pair matches when the bounding boxes of the two components overlap "
                    "at IoU >= 0.5: shown only for ground truth derived from boxes (Lung-PET-CT-Dx), where the box is "
                    "the only annotation there is"
                ),
                "metrics": _precision_recall_f1("lesion_box_", "pooled"),
                "only_when_measured": True,
            },
            {
                "name": "lesion, query instances, IoU >= 0.5",
                "definition": (
                    "as the lesion reading, but the predicted lesions are the query model's own instances (the "
                    "official Mask2Former instance inference: per window the top 10 (query, class) pairs, mask = "
                    "logit > 0, score = class probability x mean mask probability), kept when the score is above "
                    "0.5 and merged across overlapping windows when two share half of the smaller mask: shown only "
                    "for the query models (Mask2Former, MaskFormer)"
                ),
                "metrics": _precision_recall_f1("instance_lesion_", "pooled"),
                "only_when_measured": True,
            },
            {
                "name": "lesion, query instances, box IoU >= 0.5",
                "definition": "the query instances matched by box IoU, for ground truth derived from boxes",
                "metrics": _precision_recall_f1("instance_lesion_box_", "pooled"),
                "only_when_measured": True,
            },
        ],
        "rows": [
            {
                "row": "Proposed Model",
                "line": 162,
                "origin": "this paper",
                "reported": {"precision": "0.948", "recall": "0.83", "f1": "0.87"},
                "reproduced_by": {"notebook": "41_mask2former", "model": "mask2former", "result_key": "mask2former"},
                "remarks": [
                    "F1 0.87 is not the harmonic mean of P 0.948 and R 0.83 (2PR/(P+R) = 0.885; with rounding of the "
                    "printed digits at least 0.882).",
                    "The text's precision 94.87% (lines 49, 140) rounds to 0.949, not the printed 0.948.",
                    "lungkit's row feeds CT + PET (2 channels) on the Lung-PET-CT-Dx kit dataset, whose masks are "
                    "derived from boxes; the CT-only ablation (result mask2former_ct_only; notebook 41 trains it at "
                    "the paper profile or on request) is listed below the table when it has run.",
                ],
            },
            {
                "row": "MaskFormer",
                "line": 163,
                "origin": "this paper (baseline)",
                "reported": {"precision": "0.898", "recall": "0.772", "f1": "0.619"},
                "reproduced_by": {"notebook": "42_maskformer", "model": "maskformer", "result_key": "maskformer"},
                "remarks": [
                    "F1 0.619 is far below the harmonic mean of P 0.898 and R 0.772 (2PR/(P+R) = 0.830); the same "
                    "numbers are repeated in the text (lines 158-159), so it is not a typesetting slip of the table.",
                    "lungkit's row feeds CT + PET, as the Mask2Former row.",
                ],
            },
            {
                "row": "ViT",
                "line": 164,
                "origin": "this paper (baseline)",
                "reported": {"precision": "0.799", "recall": "0.812", "f1": "0.749"},
                "reproduced_by": {"notebook": "43_vit_segmenter", "model": "vit_segmenter", "result_key": "vit_segmenter"},
                "remarks": [
                    "F1 0.749 is not the harmonic mean of P 0.799 and R 0.812 (2PR/(P+R) = 0.805).",
                    "The paper does not say how its ViT segments; lungkit's is SETR-naive on ViT-B/16 (CT + PET).",
                ],
            },
        ],
    },
}

# The main job runs RECIPES, each named in its row's ``reproduced_by``; the baselines derive from Mask2Former's.

#: The official Mask2Former loss and matcher (facebookresearch/Mask2Former, MaskFormer head config).
MASK2FORMER_LOSS = dict(
    class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, mask_loss="bce",
    cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=12544, oversample_ratio=3.0,
    importance_sample_ratio=0.75, max_instances=8, target_mode="instances",
)

#: MaskFormer's loss and matcher (the Mask2Former repository's MaskFormer baseline): focal 20 + Dice 1, class 1.
MASKFORMER_LOSS = dict(
    class_weight=1.0, mask_weight=20.0, dice_weight=1.0, no_object_weight=0.1, mask_loss="focal",
    cost_class=1.0, cost_mask=20.0, cost_dice=1.0, num_points=12544, oversample_ratio=3.0,
    importance_sample_ratio=0.75, max_instances=8, target_mode="instances",
)

#: The official COCO solver, recorded beside the paper's (the recipes use the paper's).
OFFICIAL_COCO_SOLVER = dict(
    optimizer="adamw", learning_rate=1e-4, weight_decay=0.05, backbone_lr_multiplier=0.1,
    gradient_clip="full model, norm 0.01", batch_size=16, schedule="poly, 50 epochs (368,750 iterations)",
)

#: What the two input channels hold (all three Table 1 recipes; the ablation drops channel 1).
_PETCT_NOTE = (
    "Input: 2 channels on the run's Lung-PET-CT-Dx kit dataset (lungkit.data.petct_kit; its DICOM phantom without "
    "data): CT min-max per slice, and PET SUVbw resampled onto the CT slice, min-max per slice (SUV 0 where a "
    "study has no PET); masks derived from the boxes (the dataset's mask method, flagged in the protocol). "
    "Augmentation on the fly (paper profile): the kit's (flips, rotation up to 30 degrees, a gentle elastic warp, "
    "HU brightness / contrast) stands in for the paper's unparameterised 'random rotations and cropping'; the PET "
    "moves with the CT's geometry and keeps its SUV. "
)

#: Why the smoke and quick profiles use full-mask losses (a measured departure, named in the recipes' notes).
_CPU_POINTS_NOTE = (
    "At the smoke and quick profiles the losses and the matching use full masks at 1/4 scale (num_points=None, the "
    "official alternative to point sampling): measured on a 2-core CPU with the paper-size model at 128 px (batch 8, "
    "eager), "
    "the 12,544-point criterion took 26 s per step against 0.4 s with full masks (2.8 s with 1,024 points) and 7 s "
    "for the forward pass; the paper profile keeps the 12,544 points. "
)

#: Why the quick profile trains CPU-sized query models (scale small), with what it measured.
_CPU_SCALE_NOTE = (
    "At the quick profile the model is CPU-sized (scale small; lungkit.models.mask2former.SMALL_SCALE_DEPARTURES): "
    "a 4-stage CNN backbone instead of ResNet-50, width 64 instead of 256, 16 queries; Mask2Former with 2 "
    "deformable layers and 6 masked decoder layers, MaskFormer with its 6 plain ones. The paper-size model at 128 px "
    "traced for 500 s (Mask2Former) / 191 s (MaskFormer) and took 30-58 s / 19 s per step on a 2-core CPU; the "
    "small ones traced in about 80 s / 50 s and took 0.5 s / 0.2 s per step (2026-12-01), so notebooks 41 and 42 "
    "train the profile's step budget like the other models (about 4 and 2 minutes end to end). "
)

RECIPES = {
    "mask2former": {
        "model": "mask2former",
        "image_size": 512,
        # The paper feeds CT and PET: channel 0 CT, channel 1 PET SUV resampled onto the CT slice (TRAINING_DATA:
        # the run's Lung-PET-CT-Dx kit dataset); BASELINES["mask2former_ct_only"] is the CT-only ablation.
        "input_channels": 2,
        "preprocessing": "minmax",
        "optimizer": "adamw",
        "learning_rate": 1e-4,
        "weight_decay": 0.01,
        "lr_schedule": "cosine",
        "loss": "set_prediction",
        "loss_kwargs": dict(MASK2FORMER_LOSS),
        "from_logits": False,
        "batch_size": 32,
        "epochs": 100,
        "min_epochs": 0,
        "early_stopping_patience": None,
        "reduce_lr_patience": None,
        "reduce_lr_factor": 0.5,
        "min_lr": 0.0,
        "monitor": "val_dice",
        "augment_on_the_fly": True,
        "notes": (
            "Paper 000, lines 105-137: 'normalization' (min-max assumed, not stated), 512x512, random rotations and "
            "cropping, AdamW lr 0.0001 with cosine annealing, weight decay 0.01, batch 32, 100 epochs, PyTorch. "
            "Architecture, loss, normalisation and split are not printed in the paper: the official Mask2Former R50 (9 masked decoder layers, 100 "
            "queries, class 2 / BCE 5 / Dice 5 on 12,544 points, no-object 0.1) is assumed, with the official "
            "MSDeformAttn pixel decoder (6 layers; pixel_decoder='fpn' is the official lighter option). The official COCO solver (weight "
            "decay 0.05, backbone lr x0.1, gradient clipping 0.01, batch 16) is recorded in OFFICIAL_COCO_SOLVER; "
            "the paper's is used. " + _PETCT_NOTE + _CPU_POINTS_NOTE + _CPU_SCALE_NOTE
        ),
        "profile_overrides": {
            profile: {"loss_kwargs": {**MASK2FORMER_LOSS, "num_points": None}} for profile in ("smoke", "quick")
        },
    },
}

_BASELINE_NOTE = (
    "Not printed in the paper: how the baselines were trained; it prints the solver of its Mask2Former only (AdamW 1e-4 cosine, weight decay 0.01, batch 32, 100 "
    "epochs, 512 px); its baselines are assumed to have been trained the same way. "
)

RECIPES["maskformer"] = {
    **RECIPES["mask2former"],
    "model": "maskformer",
    "loss_kwargs": dict(MASKFORMER_LOSS),
    "notes": _BASELINE_NOTE + (
        "MaskFormer R50 as the Mask2Former repository's baseline: FPN pixel decoder, 6 plain decoder layers on C5, "
        "100 queries, focal 20 + Dice 1 + class 1 (no-object 0.1), matcher 1 / 20 / 1; losses on 12,544 "
        "importance-sampled points (the original used full masks). " + _PETCT_NOTE + _CPU_POINTS_NOTE
        + _CPU_SCALE_NOTE
    ),
    "profile_overrides": {
        profile: {"loss_kwargs": {**MASKFORMER_LOSS, "num_points": None}} for profile in ("smoke", "quick")
    },
}

#: Why notebook 43 runs in the quick main job with the profile's full step budget (no ``max_steps`` override).
_VIT_QUICK_TIMING = (
    "Timed at the quick profile (small scale, 2.8 M parameters, batch 8 of 128 px patches) on the 2-core CPU at "
    "nice 19 beside other jobs (load average about 3), 2026-11-30: tracing 21 s, then 0.17 s per step (median of 20 "
    "steps; mean 0.19, CT only); on CT + PET the 400 steps trained in 84 s including tracing and validation, and "
    "notebook 43 ran end to end in 2.0 min including the CT + PET conversion: within the quick budget, so the "
    "profile's step budget is kept (400 steps then, 200 since the quick budget was halved)."
)

RECIPES["vit_segmenter"] = {
    **RECIPES["mask2former"],
    "model": "vit_segmenter",
    "loss": "dice_bce",
    "loss_kwargs": {},
    "profile_overrides": {},
    "notes": _BASELINE_NOTE + (
        "'ViT' is not specified; lungkit uses SETR-naive on ViT-B/16 (from scratch) with BCE + Dice, the kit's "
        "per-pixel loss, since a per-pixel model has no set-prediction loss. " + _PETCT_NOTE + _VIT_QUICK_TIMING
    ),
}

# The ablation: a lungkit-run result no printed row holds (filed under Table 1, listed in the report as a result with
# no row of the paper's): the paper's model on the same data, split and solver, with the PET channel left out.
BASELINES = {
    "mask2former_ct_only": {
        "row": "Mask2Former, CT only (lungkit's ablation of the PET channel; the paper prints no CT-only number)",
        "table": "table1",
        "notebook": "41_mask2former",
        "recipe": {
            **RECIPES["mask2former"],
            "input_channels": 1,
            "notes": (
                "lungkit's ablation (the paper prints no CT-only number): the Mask2Former recipe on the same "
                "Lung-PET-CT-Dx kit dataset, split and seed with channel 1 (PET) left out, so that the difference "
                "to the CT + PET row is the PET channel alone. Notebook 41 trains it at the paper profile, or at "
                "any profile with train_ct_only_ablation=True (the quick main job leaves it out: one more "
                "Mask2Former). " + RECIPES["mask2former"]["notes"].replace(_PETCT_NOTE, "")
            ),
        },
    },
}

#: Every paper 000 segmentation result trains on the run's CT + PET kit dataset (lungkit.data.petct_kit).
TRAINING_DATA = {key: "petct" for key in (*RECIPES, *BASELINES)}

# lungkit-run results that no printed row holds (the abstract's self-supervised classifier prints no number).
# Settings of lungkit/experiments/selfsupervised.py; every value is lungkit's choice (the paper prints none).
SELF_SUPERVISED = {
    "notebook": "44_selfsupervised_classifier",
    "table": "lungkit_selfsupervised",
    "row": "Self-supervised (SimCLR) crop classifier, {mode}, {percent}% of the labels (lungkit; no number printed)",
    "encoder": "crop_cnn_classifier",
    "slice_size": 256,
    "crop_size": 32,
    "temperature": 0.1,
    "projection_width": 64,
    "pretraining_batch_size": 64,
    "pretraining_steps": 2000,
    "pretraining_learning_rate": 1e-3,
    "downstream_batch_size": 32,
    "downstream_steps": 1000,
    "downstream_learning_rate": 1e-3,
    "label_fractions": (0.1, 0.5, 1.0),
    "notes": (
        "Paper 000's abstract names a 'self-supervised' benign/malignant classifier of the segmented tumours "
        "(lines 11-12) and prints no detail and no number. lungkit: SimCLR as in keras-io's 'Semi-supervised image "
        "classification using contrastive pretraining' example (two augmented views, NT-Xent at temperature 0.1, a "
        "two-layer projection head), on unlabelled ground-truth tumour crops of the training split only, then a "
        "linear probe (encoder frozen) and fine-tuning (everything trains) with 10, 50 and 100% of the training "
        "labels, against the same network from scratch with the same labels. Adam 1e-3 downstream for all three, "
        "fixed step budgets (the profile's) and the last weights, no early stopping. Data: the Lung-RADS kit "
        "dataset with the Lung-RADS PROXY label (LR2/LR3 vs LR4A/LR4B). The paper's data, Lung-PET-CT-Dx, has "
        "no benign class: there lungkit runs the documented alternative task, histology (adenocarcinoma vs other), "
        "as its own rows (the 'histology' settings below)."
    ),
    # The same recipe on the paper's own collection, where benign / malignant does not exist: the label is the
    # subject's histology letter. Its rows are filed apart (result keys ssl_histology_<mode>_<percent>pct, their own
    # lungkit table) so that they are never read as the benign / malignant classifier.
    "histology": {
        "label_rule": "adenocarcinoma_vs_other",
        "table": "lungkit_selfsupervised_histology",
        "result_prefix": "ssl_histology",
        "row": ("Self-supervised (SimCLR) crop classifier, HISTOLOGY adenocarcinoma vs other (not benign/malignant), "
                "{mode}, {percent}% of the labels (lungkit; no number printed)"),
        "notes": (
            "Paper 000's abstract names a 'self-supervised' benign/malignant classifier (lines 11-12) and prints no "
            "detail and no number; its data, Lung-PET-CT-Dx, has no benign class (every subject has cancer). "
            "lungkit runs the documented alternative task on that collection instead: HISTOLOGY, adenocarcinoma "
            "(A) vs the other types (B small cell, E large cell, G squamous cell), the subject's letter. These "
            "numbers say nothing about benign vs malignant. Same recipe as the Lung-RADS rows (SimCLR, NT-Xent at "
            "temperature 0.1, linear probe / fine-tuning / from scratch with 10, 50 and 100% of the training "
            "labels, fixed step budgets, last weights), on ground-truth CT crops (the PET channel is not used) of "
            "the Lung-PET-CT-Dx kit dataset, whose masks come from the annotation boxes; the split is by patient "
            "(subject), stratified by histology, so no patient's slices sit on both sides. When the test split "
            "holds one class only (the smoke phantom's four subjects), nothing can be measured and the rows are "
            "written as wiring only."
        ),
    },
}
