"""``extensions.weight_average``: stage 1 ends at the mean of its last weights (anomem.stages.averaging).

The mean equals a hand computation over recorded steps, BatchNorm's statistics
are those of the averaged weights, a reseeded pattern restarts its mean, and
a run interrupted and resumed ends where an uninterrupted one does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from anomem import AnoMem
from anomem.config import get_config
from anomem.errors import ConfigError
from anomem.stages.averaging import TrajectoryAverage, recompute_batchnorm
from anomem.stages.common import RunOptions
from anomem.torch_model import AnoMemModel


def normals(digits, n: int) -> np.ndarray:
    return digits.x_train[digits.y_train == 0][:n]


def test_the_mean_is_the_equal_mean_of_the_window_steps():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    avg = TrajectoryAverage(list(net.parameters()), fraction=0.4, total=7)   # the last 3 steps
    seen = []
    for step in range(7):
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        avg.update(step)
        seen.append([p.detach().clone() for p in net.parameters()])
    assert avg.count == 3
    assert avg.apply()
    for i, p in enumerate(net.parameters()):
        torch.testing.assert_close(p.detach(), torch.stack([s[i] for s in seen[4:]]).mean(0))


def test_a_restarted_row_keeps_its_new_value_and_the_others_their_mean():
    w = nn.Parameter(torch.zeros(4, 2))
    avg = TrajectoryAverage([w], fraction=1.0, total=3)
    with torch.no_grad():
        w += 1.0
        avg.update(0)
        w += 1.0
        w[1] = 10.0
        avg.restart_rows(w, torch.tensor([False, True]))      # the leading rows, as a memory's N_mem
        avg.update(1)
    assert avg.apply()
    torch.testing.assert_close(w[0], torch.full((2,), 1.5))
    torch.testing.assert_close(w[1], torch.full((2,), 10.0))


def test_before_the_window_nothing_is_applied():
    w = nn.Parameter(torch.ones(2))
    avg = TrajectoryAverage([w], fraction=0.5, total=4)
    avg.update(0)
    assert avg.count == 0 and not avg.apply()


def test_batchnorm_statistics_are_those_of_the_current_weights(digits):
    model = AnoMemModel(get_config("digits"))
    first = next(m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    first.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    x = torch.from_numpy(np.stack([normals(digits, 12)] * 3, 1)).float()
    x = nn.functional.interpolate(x, size=16).round().clamp(0, 255).to(torch.uint8)
    y = torch.ones(12, dtype=torch.long)
    recompute_batchnorm(model, x, y, 64, RunOptions())
    (inp,) = seen                                                  # one batch of all 12
    torch.testing.assert_close(first.running_mean, inp.mean((0, 2, 3)))
    torch.testing.assert_close(first.running_var, inp.var((0, 2, 3), unbiased=True))


def test_weight_average_accepts_a_share_of_the_steps():
    AnoMem("digits", weight_average=0.5)
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ConfigError, match="weight_average"):
            AnoMem("digits", **{"extensions.weight_average": bad}).fit(np.zeros((4, 8, 8)))


def test_a_fit_ends_at_the_mean_encoder_of_the_last_steps(digits):
    """Stage 1's encoder weights after the fit are the mean of those after its last 4 of 8 steps."""
    recorded: list[list[torch.Tensor]] = []
    det = AnoMem("digits", stage1_epochs=4, weight_average=0.5, reseed_dead=False)

    def log(metrics: dict) -> None:
        if metrics["stage"] == 1:
            recorded.append([p.detach().clone() for p in det.network_.encoder.parameters()])

    det.fit(normals(digits, 64), validation_fraction=0.0, log=log, progress=False)
    assert len(recorded) == 8                                    # 2 steps an epoch
    for i, p in enumerate(det.network_.encoder.parameters()):
        torch.testing.assert_close(p.detach(), torch.stack([r[i] for r in recorded[4:]]).mean(0))


class Stop(Exception):
    pass


def test_a_resumed_run_with_averaging_ends_as_an_uninterrupted_one(digits, tmp_path):
    x, test = normals(digits, 64), digits.x_test[:40]
    config = {"stage1_epochs": 4, "weight_average": 0.75, "seed": 2}
    ref = AnoMem("digits", **config).fit(x, validation_fraction=0.0, progress=False)

    def stop(metrics: dict) -> None:
        if metrics["stage"] == 1 and metrics["step"] == 7:     # the window's 3rd step, after a checkpoint
            raise Stop

    with pytest.raises(Stop):
        AnoMem("digits", **config).fit(x, validation_fraction=0.0, checkpoint_dir=tmp_path,
                                       options=RunOptions(checkpoint_every=3, log=stop))
    resumed = AnoMem("digits", **config).fit(x, validation_fraction=0.0, checkpoint_dir=tmp_path,
                                             options=RunOptions(checkpoint_every=3))
    np.testing.assert_array_equal(resumed.decision_function(test), ref.decision_function(test))


def test_the_batchnorm_pass_changes_the_statistics_alone(digits):
    """``extensions.batchnorm_pass``: the same encoder weights, BatchNorm statistics of the clean normals."""
    x = normals(digits, 64)
    plain, passed = (AnoMem("digits", stage1_epochs=2, batchnorm_pass=on).fit(
        x, validation_fraction=0.0, progress=False).network_.encoder.state_dict() for on in (False, True))
    stats = [k for k in plain if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(plain[k], passed[k]) for k in stats)
    weights = [k for k in plain if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(plain[k], passed[k]) for k in weights)
