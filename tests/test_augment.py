"""Two-view augmentation: independent vs shared geometry (``view_geometry``)."""

from __future__ import annotations

import pytest
import torch

from anomem.augment import TwoViewAugment, rotated_pseudo_anomalies
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
    assert get_config("digits", {"view_geometry": "shared"}).view_geometry == "shared"
    with pytest.raises(ConfigError, match="view_geometry"):
        get_config("digits", {"view_geometry": "aligned"})


def test_rotated_pseudo_anomalies_rotate_both_views_of_a_copy_by_one_quarter_turn_multiple():
    torch.manual_seed(0)
    v1, v2 = torch.rand(10, 3, 6, 6), torch.rand(10, 3, 6, 6)
    y = torch.ones(10, dtype=torch.long)
    a, b, yy = rotated_pseudo_anomalies(v1, v2, y, 0.3, torch.Generator().manual_seed(1))
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

        def forward(self, v1, v2, y, gather=None, offset=0):  # noqa: ANN001, ANN202
            seen.append((y.tolist(), len(v1)))
            return self.inner(v1, v2, y, gather, offset)

    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    train_stage1(model, images, torch.ones(16, dtype=torch.long), {}, RunOptions(), objective=Spy())
    assert seen == [([1] * 8 + [0] * 2, 10)] * 2


@pytest.mark.parametrize("key,value", [("pseudo_anomalies", "flip"), ("pseudo_fraction", 0.0),
                                       ("pseudo_fraction", 1.5)])
def test_pseudo_anomaly_settings_are_validated(key, value):  # noqa: ANN001
    with pytest.raises(ConfigError, match=key):
        get_config("digits", {key: value})
