"""UNETR 2-D: wiring (skip depths, resolutions), parameter count against MONAI's module inventory, and an
overfitting check of the tiny model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from kit_fixtures import assert_overfits, disc_slices
from lungkit.models import build_model
from lungkit.models.unetr import PAPER_PARAM_COUNT, build_unetr
from lungkit.models.vit_blocks import TransformerEncoderBlock


def monai_unetr_2d_param_count(side=256, in_channels=1, out_channels=1, features=16, hidden=768, mlp=3072, layers=12):
    """Parameters of ``monai.networks.nets.UNETR(spatial_dims=2, ...)`` with its defaults (conv patch embedding,
    no qkv bias, instance norm without affine, residual blocks), counted module by module."""
    tokens = (side // 16) ** 2
    vit = 16 * 16 * in_channels * hidden + hidden + tokens * hidden  # patch embedding conv + position embedding
    block = 2 * 2 * hidden + 3 * hidden * hidden + hidden * hidden + hidden + hidden * mlp + mlp + mlp * hidden + hidden
    vit += layers * block  # 2 LN, qkv (no bias), out proj, MLP
    vit += 2 * hidden  # final LayerNorm

    def res(cin, cout):  # UnetResBlock: two 3x3 convs, a 1x1 conv when channels change; no bias, no affine norm
        return 9 * cin * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)

    def up(cin, cout):  # 2x2 stride-2 transposed conv, no bias
        return 4 * cin * cout

    f = features
    decoder = res(in_channels, f)  # encoder1
    decoder += up(hidden, 2 * f) + 2 * (up(2 * f, 2 * f) + res(2 * f, 2 * f))  # encoder2
    decoder += up(hidden, 4 * f) + up(4 * f, 4 * f) + res(4 * f, 4 * f)  # encoder3
    decoder += up(hidden, 8 * f)  # encoder4
    for cin, cout in ((hidden, 8 * f), (8 * f, 4 * f), (4 * f, 2 * f), (2 * f, f)):  # decoder5 .. decoder2
        decoder += up(cin, cout) + res(2 * cout, cout)
    return vit + decoder + f * out_channels + out_channels  # 1x1 output conv with bias


@pytest.mark.slow
def test_paper_model_shapes_and_parameter_count():
    model = build_unetr("paper")
    assert model.input_shape == (None, 256, 256, 1)
    assert model.output_shape == (None, 256, 256, 1)
    assert model.count_params() == PAPER_PARAM_COUNT == monai_unetr_2d_param_count()
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerEncoderBlock)]
    assert len(blocks) == 12 and blocks[0].attention.num_heads == 12 and blocks[0].mlp.hidden_units == 3072
    # the skips: z3 -> x8 (1/2 resolution), z6 -> x4 (1/4), z9 -> x2 (1/8), z12 -> decoder start (1/16)
    assert model.get_layer("encoder2_res2_act2").output.shape == (None, 128, 128, 32)
    assert model.get_layer("encoder3_res1_act2").output.shape == (None, 64, 64, 64)
    assert model.get_layer("encoder4_up0").output.shape == (None, 32, 32, 128)
    assert model.get_layer("encoder1_act2").output.shape == (None, 256, 256, 16)
    prediction = ops.convert_to_numpy(model(np.zeros((1, 256, 256, 1), "float32")))
    assert prediction.shape == (1, 256, 256, 1)


def test_skips_come_from_the_chosen_transformer_blocks():
    paper = build_unetr("tiny")
    monai = build_unetr("tiny", skip_layers=(2, 3, 4))

    def skip_sources(model):
        return [model.get_layer(name).input for name in ("z_shallow_grid", "z_middle_grid", "z_deep_grid")]

    def block_outputs(model):
        return [model.get_layer(f"transformer_block{i}").output for i in range(1, 5)]

    assert all(a is b for a, b in zip(skip_sources(paper), block_outputs(paper)[0:3]))
    assert all(a is b for a, b in zip(skip_sources(monai), block_outputs(monai)[1:4]))
    assert paper.count_params() == monai.count_params() == monai_unetr_2d_param_count(
        side=32, features=4, hidden=32, mlp=64, layers=4
    )


def test_bad_settings_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        build_unetr("tiny", input_shape=(40, 40, 1))
    with pytest.raises(ValueError, match="skip_layers"):
        build_unetr("tiny", skip_layers=(1, 2, 9))
    with pytest.raises(ValueError, match="unknown setting"):
        build_unetr("tiny", patch_size=8)


def test_tiny_model_overfits_four_slices_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("unetr", scale="tiny")
    assert model.output_shape == (None, 32, 32, 1)
    images, masks = disc_slices(4, 32)
    assert_overfits(model, images, masks, keras.optimizers.Adam(1e-2), steps=30, save_to=tmp_path / "unetr.keras")
