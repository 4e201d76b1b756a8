"""Linear evaluation of a frozen encoder (paper §4, Table 4).

The encoder of a fitted detector is frozen; each image becomes the
concatenation, over the memory scales, of its globally average-pooled feature
map (the representation the memories see); a multinomial logistic regression
is trained on the training features of *all* classes and its test accuracy is
reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from anomem.data.convert import to_image_tensor
from anomem.data.dataset import LabelledSplit
from anomem.detector import AnoMem
from anomem.stages.common import RunOptions, map_batches


def encoder_features(detector: AnoMem, images: Any, batch_size: int = 256) -> np.ndarray:
    """Pooled feature maps of the detector's frozen encoder at its memory scales, (N, D)."""
    model = detector.network
    x = to_image_tensor(images, model.config.backbone.image_size, "images")
    opts = RunOptions(device=next(model.parameters()).device)
    out = map_batches(model, x, opts, lambda m, b: torch.cat(
        [z.mean(dim=(2, 3)) for z in m.features(b)[:m.n_maps]], dim=1).cpu(), batch_size)
    return torch.cat(out).numpy()


def linear_accuracy(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray,
                    y_test: np.ndarray, c: float = 1.0, seed: int = 0) -> float:
    """Test accuracy of a logistic regression on standardised frozen features."""
    scaler = StandardScaler().fit(f_train)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(f_train), y_train)
    return float((clf.predict(scaler.transform(f_test)) == y_test).mean())


def linear_eval(detector: AnoMem, split: LabelledSplit, c: float = 1.0) -> dict[str, Any]:
    """Linear-evaluation accuracy of ``detector``'s encoder on every class of ``split``."""
    acc = linear_accuracy(encoder_features(detector, split.x_train), split.y_train,
                          encoder_features(detector, split.x_test), split.y_test, c,
                          detector.config_.runtime.seed)
    return {"n_classes": len(split.classes), "n_train": len(split.x_train),
            "n_test": len(split.x_test), "accuracy": acc}
