"""Validation images come from the training split only, stratified and seeded."""

from __future__ import annotations

import numpy as np
import pytest

from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError
from anomem.protocols.one_vs_all import make_one_vs_all
from anomem.protocols.validation import carve_validation


def _split() -> LabelledSplit:
    y = np.repeat([0, 1, 2], [10, 20, 5])
    x = np.arange(len(y), dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)
    test = np.full((6, 2, 2), 200, np.uint8)
    return LabelledSplit(x, y, test, np.array([0, 1, 2, 0, 1, 2]), ("a", "b", "c"))


def test_carve_is_stratified_disjoint_and_never_uses_the_test_split():
    s = _split()
    v = carve_validation(s, fraction=0.2, seed=3)
    # per class: round(0.2 n) held out -> 2, 4, 1
    assert np.bincount(v.y_test).tolist() == [2, 4, 1]
    assert np.bincount(v.y_train).tolist() == [8, 16, 4]
    ids_train, ids_val = set(v.x_train[:, 0, 0].tolist()), set(v.x_test[:, 0, 0].tolist())
    assert not ids_train & ids_val and ids_train | ids_val == set(range(35))
    assert 200 not in ids_val                       # no test image
    # each image keeps its own label
    assert all(s.y_train[i] == c for i, c in zip(v.x_test[:, 0, 0], v.y_test))


def test_carve_is_seeded_and_one_vs_all_runs_on_it():
    s = _split()
    a, b = carve_validation(s, 0.2, seed=1), carve_validation(s, 0.2, seed=1)
    assert np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, carve_validation(s, 0.2, seed=2).x_test)
    task = make_one_vs_all(a, 1, 0.0, 0)
    assert (task.labels_test == (a.y_test != 1)).all() and len(task.x_train) == 16


def test_carve_refuses_what_cannot_be_split():
    with pytest.raises(InvalidInputError, match="fraction"):
        carve_validation(_split(), 1.0)
    one = LabelledSplit(np.zeros((3, 2, 2), np.uint8), np.array([0, 0, 1]),
                        np.zeros((0, 2, 2), np.uint8), np.zeros(0, int), ("a", "b"))
    with pytest.raises(InvalidInputError, match="'b' has 1 training"):
        carve_validation(one)
