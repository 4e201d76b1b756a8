"""One-vs-all protocol (paper §4.1).

One class is normal, every other class is anomalous.  The training set is the
normal class's training images plus labelled anomalies drawn uniformly, without
replacement, from the other classes' training images.  **Definition of gamma
used here:** gamma is the fraction of labelled anomalies in the training set,
n_anomalies = round(gamma * n_normal / (1 - gamma)), so gamma = 0.05 on a
5,000-image CIFAR-10 class adds 263 anomalies.  gamma = 0 is the one-class
setting.  The test set is the whole test split; AUROC is computed with
"anomaly" as the positive class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from anomem.data.dataset import LabelledSplit
from anomem.detector import AnoMem
from anomem.errors import InvalidInputError


@dataclass
class OneVsAllTask:
    """Training images with public labels (1 = anomaly) and the test set with its truth."""

    x_train: np.ndarray
    labels_train: np.ndarray
    x_test: np.ndarray
    labels_test: np.ndarray


def anomaly_count(n_normal: int, gamma: float) -> int:
    """Labelled anomalies added to ``n_normal`` normal images for a ratio ``gamma``."""
    if not 0.0 <= gamma < 1.0:
        raise InvalidInputError(f"gamma must be in [0, 1), got {gamma}")
    return int(round(gamma * n_normal / (1.0 - gamma)))


def make_one_vs_all(split: LabelledSplit, normal_class: int, gamma: float = 0.0,
                    seed: int = 0) -> OneVsAllTask:
    """Build the training and test sets of one one-vs-all cell (one draw: ``seed``)."""
    if not 0 <= normal_class < len(split.classes):
        raise InvalidInputError(f"normal_class must be in 0..{len(split.classes) - 1}, got {normal_class}")
    normal = np.flatnonzero(split.y_train == normal_class)
    others = np.flatnonzero(split.y_train != normal_class)
    k = anomaly_count(len(normal), gamma)
    if k > len(others):
        raise InvalidInputError(f"gamma={gamma} asks for {k} anomalies but only {len(others)} exist")
    rng = np.random.default_rng(seed)
    anomalies = rng.choice(others, size=k, replace=False) if k else np.empty(0, dtype=np.int64)
    idx = np.concatenate([normal, anomalies])
    labels = np.concatenate([np.zeros(len(normal), np.int64), np.ones(k, np.int64)])
    return OneVsAllTask(split.x_train[idx], labels, split.x_test,
                        (split.y_test != normal_class).astype(np.int64))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve with anomalies (label 1) as positives."""
    return float(roc_auc_score(labels, scores))


def run_one_vs_all(split: LabelledSplit, normal_class: int, gamma: float, seed: int,
                   fit_score: Callable[[OneVsAllTask, int], np.ndarray]) -> dict[str, Any]:
    """Run one cell: ``fit_score(task, seed)`` trains a detector and returns test scores."""
    task = make_one_vs_all(split, normal_class, gamma, seed)
    scores = fit_score(task, seed)
    return {"normal_class": normal_class, "class_name": split.classes[normal_class],
            "gamma": gamma, "seed": seed, "n_train": len(task.x_train),
            "n_anomalies_train": int(task.labels_train.sum()),
            "auroc": auroc(task.labels_test, scores)}


def fit_estimator(det: Any, x: Any, labels: Any = None) -> Any:
    """``det.fit(x, labels)``; AnoMem trains on every image (no normals held out for a threshold:
    the protocols measure AUROC, and their stored results were trained so)."""
    if isinstance(det, AnoMem):
        return det.fit(x, labels, validation_fraction=0.0)
    return det.fit(x, labels)
