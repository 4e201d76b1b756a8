"""Every equation of the method (paper Eqs. 1-13) against an independent naive computation or a
hand-worked value.

Tolerances: the library computes in float32 (relative rounding 6e-8 per operation), the naive
references in float64 or by hand; each tolerance below says which float32 error it absorbs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomem.backbone import ResNet
from anomem.config import get_config
from anomem.losses import (
    contrasted_memory_loss,
    double_hinge,
    mem_select,
    multiscale_loss,
    nt_xent,
    sample_count,
    sample_positions,
    sup_loss,
    variance_loss,
)
from anomem.memory import HopfieldMemory
from anomem.scales import alphas
from anomem.torch_model import AnoMemModel


def naive_nt_xent(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """Eq. 4-5 with explicit loops over anchors and candidates."""
    reps = list(a) + list(b)
    n = len(a)
    total = 0.0
    for i, u in enumerate(reps):
        j = i + n if i < n else i - n
        def sim(p, q):
            return float(np.dot(p, q) / (np.linalg.norm(p) * np.linalg.norm(q)))
        den = sum(math.exp(sim(u, p) / tau) for k, p in enumerate(reps) if k != i)
        total += -math.log(math.exp(sim(u, reps[j]) / tau) / den)
    return total / (2 * n)


# NT-Xent in float32: cosines rounded to ~1e-7, divided by tau >= 0.1, through a log-sum-exp of
# O(1) losses: ~1e-6 relative at most (measured 1e-7); hence rel=1e-5.
def test_nt_xent_matches_double_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert nt_xent(a, b, 0.1).item() == pytest.approx(naive_nt_xent(a.numpy(), b.numpy(), 0.1), rel=1e-5)
    assert nt_xent(a, b, 0.5).item() == pytest.approx(naive_nt_xent(a.numpy(), b.numpy(), 0.5), rel=1e-5)


def test_nt_xent_groups_are_independent_batches():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    got = nt_xent(a, b, 0.2)
    want = [naive_nt_xent(a[i].numpy(), b[i].numpy(), 0.2) for i in range(3)]
    assert got.numpy() == pytest.approx(want, rel=1e-5)


def test_nt_xent_gather_with_offset_equals_local_rows_of_global_loss():
    """Two 'ranks' of 3 rows each, seeing the global batch through ``gather``, average to the global loss."""
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    whole = naive_nt_xent(a.numpy(), b.numpy(), 0.1)
    norm = torch.nn.functional.normalize
    parts = []
    for rank in range(2):
        views = iter([norm(a, dim=-1), norm(b, dim=-1)])  # nt_xent gathers a first, then b
        rows = slice(3 * rank, 3 * rank + 3)
        parts.append(nt_xent(a[rows], b[rows], 0.1, gather=lambda t, v=views: next(v), offset=3 * rank))
    assert ((parts[0] + parts[1]) / 2).item() == pytest.approx(whole, rel=1e-5)


def naive_hopfield(x: np.ndarray, q: np.ndarray, beta: float, steps: int, tol: float) -> np.ndarray:
    xi = q.copy()
    for _ in range(steps):
        logits = beta * x @ xi
        p = np.exp(logits - logits.max())
        p /= p.sum()
        new = x.T @ p
        moved = np.abs(new - xi).max()
        xi = new
        if moved < tol:
            break
    return xi


@pytest.mark.parametrize("normalize", [False, True])
def test_hopfield_matches_naive_iteration(normalize):
    torch.manual_seed(0)
    mem = HopfieldMemory(dim=6, size=10, beta=3.0, steps=5, tol=1e-4, normalize=normalize)
    with torch.no_grad():
        mem.patterns.mul_(3)
    q = torch.randn(4, 6)
    got = mem(q).detach().numpy()
    x = mem.stored().detach().double().numpy()
    qs = mem.prepare(q).double().numpy()
    for i in range(4):
        # float32 updates of outputs up to ~3 (patterns scaled by 3): ~1e-6 after 5 steps (measured
        # 2e-7); every 'moved' is at least 4x away from tol, so both stop at the same step
        np.testing.assert_allclose(got[i], naive_hopfield(x, qs[i], 3.0, 5, 1e-4), rtol=0, atol=1e-5)


def test_hopfield_output_is_fixed_point_at_convergence():
    torch.manual_seed(1)
    mem = HopfieldMemory(dim=8, size=16, beta=2.0, steps=500, tol=1e-7)
    xi = mem(torch.randn(3, 8)).detach()
    x = mem.stored().detach()
    again = torch.softmax(2.0 * xi @ x.t(), dim=-1) @ x
    # outputs in the unit ball: one more float32 update moves a fixed point by a few ulps (<= 1e-7)
    torch.testing.assert_close(again, xi, atol=1e-6, rtol=0)


def test_hopfield_query_result_does_not_depend_on_the_batch():
    torch.manual_seed(2)
    mem = HopfieldMemory(dim=5, size=7, beta=4.0, steps=6, tol=1e-3)
    q = torch.randn(6, 5) * 3
    alone = torch.stack([mem(q[i:i + 1])[0] for i in range(6)])
    # 1 vs 6 rows may take different matmul kernels: float32 rounding of unit-ball outputs only
    # (measured 1.5e-7), within assert_close's float32 defaults (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(mem(q), alone)


def test_hopfield_is_differentiable_in_query_and_patterns():
    mem = HopfieldMemory(dim=4, size=5)
    q = torch.randn(3, 4, requires_grad=True)
    mem(q).sum().backward()
    assert q.grad is not None and mem.patterns.grad is not None
    assert mem.patterns.grad.abs().sum() > 0


def test_kmeans_memory_returns_nearest_centroid():
    c = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    km = HopfieldMemory(dim=2, size=3, normalize=False, scoring="kmeans")
    with torch.no_grad():
        km.patterns.copy_(c)
    q = torch.tensor([[9.0, 1.0], [1.0, 1.0], [2.0, 7.0]])
    assert torch.equal(km.centroid(q), c[[1, 0, 2]])         # rows copied from the centroids
    fmap = q.T.reshape(1, 2, 1, 3)
    assert torch.equal(km.deviation(fmap), (q - c[[1, 0, 2]]).T.reshape(1, 2, 1, 3))   # Eq. 8


def test_mem_select_eq3():
    z = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    hz = torch.tensor([[[9.0, 9.0], [8.0, 8.0]]])
    y = torch.tensor([1.0, 0.0])  # first normal, second anomaly
    assert torch.equal(mem_select(z, hz, y), torch.tensor([[[9.0, 9.0], [3.0, 4.0]]]))   # a selection


def test_variance_loss_eq6_by_hand():
    mem = torch.tensor([[[1.0, 3.0], [0.0, 10.0], [2.0, 2.0]]])  # P=1, B=3, d=2
    y = torch.tensor([1.0, 0.0, 1.0])
    # population std of [1,3] = 1, of [2,2] = 0 (the anomaly is skipped): -(1 + 0)/2
    # the zero std is clamped to sqrt(1e-12) = 1e-6, so the loss is -0.5000005
    assert variance_loss(mem, y).item() == pytest.approx(-0.5, abs=1e-5)
    assert variance_loss(mem, torch.zeros(3)).item() == 0.0


def test_multiscale_loss_eq7_by_hand():
    got = multiscale_loss([torch.tensor(1.0), torch.tensor(2.0)], [torch.tensor(-0.5), torch.tensor(-0.1)],
                          [3, 1], [1.0, 2.0], 0.05)
    # a few float32 operations on O(1) values: a few ulps (6e-8 relative each), inside rel=1e-6
    assert got.item() == pytest.approx((1 * 3 * (1 - 0.025) + 2 * 1 * (2 - 0.005)) / 4, rel=1e-6)


def test_contrasted_memory_forms():
    g = torch.Generator().manual_seed(3)
    mem, z2 = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    lit = contrasted_memory_loss(mem, z2, 0.1, "all")
    want = naive_nt_xent(mem.reshape(6, 4).numpy(), z2.reshape(6, 4).numpy(), 0.1)
    assert lit.item() == pytest.approx(want, rel=1e-5)
    same = contrasted_memory_loss(mem, z2, 0.1, "same_position")
    want = np.mean([naive_nt_xent(mem[p].numpy(), z2[p].numpy(), 0.1) for p in range(2)])
    assert same.item() == pytest.approx(want, rel=1e-5)


def test_sampled_positions_count_and_uniqueness():
    assert sample_count(8, 8, 0.3) == 19 and sample_count(4, 4, 1.0) == 16 and sample_count(2, 2, 0.1) == 1
    pos = sample_positions(8, 8, 0.3, torch.Generator().manual_seed(0))
    assert len(pos) == 19 and len(set(pos.tolist())) == 19 and pos.max() < 64


def test_double_hinge_eq11_by_hand():
    d = torch.tensor([0.2, 1.0, 1.0, 3.0, 1.5])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(double_hinge(d, y, 2.0), torch.tensor([0.0, 0.5, 1.0, 0.0, 0.5]))


def test_sup_loss_eq12_mean_over_scales_and_batch():
    d = torch.tensor([[0.2, 1.0], [1.0, 3.0]])  # S=2, B=2
    y = torch.tensor([1.0, 0.0])
    # l: s1 -> [0, 1], s2 -> [0.5, 0]
    assert sup_loss(d, y, 2.0).item() == pytest.approx(1.5 / 4)


def test_alphas_and_fusion_eq13():
    cfg = get_config("digits", {"memory_stages": [2, 3, 4], "mem_sizes": [4, 4, 4],
                                "ratios": [1.0, 1.0, 1.0], "score_views": "single"})
    last = cfg.replace(image_alpha="last")
    assert alphas(last) == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)     # three maps + their pooled images
    assert alphas(last.replace(global_memory="own")) == (1.0, 2.0, 4.0, 8.0)   # + the last one
    stage = cfg.replace(image_alpha="stage")          # a pooled image weighs as its stage's map
    assert alphas(stage) == (1.0, 2.0, 4.0, 1.0, 2.0, 4.0)
    assert alphas(stage.replace(global_memory="shared")) == (1.0, 2.0, 4.0, 4.0)
    cfg = cfg.replace(global_memory="none")
    assert alphas(cfg) == (1.0, 2.0, 4.0)
    m = AnoMemModel(cfg).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        s = m.scale_scores(x).double()
        got = m(x).double()
    want = (1 * s[:, 0] + 2 * s[:, 1] + 4 * s[:, 2]) / 7
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)   # float32 sums of 3 terms


def _naive_recollection(mem, v: torch.Tensor, retrieval: str) -> torch.Tensor:
    """Eq. 1 on one vector: the layer's own update for ``hopfield``; for ``nearest`` (beta ->
    infinity) a loop over the stored patterns keeping the one of highest cosine."""
    if retrieval == "hopfield":
        return mem(v.unsqueeze(0))[0]
    q = v / v.norm()
    best, best_sim = None, -2.0
    for p in mem.patterns:
        sim = float(q @ (p / p.norm()))
        if sim > best_sim:
            best, best_sim = p / p.norm(), sim
    return best


@pytest.mark.parametrize("retrieval,norm", [("hopfield", "frobenius"), ("nearest", "rms")])
def test_one_class_score_eq8_eq9_naive(retrieval, norm):
    torch.manual_seed(0)
    m = AnoMemModel(get_config("digits", {"score_retrieval": retrieval, "scale_norm": norm,
                                          "global_memory": "every"})).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        got = m.scale_scores(x)
        maps = m.features(x)
        assert len(maps) == 4 and maps[2].shape[2:] == maps[3].shape[2:] == (1, 1)   # + pooled
        torch.testing.assert_close(maps[2][:, :, 0, 0], maps[0].mean(dim=(2, 3)))
        torch.testing.assert_close(maps[3][:, :, 0, 0], maps[1].mean(dim=(2, 3)))
        for s, z in enumerate(maps):
            mem = m.memory(s)
            for k in range(2):
                sq = 0.0
                for i in range(z.shape[2]):
                    for j in range(z.shape[3]):
                        v = z[k, :, i, j]
                        sq += float(((mem.prepare(v) - _naive_recollection(mem, v, retrieval)) ** 2).sum())
                # float32 norm of the whole map vs a float64 sum of float32 per-position terms, and
                # the memory on 1 vs all rows: ~1e-6 relative (measured 1e-7)
                if norm == "rms":          # Eq. 9 per position: divided by sqrt(H W)
                    sq /= z.shape[2] * z.shape[3]
                assert got[k, s].item() == pytest.approx(math.sqrt(sq), rel=1e-4)


@pytest.mark.parametrize("arch,expansion", [("resnet18", 1), ("resnet34", 1), ("resnet50", 4)])
def test_backbone_stage_shapes(arch, expansion):
    net = ResNet(arch, width=4, stem="cifar")
    shapes = [tuple(z.shape) for z in net(torch.zeros(1, 3, 32, 32))]
    assert shapes == [(1, 4 * expansion * 2 ** i, 32 // 2 ** i, 32 // 2 ** i) for i in range(4)]
    img = ResNet(arch, width=4, stem="imagenet")
    assert tuple(img(torch.zeros(1, 3, 64, 64))[0].shape) == (1, 4 * expansion, 16, 16)


def test_folding_the_standardisation_keeps_the_head_function():
    from anomem.stages.stage2 import fold_standardisation
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5) * 4 + 2
    mean, std = x.mean(0), x.std(0)
    want = layer((x - mean) / std)
    fold_standardisation(layer, mean, std)
    # W (x - m) / s + b regrouped as (W / s) x + (b - W m / s): float32 rounding of terms of O(1)
    # (measured 1.2e-7), within assert_close's float32 defaults (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(layer(x), want)
