"""Multi-process stage 1 on PyTorch DDP: torchrun, sharded sampling, negatives gathered across ranks.

Launch (one process per GPU, or per CPU socket with gloo)::

    torchrun --nproc_per_node=2 -m anomem.distributed --cifar10-class 0 --config cpu -o m.anomem

What runs where:

* :func:`init_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` /
  ``LOCAL_RANK`` (``env://``) and joins the process group: NCCL with one GPU
  per process when CUDA is available, gloo on CPUs.  Without those variables
  it returns single-process options and joins nothing.
* Sampling is sharded: rank r trains on training images r, r + W, r + 2W, ...
  (:func:`shard_indices`) with ``batch_size / W`` images a step, so a step sees
  a global batch of ``stage1.batch_size`` images whatever the number of processes W.
* The encoder and the memories are wrapped in DDP (gradients averaged over
  ranks).  BatchNorm statistics are taken over the global batch
  (:class:`torch.nn.SyncBatchNorm` on CUDA, :class:`GlobalBatchNorm2d` on
  CPUs) and every rank samples the same positions Omega(s) (Eq. 7; rank 0
  draws the seed), so one step gives the same loss and the same gradients as
  one process holding the global batch (tests/test_distributed.py).
* Contrastive negatives (Eq. 5) are all-gathered across ranks by
  :func:`gather_with_grad`, whose backward sums the incoming gradient over
  ranks before taking this rank's rows: each rank's vectors receive the
  gradient of every rank's loss terms, not only of its own.
* Rank 0 alone logs, shows progress and writes checkpoints and the model.

Every rank passes the same training images (e.g. a memory-mapped array);
stage 1 reads only the rank's shard of them.  Stage 2 (heads, calibration,
threshold) is cheap and runs identically on every rank.  Two known limits:
the variance term (Eq. 6) averages over the normal images of each rank's
shard, so it equals the global one exactly when ranks hold equally many
normals (always, in one-class training); after a resume every rank restarts
from rank 0's RNG state, so augmentations are correlated across ranks from
then on.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from anomem.detector import AnoMem
from anomem.errors import AnoMemError, ConfigError
from anomem.stages.common import RunOptions
from anomem.stages.stage1 import ContrastedMemoryObjective, train_stage1
from anomem.torch_model import AnoMemModel


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(progress: bool = True, log: Callable[[dict[str, Any]], None] | None = None
                     ) -> RunOptions:
    """Join torchrun's process group (``env://``) and return this rank's :class:`RunOptions`.

    NCCL and ``cuda:LOCAL_RANK`` when CUDA is available, gloo and the CPU
    otherwise.  Outside torchrun (no ``WORLD_SIZE``), single-process options.
    ``progress`` and ``log`` only take effect on rank 0.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return RunOptions(device=device, progress=progress, log=log)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://")
    return RunOptions(device=device, progress=progress and rank == 0, log=log if rank == 0 else None,
                      rank=rank, world_size=world, gather=gather_with_grad)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim -2; backward sums the gradient over ranks, then keeps this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[-2]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=-2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(-2, ctx.rank * ctx.rows, ctx.rows)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(..., n, d)`` tensor into ``(..., W*n, d)``, rank order.

    The gradient reaching this rank's rows is the sum over ranks of the
    gradients of their losses (the ``gather`` hook of :func:`anomem.losses.nt_xent`).
    """
    return _GatherRows.apply(x) if is_distributed() else x


def shard_indices(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Rows of this rank's shard of ``n`` images: rank, rank + W, ... (equal sizes, tail dropped).

    Example:
        >>> shard_indices(7, 1, 3).tolist()
        [1, 4]
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}")
    if n < world_size:
        raise ConfigError(f"{n} training images cannot be shared by {world_size} processes; "
                          f"use fewer processes (--nproc_per_node) or more images")
    return torch.arange(rank, n - n % world_size, world_size)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the global batch of all ranks (any backend).

    Same parameters and buffers as :class:`torch.nn.BatchNorm2d`; mean and
    biased variance come from two autograd-aware all-reduces, so the gradient
    flows through the statistics as in single-process BatchNorm.  In eval
    mode, or outside a process group, it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        shape = (1, -1, 1, 1)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        count = torch.full((1,), x.numel() / x.shape[1], device=x.device)
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n, mean = sums[-1], sums[:-1] / sums[-1]
        centred = xf - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * n / (n - 1).clamp_min(1), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def swap_batchnorm(module: nn.Module, kind: type[nn.modules.batchnorm._BatchNorm]) -> nn.Module:
    """``module`` with every BatchNorm layer replaced, in place, by ``kind`` (same state)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and type(child) is not kind:
            like = next(itertools.chain(child.parameters(), child.buffers()))
            new = kind(child.num_features, child.eps, child.momentum, child.affine,
                       child.track_running_stats, device=like.device, dtype=like.dtype)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            swap_batchnorm(child, kind)
    return module


class SharedPositions(nn.Module):
    """Runs a :class:`ContrastedMemoryObjective` so that every rank agrees on the step.

    Positions Omega(s) (Eq. 7) are drawn from a seed that rank 0 takes from
    its RNG and broadcasts; the returned loss has the value of the global
    loss (mean over ranks, so a NaN anywhere stops every rank) and the
    gradient of this rank's term (DDP averages them); the statistics are
    global means too.
    """

    def __init__(self, objective: ContrastedMemoryObjective) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, gather: Any = None,
                offset: int = 0, align: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        seed = torch.randint(2 ** 62, (1,)).to(v1.device)
        if is_distributed():
            dist.broadcast(seed, src=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            loss, stats = self.objective(v1, v2, y, gather, offset, align=align)
        if not is_distributed():
            return loss, stats
        keys = sorted(stats)
        summary = torch.cat([loss.detach().reshape(1),
                             torch.tensor([stats[k] for k in keys], dtype=loss.dtype, device=v1.device)])
        dist.all_reduce(summary)
        summary /= dist.get_world_size()
        loss = loss + (summary[0] - loss).detach()
        return loss, dict(zip(keys, summary[1:].tolist(), strict=True))


def wrap_objective(model: AnoMemModel, opts: RunOptions) -> nn.Module:
    """Global BatchNorm, shared positions and DDP around the stage-1 objective of ``model``."""
    cuda = opts.device.type == "cuda"
    swap_batchnorm(model.encoder, nn.SyncBatchNorm if cuda else GlobalBatchNorm2d)
    objective = SharedPositions(ContrastedMemoryObjective(model))
    if not is_distributed():
        return objective
    return DistributedDataParallel(objective, device_ids=[opts.device.index] if cuda else None,
                                   find_unused_parameters=not model.config.memory.use_memory)


class DistributedAnoMem(AnoMem):
    """:class:`~anomem.detector.AnoMem` whose stage 1 runs on every rank of the process group.

    Use exactly like AnoMem, with the options of :func:`init_distributed`::

        opts = init_distributed()
        det = DistributedAnoMem("cpu").fit(images, options=opts)
        if opts.is_main:
            det.save("model.anomem")
    """

    def _stage1(self, x: torch.Tensor, y: torch.Tensor, fingerprint: dict[str, Any],
                opts: RunOptions) -> list[dict[str, float]]:
        if not is_distributed():
            return super()._stage1(x, y, fingerprint, opts)
        cfg, model = self.config_, self._require_model()
        if cfg.stage1.batch_size % opts.world_size:
            raise ConfigError(f"config key 'stage1.batch_size': {cfg.stage1.batch_size} is not "
                              f"divisible by the {opts.world_size} processes; choose a multiple "
                              f"of {opts.world_size}")
        idx = shard_indices(len(x), opts.rank, opts.world_size)
        objective = wrap_objective(model, opts)
        torch.manual_seed(cfg.runtime.seed + 1_000_003 * (opts.rank + 1))   # independent augmentations
        history = train_stage1(model, x[idx], y[idx], fingerprint, opts, objective)
        swap_batchnorm(model.encoder, nn.BatchNorm2d)
        torch.manual_seed(cfg.runtime.seed + 1)                             # stage 2 identical on all ranks
        return history


def _load_task(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    from anomem.protocols.one_vs_all import make_one_vs_all

    if args.cifar10_class is not None:
        from anomem.data.cifar import cached_cifar10_jpeg
        from anomem.data.locate import CIFAR10_JPEG, data_file

        split, k = cached_cifar10_jpeg(data_file(CIFAR10_JPEG)), args.cifar10_class
    else:
        from anomem.data.digits import load_digits_split

        split, k = load_digits_split(), args.digits_class
    task = make_one_vs_all(split, k, args.gamma, args.seed)
    return task.x_train, task.labels_train, task.x_test, task.labels_test


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``torchrun ... -m anomem.distributed``: one-vs-all training and test AUROC."""
    from anomem.config import PRESETS, get_config, parse_override
    from anomem.protocols.one_vs_all import auroc

    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m anomem.distributed",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cifar10-class", type=int, metavar="K", help="normal class of CIFAR-10 (ANOMEM_DATA)")
    src.add_argument("--digits-class", type=int, metavar="K", help="normal class of scikit-learn digits")
    p.add_argument("--gamma", type=float, default=0.0, help="ratio of labelled anomalies (default 0)")
    p.add_argument("--seed", type=int, default=0, help="draw of the labelled anomalies")
    p.add_argument("--config", default="cpu", help=f"preset ({', '.join(PRESETS)}) or YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-o", "--output", metavar="MODEL", help="model file written by rank 0")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="rank 0 checkpoints here; a rerun resumes")
    args = p.parse_args(argv)
    opts = init_distributed()
    try:
        cfg = get_config(args.config, dict(parse_override(o) for o in args.overrides))
        x_train, labels, x_test, truth = _load_task(args)
        det = DistributedAnoMem(cfg).fit(x_train, labels, checkpoint_dir=args.checkpoint_dir,
                                         options=opts, validation_fraction=0.0)
        if opts.is_main:
            ips = det.history_["stage1"][-1]["images_per_s"] if det.history_["stage1"] else 0.0
            print(f"anomem.distributed: {opts.world_size} process(es) on {opts.device}, "
                  f"{len(x_train)} training images, stage 1 at {ips:.0f} images/s, test AUROC "
                  f"{auroc(np.asarray(truth), det.decision_function(x_test)):.4f}")
            if args.output:
                det.save(args.output)
    except AnoMemError as e:
        print(f"anomem.distributed (rank {opts.rank}): error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
