"""The estimator on real data (scikit-learn's digits): training, scoring, labels, files, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem, InvalidInputError, ModelFileError, RequiresFitting
from anomem.protocols.one_vs_all import auroc, make_one_vs_all
from anomem.stages.stage1 import prototype_spread

FAST = {"stage1_epochs": 25, "stage2_epochs": 30}


@pytest.fixture(scope="module")
def oc(digits):
    task = make_one_vs_all(digits, normal_class=0, gamma=0.0, seed=0)
    det = AnoMem("digits", **FAST).fit(task.x_train)
    return det, task


def test_stage1_lowers_loss_and_keeps_memory_variance(oc):
    det, _ = oc
    hist = det.history_["stage1"]
    first = np.mean([h["loss"] for h in hist[:3]])
    last = np.mean([h["loss"] for h in hist[-3:]])
    assert last < first - 0.2, (first, last)
    assert all(-h["var1"] > 1e-3 and -h["var2"] > 1e-3 for h in hist[-3:])
    assert prototype_spread(det.network_) > 1e-3


def test_one_class_auroc_well_above_chance(oc):
    det, task = oc
    assert auroc(task.labels_test, det.decision_function(task.x_test)) > 0.85


@pytest.mark.slow
def test_labelled_anomalies_make_it_semi_supervised_and_change_scores(digits, oc):
    det_oc, task_oc = oc
    task = make_one_vs_all(digits, normal_class=0, gamma=0.05, seed=0)
    assert task.labels_train.sum() > 0
    det = AnoMem("digits", **FAST).fit(task.x_train, task.labels_train)
    assert det.semi_supervised and not det_oc.semi_supervised
    s = det.decision_function(task.x_test)
    assert not np.allclose(s, det_oc.decision_function(task.x_test))
    assert auroc(task.labels_test, s) > 0.85
    # the labels are what matters: the same images all called normal give the one-class detector
    same_images = AnoMem("digits", **FAST).fit(task.x_train, np.zeros(len(task.x_train)))
    assert not same_images.semi_supervised
    assert not np.allclose(same_images.decision_function(task.x_test[:50]), s[:50])


def test_save_load_gives_identical_scores(oc, tmp_path):
    det, task = oc
    path = det.save(tmp_path / "model.anomem")
    back = AnoMem.load(path)
    np.testing.assert_array_equal(back.decision_function(task.x_test), det.decision_function(task.x_test))
    assert back.threshold_ == det.threshold_


def test_same_seed_same_scores_other_seed_other_scores(digits):
    x = digits.x_train[digits.y_train == 3]
    run = {"stage1_epochs": 3}
    a = AnoMem("digits", seed=5, **run).fit(x).decision_function(digits.x_test[:40])
    b = AnoMem("digits", seed=5, **run).fit(x).decision_function(digits.x_test[:40])
    c = AnoMem("digits", seed=6, **run).fit(x).decision_function(digits.x_test[:40])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_predict_uses_threshold_at_target_false_rejection(oc):
    det, task = oc
    normals = task.x_train
    frr = det.predict(normals).mean()
    assert frr <= det.config_.scoring.target_frr + 0.02
    assert set(np.unique(det.predict(task.x_test))) <= {0, 1}
    assert det.predict(task.x_test, threshold=-np.inf).all()


def test_kmeans_prototypes_ablation_fits_saves_and_loads(digits, tmp_path):
    x = digits.x_train[digits.y_train == 1]
    det = AnoMem("digits", use_memory=False, prototypes="kmeans", memory_stages=[4], mem_sizes=[8],
                 ratios=[1.0], stage1_epochs=3).fit(x)
    s = det.decision_function(digits.x_test[:20])
    back = AnoMem.load(det.save(tmp_path / "km.anomem"))
    np.testing.assert_array_equal(back.decision_function(digits.x_test[:20]), s)


def test_scores_before_fit_raise_requires_fitting():
    with pytest.raises(RequiresFitting, match="fit"):
        AnoMem("digits").decision_function(np.zeros((2, 8, 8), np.uint8))


@pytest.mark.parametrize("images,match", [
    (np.zeros((0, 8, 8)), "empty"),
    (np.zeros((3, 8, 8, 5)), "channels"),
    (np.full((2, 8, 8), np.nan), "NaN"),
    (np.full((2, 8, 8), 3.0), r"\[0, 1\]"),
    (np.zeros((8, 8)), "shape"),
])
def test_bad_images_are_refused_with_a_clear_error(images, match):
    with pytest.raises(InvalidInputError, match=match):
        AnoMem("digits").fit(images)


def test_bad_labels_are_refused(digits):
    x = digits.x_train[:10]
    with pytest.raises(InvalidInputError, match="one entry per image"):
        AnoMem("digits").fit(x, np.zeros(3))
    with pytest.raises(InvalidInputError, match="0 \\(normal\\) and 1"):
        AnoMem("digits").fit(x, np.full(10, 2))


def test_loading_a_pickle_payload_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))
    path = tmp_path / "evil.anomem"
    path.write_bytes(pickle.dumps({"format": "anomem-model", "x": Evil()}))
    with pytest.raises(ModelFileError, match="cannot be loaded safely"):
        AnoMem.load(path)
    torch.save({"format": "anomem-model", "version": 99}, tmp_path / "future.anomem")
    with pytest.raises(ModelFileError, match="version 99"):
        AnoMem.load(tmp_path / "future.anomem")


def test_on_epoch_sees_every_stage1_epoch_and_a_probe_changes_no_score(digits):
    # A probe that scores with the encoder in eval mode, as an online monitor does, must
    # leave training as it was: same history, same scores as the fit without it.
    from anomem.stages.common import RunOptions

    x = digits.x_train[digits.y_train == 4][:48]
    seen: list[tuple[dict, bool, float]] = []

    def probe(model: torch.nn.Module, row: dict) -> None:
        training = model.training
        model.eval()
        with torch.no_grad():
            norm = float(model.features(torch.rand(4, 3, 16, 16))[-1].norm())
        model.train(training)
        seen.append((row, training, norm))

    cfg = {"stage1_epochs": 3, "batch_size": 16}
    probed = AnoMem("digits", **cfg).fit(x, validation_fraction=0.0, options=RunOptions(on_epoch=probe))
    plain = AnoMem("digits", **cfg).fit(x, validation_fraction=0.0)
    assert [r for r, _, _ in seen] == probed.history_["stage1"] and len(seen) == 3
    assert all(training and norm > 0 for _, training, norm in seen)
    np.testing.assert_array_equal(probed.decision_function(x), plain.decision_function(x))
