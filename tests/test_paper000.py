"""Paper 000's recipes: valid for the kit's Recipe, AdamW with explicit weight decay, and a tiny model
trained end to end through the kit's training layer (build_for_training -> train -> predict_probabilities)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kit_fixtures import disc_slices
from lungkit.models.set_losses import SetCriterion
from lungkit.papers import paper000
from lungkit.inference import predict_probabilities
from lungkit.training import Recipe, build_for_training, make_optimizer, train


def test_recipes_are_valid_and_record_the_paper_solver():
    recipe = Recipe.from_dict(paper000.RECIPES["mask2former"], source="paper000.py: mask2former")
    assert (recipe.optimizer, recipe.learning_rate, recipe.weight_decay) == ("adamw", 1e-4, 0.01)
    assert (recipe.batch_size, recipe.epochs, recipe.lr_schedule) == (32, 100, "cosine")
    assert "weight_decay=0.01" in recipe.describe_optimizer()
    optimizer = make_optimizer(recipe, steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == pytest.approx(0.01)
    assert paper000.OFFICIAL_COCO_SOLVER["weight_decay"] == 0.05
    assert set(paper000.RECIPES) == {"mask2former", "maskformer", "vit_segmenter"}


@pytest.mark.parametrize("key", ["mask2former", "maskformer", "vit_segmenter"])
def test_every_recipe_builds_a_recipe_and_names_a_registered_model(key):
    recipe = Recipe.from_dict(paper000.RECIPES[key], source=f"paper000.py: {key}")
    assert recipe.model == key and recipe.optimizer == "adamw" and not recipe.from_logits


def test_weight_decay_belongs_to_adamw_only():
    base = dict(paper000.RECIPES["mask2former"])
    with pytest.raises(ValueError, match="weight_decay"):
        Recipe.from_dict({**base, "weight_decay": None})
    with pytest.raises(ValueError, match="weight_decay"):
        Recipe.from_dict({**base, "optimizer": "adam"})


@pytest.mark.slow
def test_tiny_mask2former_trains_through_the_kit_training_layer(tmp_path):
    keras.utils.set_random_seed(0)
    recipe = Recipe.from_dict({
        **paper000.RECIPES["mask2former"], "image_size": 64, "learning_rate": 1e-3, "batch_size": 4,
        "epochs": 2, "augment_on_the_fly": False,
        "loss_kwargs": {**paper000.MASK2FORMER_LOSS, "num_points": 256, "max_instances": 4},
    })
    images, masks = disc_slices(8, 64, channels=recipe.input_channels)  # CT + PET: 2
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    model = build_for_training(recipe, steps_per_epoch=2, scale="tiny")
    assert isinstance(model.loss, SetCriterion) and model.loss.num_points == 256  # the recipe's loss is used
    assert not model.jit_compile
    result = train(model, recipe, dataset, dataset, tmp_path / "run", verbose=0)
    history = result.history
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert np.isfinite(history["val_dice"]).all() and result.best_checkpoint.exists()
    probabilities = predict_probabilities(model, images[:2])
    assert probabilities.shape == (2, 64, 64, 1) and 0.0 <= probabilities.min() <= probabilities.max() <= 1.0


def test_cpu_profiles_use_full_mask_losses_and_the_paper_profile_the_points():
    paper_recipe = Recipe.from_dict(paper000.RECIPES["mask2former"])
    assert paper_recipe.for_profile("paper").loss_kwargs["num_points"] == 12544
    quick = paper_recipe.for_profile("quick")
    assert quick.loss_kwargs["num_points"] is None and quick.loss_kwargs["mask_weight"] == 5.0
    assert "loss_kwargs" in quick.overridden
    maskformer = Recipe.from_dict(paper000.RECIPES["maskformer"]).for_profile("smoke")
    assert maskformer.loss_kwargs["mask_loss"] == "focal" and maskformer.loss_kwargs["num_points"] is None


def test_table1_recipes_read_ct_and_pet_and_the_ablation_ct_only(tmp_path):
    """The three Table 1 results and the CT-only ablation train on the run's CT + PET kit dataset (smoke phantom)."""
    from lungkit.experiments.segmentation import SegmentationExperiment

    shapes = {}
    for key in ("vit_segmenter", "mask2former_ct_only"):
        experiment = SegmentationExperiment("paper000", key, "smoke", tmp_path, seed=0)
        assert experiment.prepare_data() == tmp_path / "petct_kit"  # converted once, reused by the second
        train, _ = experiment.datasets()
        images, masks = next(iter(train))
        shapes[key] = images.shape[-1]
        assert masks.shape[-1] == 1
        extra = experiment._protocol_extra(experiment.dataset_dir)
        assert extra["mask_flag"].startswith("MASKS FROM BOXES") and extra["input"].startswith(
            "CT + PET" if key == "vit_segmenter" else "CT only")
    assert shapes == {"vit_segmenter": 2, "mask2former_ct_only": 1}
    assert experiment.rows[0]["table"] == "table1"
