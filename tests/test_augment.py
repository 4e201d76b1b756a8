"""Two-view augmentation: independent vs shared geometry (``view_geometry``)."""

from __future__ import annotations

import pytest
import torch

from anomem.augment import (
    TwoViewAugment,
    corresponding_grid,
    rot90_transform,
    rotated_pseudo_anomalies,
    sample_at,
)
from anomem.config import ConfigError, get_config
from anomem.stages.common import RunOptions
from anomem.stages.stage1 import ContrastedMemoryObjective, train_stage1
from anomem.torch_model import AnoMemModel


def _geometry_only(shared: bool) -> TwoViewAugment:
    """Photometric transforms reduced to the identity: only crop and flip act."""
    return TwoViewAugment(16, crop_scale=(0.2, 0.5), jitter=0.0, blur_sigma=(1e-3, 1e-3),
                          noise_std=0.0, shared_geometry=shared)


def _ramp(n: int = 8) -> torch.Tensor:
    """Images whose pixels encode their position, so any crop or flip changes them."""
    i = torch.arange(16.0)
    img = (i.view(16, 1) * 16 + i.view(1, 16)) / 255
    return img.expand(n, 3, 16, 16).clone()


def test_shared_geometry_gives_the_same_patch_at_each_position_of_both_views():
    torch.manual_seed(0)
    x = _ramp()
    v1, v2 = _geometry_only(True)(x)
    # each view may pass through the blur, whose kernel at sigma 1e-3 is exactly [0, 1, 0]:
    # at most a few float32 ulps of pixels in [0, 1] (6e-8 each) from the convolution
    assert torch.allclose(v1, v2, rtol=0, atol=1e-6)
    assert not torch.allclose(v1, x, atol=1e-3)          # a crop did happen (the ramp's step is 1/255)


def test_independent_geometry_crops_each_view_separately():
    torch.manual_seed(0)
    v1, v2 = _geometry_only(False)(_ramp())
    differs = (v1 - v2).flatten(1).abs().amax(1) > 1e-3   # a quarter of the ramp's step of 1/255
    assert bool(differs.all())


def test_shared_geometry_keeps_independent_photometric_transforms():
    torch.manual_seed(0)
    aug = TwoViewAugment(16, jitter=0.4, noise_std=0.05, shared_geometry=True)
    v1, v2 = aug(torch.rand(8, 3, 16, 16))
    assert not torch.allclose(v1, v2)


def test_view_geometry_is_validated():
    assert get_config("digits", {"view_geometry": "shared"}).stage1.view_geometry == "shared"
    with pytest.raises(ConfigError, match="view_geometry"):
        get_config("digits", {"view_geometry": "diagonal"})


def test_rotated_pseudo_anomalies_rotate_both_views_of_a_copy_by_one_quarter_turn_multiple():
    torch.manual_seed(0)
    v1, v2 = torch.rand(10, 3, 6, 6), torch.rand(10, 3, 6, 6)
    y = torch.ones(10, dtype=torch.long)
    a, b, yy, none = rotated_pseudo_anomalies(v1, v2, y, 0.3, torch.Generator().manual_seed(1))
    assert none is None
    assert a.shape == b.shape == (13, 3, 6, 6)
    assert torch.equal(a[:10], v1) and torch.equal(b[:10], v2)
    assert yy.tolist() == [1] * 10 + [0] * 3 and yy.dtype == y.dtype
    for i in range(3):      # copy i is image i turned by q in {1, 2, 3}, the same q in both views
        q1 = [q for q in range(4) if torch.equal(a[10 + i], torch.rot90(v1[i], q, dims=(1, 2)))]
        q2 = [q for q in range(4) if torch.equal(b[10 + i], torch.rot90(v2[i], q, dims=(1, 2)))]
        assert q1 == q2 and len(q1) == 1 and q1[0] != 0
    again = rotated_pseudo_anomalies(v1, v2, y, 0.3, torch.Generator().manual_seed(1))[0]
    assert torch.equal(again, a)            # the generator alone draws the turns


def test_stage1_with_rotation_pseudo_anomalies_adds_anomalous_copies_to_every_batch():
    cfg = get_config("digits", {"stage1_epochs": 1, "batch_size": 8, "consolidate": 0,
                                "pseudo_anomalies": "rotation", "pseudo_fraction": 0.25})
    model = AnoMemModel(cfg)
    seen: list[tuple[list[int], int]] = []

    class Spy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ContrastedMemoryObjective(model)

        def forward(self, v1, v2, y, gather=None, offset=0, align=None):  # noqa: ANN001, ANN202
            seen.append((y.tolist(), len(v1)))
            return self.inner(v1, v2, y, gather, offset, align=align)

    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    train_stage1(model, images, torch.ones(16, dtype=torch.long), {}, RunOptions(), objective=Spy())
    assert seen == [([1] * 8 + [0] * 2, 10)] * 2


@pytest.mark.parametrize("key,value", [("pseudo_anomalies", "flip"), ("pseudo_fraction", 0.0),
                                       ("pseudo_fraction", 1.5), ("defect_scale", 0.0),
                                       ("defect_scale", 5.0), ("defect_scale", "large")])
def test_pseudo_anomaly_settings_are_validated(key, value):  # noqa: ANN001
    with pytest.raises(ConfigError, match=key):
        get_config("digits", {key: value})


def _matches_through_alignment(v1: torch.Tensor, v2: torch.Tensor, align: torch.Tensor) -> int:
    """Pixels of view 1 whose point lies inside view 2; asserts view 2 shows each one's value.

    The ramp is affine in the image's coordinates, and crops resample it bilinearly, so a
    view's bilinear value at the aligned point equals view 1's pixel up to float32 rounding
    (a few 1e-7); one pixel of misalignment would be off by about 1e-3 or more.
    """
    size = v1.shape[-1]
    pos = torch.arange(size * size)
    grid = corresponding_grid(pos, size, size, size, align)            # pixels as a map
    inside = (grid.abs() < 1 - 1 / size).all(-1).squeeze(1)             # (B, P), off the border
    got = sample_at(v2, grid)                                           # (P, B, C)
    want = v1.flatten(2).permute(2, 0, 1)
    assert torch.allclose(got.permute(1, 0, 2)[inside], want.permute(1, 0, 2)[inside], rtol=0, atol=1e-5)
    return int(inside.sum())


def test_aligned_views_map_each_pixel_of_view_1_to_the_same_point_in_view_2():
    torch.manual_seed(0)
    aug = _geometry_only(False)
    v1, v2, align = aug.aligned_views(_ramp())
    assert _matches_through_alignment(v1, v2, align) > 8 * 16 * 16 // 10   # the crops overlap
    torch.manual_seed(0)
    w1, w2 = aug(_ramp())                           # the same draws as the independent views
    assert torch.equal(v1, w1) and torch.equal(v2, w2)


def test_a_point_clamped_to_the_edge_takes_the_border_cell():
    fmap = torch.randn(1, 3, 4, 4)
    far = torch.tensor([[[1.0, 0.0, 100.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])   # 100 px to the right
    got = sample_at(fmap, corresponding_grid(torch.tensor([4]), 4, 4, 16, far))     # row 1, column 0
    torch.testing.assert_close(got[0, 0], fmap[0, :, 1, 3], rtol=0, atol=1e-6)


def test_identity_alignment_samples_every_cell_centre_exactly():
    fmap = torch.randn(2, 5, 4, 6)
    pos = torch.tensor([0, 7, 23, 11])
    got = sample_at(fmap, corresponding_grid(pos, 4, 6, 24, torch.eye(3).expand(2, 3, 3)))
    torch.testing.assert_close(got, fmap.flatten(2)[:, :, pos].permute(2, 0, 1), rtol=0, atol=1e-6)


def test_rot90_transform_is_where_torch_rot90_puts_each_pixel():
    img = torch.randn(1, 1, 5, 5)
    ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    pts = torch.stack([xs.flatten(), ys.flatten(), torch.ones(25)])
    for q, r in zip((1, 2, 3), rot90_transform(torch.tensor([1, 2, 3]), 5)):
        x2, y2 = (r @ pts)[:2].round().long()
        turned = torch.rot90(img, q, dims=(2, 3))[0, 0]
        assert torch.equal(turned[y2, x2], img[0, 0].flatten())


def test_rotated_copies_carry_their_images_alignment_turned():
    torch.manual_seed(1)
    v1, v2, align = _geometry_only(False).aligned_views(_ramp())
    g = torch.Generator().manual_seed(2)
    a, b, _, al = rotated_pseudo_anomalies(v1, v2, torch.ones(8), 0.5, g, align)
    assert al.shape == (12, 3, 3)
    assert _matches_through_alignment(a[8:], b[8:], al[8:]) > 4 * 16 * 16 // 10


def test_identity_alignment_gives_the_loss_of_the_same_positions():
    cfg = get_config("digits", {"view_geometry": "aligned"})
    objective = ContrastedMemoryObjective(AnoMemModel(cfg).eval())
    v = torch.rand(6, 3, 16, 16)
    y = torch.tensor([1, 1, 1, 1, 0, 1])
    torch.manual_seed(3)
    plain, _ = objective(v, v, y)
    torch.manual_seed(3)
    aligned, _ = objective(v, v, y, align=torch.eye(3).expand(6, 3, 3))
    torch.testing.assert_close(aligned, plain, rtol=1e-5, atol=1e-6)


def test_stage1_trains_with_aligned_views_and_rotated_copies():
    cfg = get_config("digits", {"stage1_epochs": 1, "batch_size": 8, "consolidate": 0,
                                "view_geometry": "aligned", "pseudo_anomalies": "rotation"})
    model = AnoMemModel(cfg)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    history = train_stage1(model, images, torch.ones(16, dtype=torch.long), {}, RunOptions())
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
