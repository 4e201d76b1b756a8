"""The memory scales of a network, one record each, made from the configuration in one place.

A scale is a map z(s) the network compares with a memory: the H(s) x W(s)
feature map after a memory stage (``memory.stages``), or that map
average-pooled to 1 x 1, an image-level scale (``extensions.global_memory``;
the paper contrasts the flattened output z "not only [...] but also" the
intermediate maps, §3.1).  Within a view, the maps come first, in stage order,
then the pooled ones.  ``scoring.views`` repeats every scale for each
test-time view of the image (its mirror image, and with ``"flips"`` upside
down and both), each view with memories of its own, view after view.

Memories: one per map scale, and with ``global_memory="own"`` or ``"every"``
one per image-level scale (``global_mem_factor`` x N_mem of its stage); with
``"shared"`` the image-level scale is retrieved from its stage's map memory.

Example:
    >>> from anomem.config import get_config
    >>> [(s.stage, s.pooled, s.view, s.memory, s.alpha) for s in
    ...  scales_of(get_config("digits", {"score_views": "single"}), (8, 16, 32, 64))]
    [(2, False, 0, 0, 1.0), (3, False, 0, 1, 2.0), (2, True, 0, 2, 1.0), (3, True, 0, 3, 2.0)]
"""

from __future__ import annotations

from dataclasses import dataclass

from anomem.config import AnoMemConfig
from anomem.config.checks import SCORE_VIEWS


@dataclass(frozen=True)
class Scale:
    """One memory scale of one test-time view.

    Attributes:
        index: position among all scales (view after view), as per-scale scores are ordered.
        stage: the ResNet stage (0-based) whose map it reads.
        pooled: the map average-pooled to 1 x 1 (an image-level scale).
        view: the ``scoring.views`` view (0: the image itself, the view stage 1 trains on).
        memory: index (in the network's memories) of the memory that serves it.
        alpha: Eq. 13's confidence alpha(s), before the network divides by their sum.
        dim: channels C(s) of its vectors.
        size: N_mem, the patterns of its memory stage 1 trains.
        ratio: share of the map's positions Eq. 7 samples in stage 1 (1 for an image-level scale).
    """

    index: int
    stage: int
    pooled: bool
    view: int
    memory: int
    alpha: float
    dim: int
    size: int
    ratio: float


def pooled_stages(config: AnoMemConfig) -> tuple[int, ...]:
    """The memory stages (0-based in ``memory.stages``) whose pooled map is an image-level scale."""
    n = len(config.memory.stages)
    return {"none": (), "every": tuple(range(n))}.get(config.extensions.global_memory, (n - 1,))


def alphas(config: AnoMemConfig) -> tuple[float, ...]:
    """Scale confidences of one view: alpha = 2^(k-1) for the map after the k-th memory stage (§4.2).

    The image-level scales come after the maps.  ``scoring.image_alpha="stage"``:
    each takes the alpha of the stage it pools; ``"last"``: they continue the
    sequence, alpha(s) = 2^(s-1) for s = 1..S, the last the largest.
    """
    n, pooled = len(config.memory.stages), pooled_stages(config)
    order = pooled if config.scoring.image_alpha == "stage" else range(n, n + len(pooled))
    return tuple(2.0 ** k for k in (*range(n), *order))


def scales_of(config: AnoMemConfig, channels: tuple[int, ...]) -> tuple[Scale, ...]:
    """Every scale of the network ``config`` describes, view after view.

    ``channels`` are the encoder's channels per ResNet stage
    (:attr:`anomem.backbone.ResNet.channels`).
    """
    mem = config.memory
    n, pooled = len(mem.stages), pooled_stages(config)
    own = config.extensions.global_memory in ("own", "every")
    factor = config.extensions.global_mem_factor if own else 1
    # one view: (stage index in memory.stages, pooled, memory index in the view)
    layout = [(i, False, i) for i in range(n)]
    layout += [(i, True, n + j if own else i) for j, i in enumerate(pooled)]
    per_view = n + (len(pooled) if own else 0)
    out = []
    for view in range(len(SCORE_VIEWS[config.scoring.views])):
        for (i, is_pooled, k), alpha in zip(layout, alphas(config)):
            stage = mem.stages[i] - 1
            out.append(Scale(len(out), stage, is_pooled, view, view * per_view + k, alpha,
                             channels[stage], mem.sizes[i] * (factor if is_pooled else 1),
                             1.0 if is_pooled else mem.ratios[i]))
    return tuple(out)
