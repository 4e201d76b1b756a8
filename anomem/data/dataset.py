"""The in-memory form every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelledSplit:
    """Train and test images (uint8, (N, H, W) or (N, H, W, C)) with integer class labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
