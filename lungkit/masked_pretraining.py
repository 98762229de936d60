"""Masked-image pretraining: a self-supervised start for a segmentation network, from its own training patches.

SimMIM (Xie et al., CVPR 2022) pretrains Swin encoders by hiding random blocks of the image and regressing the hidden
pixels with an L1 loss; Swin UNETR's self-supervised pretraining (Tang et al., CVPR 2022) has an inpainting task of
the same kind. Here the whole encoder-decoder learns to fill in hidden blocks of the training patches, then its
weights, all but the output layer, start the segmentation training:

- the images come from the segmentation training's own patch stream (training patients only: never a validation or
  test image), their masks unused;
- square blocks of ``block`` px are hidden (set to 0) with probability ``hidden_fraction`` each, drawn statelessly
  from ``(seed, batch index)`` so two runs with one seed hide the same blocks;
- the network, built as the segmentation model but with a linear output, predicts the image; the loss is the mean
  absolute error over the hidden pixels;
- AdamW with weight decay 0.05 (SimMIM's optimiser).

Why the kit has it (issue 13): from scratch on three LIDC patients, Swin-UNet learned no nodule in any budget tried
(per-image Dice 0.00, training Dice 0.00-0.04), though it could memorise 8 fixed patches; ImageNet Swin-T weights
(Cao et al.'s start, :func:`lungkit.models.swin_unet.load_swin_preset`) were not available. The measured effect is
in ``reports/real_data.md`` and the README.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import tensorflow as tf

#: SimMIM's mask patch is 32 px on 192 px images; 16 px on the kit's 128 px patches hides blocks of a similar share.
DEFAULT_BLOCK = 16
DEFAULT_HIDDEN_FRACTION = 0.5
DEFAULT_LEARNING_RATE = 5e-4
DEFAULT_WEIGHT_DECAY = 0.05


def describe(steps: int, block: int = DEFAULT_BLOCK, hidden_fraction: float = DEFAULT_HIDDEN_FRACTION,
             learning_rate: float = DEFAULT_LEARNING_RATE) -> str:
    """The protocol's words for a masked-image pretraining of ``steps`` steps."""
    return (f"{steps} steps of masked-image pretraining first (the training patches with {block} px blocks hidden at "
            f"p {hidden_fraction:g}, the hidden pixels regressed with L1, AdamW {learning_rate:g} with weight decay "
            f"{DEFAULT_WEIGHT_DECAY:g}; all weights but the output layer then start the segmentation training)")


def hide_blocks(images, batch_index, block: int = DEFAULT_BLOCK, hidden_fraction: float = DEFAULT_HIDDEN_FRACTION,
                seed: int = 0):
    """Hide random square blocks of a batch of images.

    Args:
        images: (N, H, W, C) float tensor; H and W multiples of ``block``.
        batch_index: the batch's index in the stream (with ``seed``, it decides the blocks: repeatable).
        block: side of a block in pixels.
        hidden_fraction: probability that a block is hidden.
        seed: seed of the draws.

    Returns:
        ``(inputs, target)``: the images with hidden blocks set to 0, and (N, H, W, C + 1) holding the original
        images and, in the last channel, 1 where a pixel was hidden (what :func:`masked_l1` reads).
    """
    shape = tf.shape(images)
    grid_shape = tf.stack([shape[0], shape[1] // block, shape[2] // block, 1])
    draws = tf.random.stateless_uniform(grid_shape, seed=tf.stack([tf.cast(seed, tf.int64),
                                                                   tf.cast(batch_index, tf.int64)]))
    hidden = tf.cast(draws < hidden_fraction, images.dtype)
    hidden = tf.repeat(tf.repeat(hidden, block, axis=1), block, axis=2)
    return images * (1.0 - hidden), tf.concat([images, hidden], axis=-1)


def masked_l1(y_true, y_pred):
    """Mean absolute error over the hidden pixels (``y_true``'s last channel marks them; see :func:`hide_blocks`)."""
    target, hidden = y_true[..., :-1], y_true[..., -1:]
    error = tf.abs(target - tf.cast(y_pred, target.dtype)) * hidden
    return tf.reduce_sum(error) / (tf.reduce_sum(hidden) * tf.cast(tf.shape(target)[-1], target.dtype) + 1.0)


@dataclass
class PretrainingResult:
    """What a masked-image pretraining did: the network, its loss per epoch, its wall time, the steps it ran."""

    model: keras.Model
    loss_per_epoch: list
    wall_time_s: float
    steps: int


def pretrain_masked_images(model: keras.Model, train_ds: tf.data.Dataset, steps: int, *, seed: int = 0,
                           block: int = DEFAULT_BLOCK, hidden_fraction: float = DEFAULT_HIDDEN_FRACTION,
                           learning_rate: float = DEFAULT_LEARNING_RATE, steps_per_epoch: int = 100,
                           verbose="auto") -> PretrainingResult:
    """Train ``model`` (linear output, the input's channels) to fill in hidden blocks of ``train_ds``'s images.

    Args:
        model: an uncompiled network with the segmentation model's layers and a linear output of as many channels
            as the input (for the kit's one-channel CT, the segmentation architecture itself).
        train_ds: batched ``(images, masks)`` dataset (the segmentation training stream; masks are ignored).
        steps: optimizer steps (rounded up to whole epochs of ``steps_per_epoch``).

    Returns:
        :class:`PretrainingResult`.

    Raises:
        ValueError: ``steps`` < 1, or a model whose output channels differ from its input's.
    """
    if steps < 1:
        raise ValueError(f"masked-image pretraining needs at least one step, got {steps}")
    if model.output_shape[-1] != model.input_shape[-1]:
        raise ValueError(f"{model.name}: masked-image pretraining regresses the input, so the output needs its "
                         f"{model.input_shape[-1]} channel(s); got {model.output_shape[-1]}")
    start = time.perf_counter()
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=DEFAULT_WEIGHT_DECAY),
                  loss=masked_l1)
    stream = train_ds.repeat().enumerate().map(
        lambda index, batch: hide_blocks(batch[0], index, block, hidden_fraction, seed),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
    epoch_steps = min(steps, steps_per_epoch)
    epochs = -(-steps // epoch_steps)
    history = model.fit(stream, steps_per_epoch=epoch_steps, epochs=epochs, verbose=verbose)
    return PretrainingResult(model=model, loss_per_epoch=[float(x) for x in history.history["loss"]],
                             wall_time_s=time.perf_counter() - start, steps=epochs * epoch_steps)


def transfer_weights(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy the weights of every layer of ``target`` except its output layer from the layer of the same name in
    ``source``.

    Returns:
        The names of the layers copied.

    Raises:
        ValueError: a layer missing from ``source`` or with other shapes (the two are not the same architecture).
    """
    output_layers = {tensor._keras_history[0].name for tensor in target.outputs}
    copied = []
    for layer in target.layers:
        if not layer.weights or layer.name in output_layers:
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
            layer.set_weights(weights)
        except ValueError as error:
            raise ValueError(f"{target.name}: layer {layer.name!r} cannot take the pretrained network's weights "
                             f"({error}); pretrain the same architecture") from error
        copied.append(layer.name)
    return copied
