"""The heatmap standardised pixel by pixel (``scoring.heatmap_calibration="position"``).

The arithmetic by hand; then, on a briefly trained digits detector: the held-out normals'
maps come out with mean 0 and standard deviation 1 at every pixel, the statistics are set
whatever the key says (the key can be switched on a fitted model), the pixel threshold is
read on the standardised maps, and the statistics travel in the model file (files written
before them load without standardisation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.config import get_config
from anomem.data.convert import to_image_tensor
from anomem.errors import ConfigError, ModelFileError
from anomem.fit_setup import holdout_indices
from anomem.heatmaps import fit_map_calibration, model_side_maps
from anomem.localisation import AnomalyMapNet, standardise_pixels
from anomem.serialization import atomic_torch_save, safe_torch_load
from anomem.threshold import order_statistic_threshold
from anomem.torch_model import AnoMemModel

#: float32 means and standard deviations of O(1) values over 20 images: a few ulps of the
#: values (measured below 1e-6); the bound leaves a factor of 10 over 1e-5.
TOL = 1e-4


def switched(det: AnoMem, value: str) -> AnoMem:
    det.network_.config = det.network_.config.replace(**{"scoring.heatmap_calibration": value})
    return det


@pytest.fixture(scope="module")
def fitted(zeros):
    """A one-class digits detector standardising its maps, briefly trained (20 normals held out)."""
    return AnoMem("digits", stage1_epochs=1, heatmap_calibration="position").fit(zeros)


def test_standardise_pixels_by_hand():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    loc = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    scale = torch.tensor([[2.0, 4.0], [0.5, 1.0]])
    want = torch.tensor([[[0.0, 0.5], [4.0, 2.0]], [[2.0, 1.5], [12.0, 6.0]]])
    torch.testing.assert_close(standardise_pixels(maps, loc, scale), want, rtol=0, atol=0)
    # statistics of another size are resized: constant ones stay constant
    got = standardise_pixels(maps, torch.full((4, 4), 1.0), torch.full((4, 4), 2.0))
    torch.testing.assert_close(got, (maps - 1.0) / 2.0, rtol=0, atol=1e-7)


def test_the_held_out_normals_maps_have_mean_0_and_sd_1_at_every_pixel(fitted, zeros):
    held = holdout_indices(torch.ones(len(zeros)), 0.2, fitted.config_.runtime.seed).numpy()
    maps = model_side_maps(fitted.network_, to_image_tensor(zeros[held], 16))
    assert maps.shape == (20, 16, 16)
    np.testing.assert_allclose(maps.mean(axis=0), 0.0, atol=TOL)
    np.testing.assert_allclose(maps.std(axis=0), 1.0, atol=TOL)
    # the pixel threshold is the order statistic over those standardised maps
    assert fitted.pixel_threshold_ == pytest.approx(order_statistic_threshold(maps, 0.05), abs=TOL)


def test_the_statistics_are_set_whatever_the_key_and_the_key_switches(fitted, digits):
    x = to_image_tensor(digits.x_test[:6], 16)
    standardised = model_side_maps(fitted.network_, x)
    raw = model_side_maps(switched(fitted, "none").network_, x)
    try:
        net = fitted.network_
        want = (raw - net.map_loc.numpy()) / net.map_scale.numpy()
        np.testing.assert_allclose(standardised, want, rtol=0, atol=TOL)
        assert not np.allclose(raw, standardised, atol=0.1)
    finally:
        switched(fitted, "position")


def test_a_pixel_that_never_varies_divides_by_a_floor_not_zero():
    model = AnoMemModel(get_config("digits", {"heatmap_calibration": "position"})).eval()
    same = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)     # identical images: sd 0
    maps = fit_map_calibration(model, same)
    assert np.isfinite(maps).all() and float(model.map_scale.min()) > 0
    np.testing.assert_allclose(maps, 0.0, atol=TOL)


def test_the_traced_map_standardises_as_the_eager_one(fitted):
    net = AnomalyMapNet(fitted.network_, sigma=0.5)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(x), net(x), rtol=1e-5, atol=1e-5)


def test_the_statistics_travel_in_the_model_file(fitted, digits, tmp_path):
    path = fitted.save(tmp_path / "m.anomem")
    back = AnoMem.load(path)
    np.testing.assert_array_equal(back.anomaly_map(digits.x_test[:3, None]),
                                  fitted.anomaly_map(digits.x_test[:3, None]))
    blob = safe_torch_load(path)
    del blob["checksum"]
    for key in ("map_loc", "map_scale"):                       # a file written before them
        del blob["state_dict"][key]
    old = AnoMem.load(atomic_torch_save(blob, tmp_path / "old.anomem"))
    assert float(old.network_.map_loc.abs().max()) == 0.0 and float(old.network_.map_scale.min()) == 1.0
    blob["state_dict"]["map_scale"] = torch.zeros(16, 16)
    blob["state_dict"]["map_loc"] = torch.zeros(16, 16)
    with pytest.raises(ModelFileError, match="map_scale"):
        AnoMem.load(atomic_torch_save(blob, tmp_path / "bad.anomem"))


def test_an_unknown_calibration_is_refused_by_name():
    with pytest.raises(ConfigError, match="heatmap_calibration"):
        get_config("digits", {"heatmap_calibration": "pixels"})
