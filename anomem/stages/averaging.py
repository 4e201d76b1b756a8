"""``extensions.weight_average``: stage 1 ends at the mean of its trajectory's last weights.

The paper is silent on which point of stage 1's trajectory the detector keeps;
its literal reading keeps the last one (``weight_average=0``).  On small sets
stage 1 takes ten or so steps and some seeds end far from where others do
(``experiments/small_sets``), so this averages along the trajectory instead.

The choice is SWA-style equal averaging over the last ``fraction`` of the
steps (0.5: the second half), not an exponential moving average of a fixed
decay.  The number of steps ranges from about 10 (200 images, one step an
epoch) to thousands: a fixed per-step decay averages over a window of fixed
*steps*, which is all of a 10-step run (and then leans on the random initial
weights) and a vanishing share of a long one.  A window given as a share of
the run means the same thing at every length, and an equal mean over it is
the running mean ``avg += (w - avg) / k`` after the k-th step of the window
(at least one step: ``fraction * total`` rounded up).

What is averaged: every parameter stage 1's optimiser updates (encoder,
trained memory patterns, projection heads).  A pattern that
``extensions.reseed_dead`` restarts inside the window restarts its mean at
its new value (:meth:`TrajectoryAverage.restart_rows`): a mean across the
restart would be a blend of two unrelated vectors.

BatchNorm: the running statistics are buffers of the last weights, not of
the averaged ones, and averaging them does not give the statistics of the
averaged network.  So after the averaged weights are loaded,
:func:`recompute_batchnorm` resets every BatchNorm's running statistics and
computes them again in one pass over the un-augmented training normals in
training mode, without gradient (equal weight per batch, batches of near
equal size).  Under DDP every rank's weights and means are identical (the
same steps on the same all-reduced gradients), so each rank averages
locally; the pass runs while stage 1's BatchNorm layers are still global
(:mod:`anomem.distributed`), so its statistics span every rank's normals,
and every rank takes as many batches as the rank that needs most (a rank
short of normals passes empty batches), since each batch is a collective
step.

``extensions.batchnorm_pass`` runs the same pass on the last weights without
averaging.  The paper is silent on BatchNorm's statistics.  Stage 1's
running statistics are momentum-0.1 means of the batches of augmented two-view
batches with their pseudo-anomalous copies; after ten steps 0.9^10 = 35 % of
them is still the initial 0 and 1.  The pass gives the statistics of the
clean normals that scoring reads (measured on the small sets: it is what moves
their scores, averaging adds nothing to it; ``docs/results.md``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from anomem.stages.common import RunOptions
from anomem.torch_model import AnoMemModel


class TrajectoryAverage:
    """The equal mean of ``params`` after each of the last ``ceil(fraction * total)`` steps.

    Call :meth:`update` after every step (0-based ``step``); steps before the
    window leave the mean alone.  ``state_dict``/``load_state_dict`` let a
    checkpoint carry it.
    """

    def __init__(self, params: list[nn.Parameter], fraction: float, total: int) -> None:
        self.params = list(params)
        self.first = total - math.ceil(fraction * total)
        self.count = 0
        self.mean = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step < self.first:
            return
        self.count += 1
        for m, p in zip(self.mean, self.params):
            m.add_(p.detach() - m, alpha=1.0 / self.count)

    @torch.no_grad()
    def restart_rows(self, param: nn.Parameter, rows: torch.Tensor) -> None:
        """The mean of the leading ``len(rows)`` rows of ``param`` flagged in ``rows`` restarts at
        their current value."""
        for m, p in zip(self.mean, self.params):
            if p is param:
                m[:len(rows)][rows] = p.detach()[:len(rows)][rows]

    @torch.no_grad()
    def apply(self) -> bool:
        """Copy the mean into the parameters; False (nothing copied) before the window."""
        if self.count == 0:
            return False
        for m, p in zip(self.mean, self.params):
            p.copy_(m)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"first": self.first, "count": self.count, "mean": [m.clone() for m in self.mean]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["first"] != self.first or len(state["mean"]) != len(self.mean):
            raise ValueError("the weight average belongs to another run")
        self.count = int(state["count"])
        for m, s in zip(self.mean, state["mean"]):
            m.copy_(s)


def trajectory_average(model: AnoMemModel, params: list[nn.Parameter],
                       total: int) -> TrajectoryAverage | None:
    """The average ``extensions.weight_average`` asks for over ``total`` steps, or None when off."""
    fraction = model.config.extensions.weight_average
    return TrajectoryAverage(params, fraction, total) if fraction > 0 and total > 0 else None


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor, batch_size: int,
                        opts: RunOptions) -> None:
    """The encoder's BatchNorm running statistics, computed again for its current weights.

    One pass over the un-augmented normals (y = 1; every image when there is
    none) of uint8 ``images`` in training mode, in near-equal batches of at
    most ``batch_size`` (never one image alone), each batch counting equally
    (``momentum=None``).  Under DDP every rank takes the largest number of
    batches of any rank, and the ranks' statistics (already global with
    global BatchNorm layers) are averaged, so they agree to the bit.
    """
    norms = _norms(model.encoder)
    normal = images[y == 1] if bool((y == 1).any()) else images
    if not norms or len(normal) == 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    n_batches = max(1, min(math.ceil(len(normal) / batch_size), len(normal) // 2))
    ddp = opts.world_size > 1 and dist.is_initialized()
    if ddp:
        most = torch.tensor([n_batches], device=opts.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        n_batches = int(most)
    for part in torch.tensor_split(normal, n_batches):
        model.features(part.to(opts.device).float().div_(255))
    model.train(was_training)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        if ddp:
            for t in (m.running_mean, m.running_var):
                dist.all_reduce(t)
                t.div_(opts.world_size)


def finish_average(average: TrajectoryAverage | None, model: AnoMemModel, images: torch.Tensor,
                   y: torch.Tensor, batch_size: int, opts: RunOptions) -> None:
    """Load the averaged weights (when averaging) and recompute BatchNorm for them, or for the
    last weights when ``extensions.batchnorm_pass`` asks."""
    averaged = average is not None and average.apply()
    if averaged or model.config.extensions.batchnorm_pass:
        recompute_batchnorm(model, images, y, batch_size, opts)
