"""Swin-UNet: window bookkeeping, shifted-window attention against a brute-force version, parameter counts, and an
overfitting check of the tiny model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kit_fixtures import assert_overfits, disc_slices
from lungkit.models import build_model
from lungkit.models.swin_unet import (
    MASK_VALUE,
    PAPER_PARAM_COUNT,
    REFERENCE_PARAM_COUNT,
    PatchMerging,
    SwinTransformerBlock,
    build_swin_unet,
    pixel_shuffle,
    relative_position_index,
    shifted_window_attention_mask,
    window_partition,
    window_reverse,
)


def reference_param_count(
    embed=96, depths=(2, 2, 2, 2), heads=(3, 6, 12, 24), window=7, grid=56, in_channels=3, classes=9
):
    """Parameter inventory of the reference SwinTransformerSys (HuCaoFighting/Swin-Unet), counted module by module."""

    def block(dim, num_heads, win):  # 2 LN + qkv + proj + MLP 4x + relative position bias table
        attention = (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (2 * win - 1) ** 2 * num_heads
        return 2 * 2 * dim + attention + (8 * dim * dim + 5 * dim)

    total = 4 * 4 * in_channels * embed + embed + 2 * embed  # patch embedding conv + LayerNorm
    for stage, (depth, num_heads) in enumerate(zip(depths, heads)):
        dim, side = embed * 2**stage, grid // 2**stage
        total += depth * block(dim, num_heads, min(window, side))
        if stage < 3:
            total += 2 * 4 * dim + 4 * dim * 2 * dim  # patch merging: LN(4C) + linear 4C -> 2C, no bias
    total += 2 * 8 * embed  # encoder norm
    total += 8 * embed * 16 * embed + 2 * 4 * embed  # first patch expand: linear 8C -> 16C, LN(4C)
    for stage in (2, 1, 0):  # decoder stages use the encoder depths (the reference ignores DECODER_DEPTHS)
        dim, side = embed * 2**stage, grid // 2**stage
        total += 2 * dim * dim + dim  # concat-back linear
        total += depths[stage] * block(dim, heads[stage], min(window, side))
        if stage > 0:
            total += dim * 2 * dim + 2 * (dim // 2)  # patch expand
    total += 2 * embed  # decoder norm
    total += embed * 16 * embed + 2 * embed  # final x4 expand
    return total + embed * classes  # 1x1 output conv, no bias


def test_window_partition_reverse_round_trip():
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype("float32")
    windows = ops.convert_to_numpy(window_partition(x, 4))
    assert windows.shape == (2 * 2 * 3, 4, 4, 3)
    # row-major windows per image: window 1 is the first window row's second column, window 6 image 2's first
    np.testing.assert_array_equal(windows[1], x[0, 0:4, 4:8])
    np.testing.assert_array_equal(windows[4], x[0, 4:8, 4:8])
    np.testing.assert_array_equal(windows[6], x[1, 0:4, 0:4])
    np.testing.assert_array_equal(ops.convert_to_numpy(window_reverse(windows, 4, 8, 12)), x)


def test_relative_position_index_window_2_by_hand():
    # tokens (0,0), (0,1), (1,0), (1,1); offset (dr, dc) -> (dr + 1) * 3 + (dc + 1)
    expected = np.array([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    np.testing.assert_array_equal(relative_position_index(2), expected)


def test_relative_position_index_window_7_properties():
    index = relative_position_index(7)
    centre = 6 * 13 + 6  # offset (0, 0)
    assert index.shape == (49, 49)
    assert index.min() == 0 and index.max() == 13 * 13 - 1
    np.testing.assert_array_equal(np.diag(index), centre)
    # offsets are antisymmetric, so the two indices of a pair mirror around the centre
    np.testing.assert_array_equal(index + index.T, 2 * centre)
    assert index[0, 48] == 0 and index[48, 0] == 168  # opposite corners: offsets (-6,-6) and (6,6)


def test_shifted_window_mask_4x4_window_2_shift_1_by_hand():
    # After rolling by -1 the last row/column hold the wrapped first row/column. Band labels 3 * row_band + col_band
    # per window (tokens in row-major order), written out by hand:
    labels = [[0, 0, 0, 0], [1, 2, 1, 2], [3, 3, 6, 6], [4, 5, 7, 8]]
    expected = np.stack([np.where(np.equal.outer(window, window), 0.0, MASK_VALUE) for window in labels])
    mask = shifted_window_attention_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0.0, MASK_VALUE}


@pytest.mark.parametrize("size, window, shift", [(8, 4, 2), (56, 7, 3)])
def test_shifted_window_mask_blocks_exactly_wrapped_pairs(size, window, shift):
    mask = shifted_window_attention_mask(size, size, window, shift)
    # Independent rule: in the rolled grid a position p holds a wrapped-around token along an axis iff
    # p >= size - shift. Two tokens of one window may attend iff they agree on "wrapped" along both axes.
    rows, cols = np.mgrid[:size, :size]
    wrapped = np.stack([rows >= size - shift, cols >= size - shift], axis=-1).astype("float32")
    wrapped_windows = ops.convert_to_numpy(window_partition(wrapped[None], window)).reshape(-1, window * window, 2)
    same = np.all(wrapped_windows[:, :, None, :] == wrapped_windows[:, None, :, :], axis=-1)
    np.testing.assert_array_equal(mask, np.where(same, 0.0, MASK_VALUE))
    assert np.all(mask[0] == 0.0)  # the top-left window never sees wrapped tokens
    assert np.any(mask[-1] != 0.0)  # the bottom-right one does


def brute_force_shifted_attention(block: SwinTransformerBlock, x: np.ndarray) -> np.ndarray:
    """SW-MSA computed token by token in the *unrolled* grid, straight from the definition.

    Token p attends to token q iff, after the cyclic shift, both lie in the same window and neither crossed the
    wrap-around border differently from the other; the bias is the table entry of their in-window offset.
    """
    attention = block.attention
    kernel_qkv, bias_qkv = (ops.convert_to_numpy(w) for w in attention.qkv.weights)
    kernel_proj, bias_proj = (ops.convert_to_numpy(w) for w in attention.proj.weights)
    table = ops.convert_to_numpy(attention.relative_position_bias_table)
    window, shift, heads = block.active_window, block.active_shift, attention.num_heads
    _, height, width, dim = x.shape
    head_dim = dim // heads
    qkv = (x[0] @ kernel_qkv + bias_qkv).reshape(height, width, 3, heads, head_dim)
    out = np.zeros((height, width, heads, head_dim))
    for r in range(height):
        for c in range(width):
            sr, sc = (r - shift) % height, (c - shift) % width  # position in the rolled grid
            scores, values = [], []
            for r2 in range(height):
                for c2 in range(width):
                    sr2, sc2 = (r2 - shift) % height, (c2 - shift) % width
                    if (sr // window, sc // window) != (sr2 // window, sc2 // window):
                        continue
                    wrapped = (sr >= height - shift, sc >= width - shift)
                    if wrapped != (sr2 >= height - shift, sc2 >= width - shift):
                        continue
                    offset = ((sr % window) - (sr2 % window) + window - 1) * (2 * window - 1) + (
                        (sc % window) - (sc2 % window) + window - 1
                    )
                    q, k = qkv[r, c, 0], qkv[r2, c2, 1]
                    scores.append(np.sum(q * k, axis=-1) * head_dim**-0.5 + table[offset])
                    values.append(qkv[r2, c2, 2])
            scores = np.array(scores)  # (keys, heads)
            weights = np.exp(scores - scores.max(axis=0))
            weights /= weights.sum(axis=0)
            out[r, c] = np.einsum("kh,khd->hd", weights, np.array(values))
    return (out.reshape(height, width, dim) @ kernel_proj + bias_proj)[None]


@pytest.mark.parametrize("shift_size", [0, 2])
def test_swin_block_attention_matches_brute_force(shift_size):
    keras.utils.set_random_seed(1)
    block = SwinTransformerBlock(num_heads=2, window_size=4, shift_size=shift_size, name="block")
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 8)).astype("float32")
    block(x)
    # O(1) random weights (the std-0.02 initialisation makes every attention nearly uniform), so that a wrong
    # mask or relative-position lookup changes the output by far more than the tolerance
    rng = np.random.default_rng(2)
    for weight in block.attention.weights:
        weight.assign(rng.normal(0.0, 0.5, weight.shape).astype("float32"))
    assert (block.active_window, block.active_shift) == (4, shift_size)
    got = ops.convert_to_numpy(block.shifted_window_attention(x))
    np.testing.assert_allclose(got, brute_force_shifted_attention(block, x), rtol=1e-4, atol=1e-4)


def test_window_not_smaller_than_grid_is_the_grid_without_shift():
    block = SwinTransformerBlock(num_heads=1, window_size=7, shift_size=3)
    block(np.zeros((1, 7, 7, 4), "float32"))
    assert (block.active_window, block.active_shift) == (7, 0)
    block = SwinTransformerBlock(num_heads=1, window_size=4, shift_size=2)
    block(np.zeros((1, 2, 2, 4), "float32"))
    assert (block.active_window, block.active_shift) == (2, 0)


def test_patch_merging_order_and_pixel_shuffle():
    x = np.random.default_rng(3).normal(size=(2, 4, 6, 5)).astype("float32")
    merging = PatchMerging()
    got = ops.convert_to_numpy(merging(x))
    concatenated = np.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    expected = ops.convert_to_numpy(merging.reduction(merging.norm(concatenated)))
    assert got.shape == (2, 2, 3, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    y = np.random.default_rng(4).normal(size=(2, 3, 5, 32)).astype("float32")
    for scale in (2, 4):
        np.testing.assert_array_equal(
            ops.convert_to_numpy(pixel_shuffle(y, scale)), tf.nn.depth_to_space(y, scale).numpy()
        )


@pytest.mark.slow
def test_paper_model_shape_and_parameter_count():
    model = build_swin_unet("paper")
    assert model.input_shape == (None, 224, 224, 1)
    assert model.output_shape == (None, 224, 224, 1)
    assert model.count_params() == PAPER_PARAM_COUNT
    # token grids 56/28/14/7: windows shift on the 56x56 grid, not on the 7x7 one
    assert model.get_layer("encoder_stage0_block1").active_shift == 3
    assert model.get_layer("encoder_stage3_block1").active_shift == 0
    prediction = ops.convert_to_numpy(model(np.zeros((1, 224, 224, 1), "float32")))
    assert prediction.shape == (1, 224, 224, 1) and np.all((prediction >= 0) & (prediction <= 1))
    # Cao et al.'s 27.17M (3-channel input, 9 classes), parameter for parameter
    reference = build_swin_unet("paper", input_shape=(224, 224, 3), num_classes=9, head_bias=False)
    assert reference.count_params() == REFERENCE_PARAM_COUNT == reference_param_count()
    assert round(REFERENCE_PARAM_COUNT / 1e6, 2) == 27.17
    # one channel in and out, plus the head's bias (absent in the reference)
    assert PAPER_PARAM_COUNT == reference_param_count(in_channels=1, classes=1) + 1


def test_bad_sizes_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="not a multiple of window"):
        build_swin_unet("paper", input_shape=(256, 256, 1))  # grid 64 with window 7
    with pytest.raises(ValueError, match="decoder_depths"):
        build_swin_unet("tiny", decoder_depths=(2, 2, 2, 1))


def test_tiny_model_overfits_four_slices_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("swin_unet", scale="tiny")
    assert model.output_shape == (None, 32, 32, 1)
    images, masks = disc_slices(4, 32)
    assert_overfits(model, images, masks, keras.optimizers.Adam(3e-3), steps=20, save_to=tmp_path / "swin.keras")


# ------------------------------------------------------------------------------------ pretrained start (Cao et al.)
# A random keras-hub Swin backbone saved as a local preset stands in for ImageNet Swin-T: what is under test is the
# mapping, and a wrong mapping (qkv layout, bias table order, patch merging order, shift masks) changes the features.
PRESET_LAYOUT = {"embed_dim": 16, "depths": (2, 2, 2), "num_heads": (1, 2, 4), "window_size": 4}


@pytest.fixture(scope="module")
def swin_preset(tmp_path_factory):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(7)
    backbone = keras_hub.models.SwinTransformerBackbone(image_shape=(64, 64, 3), **PRESET_LAYOUT)
    folder = tmp_path_factory.mktemp("swin") / "preset"
    backbone.save_to_preset(str(folder))
    return folder, backbone


def test_a_preset_start_gives_the_backbones_own_features_and_mirrors_the_decoder(swin_preset):
    from lungkit.models.swin_unet import encoder_weights_status

    folder, backbone = swin_preset
    model = build_swin_unet("tiny", input_shape=(64, 64, 1), weights=str(folder))
    grey = np.random.default_rng(0).normal(size=(2, 64, 64, 1)).astype("float32")
    features = keras.Model(model.input, model.get_layer("encoder_norm").output)(grey)
    # the grey slice repeated to 3 channels, as Cao et al. feed a 1-channel input to the ImageNet patch embedding
    expected = ops.convert_to_numpy(backbone(np.repeat(grey, 3, axis=-1)))
    np.testing.assert_allclose(ops.convert_to_numpy(features).reshape(expected.shape), expected, atol=1e-4)
    # Cao et al.'s load_from: each decoder stage starts from the encoder stage at its resolution
    for stage in (0, 1):
        for block in (0, 1):
            decoder = model.get_layer(f"decoder_stage{stage}_block{block}").get_weights()
            encoder = model.get_layer(f"encoder_stage{stage}_block{block}").get_weights()
            assert all(np.array_equal(d, e) for d, e in zip(decoder, encoder, strict=True))
    status = encoder_weights_status(model)
    assert status["pretrained"] is True and status["source"] == str(folder.resolve()) and len(status["sha256"]) == 64
    assert encoder_weights_status(build_swin_unet("tiny"))["pretrained"] is False


def test_a_preset_with_another_window_gets_its_bias_tables_resized(swin_preset):
    from lungkit.models.swin_unet import resize_relative_position_table

    folder, backbone = swin_preset
    model = build_swin_unet("tiny", input_shape=(64, 64, 1), weights=str(folder), window_size=2)
    table = model.get_layer("encoder_stage0_block0").attention.relative_position_bias_table
    assert tuple(table.shape) == (9, 1)  # (2*2-1)^2 offsets, from the preset's (2*4-1)^2
    source = ops.convert_to_numpy(backbone.stages[0].blocks[0].attn.relative_position_bias_table)
    np.testing.assert_allclose(ops.convert_to_numpy(table), resize_relative_position_table(source, 2), atol=1e-6)
    constant = np.full((49, 3), 0.25, np.float32)
    np.testing.assert_allclose(resize_relative_position_table(constant, 5), np.full((81, 3), 0.25), atol=1e-5)


def test_a_preset_that_does_not_fit_or_is_missing_is_refused_before_training(swin_preset, tmp_path):
    folder, _ = swin_preset
    with pytest.raises(ValueError, match=r"embed_dim 48 \(preset 16\)"):
        build_swin_unet("small", weights=str(folder))
    with pytest.raises(FileNotFoundError, match="Swin preset folder not found.*kagglehub"):
        build_swin_unet("tiny", weights=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="never downloads"):
        build_swin_unet("tiny", weights="imagenet")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"registered_name": "keras_hub>SAMBackbone"}')
    with pytest.raises(ValueError, match="SAMBackbone, not a keras-hub SwinTransformerBackbone"):
        build_swin_unet("tiny", weights=str(other))
    (other / "config.json").write_bytes(b"\x00\xff{")
    with pytest.raises(ValueError, match="not a readable keras-hub preset config"):
        build_swin_unet("tiny", weights=str(other))


def test_an_experiment_built_from_a_preset_records_it_in_the_protocol(swin_preset, tmp_path):
    from lungkit.experiments.segmentation import SegmentationExperiment
    from lungkit.models.swin_unet import preset_settings

    folder, _ = swin_preset
    assert preset_settings("") == {} and preset_settings(None) == {}
    settings = preset_settings(folder)
    assert settings == {"weights": str(folder), "embed_dim": 16, "num_heads": (1, 2, 4)}
    experiment = SegmentationExperiment("paper001", "swin_unet", "smoke", tmp_path / "run")
    model = experiment.build_model(**settings)
    assert experiment.pretrained["pretrained"] is True
    # by the folder's name, never the user's path; part of the recipe, so a run trained without it is not reused
    assert experiment.recipe.protocol()["model_settings"] == {"weights": "preset", "embed_dim": 16,
                                                               "num_heads": [1, 2, 4]}
    assert model.get_layer("patch_embedding").projection.kernel.shape[-1] == 16
