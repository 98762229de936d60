"""Self-supervised classifier (paper 000): NT-Xent against a hand-computed value, stratified label subsets, a few
contrastive steps that run and lower the loss, a phantom run in which the pretraining sees only training crops, and
the histology task on the Lung-PET-CT-Dx phantom: its label rule, its patient-wise split kept in pretraining and
downstream training, and its own result keys and report lines."""

from __future__ import annotations

import math

import json

import keras
import numpy as np
import pytest

from lungkit.experiments.segment_classify import LABEL_RULE_TEXT, is_histology_rule, lungrads_labels
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


HISTOLOGY_RULE = "adenocarcinoma_vs_other"


def test_histology_rule_maps_the_letters_exactly():
    assert lungrads_labels(["A", "B", "E", "G", "A"], HISTOLOGY_RULE).tolist() == [1, 0, 0, 0, 1]
    assert is_histology_rule(HISTOLOGY_RULE) and not is_histology_rule("lr23_vs_lr4")
    assert "HISTOLOGY, not malignancy" in LABEL_RULE_TEXT[HISTOLOGY_RULE]
    with pytest.raises(ValueError, match=r"'adenocarcinoma_vs_other' maps .*\['A', 'B', 'E', 'G'\], not \['Q'\]"):
        lungrads_labels(["A", "Q"], HISTOLOGY_RULE)


def test_a_rule_on_the_other_datasets_labels_names_rule_mapping_and_finding():
    with pytest.raises(ValueError) as error:
        lungrads_labels(["A", "G"], "lr23_vs_lr4")
    message = str(error.value)
    assert "'lr23_vs_lr4'" in message and "['LR2', 'LR3', 'LR4A', 'LR4B']" in message and "['A', 'G']" in message
    assert HISTOLOGY_RULE in message  # points at the rule for that dataset
    with pytest.raises(ValueError, match=r"Lung-PET-CT-Dx histology letters .*not \['LR2'\]"):
        lungrads_labels(["LR2"], HISTOLOGY_RULE)


@pytest.fixture(scope="module")
def histology_run(tmp_path_factory):
    """The histology task at ``smoke`` on the Lung-PET-CT-Dx phantom: pretraining and one fine-tuned classifier
    (the other modes share the same code path, and the suite's time is short)."""
    run_dir = tmp_path_factory.mktemp("ssl_histology")
    experiment = SelfSupervisedClassifier("smoke", run_dir, label_rule=HISTOLOGY_RULE)
    frame = experiment.run(fractions=(0.5,), modes=("fine_tune",))
    return experiment, frame


def test_histology_task_never_trains_on_a_test_patient(histology_run):
    from lungkit.data.petct_kit import read_petct_manifest

    experiment, _ = histology_run
    manifest = read_petct_manifest(experiment.dataset_dir)
    assert set(manifest["histology"]) <= {"A", "B", "E", "G"}
    patient_of = dict(zip(manifest["id"], manifest["patient"]))
    split_patients = {split: set(rows["patient"]) for split, rows in manifest.groupby("split")}
    assert split_patients["test"] and not split_patients["test"] & split_patients["train"]
    _, pretraining_ids = experiment.pretraining_images()
    downstream_ids = experiment.downstream_ids[("fine_tune", 0.5)]
    for seen in (pretraining_ids, downstream_ids):
        patients = {patient_of[slice_id] for slice_id in seen}
        assert seen and patients <= split_patients["train"], patients
    test_ids = experiment.splits["test"][2]
    assert test_ids and {patient_of[slice_id] for slice_id in test_ids} <= split_patients["test"]
    # the crops are labelled from the manifest's histology letter by the rule
    letter_of = dict(zip(manifest["id"], manifest["histology"]))
    crops, labels, ids = experiment.splits["train"]
    assert crops.shape[1:] == (experiment.crop_size, experiment.crop_size, 1)  # the CT channel only
    assert labels.tolist() == lungrads_labels([letter_of[i] for i in ids], HISTOLOGY_RULE).tolist()


def test_histology_task_writes_its_own_rows(histology_run):
    from lungkit.reports import collect_summaries, write_paper_report

    experiment, frame = histology_run
    results = experiment.run_dir / "results" / "paper000"
    assert sorted(p.name for p in results.iterdir()) == ["ssl_histology_fine_tune_50pct"]  # no Lung-RADS key
    assert frame["result"].tolist() == ["ssl_histology_fine_tune_50pct"]
    summary = json.loads((results / "ssl_histology_fine_tune_50pct" / "summary.json").read_text())
    assert summary["table"] == "lungkit_selfsupervised_histology" and "HISTOLOGY" in summary["row"]
    protocol = summary["protocol"]
    assert protocol["data_source"] == "phantom" and "BY PATIENT" in protocol["split"]
    assert protocol["label_rule"] == f"{HISTOLOGY_RULE}: {LABEL_RULE_TEXT[HISTOLOGY_RULE]}"
    # the smoke phantom's 4 subjects leave one histology in test: nothing measurable, so wiring only
    one_class = len(set(experiment.splits["test"][1].tolist())) < 2
    assert summary["status"] == ("wiring_only" if one_class else "measured") == frame["status"].iloc[0]
    assert (experiment.run_dir / "models" / "paper000" / "simclr_histology").is_dir()
    markdown, _ = write_paper_report("paper000", collect_summaries(experiment.run_dir),
                                     experiment.run_dir / "reports", experiment.run_dir)
    line = next(line for line in markdown.read_text().splitlines() if "`ssl_histology_fine_tune_50pct`" in line)
    assert "BY PATIENT" in line and "HISTOLOGY, not malignancy" in line
