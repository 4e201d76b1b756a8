"""The strip-wise NT-Xent (``MaskedLogSumExp``) against the plain one-matrix computation.

In float64, value and gradients against the plain implementation: each number
is the same full sum of the same products, but a BLAS may block a sum
differently for a strip of rows or columns than for the whole matrix.  The
sums here have at most 2N = 24 terms, each below 50 in magnitude (logits up to
|a| |k| / tau with unnormalised keys), so a reordering moves a result by at
most about 24 * 50 * 2.2e-16 = 3e-13 absolute; hence rtol = atol = 1e-12.
Where torch uses MKL (x86), float32 results at the ``cpu`` preset's sizes are
checked bit for bit, which is what keeps training numbers unchanged.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomem.losses import nt_xent
from anomem.losses.ntxent import MaskedLogSumExp, _logsumexp_

TOL = {"rtol": 1e-12, "atol": 1e-12}


def plain_nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float, gather=None,
                  offset: int = 0) -> torch.Tensor:
    """The implementation before chunking: the (2n x 2N) logits at once, autograd throughout."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    ga, gb = (a, b) if gather is None else (gather(a), gather(b))
    n, big_n = a.shape[-2], ga.shape[-2]
    keys = torch.cat([ga, gb], dim=-2)
    logits = torch.cat([a, b], dim=-2) / tau @ keys.transpose(-1, -2)
    for rows, col in ((slice(0, n), offset), (slice(n, 2 * n), big_n + offset)):
        logits[..., rows, col:col + n].diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    pos = (a * b).sum(dim=-1) / tau
    return torch.logsumexp(logits, dim=-1).mean(dim=-1) - pos.mean(dim=-1)


def _leaves(*shape: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2)]


def _value_and_grads(fn, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    value = fn()
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(value.shape)
    return value.detach(), torch.autograd.grad((value * weights).sum(), inputs)


# chunk_elements: one row per chunk, uneven chunks (5 rows of 12 columns), one chunk.
@pytest.mark.parametrize("chunk_elements", [1, 60, 1 << 20])
@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
def test_chunked_matches_plain_value_and_gradients(chunk_elements: int, lead: tuple[int, ...]):
    a, b = _leaves(*lead, 6, 5, seed=len(lead))
    per_group = int(torch.tensor(lead).prod()) if lead else 1
    want, want_grads = _value_and_grads(lambda: plain_nt_xent(a, b, 0.1), [a, b])
    got, got_grads = _value_and_grads(
        lambda: nt_xent(a, b, 0.1, chunk_elements=chunk_elements * per_group), [a, b])
    assert got.shape == want.shape == lead
    torch.testing.assert_close(got, want, **TOL)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **TOL)


# chunk_elements: one row per chunk, 3 rows (chunks across the a/b boundary), one chunk.
@pytest.mark.parametrize("chunk_elements", [1, 72, 1 << 20])
@pytest.mark.parametrize("rank", [0, 1, 2])
def test_chunked_matches_plain_with_gather_and_offset(chunk_elements: int, rank: int):
    """Three 'ranks' of 4 rows; the other ranks' rows are leaves too, so their gradients are checked."""
    a, b = _leaves(2, 4, 5, seed=10 + rank)
    others = [*_leaves(2, 4, 5, seed=20 + rank), *_leaves(2, 4, 5, seed=30 + rank)]  # a's, b's

    def make_gather():
        calls = iter(range(2))

        def gather(t: torch.Tensor) -> torch.Tensor:
            view = next(calls)
            before, after = others[2 * view], others[2 * view + 1]
            parts = [before, t, after] if rank == 1 else ([t, before, after] if rank == 0
                                                          else [before, after, t])
            return torch.cat(parts, dim=-2)
        return gather

    inputs = [a, b, *others]
    want, want_grads = _value_and_grads(
        lambda: plain_nt_xent(a, b, 0.2, gather=make_gather(), offset=4 * rank), inputs)
    got, got_grads = _value_and_grads(
        lambda: nt_xent(a, b, 0.2, gather=make_gather(), offset=4 * rank,
                        chunk_elements=chunk_elements * 2), inputs)
    torch.testing.assert_close(got, want, **TOL)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="bit identity checked with MKL")
@pytest.mark.parametrize("shape", [(2432, 64), (2048, 128), (19, 128, 64)])
def test_float32_value_and_gradients_are_the_plain_ones_bit_for_bit(shape: tuple[int, ...]):
    """At the ``cpu`` preset's sizes (``all`` negatives at stages 3 and 4; ``same_position``)."""
    g = torch.Generator().manual_seed(5)
    a, b = (torch.randn(*shape, generator=g).requires_grad_() for _ in range(2))
    want, want_grads = _value_and_grads(lambda: plain_nt_xent(a, b, 0.1), [a, b])
    got, got_grads = _value_and_grads(lambda: nt_xent(a, b, 0.1), [a, b])
    assert torch.equal(got, want)
    assert all(torch.equal(x, y) for x, y in zip(got_grads, want_grads))


def test_single_chunk_float32_forward_is_the_plain_computation_bit_for_bit():
    """One chunk does exactly the plain operations: the float32 loss is identical."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    assert torch.equal(nt_xent(a, b, 0.1), plain_nt_xent(a, b, 0.1))


def test_in_place_logsumexp_is_torch_logsumexp_bit_for_bit():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 70, generator=g) * 10
    x[..., 5] = float("-inf")
    assert torch.equal(_logsumexp_(x.clone()), torch.logsumexp(x, dim=-1))


def test_backward_keeps_only_inputs_and_result():
    """What autograd keeps for the chunked log-sum-exp: anchors, keys and the (2n,) result, no logits."""
    saved: list[torch.Size] = []
    anchors = torch.randn(40, 8, requires_grad=True)
    keys = torch.randn(40, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        MaskedLogSumExp.apply(anchors, keys, 20, 20, 0, 1 << 20)
    assert sorted(saved) == sorted([torch.Size([40, 8]), torch.Size([40, 8]), torch.Size([40])])
