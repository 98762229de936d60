"""ViT segmenter (SETR-naive): output contract, logits option, a wiring overfit, and the paper-scale count against a
module inventory of ViT-B/16 + the naive head."""

from __future__ import annotations

import keras
import pytest

from kit_fixtures import assert_overfits, disc_slices
from lungkit.models import available_models, build_model
from lungkit.models.vit_segmenter import PAPER_PARAM_COUNT, build_vit_segmenter


def setr_naive_inventory(channels=2, side=512, hidden=768, layers=12, mlp=3072, head=256):
    block = 2 * 2 * hidden + (3 * hidden * hidden + 3 * hidden) + (hidden * hidden + hidden) + (
        hidden * mlp + mlp + mlp * hidden + hidden
    )
    tokens = (side // 16) ** 2
    encoder = (16 * 16 * channels * hidden + hidden) + tokens * hidden + layers * block + 2 * hidden
    naive_head = hidden * head + 4 * head + (head + 1)  # 1x1 conv (no bias), BatchNorm (with moving stats), 1x1 conv
    return encoder + naive_head


def test_contract_and_logits_option():
    assert "vit_segmenter" in available_models()
    model = build_model("vit_segmenter", scale="tiny")
    assert model.output_shape == (None, 64, 64, 1)
    assert model.layers[-1].activation is keras.activations.sigmoid
    logits = build_vit_segmenter("tiny", input_shape=(32, 32, 1), output_activation=None)
    assert logits.layers[-1].activation is keras.activations.linear and logits.output_shape == (None, 32, 32, 1)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_vit_segmenter("tiny", input_shape=(40, 40, 2))


def test_tiny_vit_segmenter_overfits():
    keras.utils.set_random_seed(0)
    images, masks = disc_slices(4, 64, channels=2)
    assert_overfits(build_vit_segmenter("tiny"), images, masks, keras.optimizers.Adam(3e-3), steps=60)


@pytest.mark.slow
def test_paper_scale_parameter_count():
    assert build_vit_segmenter("paper").count_params() == PAPER_PARAM_COUNT == setr_naive_inventory()
