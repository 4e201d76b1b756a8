"""Anomaly-distance losses: stage 2's (Eq. 11-12) and Eq. 11 at stage 1's positions; y = 1 normal,
y = 0 anomaly."""

from __future__ import annotations

import math

import torch

#: Eq. 11's margin at stage 1's positions (:func:`position_hinge`): on unit vectors, a
#: deviation of sqrt(2) leaves a vector orthogonal to its recollection.
POSITION_MARGIN = math.sqrt(2.0)


def double_hinge(d: torch.Tensor, y: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Eq. 11: l(d, y) = y * max(d - 1/M, 0) + (1 - y) * max(M - d, 0), elementwise."""
    y = y.to(d.dtype)
    return y * torch.clamp(d - 1.0 / margin, min=0) + (1 - y) * torch.clamp(margin - d, min=0)


def sup_loss(distances: torch.Tensor, y: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Eq. 12: L_SUP = 1/(S*B) sum_k sum_s l(d_k^(s), y_k) for distances of shape (S, B)."""
    return double_hinge(distances, y.unsqueeze(0), margin).mean()


def position_hinge(d: torch.Tensor, y: torch.Tensor, margin: float = POSITION_MARGIN) -> torch.Tensor:
    """Eq. 11 at stage 1's sampled positions, normal and anomalous positions weighted alike.

    ``d`` (P, B) is each position's deviation norm from its recollection,
    ||xi - HF(xi)|| (Eq. 8); ``y`` is (P, B), one label per position, or (B,),
    one per image.  Returns mean_{y=1} l(d, 1) + mean_{y=0} l(d, 0), a term 0
    when the batch has no position of its label: the few pasted positions of a
    batch weigh as much as its many normal ones.  The paper's Eq. 11 acts on
    the heads' image distances in stage 2; here the deviation norm the
    heatmap reads (:meth:`anomem.memory.HopfieldMemory.deviation`) is pushed
    below 1/M at normal positions and above M at pasted ones.  The default M =
    sqrt(2) suits unit vectors (``memory.normalize``, whose deviations lie in
    [0, 2]): an anomalous position is pushed until it is orthogonal to its
    recollection, a normal one pulled within cosine 0.75 of it.

    Example:
        >>> d = torch.tensor([[0.5, 1.0], [1.0, 1.0]])
        >>> y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> round(float(position_hinge(d, y)), 4)  # normal (0 + .2929 + .2929) / 3, anomalous .4142
        0.6095
    """
    y = y.to(d.dtype).expand_as(d)
    loss = double_hinge(d, y, margin)
    terms = [loss[mask].mean() for mask in (y == 1, y == 0) if bool(mask.any())]
    return torch.stack(terms).sum() if terms else d.sum() * 0.0
