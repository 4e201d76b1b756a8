"""stage1.min_batches and stage1.lr_scaling: a small set's stage-1 batch shrinks so that an epoch
takes several steps, and with stage1.lr_scaling its rate with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.config import get_config
from anomem.stages.batches import MIN_BATCH, stage1_batch, stage1_lr
from anomem.stages.common import RunOptions


@pytest.mark.parametrize(("batch", "min_batches", "n", "expected"), [
    (128, 5, 160, 32),      # 160 // 5
    (128, 5, 200, 40),      # 200 // 5
    (128, 5, 800, 128),     # 6 batches of 128 already
    (128, 5, 96, MIN_BATCH),  # 96 // 5 = 19: held at the floor
    (128, 5, 20, 20),       # fewer images than the floor: one batch of all of them
    (32, 5, 114, 32),       # the digits preset's batch is the floor: unchanged
    (128, 0, 160, 128),     # the paper's reading: the batch as configured
    (128, 1, 100, 100),     # one batch an epoch: every image
])
def test_stage1_batch_by_hand(batch, min_batches, n, expected):
    cfg = get_config("cpu", {"stage1.batch_size": batch, "stage1.min_batches": min_batches})
    assert stage1_batch(cfg, n) == expected


def test_processes_split_the_batch_before_it_shrinks():
    cfg = get_config("cpu", {"stage1.batch_size": 256})
    assert stage1_batch(cfg, 1000, world_size=2) == 128     # 7 batches of 128 on each process
    assert stage1_batch(cfg, 300, world_size=2) == 60       # 300 // 5


def test_paper_recipe_keeps_the_configured_batch():
    assert get_config("paper").stage1.min_batches == 0
    assert get_config("cpu", {"recipe": "paper"}).stage1.min_batches == 0


@pytest.mark.parametrize(("min_batches", "steps"), [(5, 3), (0, 1)])
def test_an_epoch_takes_the_shrunk_batches(digits, min_batches, steps):
    """100 training normals, batch 128: one step an epoch as configured, 100 // 32 = 3 with the
    rule (the floor of 32 above 100 // 5 = 20)."""
    x = digits.x_train[digits.y_train == 1][:100]
    seen: list[int] = []
    opts = RunOptions(device=torch.device("cpu"), log=lambda row: seen.append(row["step"])
                      if row.get("stage") == 1 else None)
    AnoMem("digits", stage1_epochs=2, **{"stage1.batch_size": 128, "stage1.min_batches": min_batches}
           ).fit(x, validation_fraction=0.0, options=opts)
    assert seen == list(range(1, 2 * steps + 1))


@pytest.mark.parametrize(("scaling", "batch", "world", "expected"), [
    ("linear", 32, 1, 0.1 * 32 / 128),
    ("linear", 128, 1, 0.1),
    ("linear", 100, 1, 0.1 * 100 / 128),   # a set smaller than the batch: all of it, its share
    ("linear", 32, 2, 0.1 * 64 / 128),     # two processes of 32 take 64 images a step
    ("linear", 64, 2, 0.1),
    ("sqrt", 32, 1, 0.1 * 0.5),            # sqrt(32 / 128)
    ("sqrt", 128, 1, 0.1),
    ("none", 32, 1, 0.1),
])
def test_stage1_lr_by_hand(scaling, batch, world, expected):
    cfg = get_config("cpu", {"stage1.lr_scaling": scaling})     # lr 0.1 for batches of 128
    assert stage1_lr(cfg, batch, world) == pytest.approx(expected, rel=1e-15)


def test_paper_recipe_keeps_the_configured_rate():
    assert get_config("paper").stage1.lr_scaling == "none"
    assert get_config("cpu", {"recipe": "paper"}).stage1.lr_scaling == "none"


def test_a_shrunk_batch_trains_at_its_share_of_the_rate(digits):
    """100 training normals, batch 128 shrunk to 32: every step's rate (cosine schedule of the
    same length) is 32 / 128 of the configured one's."""
    x = digits.x_train[digits.y_train == 1][:100]
    rates: dict[str, list[float]] = {"linear": [], "none": []}
    for scaling, seen in rates.items():
        opts = RunOptions(device=torch.device("cpu"), log=lambda row, seen=seen: seen.append(row["lr"])
                          if row.get("stage") == 1 else None)
        AnoMem("digits", stage1_epochs=2, **{"stage1.batch_size": 128, "stage1.lr_scaling": scaling}
               ).fit(x, validation_fraction=0.0, options=opts)
    assert len(rates["linear"]) == 6
    np.testing.assert_allclose(rates["linear"], [r * 32 / 128 for r in rates["none"]], rtol=1e-12)
