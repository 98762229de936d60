"""Training layer: recipes and profile caps, precision, compile checks, a short real training, resume after a
simulated crash, reuse of a finished run, MirroredStrategy over two logical CPUs (in a subprocess), plots and
probability prediction."""

from __future__ import annotations

import dataclasses

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from lungkit.models import build_model  # noqa: E402
from lungkit.models.attention_unet import attention_maps_model  # noqa: E402
from lungkit.figures import plot_training_curves  # noqa: E402
from lungkit.inference import predict_probabilities  # noqa: E402
from lungkit.profiles import get_profile  # noqa: E402
from lungkit.training import (  # noqa: E402
    RECIPE_KEYS,
    PrecisionChoice,
    Recipe,
    build_for_training,
    choose_strategy,
    compile_model,
    configure_precision,
    make_optimizer,
    train,
)

BASE_RECIPE = {
    "model": "unet",
    "image_size": 32,
    "input_channels": 1,
    "preprocessing": "hu_window_zscore",
    "optimizer": "adam",
    "learning_rate": 1e-2,
    "loss": "bce",
    "batch_size": 4,
    "epochs": 3,
    "monitor": "val_dice",
}


def recipe_with(**changes) -> Recipe:
    return Recipe.from_dict({**BASE_RECIPE, **changes})


def squares_dataset(count: int = 8, size: int = 32, batch_size: int = 4, seed: int = 0) -> tf.data.Dataset:
    """Noisy images, each with one bright square, and the square as mask."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.3, (count, size, size, 1)).astype("float32")
    masks = np.zeros_like(images)
    for index in range(count):
        side = int(rng.integers(6, 12))
        row, col = rng.integers(0, size - side, 2)
        images[index, row : row + side, col : col + side] += 1.0
        masks[index, row : row + side, col : col + side] = 1.0
    return tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch_size)


@pytest.fixture(autouse=True)
def float32_policy():
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


# --- recipes -------------------------------------------------------------------------------------------------------


def test_recipe_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ValueError, match=r"unknown recipe key\(s\) \['learnig_rate'\] in paper004.py"):
        Recipe.from_dict({**BASE_RECIPE, "learnig_rate": 1e-3}, source="paper004.py")
    incomplete = dict(BASE_RECIPE)
    del incomplete["loss"]
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['loss'\]"):
        Recipe.from_dict(incomplete)
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        recipe_with(optimizer="rmsprop")
    with pytest.raises(ValueError, match="momentum"):
        recipe_with(momentum=0.9)  # momentum with adam
    with pytest.raises(ValueError, match="reduce_lr_patience"):
        recipe_with(lr_schedule="cosine", reduce_lr_patience=3)
    with pytest.raises(ValueError, match="min_epochs=5"):
        recipe_with(min_epochs=5, epochs=3)
    with pytest.raises(ValueError, match="model='unet3d'"):
        recipe_with(model="unet3d")


def test_recipe_round_trips_through_a_dict():
    recipe = recipe_with(loss_kwargs={"lam": 0.5}, notes="paper: Adam")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert set(recipe.to_dict()) == set(RECIPE_KEYS)


def test_for_profile_caps_and_records():
    recipe = recipe_with(image_size=256, epochs=100, min_epochs=20, batch_size=16)
    smoke = recipe.for_profile("smoke", patches=False)
    # the smoke profile's caps (epochs 1, image 64, batch 4, 2 steps) are the premise of this check
    assert get_profile("smoke").max_epochs == 1 and get_profile("smoke").max_image_size == 64
    assert (smoke.epochs, smoke.image_size, smoke.batch_size, smoke.min_epochs) == (1, 64, 4, 1)
    assert smoke.capped == {
        "epochs": {"recipe": 100, "used": 1},
        "image_size": {"recipe": 256, "used": 64},
        "batch_size": {"recipe": 16, "used": 4},
        "min_epochs": {"recipe": 20, "used": 1},
    }
    assert (smoke.profile, smoke.model_scale, smoke.max_steps_per_epoch) == ("smoke", "tiny", 2)
    quick_profile = get_profile("quick")
    quick = recipe.for_profile(quick_profile, patches=False)
    assert (quick.epochs, quick.image_size, quick.batch_size) == (
        min(100, quick_profile.max_epochs),
        min(256, quick_profile.max_image_size),
        min(16, quick_profile.batch_size),
    )
    assert quick.max_steps_per_epoch == quick_profile.max_steps_per_epoch
    paper = recipe.for_profile("paper")
    assert (paper.epochs, paper.image_size, paper.batch_size, paper.capped) == (100, 256, 16, {})
    # a profile never raises a value
    assert recipe_with(epochs=2).for_profile("quick").epochs == 2
    assert smoke.patch_size is None and smoke.input_size == 64
    protocol = smoke.protocol()
    assert protocol["profile"] == "smoke" and protocol["epochs"] == 1 and protocol["image_size"] == 64
    assert protocol["capped"]["epochs"] == {"recipe": 100, "used": 1}
    assert protocol["optimizer"].startswith("adam lr=0.01") and protocol["loss"].startswith("bce(")
    with pytest.raises(ValueError, match="unknown profile"):
        recipe.for_profile("huge")


def test_patch_training_keeps_the_recipe_scale_and_caps_the_patch():
    recipe = recipe_with(image_size=256, epochs=100, batch_size=16)
    quick = recipe.for_profile("quick")  # the quick profile trains on patches
    assert get_profile("quick").patch_training
    assert (quick.image_size, quick.patch_size, quick.input_size) == (256, 128, 128)
    assert "image_size" not in quick.capped  # nothing is downscaled
    smoke = recipe.for_profile("smoke")
    assert (smoke.image_size, smoke.patch_size) == (get_profile("smoke").max_slice_size, 64)
    paper = recipe.for_profile("paper")
    assert paper.patch_size is None and paper.input_size == 256
    assert quick.protocol()["patch_size"] == 128 and quick.protocol()["max_steps"] == get_profile("quick").max_steps


def test_patch_augmentation_follows_the_profile_and_is_part_of_the_recipe():
    recipe = recipe_with(image_size=256)
    quick = recipe.for_profile("quick")
    assert quick.patch_augmentation == get_profile("quick").patch_augmentation == "nnunet"
    assert quick.protocol()["patch_augmentation"] == "nnunet"  # a run trained otherwise is not reused for it
    assert recipe.for_profile("quick", patches=False).patch_augmentation is None
    assert recipe.for_profile("paper").patch_augmentation is None
    with pytest.raises(ValueError, match="patch_augmentation"):
        dataclasses.replace(quick, patch_augmentation="elastic")


def test_step_budget_gives_small_datasets_as_many_updates():
    recipe = recipe_with(epochs=100, min_epochs=15).for_profile("quick")
    budget = get_profile("quick").max_steps
    small = recipe.with_step_budget(10)  # e.g. 80 slices in batches of 8
    large = recipe.with_step_budget(40)
    assert small.epochs * 10 == budget == large.epochs * 40
    assert small.capped["epochs"] == {"recipe": 100, "used": budget // 10}
    assert small.min_epochs == 15 and large.min_epochs == large.epochs
    assert recipe_with(epochs=5).for_profile("quick").with_step_budget(10).epochs == 5  # never above the paper's
    assert recipe_with(epochs=100).for_profile("paper").with_step_budget(10).epochs == 100  # no budget at paper
    overridden = recipe_with(epochs=100, profile_overrides={"quick": {"epochs": 25}}).for_profile("quick")
    assert overridden.with_step_budget(10).epochs == 25  # an override wins


def test_data_asked_for_before_the_model_plans_the_whole_step_budget(tmp_path, monkeypatch):
    """The notebooks call datasets() before build_model(): the patches planned must cover the recipe's step budget,
    not the profile's epoch cap (a 400-step budget once replayed the profile's 200 planned batches)."""
    from lungkit import pipeline
    from lungkit.experiments.segmentation import SegmentationExperiment

    planned = []
    real_make_patch_dataset = pipeline.make_patch_dataset

    def recording(sampler, batch_size, batches):
        planned.append(batches)
        return real_make_patch_dataset(sampler, batch_size, batches)

    monkeypatch.setattr(pipeline, "make_patch_dataset", recording)
    experiment = SegmentationExperiment("paper004", "unet", "smoke", tmp_path / "run")
    smoke = get_profile("smoke")
    budget = 3 * smoke.max_steps  # above the profile's, as a recipe's profile_overrides may ask
    experiment.recipe = dataclasses.replace(experiment.recipe, max_steps=budget)
    assert experiment.recipe.epochs * smoke.max_steps_per_epoch < budget  # the premise: the profile's cap is shorter
    experiment.datasets()
    assert planned == [budget]
    assert experiment.recipe.epochs * experiment.steps_per_epoch() == budget
    experiment.build_model()  # applying the budget again changes nothing
    assert experiment.recipe.epochs * experiment.steps_per_epoch() == budget


def test_profile_overrides_apply_to_their_profile_only_and_are_recorded():
    override = {"loss": "dice_bce", "loss_kwargs": {"dice_weight": 0.6, "bce_weight": 0.4}, "learning_rate": 5e-4}
    recipe = recipe_with(learning_rate=0.01, profile_overrides={"quick": override})
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    quick = recipe.for_profile("quick")
    assert (quick.loss, quick.loss_kwargs, quick.learning_rate) == ("dice_bce", override["loss_kwargs"], 5e-4)
    assert quick.overridden == {
        "loss": {"recipe": "bce", "used": "dice_bce"},
        "loss_kwargs": {"recipe": {}, "used": {"dice_weight": 0.6, "bce_weight": 0.4}},
        "learning_rate": {"recipe": 0.01, "used": 5e-4},
    }
    protocol = quick.protocol()
    assert protocol["overridden"] == quick.overridden
    assert protocol["loss"].startswith("dice_bce(") and protocol["optimizer"].startswith("adam lr=0.0005")
    paper = recipe.for_profile("paper")
    assert (paper.loss, paper.learning_rate, paper.overridden) == ("bce", 0.01, {})
    # the caps still apply to what the override leaves alone
    assert quick.epochs == min(recipe.epochs, get_profile("quick").max_epochs)
    # an override wins over a cap, and is recorded as an override, not a cap
    longer = recipe_with(epochs=100, min_epochs=50, profile_overrides={"quick": {"epochs": 25}}).for_profile("quick")
    assert get_profile("quick").max_epochs < 25
    assert longer.epochs == 25 and "epochs" not in longer.capped
    assert longer.min_epochs == 25 and longer.capped["min_epochs"] == {"recipe": 50, "used": 25}
    assert longer.overridden == {"epochs": {"recipe": 100, "used": 25}}
    with pytest.raises(ValueError, match="profile_overrides"):
        recipe_with(profile_overrides={"quick": {"model": "unet"}})
    with pytest.raises(ValueError, match="profile names among"):
        recipe_with(profile_overrides={"fast": {"learning_rate": 1e-3}})
    with pytest.raises(ValueError, match="learning_rate"):
        recipe_with(profile_overrides={"quick": {"learning_rate": -1.0}}).for_profile("quick")


def test_cosine_schedule_decays_to_min_lr():
    recipe = recipe_with(lr_schedule="cosine", learning_rate=1e-3, min_lr=1e-5, epochs=4)
    optimizer = make_optimizer(recipe, steps_per_epoch=5)
    schedule = optimizer._learning_rate  # the schedule object
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(10)) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * 0.5)), rel=1e-5)
    assert float(schedule(20)) == pytest.approx(1e-5, rel=1e-4)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_optimizer(recipe)
    sgd = make_optimizer(recipe_with(optimizer="sgd", momentum=0.9))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == pytest.approx(0.9)


# --- precision and compile -----------------------------------------------------------------------------------------


def test_precision_is_mixed_only_with_a_gpu():
    cpu = configure_precision(gpu=False)
    assert (cpu.dtype_policy, cpu.jit_compile) == ("float32", False)
    assert keras.config.dtype_policy().name == "float32"
    gpu = configure_precision(gpu=True)
    assert (gpu.dtype_policy, gpu.jit_compile) == ("mixed_float16", True)
    model = build_model("unet", "tiny")
    assert model.get_layer("encoder_1_conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"  # the head stays float32 under mixed precision


def test_mixed_precision_attention_unet_trains_a_step():
    # XLA is left off here only because compiling it on a CPU takes ~50 s; mixed_float16 + XLA was run by hand
    recipe = recipe_with(model="attention_unet", loss="hybrid_dice_focal", loss_kwargs={"lam": 0.5})
    mixed = PrecisionChoice("mixed_float16", False, "test")
    keras.config.set_dtype_policy(mixed.dtype_policy)
    model = build_for_training(recipe, scale="tiny", precision=mixed)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    images, masks = next(iter(squares_dataset()))
    logs = model.train_on_batch(images, masks, return_dict=True)
    assert np.isfinite(logs["loss"])
    maps = attention_maps_model(model).predict(images, verbose=0)
    assert maps["attention_gate_1"].dtype == np.float32


def test_compile_rejects_head_that_contradicts_from_logits():
    with pytest.raises(ValueError, match="ends in a sigmoid"):
        compile_model(build_model("unet", "tiny"), recipe_with(from_logits=True))
    with pytest.raises(ValueError, match="outputs logits"):
        compile_model(build_model("unet", "tiny", output_activation=None), recipe_with(from_logits=False))


# --- training ------------------------------------------------------------------------------------------------------


def test_short_training_lowers_the_loss_and_keeps_the_best_epoch(tmp_path):
    keras.utils.set_random_seed(0)
    recipe = recipe_with(epochs=12, early_stopping_patience=20, reduce_lr_patience=20)
    model = build_for_training(recipe, scale="tiny", batch_norm=True)
    dataset = squares_dataset()
    result = train(model, recipe, dataset, dataset, tmp_path / "run", verbose=0)

    history = result.history
    assert list(history["epoch"]) == list(range(12))
    assert history["loss"].iloc[-1] < 0.5 * history["loss"].iloc[0]
    assert history["dice"].iloc[-1] > 0.6  # it found the squares, not just the background
    assert (history["images_per_second"] > 0).all() and history["learning_rate"].iloc[0] == pytest.approx(1e-2)
    assert result.images_per_second == list(history["images_per_second"])
    assert result.resumed_from_epoch == 0 and not result.reused
    assert result.best_checkpoint.name == "best.keras" and result.best_checkpoint.exists()
    assert (tmp_path / "run" / "history.csv").exists()
    assert not (tmp_path / "run" / "backup").exists()  # removed once training completed
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["completed"] and summary["recipe"]["epochs"] == 12
    # the returned model holds the best epoch's weights
    evaluated = model.evaluate(dataset, return_dict=True, verbose=0)
    assert evaluated["dice"] == pytest.approx(history["val_dice"].max(), abs=1e-5)

    figure = plot_training_curves(history)
    assert [axis.get_ylabel() for axis in figure.axes] == ["loss", "dice"]
    assert all(len(axis.lines) == 2 for axis in figure.axes)


class CrashAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch_index: int):
        super().__init__()
        self.epoch_index = epoch_index

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch_index:
            raise RuntimeError("simulated crash")


class EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []
        self.iterations_at_start = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.iterations_at_start is None:
            self.iterations_at_start = int(self.model.optimizer.iterations.numpy())
        self.epochs.append(epoch)


def test_resume_after_a_crash_continues_from_the_last_completed_epoch(tmp_path):
    run_dir = tmp_path / "run"
    recipe = recipe_with(epochs=3)
    dataset = squares_dataset()  # 2 batches per epoch

    keras.utils.set_random_seed(0)
    model = build_for_training(recipe, scale="tiny")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(model, recipe, dataset, dataset, run_dir, verbose=0, extra_callbacks=[CrashAfterEpoch(1)])
    assert (run_dir / "backup").is_dir()
    assert not (run_dir / "training_summary.json").exists()

    # a new process would build a fresh model: the weights, optimizer state and epoch come from the backup
    keras.utils.set_random_seed(1)
    fresh = build_for_training(recipe, scale="tiny")
    recorder = EpochRecorder()
    result = train(fresh, recipe, dataset, dataset, run_dir, verbose=0, extra_callbacks=[recorder])
    assert result.resumed_from_epoch == 2
    assert recorder.epochs == [2]  # only the third epoch ran
    assert recorder.iterations_at_start == 2 * 2  # optimizer state restored (2 epochs x 2 steps)
    assert list(result.history["epoch"]) == [0, 1, 2]
    assert result.epochs_completed == 3
    assert not (run_dir / "backup").exists()

    # a rerun of a completed run reuses it
    recorder = EpochRecorder()
    again = train(build_for_training(recipe, scale="tiny"), recipe, dataset, dataset, run_dir, verbose=0,
                  extra_callbacks=[recorder])
    assert again.reused and recorder.epochs == []
    assert again.wall_time_s == pytest.approx(result.wall_time_s)  # the training's time, not the reload's
    assert list(again.history["epoch"]) == [0, 1, 2]
    assert again.trained_at_commit == result.trained_at_commit
    # a run trained by other code is still reused (the recipe is the same), but not silently
    summary_path = run_dir / "training_summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "git_commit": "0000000"}))
    with pytest.warns(UserWarning, match="trained at commit 0000000; the code is now at"):
        older = train(build_for_training(recipe, scale="tiny"), recipe, dataset, dataset, run_dir, verbose=0)
    assert older.reused and older.trained_at_commit == "0000000"
    # ... unless the recipe changed
    with pytest.raises(ValueError, match="different recipe"):
        train(build_for_training(recipe_with(epochs=4), scale="tiny"), recipe_with(epochs=4), dataset, dataset,
              run_dir, verbose=0)


def test_profile_step_cap_and_logits_prediction(tmp_path):
    recipe = recipe_with(epochs=1, from_logits=True, loss="bce_logits").for_profile("smoke")  # 2 steps per epoch
    model = build_for_training(recipe, scale="tiny")  # logits head, because the recipe says from_logits
    dataset = squares_dataset(count=16, batch_size=2)  # 8 batches; the profile allows 2 per epoch
    recorder = EpochRecorder()
    result = train(model, recipe, dataset, dataset.take(1), tmp_path / "run", verbose=0, tensorboard=False,
                   extra_callbacks=[recorder])
    assert int(model.optimizer.iterations.numpy()) == 2
    assert result.epochs_completed == 1

    images = np.concatenate([batch[0].numpy() for batch in dataset.take(2)])[..., 0]  # (N, H, W) is accepted
    logits = model.predict(images[..., None], verbose=0)
    probabilities = predict_probabilities(model, images, batch_size=3, from_logits=True)
    assert probabilities.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    with pytest.raises(ValueError, match="shape"):
        predict_probabilities(model, np.zeros((1, 1, 32, 32, 1)))


def test_train_checks_its_inputs(tmp_path):
    recipe = recipe_with()
    dataset = squares_dataset()
    with pytest.raises(ValueError, match="not compiled"):
        train(build_model("unet", "tiny"), recipe, dataset, dataset, tmp_path)
    model = build_for_training(recipe, scale="tiny")
    with pytest.raises(ValueError, match="validation data"):
        train(model, recipe, dataset, None, tmp_path)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        train(model, recipe, (np.zeros((2, 32, 32, 1)),) * 2, dataset, tmp_path)
    with pytest.raises(ValueError, match="infinite"):
        train(model, recipe, dataset.repeat(), dataset, tmp_path)


def test_choose_strategy_default_on_this_machine():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this check is for CPU-only machines")
    assert choose_strategy("auto") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="strategy kind"):
        choose_strategy("horovod")
    with pytest.raises(ValueError, match="only used with kind='mirrored'"):
        choose_strategy("default", devices=["/cpu:0"])


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    # two logical CPUs; must happen before TensorFlow initialises its devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from lungkit.training import Recipe, build_for_training, choose_strategy, train

    strategy = choose_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    recipe = Recipe.from_dict(dict(model="unet", image_size=32, preprocessing="minmax", optimizer="adam",
                                   learning_rate=1e-3, loss="bce", batch_size=4, epochs=1))
    model = build_for_training(recipe, scale="tiny", strategy=strategy)
    images = np.random.default_rng(0).normal(size=(8, 32, 32, 1)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, (images > 1).astype("float32"))).batch(4)
    result = train(model, recipe, dataset, dataset, sys.argv[1], strategy=strategy, verbose=0)
    outside = build_for_training(recipe, scale="tiny")
    try:
        train(outside, recipe, dataset, dataset, sys.argv[1] + "_outside", strategy=strategy, verbose=0)
        mismatch_error = None
    except ValueError as error:
        mismatch_error = str(error)
    print(json.dumps({
        "kind": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "environment": result.environment,
        "epochs": result.epochs_completed,
        "mismatch_error": mismatch_error,
    }))
    """
)


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "KERAS_BACKEND": "tensorflow"}
    completed = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["kind"] == "MirroredStrategy" and report["replicas"] == 2
    assert report["environment"]["strategy"] == "MirroredStrategy" and report["environment"]["replicas"] == 2
    assert report["epochs"] == 1
    assert "strategy.scope()" in report["mismatch_error"]


_SEEDED_TRAINING = """
import sys, numpy as np
from lungkit.experiments.segmentation import SegmentationExperiment
paper, result_key = sys.argv[2:4]
weights = []
for run in ("a", "b"):
    experiment = SegmentationExperiment(paper, result_key, "smoke", sys.argv[1] + "/" + run, seed=3)
    model = experiment.build_model()
    experiment.train(model, verbose=0)
    weights.append(np.concatenate([np.ravel(w) for w in model.get_weights()]))
assert experiment.fit.epochs_completed >= 1
print("IDENTICAL" if np.array_equal(weights[0], weights[1]) else "DIFFERENT", float(np.abs(weights[0]).sum()))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "paper, result_key, inter_op_threads",
    [
        ("paper004", "unet", None),
        # Mask2Former's gradients vary between identical calls when TensorFlow runs independent ops concurrently
        # (measured at quick: 1 call in 3 differed in 76-102 of 240 gradients, the loss identical); with one
        # inter-op thread they repeat (the README's Reproducibility paragraph has the cost)
        ("paper000", "mask2former", "1"),
    ],
)
def test_two_seeded_trainings_give_identical_weights(tmp_path, paper, result_key, inter_op_threads):
    # a child process: op determinism, once on, stays on for the whole process
    import subprocess
    import sys

    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    if inter_op_threads is not None:
        environment["TF_NUM_INTEROP_THREADS"] = inter_op_threads
    done = subprocess.run([sys.executable, "-c", _SEEDED_TRAINING, str(tmp_path), paper, result_key],
                          capture_output=True, text=True,
                          timeout=600, env=environment, cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    verdict, weight_sum = done.stdout.split()[-2:]
    assert verdict == "IDENTICAL" and float(weight_sum) > 0
