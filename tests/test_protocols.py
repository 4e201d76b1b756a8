"""OoD, cross-type, linear evaluation and relative error reduction, on real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError
from anomem.protocols.cross_type import make_cross_type, run_cross_type
from anomem.protocols.linear_eval import encoder_features, linear_accuracy, linear_eval
from anomem.protocols.one_vs_all import OneVsAllTask
from anomem.protocols.ood import make_ood, run_ood
from anomem.protocols.relative import compare, relative_error_reduction

torch.set_num_threads(1)


def mean_distance(task: OneVsAllTask, seed: int) -> np.ndarray:
    """Distance to the mean normal training image (a transparent stand-in detector)."""
    x = task.x_train.reshape(len(task.x_train), -1).astype(float)
    mu = x[task.labels_train == 0].mean(0)
    return np.linalg.norm(task.x_test.reshape(len(task.x_test), -1) - mu, axis=1)


def test_relative_error_reduction_matches_the_definition() -> None:
    assert relative_error_reduction(0.90, 0.95) == pytest.approx(-0.5)
    assert relative_error_reduction(0.80, 0.70) == pytest.approx(0.5)
    assert relative_error_reduction(0.915, 0.915) == 0.0
    with pytest.raises(InvalidInputError, match="percentages"):
        relative_error_reduction(91.5, 0.9)
    with pytest.raises(InvalidInputError, match="undefined"):
        relative_error_reduction(1.0, 0.9)


def test_compare_uses_only_cells_both_methods_finished() -> None:
    rows = [{"method": m, "dataset": "d", "normal_class": c, "gamma": 0.0, "auroc": a}
            for m, c, a in [("base", 0, 0.8), ("base", 1, 0.6), ("new", 0, 0.9)]]
    assert compare(rows, "base", "new") == {("d", 0.0): pytest.approx(-0.5)}
    with pytest.raises(InvalidInputError, match="no cell"):
        compare(rows, "base", "other")


def test_ood_task_labels_and_auroc(digits: LabelledSplit) -> None:
    inlier = digits  # in-distribution: every digit; OoD: the same images inverted
    ood = 255 - digits.x_test[:100]
    task = make_ood(inlier, ood, max_ood=50, seed=1)
    assert len(task.x_train) == len(digits.x_train) and task.labels_train.sum() == 0
    assert task.labels_test.sum() == 50 and len(task.x_test) == len(digits.x_test) + 50
    row = run_ood(inlier, ood, "inverted", 0, mean_distance)
    assert row["n_ood"] == 100 and row["auroc"] > 0.9
    with pytest.raises(InvalidInputError, match="resize"):
        make_ood(inlier, np.zeros((3, 16, 16), np.uint8))


def test_cross_type_never_trains_on_the_held_out_type(digits: LabelledSplit) -> None:
    task = make_cross_type(digits, normal_class=0, held_out=7, gamma=0.1, seed=0)
    train_anom = task.x_train[task.labels_train == 1]
    held = digits.x_train[digits.y_train == 7]
    assert not any((a == held).all(axis=(1, 2)).any() for a in train_anom)
    assert set(np.unique(task.labels_test)) == {0, 1}
    assert len(task.x_test) == int(np.isin(digits.y_test, [0, 7]).sum())
    rows = run_cross_type(digits, 0, 0.05, 0, mean_distance, held_out=[1, 7])
    assert [r["held_out_name"] for r in rows] == ["1", "7"] and all(r["auroc"] > 0.5 for r in rows)
    with pytest.raises(InvalidInputError, match="not the normal class"):
        make_cross_type(digits, 0, 0, 0.0)


def test_linear_eval_of_a_trained_encoder_beats_chance(digits: LabelledSplit) -> None:
    det = AnoMem("digits", stage1_epochs=3).fit(digits.x_train[:300])
    f = encoder_features(det, digits.x_test[:5])
    maps = [s.dim for s in det.network_.view_scales(0) if not s.pooled]
    assert f.shape == (5, sum(maps))   # the memory stages' maps, pooled
    res = linear_eval(det, digits)
    assert res["n_classes"] == 10 and res["accuracy"] > 0.5  # chance is 0.1


def test_linear_accuracy_on_separable_features() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    f = np.eye(3)[y] * 5 + rng.normal(size=(120, 3))
    assert linear_accuracy(f, y, f, y) > 0.95
    assert linear_accuracy(rng.normal(size=(120, 3)), y, f, y) < 0.8


class _MeanDistanceDetector:
    def __init__(self, config: object) -> None:
        self.config = config

    def fit(self, images: np.ndarray, labels: np.ndarray) -> _MeanDistanceDetector:
        self.task = OneVsAllTask(images, labels, images[:1], labels[:1])
        return self

    def decision_function(self, images: np.ndarray) -> np.ndarray:
        return mean_distance(OneVsAllTask(self.task.x_train, self.task.labels_train, images,
                                          np.zeros(len(images))), 0)


def test_protocol_runner_stores_and_resumes_rows(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 digits: LabelledSplit) -> None:
    from anomem.protocols import runner

    monkeypatch.setitem(runner.KINDS, "fake", _MeanDistanceDetector)
    inverted = type(digits)(digits.x_train, digits.y_train, 255 - digits.x_test, digits.y_test,
                            digits.classes)
    grid = {"name": "p", "preset": "digits", "classes": [0], "gammas": [0.05],
            "methods": [{"name": "f", "kind": "fake"}]}
    res = tmp_path / "p.jsonl"
    rows = runner.run_protocol(grid, "cross_type", res, {"digits": digits})
    assert len(rows) == 9 and {r["held_out"] for r in rows} == set(range(1, 10))
    assert runner.run_protocol(grid, "cross_type", res, {"digits": digits}) == []
    ood = runner.run_protocol(grid, "ood", res, {"digits": digits, "inv": inverted})
    assert len(ood) == 1 and ood[0]["cell"] == "ood|f|digits|inv|0" and ood[0]["auroc"] > 0.9
    assert runner.run_protocol(grid, "linear_eval", res, {"digits": digits}) == []  # not AnoMem
    with pytest.raises(runner.ConfigError, match="unknown protocol"):
        runner.run_protocol(grid, "nope", res, {"digits": digits})
