"""Mask2Former (Cheng et al., CVPR 2022) in Keras 3: backbone -> pixel decoder -> masked transformer decoder.

The official code (facebookresearch/Mask2Former, MIT) is the specification; this is a rewrite, not a port. Paper 000
trains it on CT + PET slices; lungkit also builds a CT-only variant (``input_shape=(..., 1)``, an ablation row).

Architecture (paper scale):

- **Backbone**: ``keras.applications.ResNet50`` (C2-C5 = ``conv2_block3_out`` 1/4, ``conv3_block4_out`` 1/8,
  ``conv4_block6_out`` 1/16, ``conv5_block3_out`` 1/32), ImageNet weights only from a local file as the kit's other
  encoders (:func:`lungkit.models.resnet_unet.resolve_weights_path`). ImageNet's three channels are filled from
  the kit's input: CT -> (CT, CT, CT); CT + PET -> (CT, PET, mean of both), so both channels reach every
  pretrained filter without new parameters. The ``tiny`` (tests) and ``small`` (CPU, the quick profile) scales use
  a four-stage plain CNN instead; ``small`` keeps the paper's pixel decoder and masked decoder, narrowed
  (:data:`SMALL_SCALE_DEPARTURES`).
- **Pixel decoder** (``pixel_decoder``): ``"msdeform"`` (small and paper scales, the official default): 6
  multi-scale deformable-attention layers on 1/8-1/32 then an FPN step to 1/4, in plain ops
  (:mod:`lungkit.models.deformable_pixel_decoder`); or ``"fpn"`` (the tiny scale; the official
  ``BasePixelDecoder`` option): top-down from C5, lateral 1x1 convs and 3x3 output convs with GroupNorm(32),
  mask features by a 3x3 conv at 1/4. Either way the 1/32, 1/16 and 1/8 outputs feed the transformer decoder.
- **Transformer decoder**: :class:`lungkit.models.query_decoder.QueryTransformerDecoder` with ``masked=True``:
  100 queries, hidden 256, 8 heads, FFN 2048, dropout 0, 9 layers cycling 1/32, 1/16, 1/8 (sine positions + level
  embedding), masked cross-attention -> self-attention -> FFN; predictions before the first layer and after each
  (10 predictions: deep supervision).
- **Loss**: :class:`lungkit.models.set_losses.SetCriterion` (class 2 with no-object 0.1, mask BCE 5, Dice 5,
  matcher 2 / 5 / 5, 12,544 importance-sampled points).

The Keras model (:class:`MaskQuerySegmenter`, shared with MaskFormer) plugs into the kit's training layer:

- ``model(images)`` returns the heads ``{"class_logits": (S, B, Q, C + 1), "mask_logits": (S, B, Q, H/4, W/4)}``;
- ``model.predict`` / ``predict_on_batch`` return the tumour **probability** map (B, H, W, 1) (the official
  semantic inference), so recipes use ``from_logits=False`` and the kit's metrics, sliding-window inference and
  evaluation work unchanged;
- ``compute_loss`` applies the set criterion (the recipe's loss ``set_prediction`` with its ``loss_kwargs``, or the
  scale's default), so Keras' own ``train_step`` keeps loss scaling under mixed precision, distribution and
  resume; ``compute_metrics`` sees the probability map;
- XLA is switched off for this model: the Hungarian matching runs in SciPy through ``tf.numpy_function``.

Parameter count: see ``PAPER_PARAM_COUNT`` and ``PARAM_GAP`` below.
"""

from __future__ import annotations

import logging

import keras
from keras import layers, ops

from lungkit.models.blocks import resolve_config
from lungkit.models.deformable_pixel_decoder import msdeform_pixel_decoder
from lungkit.models.query_decoder import QueryTransformerDecoder, semantic_probabilities
from lungkit.models.set_losses import SetCriterion

logger = logging.getLogger(__name__)

MODEL_NAME = "mask2former"
BACKBONES = ("resnet50", "small_cnn")
PIXEL_DECODERS = ("fpn", "msdeform")
RESNET50_FEATURES = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")

# Official Mask2Former loss and matcher (configs/coco/.../Base-COCO-InstanceSegmentation.yaml, MaskFormer head).
MASK2FORMER_CRITERION = dict(
    class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, mask_loss="bce",
    cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=12544, oversample_ratio=3.0,
    importance_sample_ratio=0.75, max_instances=8, target_mode="instances",
)

# The official MSDeformAttn pixel decoder: 6 layers, 8 heads, 4 points per head and level, FFN 1024.
OFFICIAL_DEFORMABLE = {"num_layers": 6, "num_heads": 8, "num_points": 4, "ffn_dim": 1024}

CONFIGS = {
    # Tests and the overfitting check: a plain CNN backbone, 3 decoder layers (one round over the 3 levels).
    "tiny": {
        "input_shape": (64, 64, 2),
        "backbone": "small_cnn",
        "backbone_widths": (16, 32, 64, 128),
        "weights": None,
        "pixel_decoder": "fpn",
        "deformable": {"num_layers": 1, "num_heads": 4, "num_points": 2, "ffn_dim": 64},
        "conv_dim": 32,
        "mask_dim": 32,
        "norm_groups": 8,
        "hidden": 32,
        "num_heads": 4,
        "ffn_dim": 64,
        "num_layers": 3,
        "num_queries": 8,
        "num_classes": 1,
        "dropout": 0.0,
        "criterion": {**MASK2FORMER_CRITERION, "num_points": None, "max_instances": 4},
    },
    # CPU runs (the quick profile): the paper's architecture, narrowed until a 2-core CPU trains it in minutes.
    # Kept: the MSDeformAttn pixel decoder on 1/8-1/32 + FPN to 1/4, masked attention cycling the three levels,
    # deep supervision, the set criterion. Changed (see SMALL_SCALE_DEPARTURES): a 4-stage CNN backbone instead of
    # ResNet-50, 2 deformable layers instead of 6, widths 64 instead of 256, 6 decoder layers (two rounds over the
    # levels) instead of 9, 16 queries instead of 100. The paper-size small model (ResNet-50, 256 wide, 9 layers)
    # traced for 500 s and took 30-58 s per step on 2 cores (notebook 41's measurement, 2026-11-29).
    "small": {
        "input_shape": (128, 128, 2),
        "backbone": "small_cnn",
        "backbone_widths": (32, 64, 128, 256),
        "weights": None,
        "pixel_decoder": "msdeform",
        "deformable": {"num_layers": 2, "num_heads": 4, "num_points": 4, "ffn_dim": 256},
        "conv_dim": 64,
        "mask_dim": 64,
        "norm_groups": 8,
        "hidden": 64,
        "num_heads": 4,
        "ffn_dim": 256,
        "num_layers": 6,
        "num_queries": 16,
        "num_classes": 1,
        "dropout": 0.0,
        "criterion": {**MASK2FORMER_CRITERION, "num_points": 4096},
    },
    # The official R50 configuration at paper 000's 512 px.
    "paper": {
        "input_shape": (512, 512, 2),
        "backbone": "resnet50",
        "backbone_widths": None,
        "weights": None,
        "pixel_decoder": "msdeform",
        "deformable": dict(OFFICIAL_DEFORMABLE),
        "conv_dim": 256,
        "mask_dim": 256,
        "norm_groups": 32,
        "hidden": 256,
        "num_heads": 8,
        "ffn_dim": 2048,
        "num_layers": 9,
        "num_queries": 100,
        "num_classes": 1,
        "dropout": 0.0,
        "criterion": dict(MASK2FORMER_CRITERION),
    },
}

# Measured with this builder at CONFIGS["paper"] (512 x 512 x 2, MSDeformAttn pixel decoder, one tumour class),
# Keras' way of counting; tests/test_mask2former.py builds it and checks it against an inventory of the official
# modules. With pixel_decoder="fpn" the paper scale has 45,587,330 (the FPN's 3x3 conv on C5's 2048 channels alone
# is 4.7M).
PAPER_PARAM_COUNT = 44_082_754

#: What the ``small`` scale changes from the paper's model, in words (recipes' notes and the notebook quote it).
SMALL_SCALE_DEPARTURES = (
    "scale small (CPU-sized, the quick profile): a 4-stage plain CNN backbone (widths 32/64/128/256) instead of "
    "ResNet-50, MSDeformAttn pixel decoder with 2 layers (4 heads, 4 points, FFN 256) instead of 6 (8 heads, FFN "
    "1024), width 64 instead of 256 (pixel decoder, mask features, queries; FFN 256), 6 masked decoder layers (two "
    "rounds over 1/32, 1/16, 1/8) instead of 9, 16 queries instead of 100; same losses, matching and inference. "
    "The paper-size model at 128 px traced for 500 s and took 30-58 s per step on a 2-core CPU"
)
# The official Mask2Former R50 (MSDeformAttn pixel decoder, COCO instance, 80 classes): the model zoo prints 44M;
# the module inventory in tests/test_mask2former.py gives 44,023,377 (43,970,257 with detectron2's frozen BatchNorm).
REFERENCE_PARAM_COUNT = 44_000_000
REFERENCE_PARAM_SOURCE = "Mask2Former R50 (MSDeformAttn pixel decoder, COCO instance), model zoo: 44M"
#: The difference between PAPER_PARAM_COUNT and REFERENCE_PARAM_COUNT, in words.
PARAM_GAP = (
    "-20,303 for one tumour class instead of COCO's 80 (class head 257 x 2 instead of 257 x 81); +79,680 from "
    "keras.applications' ResNet50 (26,560 conv biases torchvision lacks, 53,120 BatchNorm moving statistics that "
    "Keras counts as weights and PyTorch as buffers): the official inventory with one class plus these is exactly "
    "44,082,754."
)


# ------------------------------------------------------------------------------------------------------- backbone


def _three_channels(images):
    """The kit's 1 (CT) or 2 (CT, PET) channels -> the 3 an ImageNet backbone expects, without new weights."""
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 1:
        return ops.concatenate([images, images, images], axis=-1)
    if channels == 2:
        return ops.concatenate([images, ops.mean(images, axis=-1, keepdims=True)], axis=-1)
    raise ValueError(f"{MODEL_NAME}: input must have 1 (CT), 2 (CT + PET) or 3 channels, got {channels}")


def _resnet50_features(images, weights):
    from lungkit.models.resnet_unet import _load_encoder_weights, resolve_weights_path

    path = resolve_weights_path(weights) if weights is not None else None
    height, width = images.shape[1], images.shape[2]
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(height, width, 3))
    if path is not None:
        _load_encoder_weights(resnet, path)
    extractor = keras.Model(resnet.input, [resnet.get_layer(name).output for name in RESNET50_FEATURES],
                            name="resnet50_backbone")
    return extractor(_three_channels(images)), path


def _small_cnn_features(images, widths):
    """Four stages at 1/4, 1/8, 1/16, 1/32 (for tests: fast to trace, enough to overfit a few discs)."""
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", activation="relu", name="stem_conv")(images)
    features = []
    for stage, width in enumerate(widths):
        x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name=f"stage{stage}_down")(x)
        x = layers.Conv2D(width, 3, padding="same", activation="relu", name=f"stage{stage}_conv")(x)
        features.append(x)
    return features


# -------------------------------------------------------------------------------------------------- pixel decoder


def fpn_pixel_decoder(features, conv_dim: int, mask_dim: int, norm_groups: int, num_levels: int = 3):
    """The official ``BasePixelDecoder``: top-down FPN over C2-C5.

    Args:
        features: [C2 (1/4), C3 (1/8), C4 (1/16), C5 (1/32)] tensors.
        conv_dim: FPN channels.
        mask_dim: channels of the mask features.
        norm_groups: GroupNorm groups.
        num_levels: how many of the coarsest outputs go to the transformer decoder.

    Returns:
        ``(multi_scale, mask_features)``: ``num_levels`` maps coarse to fine (1/32, 1/16, 1/8) and the 1/4 mask
        features.
    """

    def norm(name):
        return layers.GroupNormalization(groups=norm_groups, epsilon=1e-5, name=name)

    outputs = []
    y = None
    for level, feature in reversed(list(enumerate(features))):
        if y is None:  # C5: output conv only
            y = layers.Conv2D(conv_dim, 3, padding="same", use_bias=False, name=f"fpn_output{level}")(feature)
        else:
            lateral = layers.Conv2D(conv_dim, 1, use_bias=False, name=f"fpn_lateral{level}")(feature)
            lateral = norm(f"fpn_lateral{level}_norm")(lateral)
            factor = (feature.shape[1] // y.shape[1], feature.shape[2] // y.shape[2])
            y = lateral + layers.UpSampling2D(factor, interpolation="nearest", name=f"fpn_up{level}")(y)
            y = layers.Conv2D(conv_dim, 3, padding="same", use_bias=False, name=f"fpn_output{level}")(y)
        y = layers.ReLU(name=f"fpn_output{level}_relu")(norm(f"fpn_output{level}_norm")(y))
        outputs.append(y)
    mask_features = layers.Conv2D(mask_dim, 3, padding="same", name="mask_features")(y)
    return outputs[:num_levels], mask_features


# ---------------------------------------------------------------------------------------------------------- model


@keras.saving.register_keras_serializable(package="lungkit")
class MaskQuerySegmenter(keras.Model):
    """A query-based mask classifier (Mask2Former, MaskFormer) wired into the kit's training layer.

    Args:
        feature_network: functional model image -> ([multi-scale features], mask features).
        query_decoder: the :class:`QueryTransformerDecoder`.
        criterion: the default :class:`SetCriterion` (a ``SetCriterion`` passed as ``loss`` to ``compile`` wins).
        build_config: ``{"model": registry name, "scale": ..., "input_shape": ..., "overrides": {...}}``: how to
            rebuild the model (saving).
        **kwargs: ``keras.Model`` arguments.
    """

    def __init__(self, feature_network, query_decoder, criterion: SetCriterion, build_config: dict, **kwargs):
        super().__init__(**kwargs)
        self.feature_network = feature_network
        self.query_decoder = query_decoder
        self.criterion = criterion
        self.build_config = build_config
        self.image_shape = tuple(feature_network.input.shape[1:])

    @property
    def input_shape(self):
        """(None, H, W, C), as a functional model reports it (the kit's sliding-window inference reads it)."""
        return (None,) + self.image_shape

    @property
    def output_shape(self):
        """(None, H, W, 1): the shape ``predict`` returns (the tumour probability map)."""
        return (None,) + self.image_shape[:2] + (1,)

    def build(self, input_shape=None):
        feature_shapes, mask_shape = self.feature_network.output[0], self.feature_network.output[1]
        self.query_decoder.build([tuple(f.shape) for f in feature_shapes], tuple(mask_shape.shape))
        self.built = True

    def call(self, images, training=None):
        features, mask_features = self.feature_network(images, training=training)
        class_logits, mask_logits = self.query_decoder(features, mask_features, training=training)
        return {"class_logits": class_logits, "mask_logits": mask_logits}

    def attend_masks(self, images):
        """The bool attend-masks (True = attend) each decoder layer used, for figures: a list of (B, Q, h x w)."""
        features, mask_features = self.feature_network(images, training=False)
        return self.query_decoder(features, mask_features, training=False, return_attend=True)[2]

    def probabilities(self, heads):
        """Tumour probability map (B, H, W, 1) from the heads' last prediction."""
        return semantic_probabilities(heads["class_logits"][-1], heads["mask_logits"][-1], self.image_shape[:2])

    def compile(self, *args, jit_compile=None, **kwargs):
        """``keras.Model.compile`` with XLA off (the matcher is a SciPy call inside the step)."""
        if jit_compile:
            logger.info("%s: jit_compile turned off: Hungarian matching runs in SciPy (tf.numpy_function)", self.name)
        super().compile(*args, jit_compile=False, **kwargs)

    def _active_criterion(self) -> SetCriterion:
        return self.loss if isinstance(getattr(self, "loss", None), SetCriterion) else self.criterion

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None:
            raise ValueError(f"{self.name}: training needs target masks")
        total, _ = self._active_criterion()(y, y_pred["class_logits"], y_pred["mask_logits"])
        import tensorflow as tf

        # Keras divides a loss by the replicas (it sums their gradients); do the same for this hand-made loss
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if tf.distribute.in_cross_replica_context() is False and replicas > 1:
            total = total / replicas
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, self.probabilities(y_pred), sample_weight=sample_weight)

    def predict_step(self, data):
        x = data[0] if isinstance(data, (tuple, list)) else data
        return self.probabilities(self(x, training=False))

    def get_config(self):
        return {"build_config": self.build_config, "name": self.name}

    @classmethod
    def from_config(cls, config):
        from lungkit.models import build_model

        build = config["build_config"]
        return build_model(build["model"], scale=build["scale"], input_shape=tuple(build["input_shape"]),
                           **build["overrides"])


def build_query_segmenter(config: dict, masked: bool, model_name: str, scale: str, overrides: dict,
                          decoder_input: str = "pixel_decoder") -> MaskQuerySegmenter:
    """Assemble backbone, pixel decoder, query decoder and criterion (shared by Mask2Former and MaskFormer).

    Args:
        config: the resolved config of the model file.
        masked: Mask2Former's masked multi-scale decoder (True) or MaskFormer's plain one (False).
        model_name: registry name (for errors and for rebuilding on load).
        scale: the scale asked for.
        overrides: the builder's overrides (for rebuilding on load).
        decoder_input: ``"pixel_decoder"``: the pixel decoder's 1/32, 1/16, 1/8 outputs (Mask2Former);
            ``"res5"``: the backbone's C5 alone (MaskFormer's default ``TRANSFORMER_IN_FEATURE: res5``).

    Returns:
        The built, uncompiled model.

    Raises:
        ValueError: unknown backbone or pixel decoder, sides not multiples of 32, a bad channel count.
    """
    height, width, channels = config["input_shape"]
    for side_name, side in (("height", height), ("width", width)):
        if side is None or side % 32:
            raise ValueError(f"{model_name}: input {side_name} {side} must be a multiple of 32 (the 1/32 level)")
    if channels not in (1, 2, 3):
        raise ValueError(f"{model_name}: input must have 1 (CT), 2 (CT + PET) or 3 channels, got {channels}")
    if config["backbone"] not in BACKBONES:
        raise ValueError(f"{model_name}: backbone must be one of {BACKBONES}, got {config['backbone']!r}")
    if config["pixel_decoder"] not in PIXEL_DECODERS:
        raise ValueError(f"{model_name}: pixel_decoder must be one of {PIXEL_DECODERS}, got {config['pixel_decoder']!r}")

    images = keras.Input(shape=config["input_shape"], name="image")
    if config["backbone"] == "resnet50":
        features, _ = _resnet50_features(images, config["weights"])
    else:
        if config["weights"] is not None:
            raise ValueError(f"{model_name}: the small_cnn backbone has no pretrained weights; use weights=None")
        features = _small_cnn_features(images, config["backbone_widths"])
    if config["pixel_decoder"] == "msdeform":
        multi_scale, mask_features = msdeform_pixel_decoder(
            features, config["conv_dim"], config["mask_dim"], config["norm_groups"], **config["deformable"]
        )
    else:
        multi_scale, mask_features = fpn_pixel_decoder(
            features, config["conv_dim"], config["mask_dim"], config["norm_groups"], num_levels=3
        )
    if decoder_input == "res5":
        multi_scale = [features[-1]]
    feature_network = keras.Model(images, [multi_scale, mask_features], name="backbone_and_pixel_decoder")
    decoder = QueryTransformerDecoder(
        num_queries=config["num_queries"], num_classes=config["num_classes"], hidden=config["hidden"],
        num_heads=config["num_heads"], ffn_dim=config["ffn_dim"], num_layers=config["num_layers"],
        mask_dim=config["mask_dim"], dropout=config["dropout"], masked=masked, name="query_decoder",
    )
    criterion = SetCriterion(num_classes=config["num_classes"], **config["criterion"])
    build_config = {"model": model_name, "scale": scale, "input_shape": list(config["input_shape"]),
                    "overrides": {key: value for key, value in overrides.items() if key != "input_shape"}}
    model = MaskQuerySegmenter(feature_network, decoder, criterion, build_config, name=model_name)
    model.build(config["input_shape"])
    return model


def build_mask2former(scale: str = "paper", input_shape=None, **overrides) -> MaskQuerySegmenter:
    """Build Mask2Former.

    Args:
        scale: ``tiny`` (tests: small CNN, FPN, 3 layers, 8 queries, 64 px), ``small`` (CPU-sized, 128 px: small
            CNN, 2 deformable layers, 6 decoder layers, 16 queries, width 64; :data:`SMALL_SCALE_DEPARTURES`) or
            ``paper`` (ResNet-50, 6 deformable layers, 9 decoder layers, 100 queries, width 256, 512 px).
        input_shape: (height, width, channels): sides multiples of 32; channels 2 (CT + PET, paper 000), 1 (CT
            only) or 3.
        **overrides: settings of ``CONFIGS[scale]`` (``weights``: None or the local ResNet50 ImageNet notop file;
            ``criterion``: the loss settings, see :class:`SetCriterion`; ``output_activation`` is accepted and
            must be None/``"sigmoid"``-free: the model's predictions are probabilities).

    Returns:
        An uncompiled :class:`MaskQuerySegmenter`.

    Raises:
        ValueError: unknown scale or setting, bad input shape, unknown backbone / pixel decoder.
        FileNotFoundError: ``weights`` names a missing file.
    """
    overrides = dict(overrides)
    # build_for_training adds output_activation=None for logits recipes; this model outputs probabilities instead
    if overrides.pop("output_activation", None) not in (None, "linear"):
        raise ValueError(f"{MODEL_NAME}: output_activation cannot be set (predict returns probabilities)")
    config = resolve_config(CONFIGS, scale, input_shape, overrides, MODEL_NAME)
    return build_query_segmenter(config, masked=True, model_name=MODEL_NAME, scale=scale, overrides=overrides)
