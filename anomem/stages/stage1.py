"""Stage 1: multi-scale contrasted memory learning (Algorithm 1, Eq. 2-7).

The encoder and the memories are trained jointly with SGD (Nesterov momentum,
cosine annealing).  Each step draws two views of a batch, samples
floor(H*W*r) positions per memory scale, retrieves the first view's vectors of
normal images through the memory (Eq. 3), and minimises COM-MS (Eq. 7).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from anomem.augment import (
    TwoViewAugment,
    corresponding_grid,
    local_pseudo_anomalies,
    rotated_pseudo_anomalies,
    sample_at,
)
from anomem.config import AnoMemConfig
from anomem.errors import TrainingDivergedError
from anomem.heap import large_blocks_mmapped
from anomem.losses import (
    contrasted_memory_loss,
    mem_select,
    multiscale_loss,
    position_hinge,
    position_labels,
    sample_positions,
    variance_loss,
)
from anomem.memory import HopfieldMemory
from anomem.scales import Scale
from anomem.stages.averaging import TrajectoryAverage, finish_average, trajectory_average
from anomem.stages.batches import stage1_batch, stage1_lr
from anomem.stages.common import (
    RunOptions,
    check_finite,
    check_finite_parameters,
    load_checkpoint,
    save_checkpoint,
    sgd_cosine,
    stream_seed,
)
from anomem.stages.consolidate import consolidate_prototypes, fill_view_memories
from anomem.torch_model import AnoMemModel

# Prototypes whose spread (mean over dimensions of the std across patterns) falls
# below this are treated as collapsed to one point.
COLLAPSE_SPREAD = 1e-6


class ContrastedMemoryObjective(nn.Module):
    """COM-MS (Eq. 7) of a two-view batch as one module, so DDP can wrap it.

    ``forward(v1, v2, y)`` returns the loss and a dict of per-scale statistics
    (contrastive term, variance term, number of sampled positions).  On CUDA,
    the config's ``runtime.channels_last`` converts the encoder (once, here) and the
    inputs to NHWC, and ``runtime.amp`` runs the encoder under bf16 autocast; the
    memories and the losses always run in float32.
    """

    def __init__(self, model: AnoMemModel) -> None:
        super().__init__()
        self.model = model
        self.cuda_fast = next(model.parameters()).is_cuda
        if model.config.runtime.channels_last and self.cuda_fast:
            model.encoder.to(memory_format=torch.channels_last)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor,
                gather: Any = None, offset: int = 0, align: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg: AnoMemConfig = self.model.config
        x = torch.cat([v1, v2])
        if cfg.runtime.channels_last and self.cuda_fast:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = cfg.runtime.amp and self.cuda_fast
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            maps = self.model.features(x)
        if amp:
            maps = [z.float() for z in maps]
        scales = self.model.view_scales(0)
        com, var, counts, hinge, stats = [], [], [], [], {}
        for scale, z in zip(scales, maps):
            z1, z2, pos = self._pairs(scale, z, v1.shape[0], v1.shape[-1], align)
            yp = position_labels(y, pos, *z.shape[2:])
            mem, v, d = self._recall(scale, z1, yp)
            if d is not None:
                hinge.append(position_hinge(d, yp))
                stats[f"hinge{scale.index + 1}"] = float(hinge[-1].detach())
            if self.model.projectors is not None:        # projector="mlp": Eq. 4 after the head
                mem, z2 = self.model.projectors[scale.index](mem), self.model.projectors[scale.index](z2)
            com.append(contrasted_memory_loss(mem, z2, cfg.stage1.tau, cfg.stage1.negatives, gather, offset))
            var.append(v)
            counts.append(len(pos))
            k = scale.index + 1
            stats[f"com{k}"], stats[f"var{k}"] = float(com[-1].detach()), float(v.detach())
        lam = cfg.stage1.lambda_v if cfg.memory.use_memory else 0.0
        n_maps = sum(not s.pooled for s in scales)
        loss = multiscale_loss(com[:n_maps], var[:n_maps], counts[:n_maps], [s.alpha for s in scales], lam)
        if len(maps) > n_maps:      # the image-level scale(s): one term beside Eq. 7's maps
            loss = loss + torch.stack([c + lam * v for c, v in zip(com[n_maps:], var[n_maps:])]).mean()
        if hinge:
            loss = loss + cfg.extensions.position_hinge * torch.stack(hinge).mean()
        return loss, stats

    @staticmethod
    def _pairs(scale: Scale, z: torch.Tensor, b: int, side: int, align: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The first view's vectors at the positions Eq. 7 samples (``scale.ratio`` of them) and
        their positives in the second view, (P, B, C) each, and the positions (P,); ``z`` holds
        both views' maps."""
        h, w = z.shape[2:]
        pos = sample_positions(h, w, scale.ratio).to(z.device)
        if align is not None and not scale.pooled:   # view_geometry="aligned": the same point in view 2
            z1 = z[:b].flatten(2)[:, :, pos].permute(2, 0, 1)
            return z1, sample_at(z[b:], corresponding_grid(pos, h, w, side, align)), pos
        vecs = z.flatten(2)[:, :, pos].permute(2, 0, 1)      # (P, 2B, C)
        return vecs[:, :b], vecs[:, b:], pos

    def _recall(self, scale: Scale, z1: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Eq. 3 from the N_mem patterns stage 1 trains, Eq. 6's variance term and, for
        ``extensions.position_hinge``, each vector's deviation norm from its recollection
        (Eq. 8), (P, B) (else None); without a memory (Table 4), the vectors themselves, 0 and
        None (no recollection to deviate from).  ``y`` is (B,) or per position (P, B)."""
        cfg = self.model.config
        if not cfg.memory.use_memory:
            return z1, z1.sum() * 0.0, None
        memory = self.model.memories[scale.memory]
        recalled = memory(z1, rows=memory.size)
        mem = mem_select(z1, recalled, y)
        if cfg.extensions.reseed_dead:
            track_wins(memory, (z1[y == 1] if y.ndim == 2 else z1[:, y == 1]).detach())
        deviation = ((memory.prepare(z1) - recalled).norm(dim=-1)
                     if cfg.extensions.position_hinge > 0 else None)
        return mem, variance_loss(mem, y, cfg.stage1.variance), deviation


@torch.no_grad()
def track_wins(memory: HopfieldMemory, queries: torch.Tensor) -> None:
    """Count, per trained pattern, the normal queries it answers best (argmax of the attention).

    ``queries`` is ``(..., d)``; the counts (buffer ``memory.wins``) and the latest
    queries (buffer ``memory.recent``) feed :func:`reseed_dead_patterns`.
    """
    flat = queries.reshape(-1, queries.shape[-1])
    if len(flat):
        memory.wins += torch.bincount(memory.winner(flat, rows=memory.size), minlength=memory.size)
        memory.recent = flat


@torch.no_grad()
def reseed_dead_patterns(model: AnoMemModel, opt: torch.optim.Optimizer, epoch: int,
                         opts: RunOptions, average: TrajectoryAverage | None = None) -> int:
    """``extensions.reseed_dead``: patterns that answered no normal query in an epoch restart as a query.

    The paper is silent on patterns that never win the attention; left alone
    they are dead weight, and the memory holds fewer prototypes than N_mem.
    At the end of every epoch each such pattern is replaced by a normal query
    vector of the epoch's last step, drawn at random (seed stream
    ``"reseed"``), its momentum is cleared and its weight average (if any)
    restarts at its new value.  Under DDP the counts are
    summed over ranks and rank 0's choice is broadcast.  Returns the number of
    patterns replaced.
    """
    g = torch.Generator().manual_seed(stream_seed(model.config.runtime.seed, "reseed", epoch))
    total = 0
    for memory in model.trained_memories():
        if opts.world_size > 1 and dist.is_initialized():
            dist.all_reduce(memory.wins)
        dead = memory.wins == 0
        if opts.is_main:
            total += memory.reseed(dead, memory.recent, g)
        if opts.world_size > 1 and dist.is_initialized():
            dist.broadcast(memory.patterns.data, src=0)
        buf = opt.state.get(memory.patterns, {}).get("momentum_buffer")
        if buf is not None:
            buf[:memory.size][dead] = 0.0
        if average is not None:
            average.restart_rows(memory.patterns, dead)
        memory.wins.zero_()
    return total


def prototype_spread(model: AnoMemModel) -> float:
    """Smallest, over the memories stage 1 trains, mean std of their trained patterns across patterns."""
    return min(float(m.stored(m.size).detach().std(dim=0).mean()) for m in model.trained_memories())


def check_collapse(model: AnoMemModel, where: str) -> None:
    """Raises :class:`TrainingDivergedError` if the prototypes spread less than ``COLLAPSE_SPREAD``."""
    if model.config.memory.use_memory and prototype_spread(model) < COLLAPSE_SPREAD:
        raise TrainingDivergedError(
            f"stage 1: the memory prototypes collapsed to one point {where}. Raise stage1.lambda_v "
            f"(now {model.config.stage1.lambda_v}) or lower stage1.lr and train again (a changed "
            f"configuration needs a new checkpoint folder); the last good checkpoint (if any) "
            f"is kept.")


@torch.no_grad()
def seed_memories(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor, opts: RunOptions) -> None:
    """``memory.init="data"``: set every memory's patterns to feature vectors of real images.

    The paper does not say how the patterns start.  Here the first
    ``stage1.batch_size`` normal training images (un-augmented) go through the
    freshly initialised encoder in training mode (batch statistics; the
    BatchNorm running buffers are restored afterwards), and the N_mem patterns
    of each memory stage 1 trains are distinct vectors drawn at random among
    all positions of the maps of the first scale it serves (with replacement,
    plus 1e-3 noise, only when there are fewer vectors than patterns).  So retrieval starts inside the cone of
    real features instead of among random directions.  Under DDP rank 0's
    patterns are broadcast to every rank.
    """
    cfg = model.config
    normal = images[y == 1][: max(1, cfg.stage1.batch_size // opts.world_size)]
    if len(normal) == 0:          # a DDP shard without normals: every rank must still take part
        normal = images[:1]
    buffers = {k: v.clone() for k, v in model.encoder.named_buffers()}
    model.train()
    maps = model.features(normal.to(opts.device).float().div_(255))
    model.encoder.load_state_dict(buffers, strict=False)
    g = torch.Generator().manual_seed(cfg.runtime.seed * 7919 + 17)
    first = {}
    for scale, z in zip(model.view_scales(0), maps):
        first.setdefault(scale.memory, z)
    for k, z in sorted(first.items()):
        memory = model.memories[k]
        vecs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        size = memory.size
        if len(vecs) >= size:
            chosen = vecs[torch.randperm(len(vecs), generator=g)[:size].to(vecs.device)]
        else:
            chosen = vecs[torch.randint(len(vecs), (size,), generator=g).to(vecs.device)]
            chosen = chosen + 1e-3 * torch.randn(chosen.shape, generator=g).to(vecs.device)
        memory.patterns[:size].copy_(chosen)
        if opts.world_size > 1 and dist.is_initialized():
            dist.broadcast(memory.patterns.data, src=0)


def _start(ckpt: Any, modules: dict[str, Any], fingerprint: dict[str, Any], images: torch.Tensor,
           y: torch.Tensor, opts: RunOptions) -> tuple[int, list[dict[str, float]], dict[str, float]]:
    """(first step, history, running epoch statistics): from the checkpoint, or a fresh start."""
    model = modules["model"]
    if ckpt is not None and ckpt.is_file():
        start, extra = load_checkpoint(ckpt, modules, fingerprint)
        for memory, wins in zip(model.trained_memories(), extra.get("wins", [])):
            memory.wins.copy_(torch.tensor(wins, dtype=torch.long))
        return start, extra.get("history", []), extra.get("epoch_stats", {})
    if model.config.memory.use_memory and model.config.memory.init == "data":
        seed_memories(model, images, y, opts)
    return 0, [], {}


def _save(ckpt: Any, step: int, modules: dict[str, Any], fingerprint: dict[str, Any],
          history: list[dict[str, float]], epoch_stats: dict[str, float], opts: RunOptions) -> None:
    """Check the model's health, then (rank 0) write the checkpoint with the win counts."""
    model = modules["model"]
    check_finite_parameters(model, step, "stage 1", "stage1.lr")
    check_collapse(model, f"at step {step}")
    if opts.is_main:
        wins = [m.wins.tolist() for m in model.trained_memories()]
        save_checkpoint(ckpt, step, modules, fingerprint,
                        {"history": history, "epoch_stats": epoch_stats, "wins": wins})


def _views(cfg: AnoMemConfig, aug: TwoViewAugment, images: torch.Tensor, y: torch.Tensor, step: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Two augmented views of a uint8 batch, its labels and (``stage1.view_geometry="aligned"``)
    where each position of the first view lies in the second, with ``extensions.pseudo_anomalies``'
    rotated or locally defective copies appended (seed stream ``"pseudo"``; ``local`` labels
    pixels, (B, S, S), under defects of ``extensions.defect_scale``'s size)."""
    x = images.to(device, non_blocking=True).float().div_(255)
    v1, v2, align = aug.aligned_views(x) if cfg.stage1.view_geometry == "aligned" else (*aug(x), None)
    yb = y.to(device)
    gen = torch.Generator().manual_seed(stream_seed(cfg.runtime.seed, "pseudo", step))
    if cfg.extensions.pseudo_anomalies == "rotation":
        v1, v2, yb, align = rotated_pseudo_anomalies(v1, v2, yb, cfg.extensions.pseudo_fraction,
                                                     gen, align)
    elif cfg.extensions.pseudo_anomalies == "local":
        v1, v2, yb, align = local_pseudo_anomalies(v1, v2, yb, cfg.extensions.pseudo_fraction, gen,
                                                   align, cfg.extensions.defect_scale)
    return v1, v2, yb, align


def _end_epoch(model: AnoMemModel, opt: torch.optim.Optimizer, epoch: int, per_epoch: int,
               ips: float, epoch_stats: dict[str, float], opts: RunOptions,
               average: TrajectoryAverage | None) -> dict[str, float]:
    """Reseed dead patterns, check for a collapse; the epoch's row of the history."""
    if model.config.memory.use_memory and model.config.extensions.reseed_dead:
        epoch_stats["reseeded"] = reseed_dead_patterns(model, opt, epoch, opts, average) * per_epoch
    check_collapse(model, f"at epoch {epoch + 1}")
    return {"epoch": epoch + 1, "images_per_s": ips,
            **{k: v / per_epoch for k, v in epoch_stats.items()}}


def _probe(model: AnoMemModel, row: dict[str, float], opts: RunOptions) -> None:
    """``opts.on_epoch`` (main rank) on the epoch's ``row``; its random draws (if any) must not
    move training's."""
    if opts.on_epoch is not None and opts.is_main:
        with torch.random.fork_rng(devices=[] if torch.device(opts.device).type == "cpu" else None):
            opts.on_epoch(model, row)


def train_stage1(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor,
                 fingerprint: dict[str, Any], opts: RunOptions,
                 objective: nn.Module | None = None) -> list[dict[str, float]]:
    """Train encoder and memories on uint8 ``images`` (N, 3, S, S) with y (1 = normal).

    Resumes from ``opts.checkpoint_dir / "stage1.ckpt"`` when it exists and
    matches ``fingerprint``.  ``objective`` (default: a
    :class:`ContrastedMemoryObjective` of ``model``) may be a DDP wrapper of it;
    then ``images``/``y`` are this rank's shard.  Returns one dict per epoch
    (mean loss, per-scale terms, images/s).  On the CPU, runs under the
    config's ``runtime.malloc_mmap_threshold`` (:func:`anomem.heap.large_blocks_mmapped`).
    """
    on_cpu = torch.device(opts.device).type == "cpu"
    with large_blocks_mmapped(model.config.runtime.malloc_mmap_threshold if on_cpu else 0):
        return _train_stage1(model, images, y, fingerprint, opts, objective)


def _train_stage1(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor,
                  fingerprint: dict[str, Any], opts: RunOptions,
                  objective: nn.Module | None) -> list[dict[str, float]]:
    """:func:`train_stage1` under the allocator settings it chose."""
    cfg = model.config
    objective = objective or ContrastedMemoryObjective(model)
    n = images.shape[0]
    bsz = stage1_batch(cfg, n, opts.world_size)
    per_epoch = max(1, n // bsz)
    total = cfg.stage1.epochs * per_epoch
    params = [*model.encoder.parameters(), *(model.memories.parameters() if cfg.memory.use_memory else []),
              *(model.projectors.parameters() if model.projectors is not None else [])]
    opt, sched = sgd_cosine(params, stage1_lr(cfg, bsz, opts.world_size), cfg.stage1.momentum,
                            cfg.stage1.weight_decay, total)
    aug = TwoViewAugment.of(cfg.backbone.image_size, cfg.stage1)
    ckpt = opts.checkpoint_dir / "stage1.ckpt" if opts.checkpoint_dir else None
    average = trajectory_average(model, params, total)
    modules = {"model": model, "opt": opt, "sched": sched, **({"average": average} if average else {})}
    start, history, epoch_stats = _start(ckpt, modules, fingerprint, images, y, opts)
    model.train()
    bar = tqdm(total=total, initial=start, desc="stage 1", disable=not (opts.progress and opts.is_main),
               unit="step", dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    for step in range(start, total):
        epoch, i = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(cfg.runtime.seed * 100_003 + epoch)
        idx = torch.randperm(n, generator=g)[i * bsz:(i + 1) * bsz]
        v1, v2, yb, align = _views(cfg, aug, images[idx], y[idx], step, opts.device)
        loss, stats = objective(v1, v2, yb, opts.gather, opts.rank * len(yb), align=align)
        value = check_finite(loss, step + 1, "stage 1", "stage1.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if average is not None:
            average.update(step)
        seen += len(yb)     # the rotated pseudo-anomalous copies count: the step processed them
        stats = {"loss": value, **stats}
        for k, v in stats.items():
            epoch_stats[k] = epoch_stats.get(k, 0.0) + v
        ips = seen * opts.world_size / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{value:.4f}", img_s=f"{ips:.0f}")
        bar.update(1)
        if opts.log is not None and opts.is_main:
            opts.log({"stage": 1, "step": step + 1, "epoch": epoch + 1, "lr": sched.get_last_lr()[0],
                      "images_per_s": ips, **stats})
        if i == per_epoch - 1:
            history.append(_end_epoch(model, opt, epoch, per_epoch, ips, epoch_stats, opts, average))
            epoch_stats = {}
            _probe(model, history[-1], opts)
        if ckpt is not None and ((step + 1) % opts.checkpoint_every == 0 or step + 1 == total):
            _save(ckpt, step + 1, modules, fingerprint, history, epoch_stats, opts)
    bar.close()
    finish_average(average, model, images, y, bsz, opts)
    fill_view_memories(model)
    if cfg.consolidates:       # k-means prototypes fill the patterns later: nothing to consolidate
        consolidate_prototypes(model, images, y, opts)
    model.eval()
    return history
