"""Consolidation: the end of stage 1, Lloyd iterations of the patterns on the training normals.

The paper is silent on where the patterns end up.  Trained by Eq. 4 they are
whatever mixture best serves the contrastive loss on augmented views, not
prototypes of the clean normal features that Eq. 8 compares against
(measured: nearest-pattern retrieval trails nearest-k-means-centroid
retrieval of the same features by 10-50 AUROC points on digits).  So stage 1
ends with ``extensions.consolidate`` Lloyd steps that start from the learned patterns
(:func:`consolidate_prototypes`); out-of-fold calibration
(:func:`anomem.stages.stage2.calibrate_scales`) consolidates memory copies on
features it has already computed (:func:`consolidate_on_maps`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from anomem.scales import Scale
from anomem.stages.common import RunOptions, map_batches, stream_seed
from anomem.torch_model import AnoMemModel

# Feature vectors per memory used by the Lloyd iterations.
CONSOLIDATE_MAX_VECTORS = 20_000


@torch.no_grad()
def feature_maps(model: AnoMemModel, images: torch.Tensor, opts: RunOptions,
                 view: int | None = None) -> list[torch.Tensor]:
    """Eval-mode feature maps z(s) of uint8 ``images``, one (n, C, H, W) tensor per scale and view
    (of ``view`` alone when given)."""
    parts = map_batches(model, images, opts, lambda m, x: m.view_features(x, view))
    return [torch.cat(scale) for scale in zip(*parts)]


@torch.no_grad()
def fill_view_memories(model: AnoMemModel) -> None:
    """``scoring.views``: every view after the first gets a copy of the first view's memories.

    Stage 1 trains the memories of the image itself; at its end each other
    view (a flip of the image) gets a copy of them, which consolidation
    (:func:`consolidate_prototypes`) then moves onto the same view of the
    training normals, so a view is compared with prototypes of normal images
    seen the same way.  The paper is silent on test-time views; measured in
    ``docs/design.md``.
    """
    n = len(model.trained_memories())            # view v's memory k is memory v * n + k
    for i in range(n, len(model.memories)):
        model.memories[i].patterns.copy_(model.memories[i % n].patterns)


@torch.no_grad()
def grow_patterns(model: AnoMemModel) -> None:
    """The patterns after the first N_mem of every memory become copies of them, in order.

    A memory holds ``extensions.consolidate_factor`` x N_mem patterns from the
    start, of which stage 1 trains the first N_mem.  Consolidation starts by
    filling the others, pattern i with trained pattern i mod N_mem; the copies,
    which answer no query (the first of equal attentions wins), then restart
    at the worst-answered vectors.  Copies change no retrieval: Eq. 1's
    attention splits evenly among equal patterns.
    """
    for memory in model.memories:
        n = memory.size
        memory.patterns[n:] = memory.patterns[:n].repeat(len(memory.patterns) // n - 1, 1)


@torch.no_grad()
def consolidate_prototypes(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor,
                           opts: RunOptions, grow: bool = True) -> None:
    """``extensions.consolidate``: Lloyd iterations of every memory on the normals of ``images`` (y = 1).

    The patterns each memory holds beyond the N_mem stage 1 trained first
    become copies of those (:func:`grow_patterns`; ``grow=False`` consolidates
    the memories as they are), then :func:`consolidate_on_maps` runs on the
    eval-mode features of the normal images, one ``scoring.views`` view at a
    time (a view's memories serve that view's scales alone, so only one view's
    maps are held).  Leaves the model in train mode.
    """
    if grow:
        grow_patterns(model)
    g, normals = consolidation_stream(model), images[y == 1]
    for v in range(len(model.views)):
        consolidate_on_maps(model, feature_maps(model, normals, opts, v), opts,
                            scales=model.view_scales(v), generator=g)
    model.train()


def consolidation_stream(model: AnoMemModel) -> torch.Generator:
    """The random stream (``"consolidate"``) that draws the vectors of every memory in turn."""
    return torch.Generator().manual_seed(stream_seed(model.config.runtime.seed, "consolidate"))


@torch.no_grad()
def consolidate_on_maps(model: AnoMemModel, maps: list[torch.Tensor], opts: RunOptions,
                        scales: tuple[Scale, ...] | None = None,
                        generator: torch.Generator | None = None) -> None:
    """``config.extensions.consolidate`` Lloyd steps of the memories that serve the scales of ``maps``.

    ``maps`` holds one feature map per scale of ``scales`` (default: every
    scale); ``generator`` defaults to a new :func:`consolidation_stream`.
    The vectors of a memory are those of every scale it serves (the prepared,
    i.e. normalised when the memory normalises, feature vectors at every
    position), up to ``CONSOLIDATE_MAX_VECTORS`` drawn with seed stream
    ``"consolidate"``.  Each step: a pattern that wins no vector restarts
    (:func:`restart_empty`), each vector goes to the pattern of highest
    attention, each pattern moves to the mean of its vectors (normalised when
    the memory normalises).  Under DDP rank 0's patterns (from its shard) are
    broadcast.
    """
    g = generator or consolidation_stream(model)
    scales = scales if scales is not None else model.scales
    for k in sorted({s.memory for s in scales}):
        memory = model.memories[k]
        vecs = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                          for s, z in zip(scales, maps) if s.memory == k])
        vecs = memory.prepare(vecs[torch.randperm(len(vecs), generator=g)[:CONSOLIDATE_MAX_VECTORS]
                                   .to(vecs.device)])
        x = memory.stored().clone()
        for _ in range(model.config.extensions.consolidate):
            x, assign = restart_empty(vecs, x)
            sums = torch.zeros_like(x).index_add_(0, assign, vecs)
            count = torch.bincount(assign, minlength=len(x)).unsqueeze(1)
            x = memory.prepare(torch.where(count > 0, sums / count.clamp_min(1), x))
        memory.patterns.copy_(x)
        if opts.world_size > 1 and dist.is_initialized():
            dist.broadcast(memory.patterns.data, src=0)


def restart_empty(vecs: torch.Tensor, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patterns that answer none of ``vecs`` restart, one by one, at the vector answered worst.

    One Lloyd step's remedy for empty clusters (as in k-means): each pattern of
    ``patterns`` (N_mem, d) that wins no vector of ``vecs`` (n, d) (highest
    attention, as :meth:`~anomem.memory.HopfieldMemory.winner`) becomes the
    vector whose best attention is lowest, counting the patterns restarted
    before it (farthest-first, so that several restarts do not land in one
    region; at most n restart).  Without it a memory larger than the number of
    clusters its features form keeps dead patterns through consolidation
    (measured: 16-28 of 128 image-level patterns in use on digits), and a grown
    memory (``extensions.consolidate_factor``) would keep its copies.  Deterministic.

    Returns the patterns (a new tensor when any restarted, else ``patterns``)
    and each vector's winner among them, the assignment step of Lloyd's
    iteration (one ``vecs @ patterns^T`` when nothing restarts).
    """
    best, assign = (vecs @ patterns.t()).max(-1)
    dead = torch.nonzero(torch.bincount(assign, minlength=len(patterns)) == 0).squeeze(1)
    if len(dead) == 0:
        return patterns, assign
    out = patterns.clone()
    for j in dead[:len(vecs)]:
        i = int(torch.argmin(best))
        out[j] = vecs[i]
        best = torch.maximum(best, vecs @ vecs[i])
    return out, (vecs @ out.t()).argmax(-1)
