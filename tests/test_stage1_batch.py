"""stage1.min_batches: a small set's stage-1 batch shrinks so that an epoch takes several steps."""

from __future__ import annotations

import pytest
import torch

from anomem import AnoMem
from anomem.config import get_config
from anomem.stages.common import RunOptions
from anomem.stages.stage1 import MIN_BATCH, stage1_batch


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
