"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Eq. 5)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], torch.Tensor]


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = 0.1,
            gather: Gather | None = None, offset: int = 0) -> torch.Tensor:
    """Symmetric NT-Xent between paired views, averaged over all 2n anchors (Eq. 4-5).

    For each anchor u in {a_k, b_k}, with v its pair,
    l(u, v) = -log( exp(sim(u, v)/tau) / sum_{p != u} exp(sim(u, p)/tau) ),
    p running over every representation of the two-view batch; sim is the
    cosine similarity.  Leading dimensions of ``a``/``b`` (shape ``(..., n, d)``)
    are independent groups, each its own batch of negatives; the result has
    the leading shape (a scalar for 2-D inputs).

    ``gather`` (distributed training) maps a local ``(..., n, d)`` tensor to the
    global ``(..., N, d)`` one with gradients flowing back to every rank; the
    local anchors sit at rows ``offset .. offset + n`` of the gathered views.

    Example:
        >>> a = torch.eye(3); nt_xent(a, a, tau=1.0).item() > 0
        True
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    ga, gb = (a, b) if gather is None else (gather(a), gather(b))
    n, big_n = a.shape[-2], ga.shape[-2]
    keys = torch.cat([ga, gb], dim=-2)                      # (..., 2N, d)
    anchors = torch.cat([a, b], dim=-2) / tau               # (..., 2n, d)
    logits = anchors @ keys.transpose(-1, -2)               # (..., 2n, 2N)
    # Each anchor's own column (u itself) leaves the denominator: two block diagonals,
    # filled in place (no (2n, 2N) mask); the positive logit sim(a_k, b_k)/tau is
    # the same for both anchors of pair k.
    for rows, col in ((slice(0, n), offset), (slice(n, 2 * n), big_n + offset)):
        logits[..., rows, col:col + n].diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    pos = (a * b).sum(dim=-1) / tau                         # (..., n)
    return torch.logsumexp(logits, dim=-1).mean(dim=-1) - pos.mean(dim=-1)
