"""The heatmap a user gets: at each input's own size, and flat where the image is (no border).

``AnoMem.anomaly_map`` computes the fused map at the model's side and resizes it back to
every input's height x width; ``backbone.padding="replicate"`` or a mirrored margin
(``scoring.heatmap_margin``) removes the frame that zero padding draws around a constant
image, and the map pipeline itself (bilinear upsampling, gaussian smoothing, the mirror view
flipped back, the resizing) adds none.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem
from anomem.config import get_config
from anomem.data.convert import to_image_tensor
from anomem.errors import ConfigError
from anomem.heatmaps import SIGMA_PER_SIDE, at_input_size, model_side_maps, resize_maps
from anomem.localisation import anomaly_map, margin_pixels
from anomem.torch_model import AnoMemModel

#: Gray levels of the constant images, uint8.
LEVELS = (0, 77, 178, 255)
#: Flat means (max - min) <= FLAT * max |value|: float32 rounding of O(1) map values through
#: bilinear weights that differ by position is a few ulps (measured <= 2.3e-7 relative).
FLAT = 1e-5


def constant_images(side: int) -> torch.Tensor:
    return torch.stack([torch.full((3, side, side), v, dtype=torch.uint8) for v in LEVELS])


def relative_range(maps: np.ndarray) -> np.ndarray:
    """(max - min) / max |value| of each map."""
    flat = maps.reshape(len(maps), -1)
    return (flat.max(1) - flat.min(1)) / np.maximum(np.abs(flat).max(1), 1e-30)


@pytest.fixture(scope="module")
def fitted(digits):
    """A one-class digits detector with replicated edges, briefly trained (100 normals: 20 held out)."""
    return AnoMem("digits", padding="replicate", stage1_epochs=1).fit(
        digits.x_train[digits.y_train == 0][:100])


def test_the_map_has_each_inputs_own_height_and_width(fitted):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 200, 150), dtype=np.uint8)       # H = 200, W = 150
    maps = fitted.anomaly_map(batch)
    assert isinstance(maps, np.ndarray) and maps.shape == (2, 200, 150) and maps.dtype == np.float32
    model_side = model_side_maps(fitted.network_, to_image_tensor(batch, 16))
    np.testing.assert_array_equal(maps, resize_maps(model_side, (200, 150)))
    assert fitted.anomaly_map(torch.from_numpy(batch)[:, None].expand(-1, 3, -1, -1)).shape == (2, 200, 150)
    # a list: every image keeps its size, whatever its layout
    images = [batch[0], rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
              Image.fromarray(rng.integers(0, 256, (10, 25), dtype=np.uint8))]
    got = fitted.anomaly_map(images)
    assert [m.shape for m in got] == [(200, 150), (30, 40), (10, 25)]
    # the same image alone or in a batch: float32 rounding of the kernels at most
    np.testing.assert_allclose(got[0], maps[0], rtol=0, atol=1e-5 * float(np.abs(maps).max()))


def test_resizing_keeps_rows_and_columns_apart():
    # a peak in the top-right cell of a 2 x 2 map stays top-right in a 20 (H) x 10 (W) map
    peak = np.zeros((1, 2, 2), np.float32)
    peak[0, 0, 1] = 1.0
    big = resize_maps(peak, (20, 10))[0]
    row, col = np.unravel_index(big.argmax(), big.shape)
    assert big.shape == (20, 10) and row < 10 <= 2 * col
    assert big[:10, 5:].mean() > 2 * big[10:, :5].mean()


@pytest.mark.parametrize("stem, heads, reader", [("cifar", False, "memory"), ("cifar", True, "memory"),
                                                 ("imagenet", False, "memory"), ("cifar", False, "head")])
def test_replicated_edges_give_a_flat_map_on_constant_images(stem, heads, reader):
    """Untrained networks (random patterns, heads as built); the ImageNet stem runs the max-pool."""
    torch.manual_seed(0)
    cfg = get_config("digits", {"padding": "replicate", "stem": stem, "image_size": 32,
                                "memory_stages": [2, 3], "heatmap_reader": reader})
    maps = model_side_maps(AnoMemModel(cfg, semi_supervised=heads).eval(), constant_images(32))
    assert (relative_range(maps) <= FLAT).all(), relative_range(maps)


def test_a_trained_network_with_replicated_edges_gives_a_flat_map(fitted):
    maps = model_side_maps(fitted.network_, constant_images(16))
    assert (relative_range(maps) <= FLAT).all(), relative_range(maps)       # measured <= 2.3e-7
    own = fitted.anomaly_map(constant_images(16)[:, :, :13].contiguous())   # 13 x 16 inputs
    assert own.shape == (4, 13, 16) and (relative_range(own) <= FLAT).all()


def test_zero_padding_marks_the_border_of_a_constant_image():
    """Zeros frame the image in black, so every gray level but black gives a non-flat map.

    Measured (this seed, digits preset at 16 px): relative range 3.6 % untrained; after one
    epoch of stage 1 on 60 zeros, 12-20 % over the four gray levels, the top row 7-12 % above
    the centre and the bottom row within 1.3 % of it.  A stride-2 convolution with padding 1 on an
    even side reads the padding on its top and left only, and the mirror view averages left
    and right, so the top edge differs most: the band a user sees along the top.  With the
    ImageNet stem (untrained, 64 px): 10.8 %, top 1.107, bottom 1.031, centre 1.089.
    """
    torch.manual_seed(0)
    maps = model_side_maps(AnoMemModel(get_config("digits")).eval(), constant_images(16))
    ranges = relative_range(maps)
    assert ranges[0] <= FLAT                  # black: the padding is the image
    assert (ranges[1:] > 1e-2).all(), ranges  # measured 0.036 at each other level


def test_a_mirrored_margin_beyond_the_networks_reach_gives_a_flat_map():
    """Zero padding, the ``mtd`` preset's memory map (128 px, ImageNet stem, untrained): half the side
    mirrored beyond each border (64 px) is beyond the reach of the finest memory scale, so
    every position of a constant image computes the same sums and the map is flat; without
    the margin the frame shows (measured 8 % relative range at gray 128 with this seed)."""
    torch.manual_seed(0)
    model = AnoMemModel(get_config("mtd", {"heatmap_margin": 0.0, "heatmap_reader": "memory"})).eval()
    x = constant_images(128)
    ranges = relative_range(model_side_maps(model, x))
    assert ranges[0] <= FLAT and (ranges[1:] > 1e-2).all(), ranges
    model.config = model.config.replace(**{"scoring.heatmap_margin": 0.5})
    assert (relative_range(model_side_maps(model, x)) <= FLAT).all()


def test_the_margin_is_the_map_of_the_mirrored_image_cropped():
    torch.manual_seed(0)
    plain = AnoMemModel(get_config("digits", {"image_size": 20, "heatmap_margin": 0.0})).eval()
    mirrored = AnoMemModel(plain.config.replace(**{"scoring.heatmap_margin": 0.25})).eval()
    mirrored.load_state_dict(plain.state_dict())
    assert margin_pixels(mirrored, 20) == 5 and margin_pixels(mirrored, 3) == 1
    x = torch.rand(2, 3, 20, 20)
    # numpy's "reflect" mirrors without repeating the edge, as torch's does: 5 px each side
    big = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (5, 5), (5, 5)), mode="reflect"))
    with torch.no_grad():
        want = anomaly_map(plain, big, sigma=1.5)[:, 5:25, 5:25]
        torch.testing.assert_close(anomaly_map(mirrored, x, sigma=1.5), want)
    # at most side - 1 pixels: what one reflection can mirror
    near_one = mirrored.config.replace(**{"scoring.heatmap_margin": 0.99})
    assert margin_pixels(AnoMemModel(near_one), 16) == 15
    with pytest.raises(ConfigError, match="heatmap_margin"):
        get_config("digits", {"heatmap_margin": 1.0})


@pytest.mark.parametrize("views", ["single", "mirror"])
@pytest.mark.parametrize("sigma", [0.0, 1.5, 4.0])
def test_the_map_pipeline_adds_no_border_to_flat_position_maps(monkeypatch, views, sigma):
    """Constant deviation maps (one value per scale): upsampling, fusion, smoothing, the mirror
    view flipped back and the resizing to odd sizes leave the map flat."""
    model = AnoMemModel(get_config("digits", {"score_views": views, "image_size": 20})).eval()
    flat = [torch.full((1, s.dim, 5 - 2 * (s.stage % 2), 5 - 2 * (s.stage % 2)), 0.1 * (1 + i))
            for i, s in enumerate(model.scales)]    # 5 x 5 and 3 x 3 maps
    monkeypatch.setattr(model, "deviation_maps", lambda x: [d.expand(len(x), -1, -1, -1) for d in flat])
    with torch.no_grad():
        heat = anomaly_map(model, torch.zeros(2, 3, 20, 20), sigma=sigma).numpy()
    assert (relative_range(heat) <= FLAT).all()
    for size in ((37, 23), (7, 11)):
        own = at_input_size(heat, np.zeros((2, *size), np.uint8))
        assert own.shape == (2, *size) and (relative_range(own) <= FLAT).all()


def test_the_default_smoothing_follows_the_side(fitted, digits):
    assert SIGMA_PER_SIDE * 16 == 0.5
    x = digits.x_test[:3, None]
    np.testing.assert_array_equal(fitted.anomaly_map(x), fitted.anomaly_map(x, sigma=0.5))
    assert not np.array_equal(fitted.anomaly_map(x), fitted.anomaly_map(x, sigma=2.0))
