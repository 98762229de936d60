"""MaskFormer: one-level plain-attention decoder (no prediction before the first layer), its focal + Dice criterion,
a short overfit, and the paper-scale parameter count against an inventory of the reference modules."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kit_fixtures import disc_slices
from lungkit.models import available_models
from lungkit.models.maskformer import PAPER_PARAM_COUNT, REFERENCE_PARAM_COUNT, build_maskformer
from test_mask2former import official_param_inventory


def maskformer_inventory(num_classes=150):
    """MaskFormer R50 counted module by module the PyTorch way: ResNet-50 + FPN pixel decoder (as Mask2Former's
    FPN option) + input projection of C5 + 6 DETR decoder layers + heads."""
    d = 256
    backbone_and_fpn = official_param_inventory(num_classes=0, pixel_decoder="fpn")
    # subtract Mask2Former's decoder from that inventory to keep only backbone + FPN
    attention = 4 * d * d + 4 * d
    layer = 2 * (attention + 2 * d) + (d * 2048 + 2048) + (2048 * d + d) + 2 * d
    mask2former_decoder = 9 * layer + 2 * d + 2 * 100 * d + 3 * d + (d * 1 + 1) + 3 * (d * d + d)
    backbone_and_fpn -= mask2former_decoder
    decoder = (2048 * d + d) + 6 * layer + 2 * d + 100 * d + (d * (num_classes + 1) + num_classes + 1) + 3 * (d * d + d)
    return backbone_and_fpn + decoder


def test_registered_one_level_plain_decoder():
    assert "maskformer" in available_models()
    model = build_maskformer("tiny")
    assert not model.query_decoder.masked and model.criterion.mask_loss == "focal"
    assert (model.criterion.mask_weight, model.criterion.dice_weight, model.criterion.class_weight) == (20, 1, 1)
    images, _ = disc_slices(2, 64, channels=2)
    heads = model(images)
    # 2 layers -> 2 predictions (none before the first layer)
    assert tuple(heads["class_logits"].shape) == (2, 2, 8, 2)
    assert tuple(heads["mask_logits"].shape) == (2, 2, 8, 16, 16)
    assert len(model.query_decoder.input_projections) == 1  # C5 only


def test_tiny_maskformer_loss_falls_on_four_discs():
    keras.utils.set_random_seed(0)
    images, masks = disc_slices(4, 64, channels=2, seed=0)
    model = build_maskformer("tiny")
    model.compile(keras.optimizers.Adam(1e-3))
    losses = [float(model.train_on_batch(images, masks)) for _ in range(40)]
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    assert np.isfinite(model.predict(images, verbose=0)).all()


def test_inventory_rounds_to_the_published_41m():
    assert round(maskformer_inventory() / 1e6) == REFERENCE_PARAM_COUNT / 1e6 == 41


@pytest.mark.slow
def test_paper_scale_parameter_count():
    model = build_maskformer("paper")
    assert model.count_params() == PAPER_PARAM_COUNT
    # keras.applications' ResNet50: +26,560 conv biases, +53,120 BatchNorm moving statistics
    assert PAPER_PARAM_COUNT == maskformer_inventory(num_classes=1) + 26_560 + 53_120
