"""Distributed stage 1: two gloo processes vs one process holding the global batch.

Real data (scikit-learn digits), fixed views (the image and its mirror) so the
comparison is exact, the same positions on every rank.  A gather whose
backward keeps only the local gradient is run alongside to show that the
comparison detects a wrong gradient.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from anomem.config import get_config
from anomem.data.convert import to_image_tensor
from anomem.data.digits import load_digits_split
from anomem.distributed import (
    DistributedAnoMem,
    GlobalBatchNorm2d,
    SharedPositions,
    gather_with_grad,
    init_distributed,
    is_distributed,
    shard_indices,
    wrap_objective,
)
from anomem.errors import ConfigError
from anomem.serialization import atomic_torch_save, safe_torch_load
from anomem.stages.stage1 import ContrastedMemoryObjective
from anomem.torch_model import AnoMemModel

WORLD = 2
GLOBAL_BATCH = 8


def _config(negatives: str) -> Any:
    return get_config("digits", {"width": 4, "mem_sizes": [8, 4], "negatives": negatives,
                                 "batch_size": GLOBAL_BATCH, "stage1_epochs": 1})


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global batch: real digits, view 2 = mirror of view 1, one anomaly (y = 0) per rank."""
    split = load_digits_split()
    x = to_image_tensor(split.x_train[:GLOBAL_BATCH], 16).double() / 255
    y = torch.ones(GLOBAL_BATCH)
    y[[1, GLOBAL_BATCH // WORLD + 2]] = 0
    return x, x.flip(-1), y


def _grads(model: AnoMemModel) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


class _LocalOnlyGather(torch.autograd.Function):
    """A wrong gather: its backward drops the other ranks' gradient contributions."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = torch.distributed.get_rank(), x.shape[-2]
        parts = [torch.empty_like(x) for _ in range(WORLD)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.narrow(-2, ctx.rank * ctx.rows, ctx.rows).clone()


def _step(objective: torch.nn.Module, model: AnoMemModel, v1: torch.Tensor, v2: torch.Tensor,
          y: torch.Tensor, gather: Any, offset: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)                  # rank 0's draw fixes the sampled positions
    loss, _ = objective(v1, v2, y, gather, offset)
    loss.backward()
    return float(loss.detach()), _grads(model)


def _one_step(opts: Any, negatives: str) -> dict[str, Any]:
    """One step on this rank's half of the global batch, with the right and a wrong gather."""
    torch.manual_seed(0)
    model = AnoMemModel(_config(negatives)).double()
    objective = wrap_objective(model, opts)
    v1, v2, y = _batch()
    b = GLOBAL_BATCH // WORLD
    rows = slice(opts.rank * b, (opts.rank + 1) * b)
    args = (v1[rows], v2[rows], y[rows])
    loss, grads = _step(objective, model, *args, opts.gather, opts.rank * b)
    bn = model.encoder.stem[1].running_mean.clone()
    _, wrong = _step(objective, model, *args, _LocalOnlyGather.apply, opts.rank * b)
    return {"loss": loss, "grads": grads, "wrong": wrong, "bn": bn}


def _short_fit(opts: Any) -> dict[str, Any]:
    """A two-epoch distributed fit on real digits; parameters of both ranks are compared."""
    split = load_digits_split()
    normals = split.x_train[split.y_train == 0][:16]
    det = DistributedAnoMem(_config("all").replace(stage1_epochs=2)).fit(normals, options=opts)
    params = torch.cat([p.detach().flatten() for p in det.network_.parameters()])
    gathered = [torch.empty_like(params) for _ in range(WORLD)]
    torch.distributed.all_gather(gathered, params)
    norms = {type(m).__name__ for m in det.network_.encoder.modules() if "Norm" in type(m).__name__}
    return {"spread": float((gathered[0] - gathered[1]).abs().max()), "bn": sorted(norms),
            "epochs": len(det.history_["stage1"]),
            "scores": torch.as_tensor(det.decision_function(split.x_test[:5]))}


def _averaged_fit(opts: Any) -> dict[str, Any]:
    """A fit with ``extensions.weight_average`` whose ranks hold 4 and 8 normals (strided shards):
    the BatchNorm pass over the normals takes 1 and 2 batches of its own, as many collectively."""
    split = load_digits_split()
    x = split.x_train[split.y_train == 0][:16].copy()
    labels = torch.zeros(16)
    labels[[0, 2, 4, 6]] = 1
    x[[0, 2, 4, 6]] = split.x_train[split.y_train == 1][:4]
    cfg = _config("all").replace(stage1_epochs=2, weight_average=1.0, **{"stage2.epochs": 1})
    det = DistributedAnoMem(cfg).fit(x, labels.numpy(), validation_fraction=0.0, options=opts)
    params = torch.cat([t.detach().flatten().double() for t in det.network_.state_dict().values()])
    gathered = [torch.empty_like(params) for _ in range(WORLD)]
    torch.distributed.all_gather(gathered, params)
    return {"spread": float((gathered[0] - gathered[1]).abs().max()),
            "scores": torch.as_tensor(det.decision_function(split.x_test[:5]))}


def _small_set_fit(opts: Any) -> list[int]:
    """Stage 1's logged steps on a small set: 96 training normals, 48 a rank.  The global batch
    of 128 splits to 64 a rank, at most the 48 it holds, which the rule shrinks toward 48 // 5
    but holds at the floor of 32 per process: one step of 2 x 32 images an epoch (one process
    with all 96 would take three steps of 32)."""
    split = load_digits_split()
    steps: list[int] = []
    logged = dataclasses.replace(
        opts, log=lambda row: steps.append(row["step"]) if row.get("stage") == 1 else None)
    cfg = _config("all").replace(batch_size=128, stage1_epochs=2)
    DistributedAnoMem(cfg).fit(split.x_train[split.y_train == 0][:96], validation_fraction=0.0,
                               options=logged)
    return steps


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    opts = init_distributed(progress=False)
    try:
        result = {"distributed": is_distributed() and opts.rank == rank,
                  "step": {neg: _one_step(opts, neg) for neg in ("all", "same_position")},
                  "fit": _short_fit(opts), "averaged": _averaged_fit(opts),
                  "small_set_steps": _small_set_fit(opts)}
        if rank == 0:
            atomic_torch_save(result, Path(out))
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rank0(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What rank 0 of two gloo processes computed (one spawn for the whole module)."""
    out = tmp_path_factory.mktemp("ddp") / "rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return safe_torch_load(out, "rank-0 result")


@pytest.mark.slow
@pytest.mark.parametrize("negatives", ["all", "same_position"])
def test_two_gloo_processes_match_one_process_with_the_global_batch(rank0: dict[str, Any],
                                                                    negatives: str) -> None:
    torch.manual_seed(0)
    model = AnoMemModel(_config(negatives)).double()
    ref_loss, ref_grads = _step(SharedPositions(ContrastedMemoryObjective(model)), model,
                                *_batch(), None, 0)
    got = rank0["step"][negatives]
    assert rank0["distributed"]
    # float64 throughout: two ranks and one process differ in summation order only (1e-16
    # relative per operation); a wrong gradient is off by > 1e-2 relative (checked below)
    assert got["loss"] == pytest.approx(ref_loss, rel=1e-10)
    assert got["grads"].keys() == ref_grads.keys()
    for k, g in ref_grads.items():
        torch.testing.assert_close(got["grads"][k], g, rtol=1e-8, atol=1e-9, msg=f"gradient of {k}")
    torch.testing.assert_close(got["bn"], model.encoder.stem[1].running_mean, rtol=1e-10, atol=1e-12)
    worst = max(float((got["wrong"][k] - g).abs().max() / g.abs().max().clamp_min(1e-12))
                for k, g in ref_grads.items())
    assert worst > 1e-2, "a local-only gather went unnoticed: the comparison is not sensitive"


@pytest.mark.slow
def test_distributed_fit_keeps_ranks_identical_and_restores_plain_batchnorm(
        rank0: dict[str, Any]) -> None:
    got = rank0["fit"]
    assert got["spread"] == 0.0
    assert got["bn"] == ["BatchNorm2d"]
    assert got["epochs"] == 2
    assert torch.isfinite(got["scores"]).all()


@pytest.mark.slow
def test_a_distributed_fit_with_weight_averaging_keeps_ranks_identical(rank0: dict[str, Any]) -> None:
    got = rank0["averaged"]
    assert got["spread"] == 0.0              # weights, means and the recomputed BatchNorm statistics
    assert torch.isfinite(got["scores"]).all()


@pytest.mark.slow
def test_a_small_set_keeps_the_floor_of_32_on_each_process(rank0: dict[str, Any]) -> None:
    assert rank0["small_set_steps"] == [1, 2]           # two epochs of one step (48 // 32)


def test_shards_are_disjoint_equal_and_cover_all_but_the_tail() -> None:
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(torch.cat(shards).tolist()) == list(range(9))
    with pytest.raises(ConfigError, match="processes"):
        shard_indices(2, 0, 3)


def test_outside_a_process_group_everything_is_single_process() -> None:
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x
    bn, ref = GlobalBatchNorm2d(4), torch.nn.BatchNorm2d(4)
    z = torch.randn(6, 4, 3, 3)
    # float32, the same statistics by another route: assert_close's float32 defaults
    torch.testing.assert_close(bn(z), ref(z))
    torch.testing.assert_close(bn.running_var, ref.running_var)
