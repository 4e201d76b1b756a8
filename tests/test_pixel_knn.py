"""The training-free reference detector PixelKNN, against a naive loop over images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomem.baselines import PixelKNN
from anomem.baselines.pixel_knn import leave_one_out_scores
from anomem.data.digits import load_digits_split
from anomem.errors import InvalidInputError, RequiresFitting


def naive_rows(images: np.ndarray, size: int) -> list[np.ndarray]:
    """Each gray uint8 image resized to size x size RGB (bilinear, antialiased), in [0, 1]."""
    rows = []
    for im in images:
        t = torch.as_tensor(im, dtype=torch.float32)[None, None].expand(1, 3, -1, -1)
        r = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        rows.append(r.round().clamp(0, 255).double().div(255).flatten().numpy())
    return rows


def naive_kth(query: np.ndarray, bank: list[np.ndarray], k: int) -> float:
    return sorted(float(np.sqrt(((query - b) ** 2).sum())) for b in bank)[k - 1]


@pytest.fixture(scope="module")
def digits():
    s = load_digits_split(seed=0)
    return s.x_train[s.y_train == 0][:25], s.x_test[:30]


@pytest.mark.parametrize("size,k", [(16, 1), (8, 3)])
def test_scores_equal_a_naive_loop(digits, size, k):
    train, test = digits
    labels = np.zeros(len(train), np.int64)
    labels[:5] = 1                                   # anomalies are never neighbours
    ref = PixelKNN(size=size, k=k).fit(train, labels)
    bank = naive_rows(train[5:], size)
    expected = [naive_kth(q, bank, k) for q in naive_rows(test, size)]
    np.testing.assert_allclose(ref.decision_function(test), expected, rtol=1e-9, atol=1e-9)
    assert ref.bank_.shape == (20, 3 * size * size)


def test_leave_one_out_scores_each_image_without_itself(digits):
    train, test = digits
    images = np.concatenate([train, test[:6]])
    labels = np.r_[np.zeros(len(train)), np.ones(6)].astype(np.int64)
    images[1] = images[0]                            # a duplicate normal still counts for the other
    rows = naive_rows(images, 16)
    expected = [naive_kth(q, [rows[j] for j in range(len(train)) if j != i], 2)
                for i, q in enumerate(rows)]
    np.testing.assert_allclose(leave_one_out_scores(images, labels, size=16, k=2), expected,
                               rtol=1e-9, atol=1e-9)
    assert leave_one_out_scores(images, labels, 16, 1)[0] == pytest.approx(0.0, abs=1e-6)


def test_errors_name_the_fix(digits):
    train, _ = digits
    with pytest.raises(RequiresFitting, match="fit"):
        PixelKNN().decision_function(train)
    with pytest.raises(InvalidInputError, match="positive integers"):
        PixelKNN(size=0)
    with pytest.raises(InvalidInputError, match="at least 3 normal"):
        PixelKNN(k=3).fit(train[:2])
    with pytest.raises(InvalidInputError, match="at least 2 normal"):
        leave_one_out_scores(train[:3, None], [0, 1, 1])
