"""Baselines on real data (scikit-learn digits): Deep SAD, supervised classifier, kNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.baselines.deepsad import DeepSAD
from anomem.baselines.knn import KNNDetector
from anomem.baselines.supervised import SupervisedClassifier, balanced_sampler
from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError, RequiresFitting
from anomem.protocols.one_vs_all import OneVsAllTask, auroc, make_one_vs_all

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tasks(digits: LabelledSplit) -> dict[float, OneVsAllTask]:
    return {g: make_one_vs_all(digits, 0, g, seed=0) for g in (0.0, 0.05)}


@pytest.fixture(scope="module")
def encoder(tasks: dict[float, OneVsAllTask]) -> AnoMem:
    t = tasks[0.0]
    return AnoMem("digits", stage1_epochs=8).fit(t.x_train, t.labels_train)


def test_deepsad_one_class_beats_chance(tasks: dict[float, OneVsAllTask]) -> None:
    t = tasks[0.0]
    det = DeepSAD("digits", stage1_epochs=8).fit(t.x_train)
    assert det.losses_[-1] < det.losses_[0]
    assert auroc(t.labels_test, det.decision_function(t.x_test)) > 0.6


def test_deepsad_pushes_labelled_anomalies_away(tasks: dict[float, OneVsAllTask]) -> None:
    t = tasks[0.05]
    det = DeepSAD("digits", stage1_epochs=8).fit(t.x_train, t.labels_train)
    s = det.decision_function(t.x_train)
    assert s[t.labels_train == 1].mean() > s[t.labels_train == 0].mean()
    assert auroc(t.labels_test, det.decision_function(t.x_test)) > 0.65


def test_supervised_needs_anomalies_and_separates_them(tasks: dict[float, OneVsAllTask]) -> None:
    with pytest.raises(InvalidInputError, match="labelled anomalies"):
        SupervisedClassifier("digits").fit(tasks[0.0].x_train, tasks[0.0].labels_train)
    t = tasks[0.05]
    det = SupervisedClassifier("digits", stage1_epochs=8).fit(t.x_train, t.labels_train)
    assert auroc(t.labels_test, det.decision_function(t.x_test)) > 0.9


def test_balanced_sampler_draws_half_anomalies() -> None:
    y = torch.tensor([1.0] * 95 + [0.0] * 5)  # paper's y: 1 = normal
    idx = balanced_sampler(y, 32)(0, torch.Generator().manual_seed(0))
    assert len(idx) == 32 and int((y[idx] == 0).sum()) == 16


def test_knn_stores_every_normal_and_detects(tasks: dict[float, OneVsAllTask],
                                             encoder: AnoMem) -> None:
    t = tasks[0.05]
    det = KNNDetector("digits", encoder=encoder).fit(t.x_train, t.labels_train)
    assert det.bank_ is not None and len(det.bank_) == int((t.labels_train == 0).sum())
    scores = det.decision_function(t.x_test)
    assert scores.shape == (len(t.x_test),) and np.isfinite(scores).all()
    assert auroc(t.labels_test, scores) > 0.8


def test_knn_rejects_bad_k_and_scoring_before_fit() -> None:
    with pytest.raises(InvalidInputError, match="k must be"):
        KNNDetector("digits", k=0)
    with pytest.raises(RequiresFitting):
        KNNDetector("digits").decision_function(np.zeros((2, 8, 8)))
    with pytest.raises(RequiresFitting):
        DeepSAD("digits").decision_function(np.zeros((2, 8, 8)))


def test_every_detector_follows_one_contract(digits):
    # fit / decision_function / predict at threshold_ or a given threshold, from one base
    from anomem import Detector
    from anomem.baselines import PixelKNN
    from anomem.baselines.deepsad import DeepSAD
    from anomem.baselines.knn import KNNDetector
    from anomem.baselines.supervised import SupervisedClassifier
    from anomem.errors import RequiresFitting
    for cls in (AnoMem, DeepSAD, KNNDetector, SupervisedClassifier, PixelKNN):
        assert issubclass(cls, Detector)
    x = digits.x_train[digits.y_train == 0][:20]
    det = PixelKNN(size=8).fit(x)
    with pytest.raises(RequiresFitting, match="threshold"):
        det.predict(x)
    far = np.full((3, 8, 8, 1), 255, np.uint8)
    s = det.decision_function(far)
    assert det.predict(far, threshold=float(s.min()) - 1e-9).tolist() == [1, 1, 1]
