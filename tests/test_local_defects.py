"""Local pseudo-anomalies: pasted defects labelled per position in Eq. 3 (``pseudo_anomalies="local"``)."""

from __future__ import annotations

import math

import torch

from anomem.augment import defect_masks, local_pseudo_anomalies
from anomem.config import get_config
from anomem.losses import mem_select, position_hinge, position_labels, variance_loss
from anomem.stages.common import RunOptions
from anomem.stages.stage1 import ContrastedMemoryObjective, train_stage1
from anomem.torch_model import AnoMemModel


def test_position_labels_against_hand_worked_masks():
    # 8 x 8 pixel labels of two images; image 0 has defect pixels at (0, 7) and (5, 2)-(5, 3),
    # image 1 none.  Cells of a 4 x 4 map are 2 x 2 pixels, of a 2 x 2 map 4 x 4 pixels.
    y = torch.ones(2, 8, 8)
    y[0, 0, 7] = 0
    y[0, 5, 2:4] = 0
    every4 = torch.arange(16)
    got = position_labels(y, every4, 4, 4)
    assert got.shape == (16, 2)
    hand = torch.ones(4, 4)
    hand[0, 3] = 0          # pixel (0, 7) lies in cell (0, 3)
    hand[2, 1] = 0          # pixels (5, 2) and (5, 3) lie in cell (2, 1)
    assert torch.equal(got[:, 0], hand.flatten())
    assert torch.equal(got[:, 1], torch.ones(16))
    # a subset of positions, in the order given: cells 3 (top right), 9 and 0
    assert got[[3, 9, 0], 0].tolist() == position_labels(y, torch.tensor([3, 9, 0]), 4, 4)[:, 0].tolist()
    assert position_labels(y, torch.arange(4), 2, 2)[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert position_labels(y, torch.arange(1), 1, 1).tolist() == [[0.0, 1.0]]   # image level
    image_labels = torch.tensor([1.0, 0.0])
    assert position_labels(image_labels, every4, 4, 4) is image_labels        # the paper's y


def test_mem_select_with_position_labels_matches_a_loop():
    torch.manual_seed(0)
    z, recalled = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    y = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = mem_select(z, recalled, y)
    for p in range(3):
        for b in range(4):
            want = recalled[p, b] if y[p, b] == 1 else z[p, b]
            assert torch.equal(got[p, b], want)


def test_variance_loss_with_position_labels_matches_a_loop():
    torch.manual_seed(1)
    mem = torch.randn(3, 6, 4)
    y = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    for over in ("components", "batch"):
        terms = []
        for p in range(3):
            rows = mem[p, y[p] == 1]
            if over == "components":
                terms.append(rows.var(dim=1, unbiased=False).sqrt().mean() if len(rows) else 0.0)
            else:
                terms.append(rows.var(dim=0, unbiased=False).sqrt().mean() if len(rows) >= 2 else 0.0)
        want = -sum(float(t) for t in terms) / 3
        assert abs(variance_loss(mem, y, over).item() - want) < 1e-5
    # one label per image repeated at every position gives the paper's per-image value
    per_image = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    for over in ("components", "batch"):
        a = variance_loss(mem, per_image, over).item()
        b = variance_loss(mem, per_image.expand(3, 6), over).item()
        assert abs(a - b) < 1e-5


def test_defect_masks_are_seeded_capsules_inside_the_image():
    g = torch.Generator().manual_seed(3)
    m = defect_masks(50, 32, g)
    assert m.shape == (50, 32, 32) and m.dtype == torch.bool
    area = m.flatten(1).sum(1)
    assert (area >= 1).all()
    # a capsule of half-length <= 8 and radius <= 4: at most a 16 x 8 rectangle plus a disc
    assert (area <= 16 * 8 + torch.pi * 16 + 32).all()
    assert torch.equal(m, defect_masks(50, 32, torch.Generator().manual_seed(3)))
    assert area.float().std() > 0                 # sizes vary


def test_a_larger_scale_stretches_the_same_draws():
    small = defect_masks(50, 32, torch.Generator().manual_seed(3))
    large = defect_masks(50, 32, torch.Generator().manual_seed(3), scale=2.0)
    area = large.flatten(1).sum(1)
    # half-length <= 16 and radius <= 8: at most a 32 x 16 rectangle plus a disc (+ a rim)
    assert (area <= 32 * 16 + torch.pi * 64 + 64).all()
    # the same centres, directions and uniform draws with both bounds doubled: every small
    # capsule lies inside its large one (a longer segment through the same centre, a wider radius)
    assert not (small & ~large).any()
    assert area.float().mean() > 2 * small.flatten(1).sum(1).float().mean()


def test_local_pseudo_anomalies_paste_inside_the_mask_only_and_label_its_pixels():
    torch.manual_seed(0)
    v1, v2 = torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16)
    y = torch.tensor([1, 1, 0, 1, 1, 1])
    a, b, labels, none = local_pseudo_anomalies(v1, v2, y, 0.5, torch.Generator().manual_seed(2))
    assert none is None
    assert a.shape == b.shape == (9, 3, 16, 16) and labels.shape == (9, 16, 16)
    assert torch.equal(a[:6], v1) and torch.equal(b[:6], v2)
    assert torch.equal(labels[:6], y.float().view(6, 1, 1).expand(6, 16, 16))
    for i in range(3):
        changed1 = (a[6 + i] != v1[i]).any(0)
        changed2 = (b[6 + i] != v2[i]).any(0)
        anomalous = labels[6 + i] == 0
        if y[i] == 1:
            assert anomalous.any()
            # both views are pasted at the same pixels, and nothing outside them changes
            assert not (changed1 & ~anomalous).any() and not (changed2 & ~anomalous).any()
            assert changed1[anomalous].float().mean() > 0.5
        else:                                   # a labelled anomaly stays anomalous everywhere
            assert anomalous.all()
    again = local_pseudo_anomalies(v1, v2, y, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(again[0], a) and torch.equal(again[2], labels)


def test_stage1_with_local_pseudo_anomalies_trains_on_pixel_labels():
    cfg = get_config("digits", {"stage1_epochs": 1, "batch_size": 8, "consolidate": 0,
                                "pseudo_anomalies": "local", "pseudo_fraction": 0.25})
    model = AnoMemModel(cfg)
    seen: list[tuple[tuple[int, ...], int, float]] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ContrastedMemoryObjective(model)

        def forward(self, v1, v2, y, gather=None, offset=0, align=None):  # noqa: ANN001, ANN202
            seen.append((tuple(y.shape), len(v1), float((y[8:] == 0).float().mean())))
            loss, stats = self.inner(v1, v2, y, gather, offset, align=align)
            assert torch.isfinite(loss)
            return loss, stats

    side = cfg.backbone.image_size
    images = torch.randint(0, 256, (16, 3, side, side), dtype=torch.uint8)
    train_stage1(model, images, torch.ones(16, dtype=torch.long), {}, RunOptions(), objective=Spy())
    assert [s[:2] for s in seen] == [((10, side, side), 10)] * 2
    assert all(0 < s[2] < 1 for s in seen)        # the copies are partly anomalous


def _pasted_positions(images: torch.Tensor, scale: float) -> torch.Tensor:
    """The pixels stage 1 labels anomalous in the pasted copies of each step, (steps, k, S, S)."""
    cfg = get_config("digits", {"stage1_epochs": 1, "batch_size": 8, "consolidate": 0,
                                "pseudo_anomalies": "local", "pseudo_fraction": 0.5,
                                "defect_scale": scale})
    model = AnoMemModel(cfg)
    inner, seen = ContrastedMemoryObjective(model), []

    def spy(v1, v2, y, gather=None, offset=0, align=None):  # noqa: ANN001, ANN202
        seen.append(y[8:] == 0)
        return inner(v1, v2, y, gather, offset, align=align)

    train_stage1(model, images, torch.ones(len(images), dtype=torch.long), {}, RunOptions(),
                 objective=spy)
    return torch.stack(seen)


def test_stage1_pastes_defects_of_the_configured_scale():
    """``extensions.defect_scale`` reaches stage 1: the same draws, stretched, so every
    pixel labelled anomalous at scale 1 is anomalous at scale 2, and more besides."""
    side = get_config("digits", {}).backbone.image_size
    images = torch.randint(0, 256, (16, 3, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    small, large = _pasted_positions(images, 1.0), _pasted_positions(images, 2.0)
    assert not (small & ~large).any()
    assert large.sum() > small.sum()


def test_position_hinge_matches_a_loop_over_positions():
    """Eq. 11 per position (M = sqrt 2), normal and anomalous positions averaged apart."""
    torch.manual_seed(0)
    d = torch.rand(5, 4) * 2
    y = (torch.rand(5, 4) > 0.3).float()
    m = math.sqrt(2.0)
    normal = [max(float(d[p, b]) - 1 / m, 0.0) for p in range(5) for b in range(4) if y[p, b] == 1]
    anomalous = [max(m - float(d[p, b]), 0.0) for p in range(5) for b in range(4) if y[p, b] == 0]
    naive = sum(normal) / len(normal) + sum(anomalous) / len(anomalous)
    tol = 2 * 20 * 2 * torch.finfo(torch.float32).eps   # two float32 means of <= 20 terms, each <= 2
    assert abs(float(position_hinge(d, y)) - naive) < tol
    # image labels (B,) hold at every position; all-normal batches have no anomalous term
    image_y = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert torch.allclose(position_hinge(d, image_y), position_hinge(d, image_y.expand(5, 4)))
    ones = torch.ones(5, 4)
    assert abs(float(position_hinge(d, ones)) - float((d - 1 / m).clamp_min(0).mean())) < tol


def test_stage1_adds_the_weighted_position_hinge_to_com_ms():
    """``extensions.position_hinge`` w: the loss is COM-MS plus w times the scales' mean hinge,
    each scale's hinge computed from the deviations of its sampled positions (Eq. 8)."""
    base = {"batch_size": 8, "pseudo_anomalies": "local", "pseudo_fraction": 0.5}
    side = get_config("digits", base).backbone.image_size
    torch.manual_seed(3)
    v = torch.rand(8, 3, side, side)
    v1, v2, y, _ = local_pseudo_anomalies(v, v.flip(-1), torch.ones(8), 0.5, torch.Generator().manual_seed(1))
    losses, hinges = {}, {}
    for w in (0.0, 0.7):
        torch.manual_seed(0)
        model = AnoMemModel(get_config("digits", {**base, "position_hinge": w}))
        torch.manual_seed(5)                          # the same sampled positions in both
        loss, stats = ContrastedMemoryObjective(model)(v1, v2, y)
        losses[w] = float(loss.detach())
        hinges[w] = [v for k, v in stats.items() if k.startswith("hinge")]
    assert not hinges[0.0] and len(hinges[0.7]) == len(model.view_scales(0)) == 4  # maps + image level
    assert all(h > 0 for h in hinges[0.7])
    expected = losses[0.0] + 0.7 * sum(hinges[0.7]) / len(hinges[0.7])
    # both sides are float32 sums over a few hundred sampled vectors: ~1e-5 relative
    assert abs(losses[0.7] - expected) < 1e-5 * max(1.0, abs(expected))
