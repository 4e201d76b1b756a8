"""Numerical health: a NaN/Inf loss, NaN weights or collapsed memory prototypes stop
training with TrainingDivergedError naming the fix, and the last good checkpoint
stays on disk, loadable, and resumable.

Faults are forced by a huge learning rate (real divergence) or injected through
the ``log`` hook, which runs after each optimiser step and before that step's
checkpoint: it can poison a weight or set every prototype of a memory equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anomem import AnoMem, TrainingDivergedError
from anomem.data.dataset import LabelledSplit
from anomem.serialization import safe_torch_load
from anomem.stages.common import RunOptions
from anomem.stages.stage1 import COLLAPSE_SPREAD, prototype_spread

STAGE1_EPOCHS = 2          # 64 images, batch 32: 2 steps per epoch, 4 steps


@pytest.fixture(scope="module")
def data(digits: LabelledSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    normals = digits.x_train[digits.y_train == 0][:64]
    anomalies = digits.x_train[digits.y_train != 0][:8]
    x = np.concatenate([normals, anomalies])
    return x, np.r_[np.zeros(64, int), np.ones(8, int)], digits.x_test[:30]


def saved(path: Path) -> dict[str, Any]:
    return safe_torch_load(path, "checkpoint")


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def fit_with_fault(det: AnoMem, x: np.ndarray, labels: Any, ckpt: Path,
                   fault: Any = None) -> None:
    """Fit with checkpoints every 2 steps; ``fault(metrics)`` runs after every step."""
    opts = RunOptions(device=torch.device("cpu"), checkpoint_every=2,
                      log=fault if fault is not None else None)
    det.fit(x, labels, checkpoint_dir=ckpt, options=opts, validation_fraction=0.0)


def test_huge_learning_rate_raises_and_keeps_a_finite_checkpoint(data, tmp_path):
    x, _, _ = data
    det = AnoMem("digits", stage1_lr=1e12, stage1_epochs=STAGE1_EPOCHS)
    with pytest.raises(TrainingDivergedError, match=r"stage 1: .* NaN|nan|inf") as err:
        det.fit(x[:64], checkpoint_dir=tmp_path, validation_fraction=0.0,
                options=RunOptions(device=torch.device("cpu"), checkpoint_every=1))
    assert "Lower the learning rate (stage1.lr=...)" in str(err.value)
    assert "\n" not in str(err.value)
    ck = saved(tmp_path / "stage1.ckpt")
    assert 1 <= ck["step"] < 2 * STAGE1_EPOCHS and all_finite(ck["state"]["model"])


def test_nan_weight_stops_stage1_and_the_checkpoint_resumes_cleanly(data, tmp_path):
    x, _, test = data
    det = AnoMem("digits", stage1_epochs=STAGE1_EPOCHS, seed=1)

    def poison(m: dict[str, Any]) -> None:
        if m["stage"] == 1 and m["step"] == 3:          # after the step-2 checkpoint
            with torch.no_grad():
                det.network_.encoder.parameters().__next__().view(-1)[0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"stage 1: the loss became nan at step 4"):
        fit_with_fault(det, x[:64], None, tmp_path, poison)
    ck = saved(tmp_path / "stage1.ckpt")
    assert ck["step"] == 2 and all_finite(ck["state"]["model"])
    # the kept checkpoint is the last good state: resuming from it without the fault
    # gives the scores of a run that never saw the fault
    steps: list[int] = []
    resumed = AnoMem("digits", stage1_epochs=STAGE1_EPOCHS, seed=1)
    fit_with_fault(resumed, x[:64], None, tmp_path, lambda m: steps.append(m["step"]))
    assert steps[0] == 3
    clean = AnoMem("digits", stage1_epochs=STAGE1_EPOCHS, seed=1).fit(x[:64], validation_fraction=0.0)
    np.testing.assert_array_equal(resumed.decision_function(test), clean.decision_function(test))


def test_weights_blown_up_at_a_checkpoint_step_are_never_saved(data, tmp_path):
    x, _, _ = data
    det = AnoMem("digits", stage1_epochs=STAGE1_EPOCHS)

    def blow_up(m: dict[str, Any]) -> None:
        if m["stage"] == 1 and m["step"] == 4:          # the loss of step 4 was finite
            with torch.no_grad():
                det.network_.memories[0].patterns[0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match=r"parameter 'memories.0.patterns' became "
                                                    r"NaN or infinite at step 4"):
        fit_with_fault(det, x[:64], None, tmp_path, blow_up)
    ck = saved(tmp_path / "stage1.ckpt")
    assert ck["step"] == 2 and all_finite(ck["state"]["model"])


def test_nan_in_stage2_heads_stops_stage2_and_keeps_its_checkpoint(data, tmp_path):
    x, labels, _ = data
    det = AnoMem("digits", stage1_epochs=1, stage2_epochs=3)

    def poison(m: dict[str, Any]) -> None:
        if m["stage"] == 2 and m["step"] == 3:
            with torch.no_grad():
                det.network_.heads[0].mlp[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"stage 2: the loss became nan at step 4.*"
                                                    r"stage2.lr"):
        fit_with_fault(det, x, labels, tmp_path, poison)
    ck = saved(tmp_path / "stage2.ckpt")
    assert ck["step"] == 2 and all_finite(ck["state"]["heads"])
    assert saved(tmp_path / "stage1.ckpt")["step"] == 2


def test_collapsed_prototypes_stop_stage1_and_keep_the_last_good_checkpoint(data, tmp_path):
    x, _, _ = data
    # reseed_dead would restart the collapsed patterns at the epoch's end (a collapse
    # leaves all but one of them dead); the check guards runs without it.
    det = AnoMem("digits", stage1_epochs=STAGE1_EPOCHS, reseed_dead=False)

    def collapse(m: dict[str, Any]) -> None:
        if m["stage"] == 1 and m["step"] == 4:          # the last step of epoch 2
            with torch.no_grad():
                p = det.network_.memories[1].patterns
                p.copy_(p[:1].expand_as(p))
    with pytest.raises(TrainingDivergedError, match=r"prototypes collapsed to one point at "
                                                    r"epoch 2.*Raise stage1.lambda_v") as err:
        fit_with_fault(det, x[:64], None, tmp_path, collapse)
    assert prototype_spread(det.network_) < COLLAPSE_SPREAD
    assert "\n" not in str(err.value)
    ck = saved(tmp_path / "stage1.ckpt")
    assert ck["step"] == 2
    patterns = ck["state"]["model"]["memories.1.patterns"]
    assert float(torch.nn.functional.normalize(patterns, dim=-1).std(0).mean()) > COLLAPSE_SPREAD
