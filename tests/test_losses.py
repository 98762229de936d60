"""lungkit.losses: values against numpy hand computation, gradients, registry, compile/save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lungkit import losses as L
from lungkit.metrics import DiceMetric


def sample(seed=0, shape=(3, 8, 8, 1)):
    rng = np.random.default_rng(seed)
    y_true = (rng.random(shape) > 0.7).astype("float32")
    y_pred = rng.uniform(0.02, 0.98, shape).astype("float32")
    return y_true, y_pred


def numpy_dice_loss(y_true, y_pred, eps):
    axes = tuple(range(1, y_true.ndim))
    dice = (2 * (y_true * y_pred).sum(axes) + eps) / (y_true.sum(axes) + y_pred.sum(axes) + eps)
    return np.mean(1 - dice)


def numpy_focal(y_true, y_pred, alpha, gamma):
    p_t = np.where(y_true == 1, y_pred, 1 - y_pred)
    alpha_t = np.where(y_true == 1, alpha, 1 - alpha)
    return np.mean(-alpha_t * (1 - p_t) ** gamma * np.log(p_t))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("eps", [1.0, 1e-3])
def test_dice_loss_matches_hand_computation(eps):
    y_true, y_pred = sample()
    loss = L.get_loss("dice", epsilon=eps)
    assert float(loss(y_true, y_pred)) == pytest.approx(numpy_dice_loss(y_true, y_pred, eps), rel=1e-5)


def test_dice_loss_without_epsilon_equals_keras_dice_per_image():
    y_true, y_pred = sample(1)
    ours = float(L.DiceLoss(epsilon=0.0)(y_true, y_pred))
    keras_dice = float(keras.losses.Dice(axis=(1, 2, 3))(y_true, y_pred))
    assert ours == pytest.approx(keras_dice, abs=1e-5)


def test_dice_loss_batch_mode_and_logits_and_empty_slices():
    y_true, y_pred = sample(2)
    batch = L.DiceLoss(per_image=False)(y_true, y_pred)
    expected = 1 - (2 * (y_true * y_pred).sum() + 1) / (y_true.sum() + y_pred.sum() + 1)
    assert float(batch) == pytest.approx(expected, rel=1e-5)
    logits = np.log(y_pred / (1 - y_pred))
    on_logits = float(L.DiceLoss(from_logits=True)(y_true, logits))
    assert on_logits == pytest.approx(float(L.DiceLoss()(y_true, y_pred)), rel=1e-5)
    empty = np.zeros((1, 4, 4, 1), "float32")
    assert float(L.DiceLoss()(empty, empty)) == pytest.approx(0.0)  # eq. 4: eps / eps
    assert float(L.DiceLoss()(empty, empty + 0.5)) == pytest.approx(1 - 1 / 9)  # false positives are penalised


@pytest.mark.parametrize("from_logits", [False, True])
def test_focal_matches_hand_computation(from_logits):
    y_true, y_pred = sample(3)
    inputs = np.log(y_pred / (1 - y_pred)) if from_logits else y_pred
    loss = L.get_loss("focal", alpha=0.25, gamma=2.0, from_logits=from_logits)
    assert float(loss(y_true, inputs)) == pytest.approx(numpy_focal(y_true, y_pred, 0.25, 2.0), rel=1e-4)


def test_bce_matches_hand_computation():
    y_true, y_pred = sample(4)
    expected = np.mean(-(y_true * np.log(y_pred) + (1 - y_true) * np.log(1 - y_pred)))
    assert float(L.get_loss("bce")(y_true, y_pred)) == pytest.approx(expected, rel=1e-4)
    logits = np.log(y_pred / (1 - y_pred))
    assert float(L.get_loss("bce_logits")(y_true, logits)) == pytest.approx(expected, rel=1e-4)
    assert float(L.get_loss("bce", from_logits=True)(y_true, logits)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_hybrid_is_the_weighted_sum(lam):
    y_true, y_pred = sample(5)
    hybrid = float(L.get_loss("hybrid_dice_focal", lam=lam, alpha=0.4, gamma=1.5)(y_true, y_pred))
    dice = float(L.get_loss("dice")(y_true, y_pred))
    focal = float(L.get_loss("focal", alpha=0.4, gamma=1.5)(y_true, y_pred))
    assert hybrid == pytest.approx(lam * dice + (1 - lam) * focal, rel=1e-5, abs=1e-7)
    expected = lam * numpy_dice_loss(y_true, y_pred, 1.0) + (1 - lam) * numpy_focal(y_true, y_pred, 0.4, 1.5)
    assert hybrid == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dice_weight, bce_weight", [(1.0, 1.0), (0.6, 0.4), (0.0, 1.0)])
def test_dice_bce_is_the_weighted_sum_of_dice_and_keras_bce(dice_weight, bce_weight):
    y_true, y_pred = sample(7)
    combined = float(L.get_loss("dice_bce", dice_weight=dice_weight, bce_weight=bce_weight)(y_true, y_pred))
    dice = numpy_dice_loss(y_true, y_pred, 1.0)
    bce = float(keras.losses.BinaryCrossentropy()(y_true, y_pred))
    assert combined == pytest.approx(dice_weight * dice + bce_weight * bce, rel=1e-4)
    logits = np.log(y_pred / (1 - y_pred))
    on_logits = float(L.get_loss("dice_bce", dice_weight=dice_weight, bce_weight=bce_weight, from_logits=True)(
        y_true, logits
    ))
    assert on_logits == pytest.approx(combined, rel=1e-4)


def test_hybrid_from_logits_equals_hybrid_on_probabilities():
    y_true, y_pred = sample(6)
    logits = np.log(y_pred / (1 - y_pred))
    on_probs = float(L.HybridDiceFocalLoss()(y_true, y_pred))
    on_logits = float(L.HybridDiceFocalLoss(from_logits=True)(y_true, logits))
    assert on_logits == pytest.approx(on_probs, rel=1e-4)


@pytest.mark.parametrize("name", ["bce", "dice", "focal", "hybrid_dice_focal", "dice_bce"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_gradients_are_finite_and_point_the_right_way(name, from_logits):
    # one image: pixel 0 is tumour, pixel 1 background, both predicted 0.5
    y_true = tf.constant([[[[1.0], [0.0]], [[0.0], [0.0]]]])
    value = 0.0 if from_logits else 0.5
    y_pred = tf.Variable(tf.fill((1, 2, 2, 1), value))
    loss = L.get_loss(name, from_logits=from_logits)
    with tf.GradientTape() as tape:
        result = loss(y_true, y_pred)
    gradient = tape.gradient(result, y_pred).numpy()
    assert np.all(np.isfinite(gradient)) and np.isfinite(float(result))
    assert gradient[0, 0, 0, 0] < 0  # raising the tumour pixel's probability lowers the loss
    assert gradient[0, 0, 1, 0] > 0  # raising a background pixel's probability raises it


def test_registry_errors():
    assert L.available_losses() == ["bce", "bce_logits", "dice", "dice_bce", "focal", "hybrid_dice_focal", "set_prediction"]
    with pytest.raises(ValueError, match="bce_logits"):
        L.get_loss("cross_entropy")
    with pytest.raises(ValueError, match="logits"):
        L.get_loss("bce_logits", from_logits=False)
    with pytest.raises(ValueError, match="does not accept"):
        L.get_loss("dice", lam=0.5)
    with pytest.raises(ValueError, match="lam"):
        L.get_loss("hybrid_dice_focal", lam=1.5)
    with pytest.raises(ValueError, match="weights"):
        L.get_loss("dice_bce", dice_weight=0.0, bce_weight=0.0)


def test_losses_compile_train_save_and_load(tmp_path):
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="adam",
        loss=L.get_loss("hybrid_dice_focal", lam=0.7),
        metrics=[DiceMetric(name="dice")],
    )
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    y = (x > 0.5).astype("float32")
    history = model.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "dice" in history.history
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)  # no custom_objects: the classes are registered
    assert isinstance(restored.loss, L.HybridDiceFocalLoss) and restored.loss.lam == pytest.approx(0.7)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    for name in ("dice", "bce", "focal"):
        loss = L.get_loss(name)
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert float(clone(y, x)) == pytest.approx(float(loss(y, x)), rel=1e-6)
