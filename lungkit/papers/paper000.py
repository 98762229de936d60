"""Paper 000: Mask2Former lung cancer diagnosis on CT and PET (``000_136503e1e6225c60.txt``).

Data only: what the paper says it did, its one results table quoted exactly as printed, and no recipes (lungkit has
no Mask2Former, MaskFormer or ViT segmenter yet, so every row is reference only for now).
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
        "rows": [
            {
                "row": "Proposed Model",
                "line": 162,
                "origin": "this paper",
                "reported": {"precision": "0.948", "recall": "0.83", "f1": "0.87"},
                "reproduced_by": None,
                "remarks": [
                    "F1 0.87 is not the harmonic mean of P 0.948 and R 0.83 (2PR/(P+R) = 0.885; with rounding of the "
                    "printed digits at least 0.882).",
                    "The text's precision 94.87% (lines 49, 140) rounds to 0.949, not the printed 0.948.",
                    "Mask2Former is not in lungkit yet: reference only.",
                ],
            },
            {
                "row": "MaskFormer",
                "line": 163,
                "origin": "this paper (baseline)",
                "reported": {"precision": "0.898", "recall": "0.772", "f1": "0.619"},
                "reproduced_by": None,
                "remarks": [
                    "F1 0.619 is far below the harmonic mean of P 0.898 and R 0.772 (2PR/(P+R) = 0.830); the same "
                    "numbers are repeated in the text (lines 158-159), so it is not a typesetting slip of the table.",
                    "MaskFormer is not in lungkit yet: reference only.",
                ],
            },
            {
                "row": "ViT",
                "line": 164,
                "origin": "this paper (baseline)",
                "reported": {"precision": "0.799", "recall": "0.812", "f1": "0.749"},
                "reproduced_by": None,
                "remarks": [
                    "F1 0.749 is not the harmonic mean of P 0.799 and R 0.812 (2PR/(P+R) = 0.805).",
                    "No ViT segmenter in lungkit yet: reference only.",
                ],
            },
        ],
    },
}

# No trainable lungkit model for this paper yet.
RECIPES = {}

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
        "no benign class: there the documented alternative task is histology (adenocarcinoma vs other), not "
        "built in lungkit yet."
    ),
}
