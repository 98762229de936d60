"""Self-supervised classifier (paper 000): NT-Xent against a hand-computed value, stratified label subsets, a few
contrastive steps that run and lower the loss, and a phantom run in which the pretraining sees only training crops."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from lungkit.experiments.selfsupervised import (
    SelfSupervisedClassifier,
    crop_encoder,
    label_subset,
    make_contrastive_model,
    nt_xent_loss,
)


def test_nt_xent_equals_the_hand_computed_value():
    # two images, each view identical to its pair, orthogonal to the other image; temperature 1. For row 0 of
    # z = [e1, e2, e1, e2] the logits over the other three are cos = (0, 1, 0); the target (its pair) has 1:
    # loss = -log(e / (1 + e + 1)) = log(1 + 2 / e), the same for every row by symmetry.
    z1 = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    z2 = np.array([[2.0, 0.0], [0.0, 3.0]], "float32")  # lengths do not matter: projections are normalised
    loss = float(keras.ops.convert_to_numpy(nt_xent_loss(z1, z2, temperature=1.0)))
    assert loss == pytest.approx(math.log(1.0 + 2.0 / math.e), abs=1e-6)
    # temperature 0.5 doubles the logits: -log(e^2 / (2 + e^2))
    loss = float(keras.ops.convert_to_numpy(nt_xent_loss(z1, z2, temperature=0.5)))
    assert loss == pytest.approx(math.log(1.0 + 2.0 / math.e**2), abs=1e-6)


def test_nt_xent_matches_a_plain_numpy_reference():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(5, 3)).astype("float32")
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    similarity = z @ z.T / 0.1
    total = 0.0
    for i in range(10):
        positive = (i + 5) % 10
        others = [j for j in range(10) if j != i]
        total += -similarity[i, positive] + np.log(np.exp(similarity[i, others]).sum())
    expected = total / 10
    assert float(keras.ops.convert_to_numpy(nt_xent_loss(z1, z2, 0.1))) == pytest.approx(expected, rel=1e-5)


def test_label_subsets_are_stratified_and_seeded():
    labels = np.array([0] * 20 + [1] * 10)
    subset = label_subset(labels, 0.1, seed=1)
    assert (labels[subset] == 0).sum() == 2 and (labels[subset] == 1).sum() == 1
    assert label_subset(labels, 0.1, seed=1).tolist() == subset.tolist()
    assert label_subset(labels, 1.0).tolist() == list(range(30))
    with pytest.raises(ValueError, match="fraction"):
        label_subset(labels, 0.0)


def test_a_few_contrastive_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:16, :16]
    crops = np.stack([((rows - rng.uniform(4, 12)) ** 2 + (cols - rng.uniform(4, 12)) ** 2 <= rng.uniform(4, 20))
                      for _ in range(32)]).astype("float32")[..., None]
    model = make_contrastive_model(crop_encoder(16, "tiny"), projection_width=8, temperature=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    history = model.fit(crops, batch_size=16, epochs=8, verbose=0, shuffle=False)
    losses = history.history["contrastive_loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_pretraining_sees_only_training_crops(tmp_path):
    experiment = SelfSupervisedClassifier("smoke", tmp_path)
    splits = experiment.prepare_data()
    crops, ids = experiment.pretraining_images()
    test_crops, _, test_ids = splits["test"]
    assert ids == list(splits["train"][2]) and not set(ids) & set(test_ids)
    seen = {crop.tobytes() for crop in crops}
    assert not any(crop.tobytes() in seen for crop in test_crops)
