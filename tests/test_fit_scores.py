"""A fit scores as it did when ``tests/data/fit_scores.json`` was written.

Two fits of the ``digits`` preset at 2 stage-1 epochs on 60 normal digits, one-class and
with 3 labelled anomalies (gamma = 0.05), with the defaults of that day, pinned here
(``THAT_DAY``) since they changed: memories grown 4 times at consolidation, beta 10, at
most 3 Hopfield steps, dead patterns reseeded, no one-class calibration; how the network
is built or stored may change, what a fit computes may not (see ``tests/data/README.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomem import AnoMem

#: the defaults when the record was written, where today's differ
THAT_DAY = {"consolidate_factor": 4, "beta": 10.0, "hopfield_steps": 3, "reseed_dead": True,
            "calibrate": False}
FITS = json.loads((Path(__file__).parent / "data" / "fit_scores.json").read_text())


@pytest.mark.parametrize("setting", ["one_class", "gamma_0.05"])
def test_a_default_fit_scores_as_recorded(setting, digits):
    n, k = FITS["normals"], FITS["anomalies"] if setting != "one_class" else 0
    x = np.concatenate([digits.x_train[digits.y_train == 0][:n],
                        digits.x_train[digits.y_train != 0][:k]])
    labels = np.r_[np.zeros(n), np.ones(k)]
    det = AnoMem("digits", stage1_epochs=2, **THAT_DAY).fit(x, labels, validation_fraction=0.0,
                                                            progress=False)
    # one torch thread (tests/conftest.py) and the same operations in the same order: bit for bit
    np.testing.assert_array_equal(det.decision_function(digits.x_test[:40]), FITS[setting])
