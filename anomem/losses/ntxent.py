"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Eq. 5).

The denominator of Eq. 5 is a log-sum-exp over a (2n x 2N) matrix of logits,
which ``stage1.negatives="all"`` makes large (4,864 x 4,864 on the ``cpu`` preset).
:class:`MaskedLogSumExp` never holds it whole: the forward pass takes it in
strips of rows, the backward pass recomputes it in strips of rows (for the
anchors' gradient) and of columns (for the keys'), at most ``CHUNK_ELEMENTS``
logits at a time.  Each gradient element is still one matrix product's full
sum, as autograd computes it on the whole matrix, so the numbers are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Gather = Callable[[torch.Tensor], torch.Tensor]

#: Logits (over all leading dimensions) per strip: 1 Mi float32 = 4 MiB.
CHUNK_ELEMENTS = 1 << 20


def _block_logits(anchors: torch.Tensor, keys: torch.Tensor, rows: range, cols: range, n: int,
                  big_n: int, offset: int, buffer: torch.Tensor) -> torch.Tensor:
    """Logits of anchors ``rows`` against keys ``cols``, each anchor's own column -inf.

    Written into the front of the flat ``buffer`` (one allocation for all the
    strips of a pass).  Anchor row r < n is local view-a row r, i.e. key column
    ``offset + r``; row r >= n is view-b row r - n, key column
    ``big_n + offset + r - n``.
    """
    shape = (*anchors.shape[:-2], len(rows), len(cols))
    logits = buffer[:len(rows) * len(cols) * anchors[..., 0, 0].numel()].view(shape)
    torch.matmul(anchors[..., rows.start:rows.stop, :],
                 keys[..., cols.start:cols.stop, :].transpose(-1, -2), out=logits)
    for lo, hi, shift in ((0, n, offset), (n, 2 * n, big_n + offset - n)):
        a = max(rows.start, lo, cols.start - shift)
        b = min(rows.stop, hi, cols.stop - shift)
        if a < b:   # the self columns of rows a..b lie on one diagonal of this block
            block = logits[..., a - rows.start:b - rows.start,
                           a + shift - cols.start:b + shift - cols.start]
            block.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    return logits


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(logits, -1)`` by the same operations, overwriting ``logits`` (no temporary).

    As torch does: the row maximum (0 where it is infinite) is subtracted,
    the exponentials summed, and the log of the sum added to the maximum.
    """
    top = logits.amax(dim=-1, keepdim=True)
    top.masked_fill_(top.abs() == float("inf"), 0.0)
    return logits.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))


def _strips(total: int, other: int, groups: int, chunk_elements: int) -> list[range]:
    """``range(total)`` in strips of at most ``chunk_elements`` logits (at least one line each)."""
    step = max(1, chunk_elements // max(1, other * groups))
    return [range(i, min(i + step, total)) for i in range(0, total, step)]


def _largest(strips: list[range], other: int, groups: int) -> int:
    """Logits in the largest of ``strips`` (each ``len(strip) x other`` per group)."""
    return max(len(s) for s in strips) * other * groups


class MaskedLogSumExp(torch.autograd.Function):
    """logsumexp over keys of anchors @ keys^T, without each anchor's own column, in strips.

    ``anchors`` (..., 2n, d) and ``keys`` (..., 2N, d); returns (..., 2n).  Only
    the inputs and the result are kept for backward, which recomputes the
    logits: d lse_r / d logit_rc = exp(logit_rc - lse_r) (0 in the masked
    column), so with W_rc = grad_r * exp(logit_rc - lse_r), grad anchors =
    W @ keys (strips of rows) and grad keys = (anchors^T @ W)^T (strips of
    columns), the products autograd takes for the whole matrix.
    """

    @staticmethod
    def forward(ctx: Any, anchors: torch.Tensor, keys: torch.Tensor, n: int, big_n: int,
                offset: int, chunk_elements: int) -> torch.Tensor:
        groups = anchors[..., 0, 0].numel()
        every_key = range(2 * big_n)
        lse = anchors.new_empty(anchors.shape[:-1])
        strips = _strips(2 * n, 2 * big_n, groups, chunk_elements)
        buffer = anchors.new_empty(_largest(strips, 2 * big_n, groups))
        for rows in strips:
            lse[..., rows.start:rows.stop] = _logsumexp_(
                _block_logits(anchors, keys, rows, every_key, n, big_n, offset, buffer))
        ctx.save_for_backward(anchors, keys, lse)
        ctx.sizes = (n, big_n, offset, chunk_elements)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        anchors, keys, lse = ctx.saved_tensors
        n, big_n, offset, chunk_elements = ctx.sizes
        groups = anchors[..., 0, 0].numel()

        row_strips = _strips(2 * n, 2 * big_n, groups, chunk_elements)
        col_strips = _strips(2 * big_n, 2 * n, groups, chunk_elements)
        buffer = anchors.new_empty(max(_largest(row_strips, 2 * big_n, groups),
                                       _largest(col_strips, 2 * n, groups)))

        def weights(rows: range, cols: range) -> torch.Tensor:
            w = _block_logits(anchors, keys, rows, cols, n, big_n, offset, buffer)
            sl = slice(rows.start, rows.stop)
            return w.sub_(lse[..., sl, None]).exp_().mul_(grad[..., sl, None])

        grad_anchors = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_anchors = torch.empty_like(anchors)
            for rows in row_strips:
                grad_anchors[..., rows.start:rows.stop, :] = weights(rows, range(2 * big_n)) @ keys
        if ctx.needs_input_grad[1]:
            grad_keys = torch.empty_like(keys)
            for cols in col_strips:
                part = anchors.transpose(-1, -2) @ weights(range(2 * n), cols)   # (..., d, c)
                grad_keys[..., cols.start:cols.stop, :] = part.transpose(-1, -2)
        return grad_anchors, grad_keys, None, None, None, None


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float = 0.1,
            gather: Gather | None = None, offset: int = 0,
            chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
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
    ``chunk_elements`` bounds the logits held at once (see :class:`MaskedLogSumExp`).

    Example:
        >>> a = torch.eye(3); nt_xent(a, a, tau=1.0).item() > 0
        True
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    ga, gb = (a, b) if gather is None else (gather(a), gather(b))
    n, big_n = a.shape[-2], ga.shape[-2]
    keys = torch.cat([ga, gb], dim=-2)                      # (..., 2N, d)
    anchors = torch.cat([a, b], dim=-2) / tau               # (..., 2n, d)
    # The positive logit sim(a_k, b_k)/tau is the same for both anchors of pair k.
    pos = (a * b).sum(dim=-1) / tau                         # (..., n)
    lse = MaskedLogSumExp.apply(anchors, keys, n, big_n, offset, chunk_elements)
    return lse.mean(dim=-1) - pos.mean(dim=-1)
