"""Set-prediction losses of Mask2Former and MaskFormer: targets from masks, matching, and the three loss terms.

The kit's pipelines yield (image, binary tumour mask). A set-prediction model needs a *set* of target masks per
image; :func:`instance_targets` makes it from the binary mask:

- ``"instances"``: each connected tumour (8-neighbourhood, as ``lungkit.metrics.tumour_components``) is one target
  of class 0 ("tumour"); an image with more tumours than ``max_instances`` keeps the largest
  ``max_instances - 1`` and merges the rest into the last slot, so that no tumour pixel is ever taught as "no
  object". This is what paper 000's "instance segmentation" and a lesion-level metric need.
- ``"semantic"``: one target per class present (the whole tumour mask), as the official code's semantic setting.

Loss terms (official ``SetCriterion``), for each of the model's predictions (before the first decoder layer and
after each layer: deep supervision), each with its own matching (:mod:`lungkit.models.hungarian_matcher`):

- class: cross-entropy over the C + 1 classes of *every* query, matched queries against their target's class and
  the others against "no object", weighted per class (no-object 0.1) and normalised by the sum of the weights
  (PyTorch's ``cross_entropy(weight=...)``);
- mask: sigmoid BCE (Mask2Former) or sigmoid focal loss (MaskFormer), mean over the points of a matched mask, summed
  over matched masks and divided by the number of target masks;
- dice: ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` per matched mask, summed and divided likewise.

The points are chosen per matched mask by importance sampling on the prediction (12,544 points, oversampling 3,
75% most uncertain), as :func:`lungkit.models.point_sampling.uncertain_point_coords`; ``num_points=None`` uses
every pixel of the prediction's resolution instead (targets resized to it by area averaging, then thresholded at
0.5), the "full-mask losses at 1/4 scale" alternative.
"""

from __future__ import annotations

import numpy as np
from keras import ops
from scipy import ndimage

from lungkit.models import hungarian_matcher
from lungkit.models.point_sampling import point_sample, uncertain_point_coords, uniform_points

TARGET_MODES = ("instances", "semantic")
MASK_LOSSES = ("bce", "focal")


def instance_targets_numpy(masks: np.ndarray, max_instances: int, mode: str = "instances"):
    """Target masks of a batch of binary tumour masks.

    Args:
        masks: (B, H, W) or (B, H, W, 1) binary masks (> 0.5 is tumour).
        max_instances: target slots per image (K).
        mode: ``"instances"`` (connected tumours) or ``"semantic"`` (one mask per class present).

    Returns:
        ``(targets, valid)``: float32 (B, K, H, W) masks and bool (B, K); padded slots are all zero and invalid.

    Raises:
        ValueError: unknown mode or ``max_instances`` < 1.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"target mode must be one of {TARGET_MODES}, got {mode!r}")
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[..., 0]
    binary = masks > 0.5
    batch, height, width = binary.shape
    targets = np.zeros((batch, max_instances, height, width), np.float32)
    valid = np.zeros((batch, max_instances), bool)
    structure = ndimage.generate_binary_structure(2, 2)
    for image in range(batch):
        if not binary[image].any():
            continue
        if mode == "semantic":
            targets[image, 0] = binary[image]
            valid[image, 0] = True
            continue
        labels, count = ndimage.label(binary[image], structure=structure)
        areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        order = np.argsort(-areas, kind="stable") + 1  # component labels, largest first
        for slot, label in enumerate(order[: max_instances - 1] if count > max_instances else order):
            targets[image, slot] = labels == label
            valid[image, slot] = True
        if count > max_instances:
            targets[image, max_instances - 1] = np.isin(labels, order[max_instances - 1 :])
            valid[image, max_instances - 1] = True
    return targets, valid


def instance_targets(masks, max_instances: int, mode: str = "instances"):
    """:func:`instance_targets_numpy` as a graph op; returns (B, K, H, W) float32 and (B, K) bool tensors."""
    import tensorflow as tf

    def run(batch_masks):
        return instance_targets_numpy(batch_masks, max_instances, mode)

    targets, valid = tf.numpy_function(run, [tf.cast(masks, tf.float32)], [tf.float32, tf.bool], stateful=False)
    shape = tf.shape(masks)
    targets = tf.reshape(targets, (shape[0], max_instances, shape[1], shape[2]))
    valid = tf.reshape(valid, (shape[0], max_instances))
    return targets, valid


def weighted_class_loss(class_logits, query_classes, class_weights):
    """Cross-entropy over queries with per-class weights, normalised by the weights' sum (PyTorch's rule).

    Args:
        class_logits: (B, Q, C + 1) logits.
        query_classes: (B, Q) int target class per query (C = no object).
        class_weights: (C + 1,) weights, e.g. 1 for real classes and 0.1 for no object.

    Returns:
        Scalar float32.
    """
    logits = ops.cast(class_logits, "float32")
    log_probabilities = ops.log_softmax(logits, axis=-1)
    one_hot = ops.one_hot(ops.cast(query_classes, "int32"), ops.shape(logits)[-1])
    nll = -ops.sum(one_hot * log_probabilities, axis=-1)
    weights = ops.sum(one_hot * ops.convert_to_tensor(class_weights, "float32"), axis=-1)
    return ops.sum(weights * nll) / ops.sum(weights)


def sigmoid_bce_per_mask(logits, targets):
    """Mean sigmoid binary cross-entropy over the last axis: (..., P) -> (...)."""
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    return ops.mean(targets * ops.softplus(-logits) + (1.0 - targets) * ops.softplus(logits), axis=-1)


def sigmoid_focal_per_mask(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Mean sigmoid focal loss over the last axis (MaskFormer's mask loss): (..., P) -> (...)."""
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    probabilities = ops.sigmoid(logits)
    bce = targets * ops.softplus(-logits) + (1.0 - targets) * ops.softplus(logits)
    p_true = probabilities * targets + (1.0 - probabilities) * (1.0 - targets)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    return ops.mean(alpha_t * (1.0 - p_true) ** gamma * bce, axis=-1)


def dice_per_mask(logits, targets):
    """``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` over the last axis, p = sigmoid(logits): (..., P) -> (...)."""
    probabilities = ops.sigmoid(ops.cast(logits, "float32"))
    targets = ops.cast(targets, "float32")
    numerator = 2.0 * ops.sum(probabilities * targets, axis=-1)
    denominator = ops.sum(probabilities, axis=-1) + ops.sum(targets, axis=-1)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def _gather_queries(values, query_index):
    """values (B, Q, ...) at query_index (B, K) -> (B, K, ...); negative indices read query 0 (masked later)."""
    index = ops.maximum(ops.cast(query_index, "int32"), 0)
    extra = len(values.shape) - 2
    index = ops.reshape(index, tuple(ops.shape(index)) + (1,) * extra)
    index = ops.broadcast_to(index, tuple(ops.shape(query_index)) + tuple(ops.shape(values)[2:]))
    return ops.take_along_axis(values, index, axis=1)


def _resize_targets(targets, height, width):
    """(B, K, H, W) 0/1 masks -> (B, K, height, width) by area averaging then 0.5, for full-mask losses."""
    batch, slots = ops.shape(targets)[0], ops.shape(targets)[1]
    images = ops.reshape(targets, (-1, ops.shape(targets)[2], ops.shape(targets)[3], 1))
    resized = ops.image.resize(images, (height, width), interpolation="area")
    return ops.reshape(ops.cast(resized > 0.5, "float32"), (batch, slots, height, width))


class SetCriterion:
    """Mask2Former's (or MaskFormer's) training loss: matching + weighted class, mask and dice terms.

    Args:
        num_classes: real classes C (1: tumour); the model predicts C + 1 logits per query.
        class_weight: weight of the class term (Mask2Former 2, MaskFormer 1).
        mask_weight: weight of the mask term (Mask2Former BCE 5, MaskFormer focal 20).
        dice_weight: weight of the dice term (Mask2Former 5, MaskFormer 1).
        no_object_weight: class weight of "no object" in the cross-entropy (0.1 in both).
        mask_loss: ``"bce"`` (Mask2Former) or ``"focal"`` (MaskFormer).
        cost_class: matching cost weights (Mask2Former 2 / 5 / 5, MaskFormer 1 / 20 / 1).
        cost_mask: see ``cost_class``.
        cost_dice: see ``cost_class``.
        num_points: points per mask for the losses and the matching (official 12,544); None: every pixel of the
            prediction's resolution.
        oversample_ratio: importance sampling, see :func:`uncertain_point_coords`.
        importance_sample_ratio: see :func:`uncertain_point_coords`.
        max_instances: target slots per image.
        target_mode: ``"instances"`` or ``"semantic"`` (see the module docstring).
        seed: int seed of the point draws. None: a seed drawn from Python's random state when the criterion is made
            (after :func:`lungkit.training.seed_run` that draw repeats), never later: a draw at the first training
            step would depend on whatever consumed Python's random state in between (a test shows the first-step
            loss moving with it under the old rule).

    Raises:
        ValueError: an unknown ``mask_loss`` or ``target_mode``, or a negative weight.
    """

    def __init__(
        self,
        num_classes: int = 1,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        mask_loss: str = "bce",
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int | None = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        max_instances: int = 8,
        target_mode: str = "instances",
        seed: int | None = None,
    ):
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"mask_loss must be one of {MASK_LOSSES}, got {mask_loss!r}")
        if target_mode not in TARGET_MODES:
            raise ValueError(f"target_mode must be one of {TARGET_MODES}, got {target_mode!r}")
        weights = dict(
            class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight,
            no_object_weight=no_object_weight, cost_class=cost_class, cost_mask=cost_mask, cost_dice=cost_dice,
        )
        negative = [name for name, value in weights.items() if value < 0]
        if negative:
            raise ValueError(f"loss and cost weights must be >= 0, got negative {negative}")
        self.num_classes = int(num_classes)
        for name, value in weights.items():
            setattr(self, name, float(value))
        self.mask_loss = mask_loss
        self.num_points = None if num_points is None else int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.max_instances = int(max_instances)
        self.target_mode = target_mode
        self.seed = seed
        from keras import random

        # made here, not at the first call: see ``seed``
        self._seed_generator = random.SeedGenerator(seed)

    def get_config(self) -> dict:
        """The constructor's arguments (what a result's protocol records)."""
        keys = (
            "num_classes", "class_weight", "mask_weight", "dice_weight", "no_object_weight", "mask_loss",
            "cost_class", "cost_mask", "cost_dice", "num_points", "oversample_ratio", "importance_sample_ratio",
            "max_instances", "target_mode", "seed",
        )
        return {key: getattr(self, key) for key in keys}

    @property
    def class_weights(self) -> np.ndarray:
        """(C + 1,) cross-entropy weights: 1 per real class, ``no_object_weight`` for no object."""
        return np.array([1.0] * self.num_classes + [self.no_object_weight], np.float32)

    def match(self, class_logits, mask_logits, targets, valid, target_classes):
        """Matched query per target slot for one prediction.

        Args:
            class_logits: (B, Q, C + 1).
            mask_logits: (B, Q, h, w).
            targets: (B, K, H, W) target masks.
            valid: (B, K) bool.
            target_classes: (B, K) int.

        Returns:
            (B, K) int32 query indices, -1 for padded slots.
        """
        batch = ops.shape(mask_logits)[0]
        if self.num_points is None:
            height, width = ops.shape(mask_logits)[2], ops.shape(mask_logits)[3]
            point_logits = ops.reshape(mask_logits, (batch, ops.shape(mask_logits)[1], -1))
            point_targets = ops.reshape(_resize_targets(targets, height, width), (batch, ops.shape(targets)[1], -1))
        else:
            # the same uniform points for every query and target of an image, as the official matcher
            points = uniform_points(batch, self.num_points, seed=self._seed_generator)
            point_logits = point_sample(ops.stop_gradient(mask_logits), points)
            point_targets = point_sample(targets, points)
        point_logits = ops.stop_gradient(ops.cast(point_logits, "float32"))
        if self.mask_loss == "focal":
            mask_cost = hungarian_matcher.focal_cost_matrix(point_logits, point_targets)
        else:
            mask_cost = hungarian_matcher.bce_cost_matrix(point_logits, point_targets)
        cost = (
            self.cost_class * hungarian_matcher.class_cost_matrix(ops.stop_gradient(class_logits), target_classes)
            + self.cost_mask * mask_cost
            + self.cost_dice * hungarian_matcher.dice_cost_matrix(point_logits, point_targets)
        )
        return hungarian_matcher.match_in_graph(cost, valid)

    def loss_terms(self, class_logits, mask_logits, targets, valid, matched, target_classes, num_masks):
        """The three unweighted loss terms of one prediction, given its matching.

        Args:
            class_logits: (B, Q, C + 1).
            mask_logits: (B, Q, h, w).
            targets: (B, K, H, W).
            valid: (B, K) bool.
            matched: (B, K) query per slot (-1 padded).
            target_classes: (B, K) int.
            num_masks: float, the number of target masks the mask terms are divided by (at least 1).

        Returns:
            ``{"class": ..., "mask": ..., "dice": ...}`` scalar float32 tensors.
        """
        num_queries = ops.shape(class_logits)[1]
        valid_float = ops.cast(valid, "float32")
        # which slot (if any) each query is matched to -> its target class, else no object (= C)
        slot_of_query = ops.one_hot(ops.maximum(ops.cast(matched, "int32"), 0), num_queries) * valid_float[..., None]
        has_target = ops.sum(slot_of_query, axis=1)  # (B, Q) 0 or 1
        class_of_query = ops.sum(slot_of_query * ops.cast(target_classes, "float32")[..., None], axis=1)
        query_classes = ops.where(has_target > 0.5, class_of_query, float(self.num_classes))
        class_term = weighted_class_loss(class_logits, query_classes, self.class_weights)

        matched_logits = _gather_queries(mask_logits, matched)  # (B, K, h, w)
        batch, slots = ops.shape(matched_logits)[0], ops.shape(matched_logits)[1]
        if self.num_points is None:
            height, width = ops.shape(mask_logits)[2], ops.shape(mask_logits)[3]
            point_logits = ops.reshape(matched_logits, (batch, slots, -1))
            point_targets = ops.reshape(_resize_targets(targets, height, width), (batch, slots, -1))
        else:
            flat_logits = ops.reshape(matched_logits, (-1, 1, ops.shape(mask_logits)[2], ops.shape(mask_logits)[3]))
            flat_targets = ops.reshape(targets, (-1, 1, ops.shape(targets)[2], ops.shape(targets)[3]))
            points = uncertain_point_coords(
                flat_logits, self.num_points, self.oversample_ratio, self.importance_sample_ratio,
                seed=self._seed_generator,
            )
            point_logits = ops.reshape(point_sample(flat_logits, points), (batch, slots, -1))
            point_targets = ops.reshape(point_sample(flat_targets, points), (batch, slots, -1))
        if self.mask_loss == "focal":
            mask_per_slot = sigmoid_focal_per_mask(point_logits, point_targets)
        else:
            mask_per_slot = sigmoid_bce_per_mask(point_logits, point_targets)
        dice_per_slot = dice_per_mask(point_logits, point_targets)
        return {
            "class": class_term,
            "mask": ops.sum(mask_per_slot * valid_float) / num_masks,
            "dice": ops.sum(dice_per_slot * valid_float) / num_masks,
        }

    def __call__(self, masks, class_logits, mask_logits):
        """Total loss over all predictions (deep supervision) for a batch of binary masks.

        Args:
            masks: (B, H, W, 1) binary tumour masks (the kit's targets).
            class_logits: (S, B, Q, C + 1): S predictions (before the first layer and after each layer).
            mask_logits: (S, B, Q, h, w).

        Returns:
            ``(total, terms)``: the weighted sum over predictions and terms, and ``{"class", "mask", "dice"}``
            of the last prediction (unweighted), for logging.
        """
        targets, valid = instance_targets(masks, self.max_instances, self.target_mode)
        # one tumour class: every real target is class 0
        target_classes = ops.zeros(ops.shape(valid), "int32")
        num_masks = ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
        total = 0.0
        terms = None
        for stage in range(class_logits.shape[0]):
            matched = self.match(class_logits[stage], mask_logits[stage], targets, valid, target_classes)
            terms = self.loss_terms(
                class_logits[stage], mask_logits[stage], targets, valid, matched, target_classes, num_masks
            )
            total = total + (
                self.class_weight * terms["class"] + self.mask_weight * terms["mask"] + self.dice_weight * terms["dice"]
            )
        return total, terms
