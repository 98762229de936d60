"""The fine-tuning schedule of the training layer (paper 002's MobileNetV2 U-Net): how a recipe's epochs split
into a frozen and an unfrozen phase, what is refused, and a real two-phase run on a toy model in which the frozen
part does not move in phase 1, moves in phase 2, and each phase trains at its own rate."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from lungkit.training import Recipe, fine_tuning_phases, joined_commits, train_in_phases  # noqa: E402

SCHEDULE = {"frozen_layer": "encoder", "frozen_fraction": 0.25, "unfrozen_learning_rate": 1e-3}
BASE_RECIPE = {
    "model": "unet",
    "image_size": 16,
    "input_channels": 1,
    "preprocessing": "hu_window_unit",
    "optimizer": "adam",
    "learning_rate": 1e-2,
    "loss": "bce_logits",
    "from_logits": True,
    "batch_size": 4,
    "epochs": 8,
    "min_epochs": 4,
    "monitor": "val_loss",
    "fine_tuning": SCHEDULE,
}


def recipe_with(**changes) -> Recipe:
    return Recipe.from_dict({**BASE_RECIPE, **changes})


def test_phases_split_the_epochs_and_lower_the_rate():
    frozen, unfrozen = fine_tuning_phases(recipe_with())
    assert (frozen.name, frozen.frozen_layer, frozen.recipe.epochs, frozen.recipe.learning_rate) == (
        "frozen", "encoder", 2, 1e-2)
    assert (unfrozen.name, unfrozen.frozen_layer, unfrozen.recipe.epochs, unfrozen.recipe.learning_rate) == (
        "unfrozen", None, 6, 1e-3)
    assert (frozen.recipe.min_epochs, unfrozen.recipe.min_epochs) == (2, 2)  # 4 split as 2 + 2
    # a one-epoch run (smoke) still runs both phases
    assert [p.recipe.epochs for p in fine_tuning_phases(recipe_with(epochs=1, min_epochs=0))] == [1, 1]
    # a large fraction still leaves one unfrozen epoch
    assert [p.recipe.epochs for p in fine_tuning_phases(
        recipe_with(fine_tuning={**SCHEDULE, "frozen_fraction": 0.99}))] == [7, 1]


def test_without_pretrained_weights_one_phase_trains_everything_at_the_first_rate():
    recipe = recipe_with()
    (phase,) = fine_tuning_phases(recipe, pretrained=False)
    assert (phase.name, phase.frozen_layer, phase.recipe) == ("from_scratch", None, recipe)
    (plain,) = fine_tuning_phases(recipe_with(fine_tuning=None))
    assert plain.name == "full" and plain.frozen_layer is None


@pytest.mark.parametrize("schedule", [
    {**SCHEDULE, "unfrozen_learning_rate": 1e-2},  # not lower than the first rate
    {**SCHEDULE, "frozen_fraction": 1.0},
    {"frozen_layer": "encoder", "frozen_fraction": 0.5},  # a key missing
    {**SCHEDULE, "frozen_layer": ""},
])
def test_bad_schedules_are_refused(schedule):
    with pytest.raises(ValueError, match="fine_tuning"):
        recipe_with(fine_tuning=schedule)


def test_protocol_records_the_schedule_only_when_set():
    assert recipe_with().protocol()["fine_tuning"] == SCHEDULE
    assert "fine_tuning" not in recipe_with(fine_tuning=None).protocol()


def toy_model() -> keras.Model:
    inputs = keras.Input((16, 16, 1))
    encoder = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, padding="same", activation="relu")],
                               name="encoder")
    outputs = keras.layers.Conv2D(1, 1, name="head")(encoder(inputs))
    return keras.Model(inputs, outputs)


class EncoderSnapshots(keras.callbacks.Callback):
    """The encoder's kernel at the start and end of every fit (one fit per phase)."""

    def __init__(self):
        super().__init__()
        self.snapshots = []

    def on_train_begin(self, logs=None):
        self.snapshots.append(["begin", self.model.get_layer("encoder").weights[0].numpy().copy()])

    def on_train_end(self, logs=None):
        self.snapshots.append(["end", self.model.get_layer("encoder").weights[0].numpy().copy()])


def test_two_phase_run_freezes_then_unfreezes(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 0.3, (8, 16, 16, 1)).astype("float32")
    masks = (images > 0.2).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    recipe = recipe_with(epochs=4, min_epochs=0)
    snapshots = EncoderSnapshots()
    result = train_in_phases(toy_model(), recipe, data, data, tmp_path / "model", pretrained=True, verbose=0,
                             tensorboard=False, extra_callbacks=[snapshots])
    (_, frozen_begin), (_, frozen_end), (_, unfrozen_begin), (_, unfrozen_end) = snapshots.snapshots
    np.testing.assert_array_equal(frozen_begin, frozen_end)  # phase 1 never touched the encoder
    assert not np.allclose(unfrozen_begin, unfrozen_end)  # phase 2 trained it
    history = result.history
    assert history["phase"].tolist() == ["frozen", "unfrozen", "unfrozen", "unfrozen"]
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(history.groupby("phase")["learning_rate"].first()[["frozen", "unfrozen"]], [1e-2, 1e-3])
    assert result.epochs_completed == 4
    assert (tmp_path / "model" / "frozen" / "training_summary.json").is_file()
    assert (tmp_path / "model" / "unfrozen" / "training_summary.json").is_file()
    assert len(result.environment["phases"]) == 2 and "encoder frozen" in result.environment["phases"][0]
    # rerunning reuses both finished phases instead of training again
    again = train_in_phases(toy_model(), recipe, data, data, tmp_path / "model", pretrained=True, verbose=0,
                            tensorboard=False)
    assert again.reused and again.epochs_completed == 4


def test_the_commits_of_a_phased_run_are_named_once_and_never_as_none():
    assert joined_commits(["abc1234", "abc1234"]) == "abc1234"
    assert joined_commits(["abc1234", "def5678"]) == "abc1234 + def5678"
    # a phase reused from a summary that recorded no commit: said in words, not "None + abc1234"
    assert joined_commits([None, "abc1234"]) == "(not recorded) + abc1234"
    assert joined_commits([None, None]) is None


def test_unknown_frozen_layer_is_named(tmp_path):
    data = tf.data.Dataset.from_tensor_slices((np.zeros((4, 16, 16, 1), "float32"),) * 2).batch(4)
    with pytest.raises(ValueError, match="'backbone' is not a layer"):
        train_in_phases(toy_model(), recipe_with(fine_tuning={**SCHEDULE, "frozen_layer": "backbone"}), data, data,
                        tmp_path, verbose=0)


def test_segmentation_experiment_runs_paper002_lungkit_rows(tmp_path):
    """Paper 002 prints no table: its systems come from BASELINES, filed under lungkit's own table and row."""
    from lungkit.experiments.segmentation import SegmentationExperiment

    experiment = SegmentationExperiment("paper002", "mobilenetv2_unet", "smoke", tmp_path)
    assert experiment.rows == [{"table": "lungkit_segmentation",
                                "row": experiment.rows[0]["row"]}] and "lungkit" in experiment.rows[0]["row"]
    assert experiment.recipe.fine_tuning["frozen_layer"] == "mobilenetv2_encoder"
    assert experiment.recipe.model_scale == "tiny" and experiment.recipe.profile == "smoke"
    with pytest.raises(ValueError, match="no recipe"):
        SegmentationExperiment("paper002", "unet", "smoke", tmp_path)
