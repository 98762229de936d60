"""Mask2Former: shapes and the kit contract (heads from ``model(x)``, probabilities from ``predict``), the CT-only
variant, masked attention inside the model, overfitting four discs, and the paper-scale parameter count against an
independent inventory of the official model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kit_fixtures import disc_slices
from lungkit.models import available_models, build_model
from lungkit.models.mask2former import PAPER_PARAM_COUNT, REFERENCE_PARAM_COUNT, build_mask2former


def official_param_inventory(num_classes=80, pixel_decoder="msdeform", backbone_bn_counted=True):
    """Parameters of the official Mask2Former R50 counted module by module, PyTorch's way (buffers excluded).

    Args:
        num_classes: COCO instance 80 (the model zoo's 44M), paper 000: 1 (tumour).
        pixel_decoder: ``"msdeform"`` (official default) or ``"fpn"`` (``BasePixelDecoder``, as lungkit builds).
        backbone_bn_counted: count the ResNet's BatchNorm affine weights (torchvision); detectron2 freezes them
            (FrozenBatchNorm2d buffers) and its count is 53,120 lower.
    """
    d = 256
    backbone = 23_508_032 if backbone_bn_counted else 23_508_032 - 53_120
    gn = 2 * d
    if pixel_decoder == "msdeform":
        input_proj = sum(c * d + d + gn for c in (512, 1024, 2048))
        deform_attention = (d * 192 + 192) + (d * 96 + 96) + 2 * (d * d + d)  # offsets, weights, value, output
        encoder_layer = deform_attention + 2 * d + (d * 1024 + 1024) + (1024 * d + d) + 2 * d
        pixel = input_proj + 3 * d + 6 * encoder_layer + (d * d + d)  # + level embed, 1x1 mask-feature conv
        pixel += (d * d + gn) + (9 * d * d + gn)  # FPN to 1/4: lateral and output conv on res2
    else:
        pixel = 9 * 2048 * d + gn  # res5 output conv
        pixel += sum(c * d + gn + 9 * d * d + gn for c in (1024, 512, 256))  # lateral + output on res4..res2
        pixel += 9 * d * d + d  # 3x3 mask-feature conv with bias
    attention = 4 * d * d + 4 * d
    layer = 2 * (attention + 2 * d) + (d * 2048 + 2048) + (2048 * d + d) + 2 * d
    decoder = 9 * layer + 2 * d + 2 * 100 * d + 3 * d + (d * (num_classes + 1) + num_classes + 1) + 3 * (d * d + d)
    return backbone + pixel + decoder


def test_registered_and_heads_shapes_and_probabilities():
    assert "mask2former" in available_models()
    model = build_model("mask2former", scale="tiny")
    images, _ = disc_slices(2, 64, channels=2)
    heads = model(images)
    # 3 layers -> 4 predictions (one before the first layer), 8 queries, tumour + no object, masks at 1/4
    assert tuple(heads["class_logits"].shape) == (4, 2, 8, 2)
    assert tuple(heads["mask_logits"].shape) == (4, 2, 8, 16, 16)
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (2, 64, 64, 1)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    attend = model.attend_masks(images)
    assert [tuple(a.shape) for a in attend] == [(2, 8, 4), (2, 8, 16), (2, 8, 64)]  # 1/32, 1/16, 1/8 of 64 px
    assert all(np.asarray(a).any(axis=-1).all() for a in attend)  # no row is fully blocked


def test_ct_only_variant_and_bad_inputs():
    model = build_mask2former("tiny", input_shape=(32, 32, 1))
    assert model.predict(np.zeros((1, 32, 32, 1), np.float32), verbose=0).shape == (1, 32, 32, 1)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_mask2former("tiny", input_shape=(48, 48, 2))
    with pytest.raises(ValueError, match="channels"):
        build_mask2former("tiny", input_shape=(32, 32, 4))
    with pytest.raises(ValueError, match="pixel_decoder"):
        build_mask2former("tiny", pixel_decoder="deformable")


def test_query_tables_start_independent_and_repeat_after_a_seed():
    """The query features and positions are two N(0, 1) tables (two nn.Embedding in the official code): they start
    different, and a seed alone decides them (not the first import's Python random state)."""
    from lungkit.training import seed_run

    def tables():
        seed_run(3, deterministic=False)
        model = build_model("mask2former", "tiny", input_shape=(64, 64, 2))
        return {w.path.split("/")[-1]: w.numpy() for w in model.weights
                if w.path.endswith(("query_features", "query_positions", "level_embedding"))}

    first, second = tables(), tables()
    assert set(first) == {"query_features", "query_positions", "level_embedding"}
    assert not np.array_equal(first["query_features"], first["query_positions"])
    assert 0.8 < float(first["query_features"].std()) < 1.2  # N(0, 1), not Keras' default N(0, 0.05)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_tiny_with_the_deformable_pixel_decoder():
    model = build_mask2former("tiny", pixel_decoder="msdeform")
    heads = model(np.zeros((1, 64, 64, 2), np.float32))
    assert tuple(heads["mask_logits"].shape) == (4, 1, 8, 16, 16)
    assert model.feature_network.get_layer("msdeform_encoder").num_layers == 1


def test_tiny_mask2former_overfits_four_discs():
    keras.utils.set_random_seed(0)
    images, masks = disc_slices(4, 64, channels=2, seed=0)
    model = build_mask2former("tiny")
    model.compile(keras.optimizers.Adam(1e-3))
    losses = [float(model.train_on_batch(images, masks)) for _ in range(60)]
    assert losses[-1] < 0.05 * losses[0], losses[::10]
    predicted = model.predict(images, verbose=0)[..., 0] > 0.5
    target = masks[..., 0] > 0.5
    dice = 2 * (predicted & target).sum((1, 2)) / (predicted.sum((1, 2)) + target.sum((1, 2)))
    assert dice.mean() > 0.9, dice


def test_official_inventory_matches_the_published_44m():
    # the model zoo prints 44M for R50 (COCO instance, 80 classes); the inventory must round to it either way
    assert round(official_param_inventory() / 1e6) == REFERENCE_PARAM_COUNT / 1e6 == 44
    assert round(official_param_inventory(backbone_bn_counted=False) / 1e6) == 44


@pytest.mark.slow
def test_paper_scale_parameter_count():
    model = build_mask2former("paper")
    assert model.count_params() == PAPER_PARAM_COUNT
    # Keras' ResNet50 carries conv biases (+26,560) and counts BatchNorm moving statistics (+53,120): exactly the
    # difference to the official inventory (MSDeformAttn pixel decoder) with paper 000's one class
    assert PAPER_PARAM_COUNT == official_param_inventory(num_classes=1) + 26_560 + 53_120
    fpn_model = build_mask2former("paper", pixel_decoder="fpn")
    assert fpn_model.count_params() == official_param_inventory(num_classes=1, pixel_decoder="fpn") + 26_560 + 53_120


@pytest.mark.slow
def test_mixed_precision_step_with_the_deformable_decoder():
    images, masks = disc_slices(2, 64, channels=2)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_mask2former("tiny", pixel_decoder="msdeform")
        model.compile(keras.optimizers.Adam(1e-3))
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"  # Keras scales the hand-made loss too
        loss = float(model.train_on_batch(images, masks))
        probabilities = model.predict(images, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.isfinite(loss) and probabilities.dtype == np.float32 and np.isfinite(probabilities).all()


def test_saves_and_reloads_with_identical_predictions(tmp_path):
    model = build_mask2former("tiny", input_shape=(32, 32, 1))
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert type(reloaded).__name__ == "MaskQuerySegmenter" and reloaded.build_config == model.build_config
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), model.predict(images, verbose=0))


@pytest.mark.parametrize("name", ["mask2former", "maskformer"])
def test_small_scale_is_the_cpu_sized_model_its_departures_describe(name):
    """The quick profile trains scale ``small``: the paper's decoder kind on a narrowed model, as
    ``SMALL_SCALE_DEPARTURES`` (quoted in the recipes' notes) says, and small enough for a 2-core CPU."""
    from lungkit.models import mask2former, maskformer

    config = (mask2former if name == "mask2former" else maskformer).CONFIGS["small"]
    assert config["backbone"] == "small_cnn" and config["backbone_widths"] == (32, 64, 128, 256)
    assert (config["hidden"], config["conv_dim"], config["mask_dim"], config["num_queries"]) == (64, 64, 64, 16)
    assert config["num_layers"] == 6
    assert config["pixel_decoder"] == ("msdeform" if name == "mask2former" else "fpn")
    if name == "mask2former":
        assert config["deformable"]["num_layers"] == 2
        for words in ("4-stage plain CNN", "2 layers", "width 64", "6 masked decoder layers", "16 queries"):
            assert words in mask2former.SMALL_SCALE_DEPARTURES
    model = build_model(name, scale="small", input_shape=(128, 128, 2))
    assert model.count_params() < 2_500_000  # the paper's model has 44 M (Mask2Former) / 41 M (MaskFormer)
    heads = model(np.zeros((1, 128, 128, 2), "float32"))
    assert heads["mask_logits"].shape[-2:] == (32, 32) and heads["class_logits"].shape[2] == 16
