"""Two-view augmentation: independent vs shared geometry (``view_geometry``)."""

from __future__ import annotations

import pytest
import torch

from anomem.augment import TwoViewAugment
from anomem.config import ConfigError, get_config


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
