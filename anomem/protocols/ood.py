"""Out-of-distribution protocol (paper §4, Table 3).

The whole in-distribution training set (every class, e.g. all of CIFAR-10) is
normal; the test set is the in-distribution test split (label 0) plus the
images of another dataset (label 1, e.g. SVHN, LSUN or CIFAR-100).  The AUROC
treats the out-of-distribution images as positives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError
from anomem.protocols.one_vs_all import OneVsAllTask, auroc


def make_ood(split: LabelledSplit, ood_images: np.ndarray, max_ood: int | None = None,
             seed: int = 0) -> OneVsAllTask:
    """Training set: every training image, unlabelled; test: in-dist test + OoD images.

    ``max_ood`` keeps a seeded random subset of the OoD images (e.g. as many as
    the in-distribution test images).
    """
    ood = np.asarray(ood_images)
    if len(ood) == 0:
        raise InvalidInputError("ood_images is empty; pass the images of the out-of-"
                                "distribution dataset")
    if ood.shape[1:] != split.x_test.shape[1:]:
        raise InvalidInputError(f"ood_images have shape {ood.shape[1:]} per image but the "
                                f"in-distribution test images {split.x_test.shape[1:]}; resize "
                                f"them to the same size and channels (in a benchmark grid: "
                                f"size: <side> on both datasets, e.g. {{name: digits, size: 32}})")
    if max_ood is not None and len(ood) > max_ood:
        ood = ood[np.random.default_rng(seed).choice(len(ood), max_ood, replace=False)]
    x_test = np.concatenate([split.x_test, ood])
    labels = np.concatenate([np.zeros(len(split.x_test), np.int64), np.ones(len(ood), np.int64)])
    return OneVsAllTask(split.x_train, np.zeros(len(split.x_train), np.int64), x_test, labels)


def run_ood(split: LabelledSplit, ood_images: np.ndarray, ood_name: str, seed: int,
            fit_score: Callable[[OneVsAllTask, int], np.ndarray],
            max_ood: int | None = None) -> dict[str, Any]:
    """One OoD run: ``fit_score(task, seed)`` trains a detector and scores ``task.x_test``."""
    task = make_ood(split, ood_images, max_ood, seed)
    scores = fit_score(task, seed)
    return {"in_distribution": len(split.classes), "ood": ood_name, "seed": seed,
            "n_train": len(task.x_train), "n_in_test": int((task.labels_test == 0).sum()),
            "n_ood": int(task.labels_test.sum()),
            "auroc": auroc(task.labels_test, scores)}
