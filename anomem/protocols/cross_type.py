"""Cross-type protocol (the face anti-spoofing protocol, generalised).

Anomalies come in types.  With one class of a :class:`LabelledSplit` normal and
every other class an anomaly *type* (e.g. the defect folders of Magnetic Tile
Defects, or the other CIFAR-10 classes), one run holds one type out: training
uses the normal images plus labelled anomalies (ratio gamma, as in
one-vs-all) of the *other* types only, and the test set is the normal test
images against the test images of the held-out type, never seen in training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError
from anomem.protocols.one_vs_all import OneVsAllTask, anomaly_count, auroc


def make_cross_type(split: LabelledSplit, normal_class: int, held_out: int, gamma: float,
                    seed: int = 0) -> OneVsAllTask:
    """Train on normals + labelled anomalies of every type but ``held_out``; test on it."""
    n_cls = len(split.classes)
    for name, v in (("normal_class", normal_class), ("held_out", held_out)):
        if not 0 <= v < n_cls:
            raise InvalidInputError(f"{name} must be in 0..{n_cls - 1}, got {v}")
    if held_out == normal_class:
        raise InvalidInputError("held_out must be an anomaly type, not the normal class")
    normal = np.flatnonzero(split.y_train == normal_class)
    seen = np.flatnonzero((split.y_train != normal_class) & (split.y_train != held_out))
    k = anomaly_count(len(normal), gamma)
    if k > len(seen):
        raise InvalidInputError(f"gamma={gamma} asks for {k} labelled anomalies but the types "
                                f"other than {split.classes[held_out]!r} have {len(seen)}")
    rng = np.random.default_rng(seed)
    picked = rng.choice(seen, size=k, replace=False) if k else np.empty(0, np.int64)
    idx = np.concatenate([normal, picked])
    labels = np.concatenate([np.zeros(len(normal), np.int64), np.ones(k, np.int64)])
    test = np.flatnonzero((split.y_test == normal_class) | (split.y_test == held_out))
    if not (split.y_test[test] == held_out).any() or not (split.y_test[test] == normal_class).any():
        raise InvalidInputError(f"the test split needs images of both the normal class and "
                                f"the held-out type {split.classes[held_out]!r}")
    return OneVsAllTask(split.x_train[idx], labels, split.x_test[test],
                        (split.y_test[test] == held_out).astype(np.int64))


def run_cross_type(split: LabelledSplit, normal_class: int, gamma: float, seed: int,
                   fit_score: Callable[[OneVsAllTask, int], np.ndarray],
                   held_out: list[int] | None = None) -> list[dict[str, Any]]:
    """One row per held-out type (default: every anomaly type in turn)."""
    types = held_out if held_out is not None else [c for c in range(len(split.classes))
                                                   if c != normal_class]
    rows = []
    for t in types:
        task = make_cross_type(split, normal_class, t, gamma, seed)
        scores = fit_score(task, seed)
        rows.append({"normal_class": normal_class, "held_out": t,
                     "held_out_name": split.classes[t], "gamma": gamma, "seed": seed,
                     "n_anomalies_train": int(task.labels_train.sum()),
                     "auroc": auroc(task.labels_test, scores)})
    return rows
