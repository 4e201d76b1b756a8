"""scikit-learn's digits: 1,797 real 8x8 scanned digits, the embedded default dataset."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from anomem.data.dataset import LabelledSplit

DIGIT_CLASSES = tuple(str(i) for i in range(10))


def load_digits_split(test_size: float = 0.4, seed: int = 0) -> LabelledSplit:
    """Stratified train/test split of the digits as uint8 (N, 8, 8) images, 10 classes."""
    x, t = load_digits(return_X_y=True)
    x = np.round(x.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    xtr, xte, ttr, tte = train_test_split(x, t, test_size=test_size, random_state=seed, stratify=t)
    return LabelledSplit(xtr, ttr.astype(np.int64), xte, tte.astype(np.int64), DIGIT_CLASSES)
