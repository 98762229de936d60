"""U-Net and Attention U-Net: sizes against hand-counted parameters, output ranges, the attention gate against a
numpy re-implementation, attention maps, serialisation, and the builders' error messages."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lungkit.models import build_model  # noqa: E402
from lungkit.models.attention_unet import CONFIGS as ATTENTION_CONFIGS  # noqa: E402
from lungkit.models.attention_unet import attention_maps_model, build_attention_unet  # noqa: E402
from lungkit.models.blocks import AttentionGate  # noqa: E402
from lungkit.models.unet import CONFIGS as UNET_CONFIGS  # noqa: E402
from lungkit.models.unet import build_unet  # noqa: E402


# --- parameter counts, derived by hand from the architecture description ------------------------------------------


def conv_params(kernel: int, in_channels: int, out_channels: int, bias: bool = True) -> int:
    return kernel * kernel * in_channels * out_channels + (out_channels if bias else 0)


def conv_block_params(in_channels: int, filters: int, batch_norm: bool) -> int:
    if batch_norm:  # conv without bias + BN (gamma, beta, moving mean, moving variance)
        return conv_params(3, in_channels, filters, False) + 4 * filters + conv_params(3, filters, filters, False) + 4 * filters
    return conv_params(3, in_channels, filters) + conv_params(3, filters, filters)


def unet_params(in_channels: int, base: int, depth: int, batch_norm: bool) -> int:
    total, channels = 0, in_channels
    for level in range(depth):
        total += conv_block_params(channels, base * 2**level, batch_norm)
        channels = base * 2**level
    total += conv_block_params(channels, base * 2**depth, batch_norm)
    channels = base * 2**depth
    for level in reversed(range(depth)):
        filters = base * 2**level
        total += conv_params(2, channels, filters)  # 2x2 transposed conv with bias
        total += conv_block_params(2 * filters, filters, batch_norm)  # after concatenating the skip
        channels = filters
    return total + conv_params(1, base, 1)


def attention_gate_params(base: int, depth: int) -> int:
    total = 0
    for level in range(depth):
        skip_channels = base * 2**level
        inter = skip_channels // 2
        gating_channels = 2 * skip_channels
        total += 2 * 2 * skip_channels * inter  # theta: 2x2 stride 2, no bias
        total += gating_channels * inter + inter  # phi: 1x1 with bias
        total += inter + 1  # psi: 1x1 to one channel with bias
    return total


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_paper_scale_parameter_count(name):
    config = (UNET_CONFIGS if name == "unet" else ATTENTION_CONFIGS)["paper"]
    model = build_model(name, scale="paper")
    expected = unet_params(1, config["base_filters"], config["depth"], config["batch_norm"])
    if name == "attention_unet":
        expected += attention_gate_params(config["base_filters"], config["depth"])
    print(f"{name} paper scale (base 64, depth 4, 256x256x1): {model.count_params():,} parameters")
    assert model.count_params() == expected
    assert model.output_shape == (None, 256, 256, 1)
    if name == "unet":
        # the classic U-Net with transposed convolutions has ~31.0 M parameters
        assert 30.9e6 < model.count_params() < 31.1e6


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_small_scales_parameter_count(name, scale):
    config = (UNET_CONFIGS if name == "unet" else ATTENTION_CONFIGS)[scale]
    model = build_model(name, scale=scale)
    expected = unet_params(1, config["base_filters"], config["depth"], config["batch_norm"])
    if name == "attention_unet":
        expected += attention_gate_params(config["base_filters"], config["depth"])
    print(f"{name} {scale}: {model.count_params():,} parameters")
    assert model.count_params() == expected


@pytest.mark.parametrize("builder", [build_unet, build_attention_unet])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_tiny_output_shape_and_probability_range(builder, batch_norm):
    model = builder("tiny", input_shape=(48, 32, 1), batch_norm=batch_norm)
    images = np.random.default_rng(0).normal(0, 3, (3, 48, 32, 1)).astype("float32")
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (3, 48, 32, 1)
    assert probabilities.dtype == np.float32
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0


def test_logits_head_is_linear_and_matches_sigmoid_head():
    probability_model = build_unet("tiny", output_activation="sigmoid")
    logit_model = build_unet("tiny", output_activation=None)
    logit_model.set_weights(probability_model.get_weights())
    images = np.random.default_rng(1).normal(0, 1, (2, 32, 32, 1)).astype("float32")
    logits = logit_model.predict(images, verbose=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probability_model.predict(images, verbose=0), atol=1e-6)


def test_three_channel_input_and_residual_blocks_build():
    model = build_attention_unet("tiny", input_shape=(32, 32, 3), residual=True)
    assert model.output_shape == (None, 32, 32, 1)
    assert model.get_layer("encoder_1_proj").kernel.shape == (1, 1, 3, 4)


# --- the attention gate against numpy ----------------------------------------------------------------------------


def bilinear_upsample_x2(array: np.ndarray) -> np.ndarray:
    """(H, W) -> (2H, 2W) with half-pixel centres and edge clamping (the TF/Keras bilinear convention)."""

    def along(axis_length):
        source = (np.arange(2 * axis_length) + 0.5) / 2 - 0.5
        source = np.clip(source, 0, axis_length - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, axis_length - 1)
        return low, high, source - low

    rows_low, rows_high, row_weight = along(array.shape[0])
    cols_low, cols_high, col_weight = along(array.shape[1])
    by_rows = array[rows_low] * (1 - row_weight)[:, None] + array[rows_high] * row_weight[:, None]
    return by_rows[:, cols_low] * (1 - col_weight)[None, :] + by_rows[:, cols_high] * col_weight[None, :]


def test_attention_gate_matches_hand_computation():
    rng = np.random.default_rng(42)
    x = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    g = rng.normal(size=(1, 2, 2, 3)).astype("float32")
    gate = AttentionGate(inter_channels=2, name="gate")
    gate([keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(g)])  # builds the weights
    theta_kernel = rng.normal(size=(2, 2, 2, 2)).astype("float32")
    phi_kernel = rng.normal(size=(1, 1, 3, 2)).astype("float32")
    phi_bias = np.array([0.3, -0.2], dtype="float32")
    psi_kernel = rng.normal(size=(1, 1, 2, 1)).astype("float32")
    psi_bias = np.array([0.1], dtype="float32")
    gate.theta.kernel.assign(theta_kernel)
    gate.phi.kernel.assign(phi_kernel)
    gate.phi.bias.assign(phi_bias)
    gate.psi.kernel.assign(psi_kernel)
    gate.psi.bias.assign(psi_bias)

    theta = np.zeros((2, 2, 2))
    for i in range(2):
        for j in range(2):
            patch = x[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, :]  # (2, 2, Cx)
            theta[i, j] = np.einsum("abk,abkc->c", patch, theta_kernel)
    phi = g[0] @ phi_kernel[0, 0] + phi_bias
    q = np.maximum(theta + phi, 0.0)
    coarse_alpha = 1 / (1 + np.exp(-(q @ psi_kernel[0, 0, :, 0] + psi_bias[0])))
    alpha = bilinear_upsample_x2(coarse_alpha)
    expected_gated = x[0] * alpha[..., None]

    gated, coefficients = gate([keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(g)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(coefficients)[0, ..., 0], alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gated)[0], expected_gated, rtol=1e-5, atol=1e-6)


def test_attention_gate_rejects_mismatched_gating_resolution():
    gate = AttentionGate(inter_channels=2, name="gate")
    with pytest.raises(ValueError, match="half the skip resolution"):
        gate([keras.Input((8, 8, 4)), keras.Input((8, 8, 8))])


# --- attention maps ------------------------------------------------------------------------------------------------


def test_attention_maps_model_shapes_and_range():
    model = build_attention_unet("tiny", input_shape=(32, 32, 1), depth=3)
    maps_model = attention_maps_model(model)
    images = np.random.default_rng(3).normal(0, 1, (2, 32, 32, 1)).astype("float32")
    maps = maps_model.predict(images, verbose=0)
    assert sorted(maps) == ["attention_gate_1", "attention_gate_2", "attention_gate_3"]
    for level, expected_side in ((1, 32), (2, 16), (3, 8)):
        coefficients = maps[f"attention_gate_{level}"]
        assert coefficients.shape == (2, expected_side, expected_side, 1)
        assert coefficients.min() >= 0.0 and coefficients.max() <= 1.0
    # the maps model shares the trained weights: changing the model changes the maps
    gate = model.get_layer("attention_gate_1")
    gate.psi.bias.assign([50.0])  # saturates the gate open
    np.testing.assert_allclose(maps_model.predict(images, verbose=0)["attention_gate_1"], 1.0, atol=1e-6)


def test_attention_maps_model_rejects_plain_unet():
    with pytest.raises(ValueError, match="attention_gate"):
        attention_maps_model(build_unet("tiny"))


def test_attention_unet_survives_keras_save_and_load(tmp_path):
    model = build_attention_unet("tiny")
    images = np.random.default_rng(4).normal(0, 1, (2, 32, 32, 1)).astype("float32")
    path = tmp_path / "attention_unet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    maps = attention_maps_model(loaded).predict(images, verbose=0)
    expected = attention_maps_model(model).predict(images, verbose=0)
    np.testing.assert_allclose(maps["attention_gate_2"], expected["attention_gate_2"], atol=1e-6)


# --- builder errors ------------------------------------------------------------------------------------------------


def test_builders_reject_bad_settings():
    with pytest.raises(ValueError, match="unknown setting.*base_filter"):
        build_unet("tiny", base_filter=8)
    with pytest.raises(ValueError, match="unknown scale"):
        build_attention_unet("huge")
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 4"):
        build_unet("tiny", input_shape=(30, 32, 1))
    with pytest.raises(ValueError, match="output_activation"):
        build_unet("tiny", output_activation="softmax")
    with pytest.raises(ValueError, match="height, width, channels"):
        build_attention_unet("tiny", input_shape=(32, 32))


def test_parameter_counts_table_reads_the_checked_constants():
    from lungkit.models import parameter_counts
    from lungkit.models import resnet_unet, swin_unet, unetr

    table = parameter_counts(["swin_unet", "unetr", "resnet50_unet"])
    for name, module in (("swin_unet", swin_unet), ("unetr", unetr), ("resnet50_unet", resnet_unet)):
        assert table.loc[name, "lungkit (paper config)"] == f"{module.PAPER_PARAM_COUNT:,}"
        assert table.loc[name, "published"] == f"{module.REFERENCE_PARAM_COUNT:,}"
        assert table.loc[name, "gap explained"]
    with pytest.raises(ValueError, match="records no published parameter count"):
        parameter_counts(["unet"])
