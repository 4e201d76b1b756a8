"""Contrasted memory losses of stage 1 (Eq. 3, 4, 6, 7).

Labels follow the paper inside this module: ``y = 1`` normal, ``y = 0`` anomaly,
one per image as in the paper (``(B,)``) or one per sampled position (``(P, B)``,
from pixel labels through :func:`position_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from anomem.losses.ntxent import Gather, nt_xent


def mem_select(z: torch.Tensor, recalled: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 3: Mem(z, y) = y * HF(z) + (1 - y) * z, memory on normal samples only.

    ``z`` and ``recalled`` are ``(..., B, d)``; ``y`` is ``(B,)`` with 1 = normal, or
    ``(P, B)`` with one label per position of ``(P, B, d)`` vectors.
    """
    w = y.to(z.dtype).unsqueeze(-1)
    return w * recalled + (1 - w) * z


def contrasted_memory_loss(mem: torch.Tensor, z2: torch.Tensor, tau: float, negatives: str,
                           gather: Gather | None = None, offset: int = 0) -> torch.Tensor:
    """Eq. 4 at one scale, averaged over the sampled positions.

    ``mem`` (first branch after Eq. 3) and ``z2`` (second branch) are ``(P, B, d)``
    for P sampled positions.  ``stage1.negatives="all"`` is the literal reading: one
    two-view batch of all 2*P*B vectors, so each anchor is contrasted with every
    other sampled vector of both views.  ``"same_position"``: P independent
    NT-Xent problems of 2*B vectors, negatives only at the anchor's position.
    Both return the mean over anchors, i.e. (1/P) sum_(i,j) COM(z_ij, z'_ij, y).
    """
    if negatives == "all":
        p, b, d = mem.shape
        return nt_xent(mem.reshape(p * b, d), z2.reshape(p * b, d), tau,
                       gather=gather, offset=offset * p)
    return nt_xent(mem, z2, tau, gather=gather, offset=offset).mean()


def position_labels(y: torch.Tensor, pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Eq. 3's y at the positions ``pos`` (P,) of a ``height`` x ``width`` map.

    Image labels ``(B,)`` pass through (the paper).  Pixel labels ``(B, S, S)``
    (1 = normal pixel; stage 1's local pseudo-anomalies) give ``(P, B)``: a
    position is normal only when every input pixel of its cell is, the cells
    tiling the input as adaptive max-pooling does (exact cells when ``S`` is a
    multiple of the map side); a 1 x 1 map (an image-level scale) is anomalous
    when any pixel is.  So no position labelled normal contains a pasted pixel.

    Example:
        >>> y = torch.ones(1, 4, 4); y[0, 0, 3] = 0
        >>> position_labels(y, torch.arange(4), 2, 2)[:, 0].tolist()
        [1.0, 0.0, 1.0, 1.0]
    """
    if y.ndim == 1:
        return y
    anomalous = F.adaptive_max_pool2d((1 - y).unsqueeze(1), (height, width)).flatten(1)   # (B, H*W)
    return (1 - anomalous[:, pos.to(y.device)]).T


def variance_loss(mem: torch.Tensor, y: torch.Tensor, over: str = "components") -> torch.Tensor:
    """Eq. 6: V = -(1 / sum_k y_k) sum_k y_k sqrt(Var[Mem(z_k, y_k)]).

    ``over="components"`` (the literal reading): Var is the population variance
    over the d components of each retrieved vector, as Eq. 6 writes it per
    sample; averaged over the P positions of ``mem`` ``(P, B, d)``.  All
    patterns collapsed onto one vector with spread-out components maximise it,
    so it does not guard against the collapse it exists for.
    ``over="batch"``: the population variance of each component across the
    batch's normal samples, its square root averaged over components (and
    positions): it is largest when normal samples retrieve different
    prototypes, and zero for a collapsed memory.  A batch without normal
    samples contributes 0 (and one with a single normal sample, with ``batch``).
    With position labels ``y`` (P, B) each position averages over its own normal
    samples, and a position with too few of them contributes 0.
    """
    if y.ndim == 2:
        return _positional_variance(mem, y.to(mem.dtype), over)
    w = y.to(mem.dtype)
    if float(w.sum()) == 0.0:
        return mem.sum() * 0.0
    if over == "batch":
        normal = mem[:, y.bool()]                                       # (P, n, d)
        if normal.shape[1] < 2:
            return mem.sum() * 0.0
        return -normal.var(dim=1, unbiased=False).clamp_min(1e-12).sqrt().mean()
    std = mem.var(dim=-1, unbiased=False).clamp_min(1e-12).sqrt()   # (P, B)
    return -((std * w).sum(dim=-1) / w.sum()).mean()


def _positional_variance(mem: torch.Tensor, w: torch.Tensor, over: str) -> torch.Tensor:
    """:func:`variance_loss` with one label per position, ``w`` (P, B); the mean over positions."""
    n = w.sum(dim=1)                                                    # (P,)
    if over == "batch":
        mean = (w.unsqueeze(-1) * mem).sum(1) / n.clamp_min(1).unsqueeze(-1)
        var = (w.unsqueeze(-1) * (mem - mean.unsqueeze(1)) ** 2).sum(1) / n.clamp_min(1).unsqueeze(-1)
        per_position = var.clamp_min(1e-12).sqrt().mean(-1) * (n >= 2)
    else:
        std = mem.var(dim=-1, unbiased=False).clamp_min(1e-12).sqrt()  # (P, B)
        per_position = (std * w).sum(dim=1) / n.clamp_min(1)
    return -per_position.mean()


def multiscale_loss(com: Sequence[torch.Tensor], var: Sequence[torch.Tensor],
                    counts: Sequence[int], alphas: Sequence[float], lambda_v: float
                    ) -> torch.Tensor:
    """Eq. 7: COM-MS = (1 / sum_s |Omega_s|) sum_s sum_(i,j in Omega_s) alpha_s [COM + lambda_V V].

    ``com[s]`` and ``var[s]`` are the per-position means at scale s (as returned by
    :func:`contrasted_memory_loss` and :func:`variance_loss`); ``counts[s]`` = |Omega_s|.
    """
    total = sum(a * n * (c + lambda_v * v) for c, v, n, a in zip(com, var, counts, alphas))
    return total / float(sum(counts))


def sample_count(height: int, width: int, ratio: float) -> int:
    """|Omega_s| = floor(H * W * r), at least 1."""
    return max(1, int(height * width * ratio))


def sample_positions(height: int, width: int, ratio: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Omega_s: floor(H*W*r) flat positions drawn without replacement (Eq. 7)."""
    return torch.randperm(height * width, generator=generator)[:sample_count(height, width, ratio)]
