"""Stage 1's batch and rate on the training set at hand (``stage1.min_batches``,
``stage1.lr_scaling``).

The paper trains on 50,000 images, tens of batches an epoch, at the batch and rate it
configures.  A small set at that batch is one step an epoch; these two functions give
it more, smaller batches, and each of them a rate that fits its size.
"""

from __future__ import annotations

import math

from anomem.config import AnoMemConfig

__all__ = ["MIN_BATCH", "stage1_batch", "stage1_lr"]

#: The smallest batch :func:`stage1_batch` shrinks to for ``stage1.min_batches``: Eq. 7
#: contrasts every vector of a batch with the others, so a batch keeps some negatives.
MIN_BATCH = 32


def stage1_batch(cfg: AnoMemConfig, n: int, world_size: int = 1) -> int:
    """Stage 1's batch per process on the ``n`` training images it holds (its shard under
    DDP): ``stage1.batch_size`` (split over ``world_size`` processes, at most ``n``), shrunk
    on a small set toward ``n // stage1.min_batches``, so that an epoch takes that many
    batches, but not below :data:`MIN_BATCH` (nor a batch already smaller).  The floor holds
    per process, so W processes on a small set take at least W x 32 images a step.

    On 160 images a batch of 128 is one step an epoch, ten in a fit of the ``cpu`` preset,
    and which images those batches draw decides where the encoder ends (``docs/design.md``,
    ``stage1.min_batches``).

    Example:
        >>> from anomem.config import get_config
        >>> cpu, digits = get_config("cpu"), get_config("digits")   # batches 128 and 32
        >>> stage1_batch(cpu, 160), stage1_batch(cpu, 800), stage1_batch(cpu, 40), stage1_batch(digits, 114)
        (32, 128, 32, 32)
    """
    bsz = max(1, min(cfg.stage1.batch_size // world_size, n))
    if n // bsz < cfg.stage1.min_batches:
        bsz = min(bsz, max(MIN_BATCH, n // cfg.stage1.min_batches))
    return bsz


def stage1_lr(cfg: AnoMemConfig, batch: int, world_size: int = 1) -> float:
    """Stage 1's peak rate for steps of ``batch`` images on each of ``world_size`` processes.

    ``stage1.lr`` is the rate of a step on ``stage1.batch_size`` images.  A step on fewer
    images (a small set's batch, from :func:`stage1_batch`; r = batch x world_size /
    batch_size) takes, with ``stage1.lr_scaling``:

    * ``linear``: lr x r, the linear scaling rule of Goyal et al. (2017) read downward: the
      more, smaller steps of an epoch move the weights about as far as the configured ones;
    * ``sqrt``: lr x sqrt(r), the square-root rule (Krizhevsky 2014), which keeps the
      variance of an epoch's summed gradient steps;
    * ``none`` (the default and the literal reading): lr.

    A batch is never larger than configured (r <= 1), so the rate never grows.  Neither
    scaling won on validation data of two image sets (``docs/design.md``,
    ``stage1.lr_scaling``), so a small set's smaller batches keep the configured rate.

    Example:
        >>> from anomem.config import get_config
        >>> cpu = get_config("cpu")                  # lr 0.1 for batches of 128
        >>> linear = cpu.replace(**{"stage1.lr_scaling": "linear"})
        >>> stage1_lr(linear, 32), stage1_lr(linear, 128), stage1_lr(cpu, 32)
        (0.025, 0.1, 0.1)
    """
    r = min(1.0, batch * world_size / cfg.stage1.batch_size)
    return cfg.stage1.lr * {"linear": r, "sqrt": math.sqrt(r), "none": 1.0}[cfg.stage1.lr_scaling]
