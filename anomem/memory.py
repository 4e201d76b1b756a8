"""Modern Hopfield memory layer HF (Eq. 1) and its spatial application (Eq. 8).

Retrieval iterates  xi <- X softmax(beta X^T xi)  from xi(0) = query, with the
N_mem stored patterns X learnable.  Choices where the paper is silent:

* **Stopping.** At most ``steps`` updates; a query whose update moved no
  component by more than ``tol`` is frozen (per query, so a score never depends
  on the other images of a batch).  The loop leaves early once every query is
  frozen, which changes nothing but time, so a traced/exported graph (which
  always runs ``steps`` updates) gives the same outputs.
* **Gradient.** Back-propagated through every update taken (unrolled).
* **Normalisation.** ``memory.normalize=True`` (the library default) L2-normalises
  queries and patterns first: cosine attention, outputs inside the unit ball,
  and Eq. 8 compares the normalised query with its recollection.  With
  ``memory.normalize=False`` (the paper read literally) raw features meet raw
  patterns; then ||z|| dominates ||z - HF(z)|| and the one-class score was
  measured to be inverted (see docs/design.md).
* **Initialisation.** Patterns ~ N(0, 1/d), so that beta * x^T z is O(1) on
  BatchNorm-scaled features at the start.
* **Size.** A memory holds its final number of patterns from the start:
  ``growth`` x N_mem (``extensions.consolidate_factor`` when consolidation
  runs).  Stage 1 trains the first N_mem rows only (the ``rows`` argument);
  consolidation fills the others with copies of them before its Lloyd steps
  (:func:`anomem.stages.consolidate.grow_patterns`).

Scoring (Eq. 8) retrieves with Eq. 1 (``scoring="hopfield"``), its limit at
beta -> infinity (``"nearest"``), or the nearest row in L2 when the rows hold
k-means centroids of normal features (``"kmeans"``, Table 4's ablation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class HopfieldMemory(nn.Module):
    """A Hopfield layer of N_mem patterns over d-dimensional vectors (Eq. 1).

    Args:
        dim: dimension d of queries and patterns.
        size: number N_mem of patterns stage 1 trains.
        beta: inverse temperature.
        steps: maximum number of retrieval updates (>= 1).
        tol: a query is converged when an update moves it by less than ``tol``
            (max-norm).
        normalize: L2-normalise queries and patterns before retrieval.
        scoring: the retrieval of Eq. 8 (:meth:`deviation`): ``hopfield``, ``nearest`` or ``kmeans``.
        growth: the memory holds ``growth`` x ``size`` patterns, the rows after the first
            ``size`` copies of them until consolidation fills them.

    Buffers ``wins`` (normal queries each trained pattern answered in the current
    stage-1 epoch) and ``recent`` (the last normal queries) feed dead-pattern
    reseeding (:func:`anomem.stages.stage1.reseed_dead_patterns`); they are not saved.

    Example:
        >>> mem = HopfieldMemory(dim=4, size=8, growth=2)
        >>> mem(torch.randn(5, 4)).shape, mem.patterns.shape, mem(torch.randn(5, 4), rows=8).shape
        (torch.Size([5, 4]), torch.Size([16, 4]), torch.Size([5, 4]))
    """

    def __init__(self, dim: int, size: int, beta: float = 2.0, steps: int = 3, tol: float = 1e-3,
                 normalize: bool = True, scoring: str = "hopfield", growth: int = 1) -> None:
        super().__init__()
        self.patterns = nn.Parameter((torch.randn(size, dim) / math.sqrt(dim)).repeat(growth, 1))
        self.size = size
        self.beta, self.steps, self.tol, self.normalize = float(beta), int(steps), float(tol), normalize
        self.scoring = scoring
        self.register_buffer("wins", torch.zeros(size, dtype=torch.long), persistent=False)
        self.register_buffer("recent", torch.zeros(0, dim), persistent=False)

    def stored(self, rows: int | None = None) -> torch.Tensor:
        """The patterns as used in retrieval, one per row: all, or the first ``rows``."""
        x = self.patterns if rows is None else self.patterns[:rows]
        return F.normalize(x, dim=-1) if self.normalize else x

    def prepare(self, query: torch.Tensor) -> torch.Tensor:
        """The query as the memory sees it (normalised when ``normalize``)."""
        return F.normalize(query, dim=-1) if self.normalize else query

    def winner(self, query: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """Index of the stored pattern (of the first ``rows``) of highest attention x^T xi, (...,).

        The one rule for "which pattern answers a query": nearest-pattern
        retrieval (:meth:`nearest`), the win counts of dead-pattern reseeding
        and the assignment step of consolidation all use it.
        """
        return (self.prepare(query) @ self.stored(rows).t()).argmax(dim=-1)

    @torch.no_grad()
    def reseed(self, dead: torch.Tensor, queries: torch.Tensor, generator: torch.Generator) -> int:
        """Replace the trained patterns flagged in ``dead`` (N_mem,) by queries drawn from ``queries`` (n, d).

        Used by stage 1 for patterns that answered no normal query during an
        epoch (see :func:`anomem.stages.stage1.reseed_dead_patterns`); drawn
        with replacement when there are fewer queries than dead patterns.
        Returns the number of patterns replaced.
        """
        idx = torch.nonzero(dead).squeeze(1)
        if len(idx) == 0 or len(queries) == 0:
            return 0
        pick = torch.randint(len(queries), (len(idx),), generator=generator).to(queries.device)
        self.patterns[idx] = self.prepare(queries[pick]).to(self.patterns.dtype)
        return len(idx)

    def forward(self, query: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """Eq. 1: the memory's recollection of each query (last dim = d), from every pattern or
        from the first ``rows`` (stage 1: the N_mem it trains)."""
        x = self.stored(rows)
        xi = self.prepare(query)
        done = torch.zeros(xi.shape[:-1], dtype=torch.bool, device=xi.device)
        tracing = torch.jit.is_tracing() or torch.jit.is_scripting()
        for _ in range(self.steps):
            new = torch.softmax(self.beta * xi @ x.t(), dim=-1) @ x
            moved = (new - xi).abs().amax(dim=-1)
            xi = torch.where(done.unsqueeze(-1), xi, new)
            done = done | (moved < self.tol)
            if not tracing and bool(done.all()):
                break
        return xi

    def retrieval_margin(self, query: torch.Tensor) -> torch.Tensor:
        """How far each query (...,) is from a tie in :meth:`deviation`'s retrieval.

        With ``scoring="nearest"``, the attention of the best pattern minus the
        second best's among distinct patterns (copies of a pattern retrieve the
        same vector); with ``"kmeans"``, the second-smallest minus the smallest
        distance to the distinct centroids: at 0 two patterns answer equally, and
        any rounding of the query can swap them.  Soft retrieval (Eq. 1) is
        continuous: +inf.
        """
        if self.scoring == "hopfield":
            return torch.full(query.shape[:-1], float("inf"), device=query.device)
        distinct = torch.unique(self.patterns if self.scoring == "kmeans" else self.stored(), dim=0)
        if len(distinct) < 2:
            return torch.full(query.shape[:-1], float("inf"), device=query.device)
        q = self.prepare(query)
        if self.scoring == "kmeans":
            d = torch.cdist(q.reshape(-1, q.shape[-1]), distinct).topk(2, dim=-1, largest=False).values
            return (d[:, 1] - d[:, 0]).reshape(q.shape[:-1])
        top = (q @ distinct.t()).topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]

    def nearest(self, query: torch.Tensor) -> torch.Tensor:
        """The limit beta -> infinity of Eq. 1: the stored pattern of highest attention."""
        return self.stored()[self.winner(query)]

    def centroid(self, query: torch.Tensor) -> torch.Tensor:
        """The row nearest to the (prepared) query in L2, the rows taken as they are: with
        k-means centroids in them, Table 4's nearest prototype."""
        q = self.prepare(query)
        idx = torch.cdist(q.reshape(-1, q.shape[-1]), self.patterns).argmin(dim=-1)
        return self.patterns[idx].reshape(q.shape)

    def deviation(self, fmap: torch.Tensor) -> torch.Tensor:
        """Eq. 8: Delta = z - HF(z) at every spatial position of a (B, C, H, W) map.

        ``scoring="nearest"`` retrieves with :meth:`nearest` (Eq. 1 at beta ->
        infinity), ``"hopfield"`` with Eq. 1 at the layer's beta, ``"kmeans"``
        with :meth:`centroid`.
        """
        z = fmap.permute(0, 2, 3, 1)
        recall = {"nearest": self.nearest, "kmeans": self.centroid}.get(self.scoring, self)
        return (self.prepare(z) - recall(z)).permute(0, 3, 1, 2)
