"""Masked-image pretraining: the hidden blocks, the loss, the pretraining itself and its place in an experiment."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungkit.masked_pretraining import hide_blocks, masked_l1, pretrain_masked_images, transfer_weights
from lungkit.models import build_model


def test_hidden_blocks_are_whole_blocks_repeatable_per_seed_and_batch():
    images = tf.random.stateless_uniform((4, 64, 64, 1), seed=(1, 2)) + 0.5  # never 0 before hiding
    inputs, target = hide_blocks(images, 3, block=16, hidden_fraction=0.5, seed=7)
    inputs, target = inputs.numpy(), target.numpy()
    hidden = target[..., 1]
    np.testing.assert_array_equal(target[..., :1], images.numpy())  # the target is the untouched image
    np.testing.assert_array_equal(inputs[..., 0] == 0, hidden == 1)  # hidden pixels, and only they, are 0
    blocks = hidden.reshape(4, 4, 16, 4, 16)
    assert np.all(blocks.min(axis=(2, 4)) == blocks.max(axis=(2, 4)))  # hidden by whole 16 px blocks
    assert 0.2 < hidden.mean() < 0.8
    again = hide_blocks(images, 3, block=16, hidden_fraction=0.5, seed=7)[1].numpy()[..., 1]
    other_batch = hide_blocks(images, 4, block=16, hidden_fraction=0.5, seed=7)[1].numpy()[..., 1]
    np.testing.assert_array_equal(again, hidden)
    assert not np.array_equal(other_batch, hidden)


def test_the_loss_counts_only_the_hidden_pixels():
    image = np.full((1, 4, 4, 1), 0.5, np.float32)
    hidden = np.zeros((1, 4, 4, 1), np.float32)
    hidden[:, :2] = 1.0  # 8 hidden pixels
    y_true = np.concatenate([image, hidden], axis=-1)
    prediction = image.copy()
    prediction[:, 2:] = 9.0  # wrong only where nothing was hidden
    assert float(masked_l1(y_true, prediction)) == pytest.approx(0.0)
    prediction[:, :2] = 0.7  # off by 0.2 on the hidden pixels
    assert float(masked_l1(y_true, prediction)) == pytest.approx(0.2 * 8 / 9)  # (+1 in the denominator)


def test_pretraining_learns_to_fill_in_and_starts_every_layer_but_the_head():
    keras.utils.set_random_seed(0)
    # smooth images (a bright disc on a gradient): hidden blocks can be inferred from their surroundings
    yy, xx = np.mgrid[:32, :32] / 31.0
    images = np.stack([(0.3 * xx + 0.6 * ((yy - c) ** 2 + (xx - c) ** 2 < 0.05)).astype(np.float32)
                       for c in np.linspace(0.3, 0.7, 8)])[..., None]
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros_like(images))).batch(4).repeat()
    network = build_model("unet", "tiny", output_activation=None)
    result = pretrain_masked_images(network, dataset, 60, block=8, steps_per_epoch=20, verbose=0)
    assert result.steps == 60 and len(result.loss_per_epoch) == 3
    assert result.loss_per_epoch[-1] < 0.7 * result.loss_per_epoch[0]
    assert pretrain_masked_images(build_model("unet", "tiny", output_activation=None), dataset, 30,
                                  steps_per_epoch=20, verbose=0).steps == 40  # whole epochs: rounded up
    target = build_model("unet", "tiny")
    head_before = [w.copy() for w in target.get_layer("segmentation_head").get_weights()]
    copied = transfer_weights(network, target)
    assert "segmentation_head" not in copied and len(copied) == sum(
        1 for layer in target.layers if layer.weights) - 1
    for name in copied:
        for mine, theirs in zip(target.get_layer(name).get_weights(), network.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    for mine, before in zip(target.get_layer("segmentation_head").get_weights(), head_before):
        np.testing.assert_array_equal(mine, before)
    with pytest.raises(ValueError, match="pretrain the same architecture"):
        transfer_weights(network, build_model("attention_unet", "tiny"))
    with pytest.raises(ValueError, match="output needs its 1 channel"):
        pretrain_masked_images(build_model("swin_unet", "tiny", num_classes=2), dataset, 1)


def test_an_experiment_pretrains_once_and_records_it(tmp_path):
    from lungkit.experiments.segmentation import MASKED_PRETRAINING_FILE, SegmentationExperiment
    from lungkit.reports import protocol_line

    experiment = SegmentationExperiment("paper004", "unet", "smoke", tmp_path / "run", seed=1)
    experiment.recipe = dataclasses.replace(experiment.recipe, masked_pretraining_steps=2)
    model = experiment.build_model()
    experiment.train(model, verbose=0)
    record = json.loads((experiment.model_dir / MASKED_PRETRAINING_FILE).read_text())
    assert record["steps"] == 2 and record["layers_copied"] > 0 and len(record["loss_per_epoch"]) == 1
    summary = experiment.evaluate(model, robustness=False).summary
    assert summary["protocol"]["masked_pretraining_record"] == record
    assert "pretraining 2 steps of masked-image pretraining first" in protocol_line(summary)
    # a finished run is reused as it is: no second pretraining over its weights
    (experiment.model_dir / MASKED_PRETRAINING_FILE).unlink()
    again = SegmentationExperiment("paper004", "unet", "smoke", tmp_path / "run", seed=1)
    again.recipe = dataclasses.replace(again.recipe, masked_pretraining_steps=2)
    assert again.train(again.build_model(), verbose=0).reused
    assert not (again.model_dir / MASKED_PRETRAINING_FILE).exists()


def test_a_query_model_is_refused_before_anything_trains(tmp_path):
    from lungkit.experiments.segmentation import SegmentationExperiment

    experiment = SegmentationExperiment("paper004", "unet", "smoke", tmp_path / "run")
    experiment.recipe = dataclasses.replace(experiment.recipe, masked_pretraining_steps=2)
    unused = tf.data.Dataset.from_tensor_slices((np.zeros((1, 64, 64, 1), np.float32),) * 2).batch(1)
    with pytest.raises(ValueError, match="a query model .* has no pixel output"):
        experiment.train(build_model("mask2former", "tiny"), unused, unused)
    assert not experiment.model_dir.exists()
