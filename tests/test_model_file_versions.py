"""Model files of an earlier format version load and score as when they were written.

The fixtures in ``tests/data`` (see its README) are files of model-file version 1
with the scores their detector gave on 40 fixed digits when it was saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomem import AnoMem

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["model_v1_one_class", "model_v1_semi"])
def test_a_version_1_file_scores_as_when_it_was_saved(name, digits):
    want = json.loads((DATA / "model_v1_scores.json").read_text())[name]
    det = AnoMem.load(DATA / f"{name}.anomem")
    # the same float32 operations on the same weights, in the same order: bit for bit
    np.testing.assert_array_equal(det.decision_function(digits.x_test[:40]), want)
    assert det.semi_supervised == (name == "model_v1_semi")
