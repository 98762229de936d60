"""MaskFormer (Cheng et al., NeurIPS 2021) in Keras 3: paper 000's first baseline.

MaskFormer's own repository is CC BY-NC, so nothing is taken from it; the Mask2Former repository (MIT) carries the
same baseline and is the specification. Differences from Mask2Former (:mod:`lungkit.models.mask2former`, whose
backbone, FPN pixel decoder and model class are reused):

- the transformer decoder is DETR's: 6 layers of self-attention -> plain (unmasked) cross-attention -> FFN,
  post-norm, dropout 0.1, on **one** feature map: the backbone's C5 (1/32, projected 2048 -> 256 by a 1x1 conv),
  with sine positions and no level embedding; queries start at zero and only their position embeddings are learnt;
- predictions after each of the 6 layers (deep supervision), none before the first;
- loss: mask focal 20 + Dice 1, class 1 with no-object 0.1; matcher costs class 1 / focal 20 / Dice 1; full-mask
  losses in the original, here on 12,544 importance-sampled points by default like Mask2Former (``num_points=None``
  restores full masks at 1/4 scale).

Everything else (inference, the kit contract, XLA off) is as in Mask2Former, and so is the CPU-sized ``small``
scale the quick profile trains (a 4-stage CNN backbone, width 64, 16 queries; the same 6 decoder layers): see
:data:`lungkit.models.mask2former.SMALL_SCALE_DEPARTURES`.
"""

from __future__ import annotations

from lungkit.models.blocks import resolve_config
from lungkit.models.mask2former import CONFIGS as MASK2FORMER_CONFIGS
from lungkit.models.mask2former import MaskQuerySegmenter, build_query_segmenter

MODEL_NAME = "maskformer"

MASKFORMER_CRITERION = dict(
    class_weight=1.0, mask_weight=20.0, dice_weight=1.0, no_object_weight=0.1, mask_loss="focal",
    cost_class=1.0, cost_mask=20.0, cost_dice=1.0, num_points=12544, oversample_ratio=3.0,
    importance_sample_ratio=0.75, max_instances=8, target_mode="instances",
)

CONFIGS = {
    scale: {
        **config,
        "pixel_decoder": "fpn",  # MaskFormer's own pixel decoder (Mask2Former's default is MSDeformAttn)
        "num_layers": 2 if scale == "tiny" else 6,
        "dropout": 0.0 if scale == "tiny" else 0.1,
        "criterion": {**MASKFORMER_CRITERION, **{k: config["criterion"][k] for k in ("num_points", "max_instances")}},
    }
    for scale, config in MASK2FORMER_CONFIGS.items()
}

# Measured with this builder at CONFIGS["paper"] (512 x 512 x 2, one tumour class), Keras' way of counting.
PAPER_PARAM_COUNT = 41_349_250
# MaskFormer R50 (ADE20K semantic, 150 classes) as its model zoo prints it: 41M; the inventory in
# tests/test_maskformer.py gives 41,307,863 for 150 classes (PyTorch's count).
REFERENCE_PARAM_COUNT = 41_000_000
REFERENCE_PARAM_SOURCE = "MaskFormer R50 + 6-layer decoder (ADE20K, 150 classes), model zoo: 41M"
#: The difference between PAPER_PARAM_COUNT and REFERENCE_PARAM_COUNT, in words.
PARAM_GAP = (
    "-38,293 for one tumour class instead of 150; +79,680 from keras.applications' ResNet50 (26,560 conv biases, "
    "53,120 BatchNorm moving statistics counted as weights). Same FPN pixel decoder as the reference."
)


def build_maskformer(scale: str = "paper", input_shape=None, **overrides) -> MaskQuerySegmenter:
    """Build MaskFormer.

    Args:
        scale: ``tiny`` (tests: small CNN, 2 layers, 8 queries, 64 px), ``small`` (CPU-sized, 128 px) or ``paper``
            (ResNet-50, 6 layers, 100 queries, 512 px).
        input_shape: (height, width, channels): sides multiples of 32; channels 2 (CT + PET), 1 (CT) or 3.
        **overrides: settings of ``CONFIGS[scale]`` (as Mask2Former's).

    Returns:
        An uncompiled :class:`MaskQuerySegmenter`.

    Raises:
        ValueError: unknown scale or setting, bad input shape.
        FileNotFoundError: ``weights`` names a missing file.
    """
    overrides = dict(overrides)
    if overrides.pop("output_activation", None) not in (None, "linear"):
        raise ValueError(f"{MODEL_NAME}: output_activation cannot be set (predict returns probabilities)")
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    return build_query_segmenter(config, masked=False, model_name=MODEL_NAME, scale=scale, overrides=overrides,
                                 decoder_input="res5")
