"""Training losses and their registry (``get_loss``).

=====================  ==========================================================================================
name                   loss
=====================  ==========================================================================================
``bce``                ``keras.losses.BinaryCrossentropy(from_logits=...)`` (mean over pixels)
``bce_logits``         the same with ``from_logits=True`` (paper 001's ``BCEWithLogitsLoss``)
``dice``               :class:`DiceLoss`, paper 004 eq. 4/7, per image, mean over the batch
``focal``              ``keras.losses.BinaryFocalCrossentropy`` with alpha balancing (paper 004 eq. 8)
``hybrid_dice_focal``  :class:`HybridDiceFocalLoss`: lam * Dice + (1 - lam) * Focal (paper 004 eq. 9)
``dice_bce``           :class:`DiceBCELoss`: dice_weight * Dice + bce_weight * BCE (MONAI's ``DiceCELoss``, the
                       loss of the UNETR and Swin-UNet authors)
=====================  ==========================================================================================

Why not ``keras.losses.Dice``: it computes 1 - 2 sum(p g) / (sum(p) + sum(g) + 1e-7), with no epsilon in the
numerator and no ``from_logits``. Paper 004's eq. 4 puts epsilon in both, which matters on slices where the target
is empty: there Keras' Dice is 1 whatever the prediction (no gradient against false positives), while
eq. 4 gives 1 - eps / (sum(p) + eps), which falls to 0 as the prediction empties. :class:`DiceLoss` with
``epsilon=0`` equals ``keras.losses.Dice(axis=(1, 2, 3))`` (tested).

Default constants (paper 004 prints none of them): ``epsilon = 1`` (one pixel: negligible against tumour areas of
tens to thousands of pixels, yet large enough to make an empty-target slice a meaningful example); focal
``alpha = 0.25``, ``gamma = 2`` (Lin et al. 2017, the values of the focal-loss paper); hybrid ``lam = 0.5`` (equal
weights; the paper writes lambda without a value). Eq. 8 writes the focal loss as a sum over pixels; we use the
mean over pixels (Keras' convention), otherwise the focal term of a 256x256 slice would be ~65,000 times the Dice
term and no lambda short of 0.99998 would balance them.
"""

from __future__ import annotations

import keras
from keras import ops

#: Default balance of eq. 9 (paper 004 does not print its lambda).
DEFAULT_HYBRID_LAMBDA = 0.5
DEFAULT_FOCAL_ALPHA = 0.25
DEFAULT_FOCAL_GAMMA = 2.0
DEFAULT_DICE_EPSILON = 1.0


def _image_axes(tensor) -> tuple[int, ...]:
    return tuple(range(1, len(tensor.shape)))


def soft_dice_per_image(y_true, y_pred, epsilon: float = DEFAULT_DICE_EPSILON, from_logits: bool = False):
    """Soft Dice coefficient of each image of a batch: (2 sum(p g) + eps) / (sum(p) + sum(g) + eps).

    Args:
        y_true: binary targets (B, H, W, 1) or (B, H, W).
        y_pred: probabilities (or logits with ``from_logits``), same shape.
        epsilon: smoothing constant of paper 004 eq. 4.
        from_logits: apply a sigmoid to ``y_pred`` first.

    Returns:
        Tensor (B,).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if from_logits:
        y_pred = ops.sigmoid(y_pred)
    axes = _image_axes(y_pred)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return (2.0 * intersection + epsilon) / (total + epsilon)


@keras.saving.register_keras_serializable(package="lungkit")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss of paper 004 (eqs. 4 and 7): 1 - (2 sum(p g) + eps) / (sum(p) + sum(g) + eps).

    Args:
        epsilon: smoothing constant (default 1, see the module docstring).
        from_logits: ``y_pred`` are logits; a sigmoid is applied first.
        per_image: True (default): the loss of each image, averaged over the batch (the reduction), so every slice
            counts the same as in the per-image Dice we report. False: one Dice over all pixels of the batch
            (large tumours dominate); every sample then carries that batch value.
        reduction, name, dtype: as for ``keras.losses.Loss``.
    """

    def __init__(
        self,
        epsilon: float = DEFAULT_DICE_EPSILON,
        from_logits: bool = False,
        per_image: bool = True,
        reduction="sum_over_batch_size",
        name="dice_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0; got {epsilon}")
        self.epsilon = float(epsilon)
        self.from_logits = bool(from_logits)
        self.per_image = bool(per_image)

    def call(self, y_true, y_pred):
        if self.per_image:
            return 1.0 - soft_dice_per_image(y_true, y_pred, self.epsilon, self.from_logits)
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.from_logits:
            y_pred = ops.sigmoid(y_pred)
        batch_dice = (2.0 * ops.sum(y_true * y_pred) + self.epsilon) / (
            ops.sum(y_true) + ops.sum(y_pred) + self.epsilon
        )
        per_sample_shape = ops.sum(y_pred, axis=_image_axes(y_pred))
        return ops.ones_like(per_sample_shape) * (1.0 - batch_dice)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, from_logits=self.from_logits, per_image=self.per_image)
        return config


def _pixel_loss_per_image(pixel_loss, y_true, y_pred, **kwargs):
    """Mean of a Keras per-pixel binary loss (``keras.losses.binary_crossentropy``, ``binary_focal_crossentropy``)
    over each image: tensor (B,). Keras averages over the last axis, so (B, H, W) inputs get a channel axis."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(y_true, y_pred.dtype)
    if len(y_pred.shape) == 3:
        y_pred, y_true = y_pred[..., None], y_true[..., None]
    per_pixel = pixel_loss(y_true, y_pred, **kwargs)
    return ops.mean(per_pixel, axis=_image_axes(per_pixel))


def focal_per_image(
    y_true,
    y_pred,
    alpha: float = DEFAULT_FOCAL_ALPHA,
    gamma: float = DEFAULT_FOCAL_GAMMA,
    from_logits: bool = False,
    apply_class_balancing: bool = True,
):
    """Mean binary focal loss of each image (Keras' ``binary_focal_crossentropy`` averaged over the pixels).

    Args:
        y_true: binary targets (B, H, W, 1).
        y_pred: probabilities or logits, same shape.
        alpha: weight of the tumour class (background gets 1 - alpha) when ``apply_class_balancing``.
        gamma: focusing exponent.
        from_logits: ``y_pred`` are logits.
        apply_class_balancing: use alpha (paper 004 eq. 8 has it).

    Returns:
        Tensor (B,).
    """
    return _pixel_loss_per_image(
        keras.losses.binary_focal_crossentropy,
        y_true,
        y_pred,
        apply_class_balancing=apply_class_balancing,
        alpha=alpha,
        gamma=gamma,
        from_logits=from_logits,
    )


@keras.saving.register_keras_serializable(package="lungkit")
class HybridDiceFocalLoss(keras.losses.Loss):
    """Paper 004's hybrid loss (eq. 9): ``lam * Dice + (1 - lam) * Focal``, both per image, mean over the batch.

    With the batch mean as reduction, the focal term equals ``keras.losses.BinaryFocalCrossentropy`` with the same
    alpha, gamma and class balancing, and the Dice term equals :class:`DiceLoss` (tested).

    Args:
        lam: weight of the Dice term in [0, 1] (default 0.5; the paper gives no value).
        alpha, gamma: focal loss parameters (defaults 0.25 and 2 from Lin et al. 2017).
        epsilon: Dice smoothing constant.
        from_logits: ``y_pred`` are logits.
        apply_class_balancing: use alpha in the focal term.
        reduction, name, dtype: as for ``keras.losses.Loss``.
    """

    def __init__(
        self,
        lam: float = DEFAULT_HYBRID_LAMBDA,
        alpha: float = DEFAULT_FOCAL_ALPHA,
        gamma: float = DEFAULT_FOCAL_GAMMA,
        epsilon: float = DEFAULT_DICE_EPSILON,
        from_logits: bool = False,
        apply_class_balancing: bool = True,
        reduction="sum_over_batch_size",
        name="hybrid_dice_focal_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1]; got {lam}")
        self.lam = float(lam)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        self.from_logits = bool(from_logits)
        self.apply_class_balancing = bool(apply_class_balancing)

    def call(self, y_true, y_pred):
        dice = 1.0 - soft_dice_per_image(y_true, y_pred, self.epsilon, self.from_logits)
        focal = focal_per_image(
            y_true, y_pred, self.alpha, self.gamma, self.from_logits, self.apply_class_balancing
        )
        return self.lam * dice + (1.0 - self.lam) * focal

    def get_config(self):
        config = super().get_config()
        config.update(
            lam=self.lam,
            alpha=self.alpha,
            gamma=self.gamma,
            epsilon=self.epsilon,
            from_logits=self.from_logits,
            apply_class_balancing=self.apply_class_balancing,
        )
        return config


@keras.saving.register_keras_serializable(package="lungkit")
class DiceBCELoss(keras.losses.Loss):
    """``dice_weight * Dice + bce_weight * BCE``, both per image, mean over the batch.

    The binary form of MONAI's ``DiceCELoss`` (``lambda_dice = lambda_ce = 1`` by default), which the UNETR authors
    trained with; Cao et al.'s Swin-UNet uses 0.6 Dice + 0.4 CE. The Dice term keeps a slice's few tumour pixels from
    being outvoted by tens of thousands of background pixels; the BCE term gives smooth per-pixel gradients. With
    the batch mean as reduction the BCE term equals ``keras.losses.BinaryCrossentropy`` and the Dice term
    :class:`DiceLoss` (tested).

    Args:
        dice_weight, bce_weight: non-negative weights, not both zero.
        epsilon: Dice smoothing constant.
        from_logits: ``y_pred`` are logits.
        reduction, name, dtype: as for ``keras.losses.Loss``.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        epsilon: float = DEFAULT_DICE_EPSILON,
        from_logits: bool = False,
        reduction="sum_over_batch_size",
        name="dice_bce_loss",
        dtype=None,
    ):
        super().__init__(reduction=reduction, name=name, dtype=dtype)
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0; got dice {dice_weight}, bce {bce_weight}")
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.epsilon = float(epsilon)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        dice = 1.0 - soft_dice_per_image(y_true, y_pred, self.epsilon, self.from_logits)
        bce = _pixel_loss_per_image(keras.losses.binary_crossentropy, y_true, y_pred, from_logits=self.from_logits)
        return self.dice_weight * dice + self.bce_weight * bce

    def get_config(self):
        config = super().get_config()
        config.update(
            dice_weight=self.dice_weight,
            bce_weight=self.bce_weight,
            epsilon=self.epsilon,
            from_logits=self.from_logits,
        )
        return config


def _bce(from_logits=False, **kwargs):
    return keras.losses.BinaryCrossentropy(from_logits=from_logits, **kwargs)


def _bce_logits(from_logits=True, **kwargs):
    if not from_logits:
        raise ValueError("loss 'bce_logits' always takes logits; use 'bce' for probabilities")
    return keras.losses.BinaryCrossentropy(from_logits=True, **kwargs)


def _focal(
    alpha=DEFAULT_FOCAL_ALPHA, gamma=DEFAULT_FOCAL_GAMMA, from_logits=False, apply_class_balancing=True, **kwargs
):
    return keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=apply_class_balancing, alpha=alpha, gamma=gamma, from_logits=from_logits, **kwargs
    )


def _set_prediction(from_logits=False, **kwargs):
    # Mask2Former / MaskFormer: the model's compute_loss applies this criterion to its query heads; the kit's
    # from_logits flag describes the model's predict output (probabilities), so it must be False.
    if from_logits:
        raise ValueError("set_prediction: query models predict probabilities; use from_logits=False")
    from lungkit.models.set_losses import SetCriterion

    return SetCriterion(**kwargs)


_LOSSES = {
    "bce": _bce,
    "bce_logits": _bce_logits,
    "dice": DiceLoss,
    "focal": _focal,
    "hybrid_dice_focal": HybridDiceFocalLoss,
    "dice_bce": DiceBCELoss,
    "set_prediction": _set_prediction,
}


def available_losses() -> list[str]:
    """Names accepted by :func:`get_loss`."""
    return sorted(_LOSSES)


def get_loss(name: str, **kwargs) -> keras.losses.Loss:
    """Build a registered loss.

    Args:
        name: ``bce``, ``bce_logits``, ``dice``, ``focal``, ``hybrid_dice_focal``, ``dice_bce`` or
            ``set_prediction`` (a :class:`lungkit.models.set_losses.SetCriterion` for query models, which their
            ``compute_loss`` applies; not a ``keras.losses.Loss``).
        **kwargs: passed to the loss (e.g. ``from_logits``, ``lam``, ``alpha``, ``gamma``, ``epsilon``).

    Returns:
        A ``keras.losses.Loss`` usable in ``model.compile`` and saved with the model.

    Raises:
        ValueError: for an unknown name (listing the known ones) or arguments the loss does not take.
    """
    try:
        factory = _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; registered losses: {available_losses()}") from None
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise ValueError(f"loss {name!r} does not accept arguments {sorted(kwargs)}: {error}") from None
