"""Heatmaps: per-position heads, fusion by hand, smoothing, locality on real digits, tracing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem, InvalidInputError, RequiresFitting
from anomem.config import get_config
from anomem.data.convert import to_image_tensor
from anomem.localisation import AnomalyMapNet, anomaly_map, gaussian_smooth
from anomem.torch_model import AnoMemModel, ScaleHead

FAST = {"stage1_epochs": 1, "stage2_epochs": 5}


@pytest.fixture(scope="module")
def detectors(digits):
    """A one-class and a semi-supervised detector, briefly trained on real digits (0 = normal)."""
    normal = digits.x_train[digits.y_train == 0][:60]
    others = digits.x_train[digits.y_train != 0][:12]
    oc = AnoMem("digits", **FAST).fit(normal)
    ss = AnoMem("digits", **FAST).fit(np.concatenate([normal, others]),
                                      np.r_[np.zeros(len(normal)), np.ones(len(others))])
    return oc, ss


def test_head_map_is_the_head_on_the_broadcast_position():
    torch.manual_seed(0)
    head = ScaleHead(channels=5, pool=2, hidden=7)
    delta = torch.randn(2, 5, 3, 4)
    got = head.position_map(delta)
    assert got.shape == (2, 3, 4)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        uniform = delta[b, :, i, j].view(1, 5, 1, 1).expand(1, 5, 6, 6)
        # float32 rounding of an O(0.1) head output computed two ways (measured 7e-8)
        assert got[b, i, j].item() == pytest.approx(head(uniform).item(), abs=1e-5)
    # a spatially uniform deviation map: every position scores exactly the image-level head score
    flat = delta[:, :, :1, :1].expand(-1, -1, 3, 4)
    torch.testing.assert_close(head.position_map(flat), head(flat).view(2, 1, 1).expand(2, 3, 4))


def test_fusion_worked_by_hand(monkeypatch):
    # scale 1: a 2x2 map with ||Delta|| = 1 at row 0, column 1 only; scale 2: 1x1, ||Delta|| = 3.
    # Bilinear (align_corners=False) 2 -> 4 spreads index 0 with weights [1, .75, .25, 0] and
    # index 1 with [0, .25, .75, 1] along an axis; fused with alpha = (1/3, 2/3)
    # (heatmap_scales="all"; "finest", the default, reads scale 1 alone, checked at the end).
    model = AnoMemModel(get_config("digits", {"global_memory": "none", "score_views": "single",
                                              "heatmap_scales": "all"})).eval()   # alphas 1/3, 2/3
    d1 = torch.zeros(1, 4, 2, 2)
    d1[0, 1, 0, 1] = 1.0
    d2 = torch.zeros(1, 8, 1, 1)
    d2[0, 0] = -3.0
    monkeypatch.setattr(model, "deviation_maps", lambda x: [d1, d2])
    heat = anomaly_map(model, torch.zeros(1, 3, 4, 4), sigma=0.0)[0]
    assert heat[0, 3].item() == pytest.approx(1 / 3 + 2)
    assert heat[0, 2].item() == pytest.approx(0.75 / 3 + 2)
    assert heat[1, 1].item() == pytest.approx(0.75 * 0.25 / 3 + 2)
    assert heat[3, 0].item() == pytest.approx(2.0)
    model.score_std.copy_(torch.tensor([2.0, 1.0]))           # a calibrated one-class model
    heat = anomaly_map(model, torch.zeros(1, 3, 4, 4), sigma=0.0)[0]
    assert heat[0, 3].item() == pytest.approx(1 / 6 + 2)
    finest = AnoMemModel(get_config("digits", {"global_memory": "none", "score_views": "single",
                                               "heatmap_scales": "finest"})).eval()
    monkeypatch.setattr(finest, "deviation_maps", lambda x: [d1, d2])
    heat = anomaly_map(finest, torch.zeros(1, 3, 4, 4), sigma=0.0)[0]
    assert heat[0, 3].item() == pytest.approx(1.0)                 # scale 1 alone, weight 1
    assert heat[1, 1].item() == pytest.approx(0.75 * 0.25)
    assert heat[3, 0].item() == pytest.approx(0.0)


def test_gaussian_smoothing():
    impulse = torch.zeros(1, 21, 21)
    impulse[0, 10, 10] = 1.0
    assert torch.equal(gaussian_smooth(impulse, 0.0), impulse)
    s1, s3 = gaussian_smooth(impulse, 1.0), gaussian_smooth(impulse, 3.0)
    assert s1.sum().item() == pytest.approx(1.0, abs=1e-5)      # mass kept away from the border
    assert s1.argmax().item() == 10 * 21 + 10
    torch.testing.assert_close(s1[0], s1[0].flip(0))
    torch.testing.assert_close(s1[0], s1[0].t())
    assert s3.max() < s1.max() < 1.0
    const = torch.full((2, 5, 7), 0.7)
    torch.testing.assert_close(gaussian_smooth(const, 4.0), const)   # border replicated


@pytest.mark.parametrize("heads", [False, True])
def test_a_local_change_moves_only_the_nearby_heatmap(digits, heads):
    # Real digits at 64x64, memory after stages 2 and 3 (32x32 and 16x16 maps, receptive
    # fields 25 and 53 px): a digit pasted into the top-right corner must change the map
    # there and leave the bottom-left corner (out of every receptive field) exactly as it was.
    # A transposed or flipped map would move the change to the wrong corner.
    torch.manual_seed(0)
    model = AnoMemModel(get_config("digits", {"image_size": 64, "memory_stages": [2, 3]}),
                        semi_supervised=heads).eval()
    x = to_image_tensor(digits.x_test[:6], 64).float() / 255
    pasted = x.clone()
    pasted[:, :, :16, 48:] = to_image_tensor(digits.x_test[6:12], 16).float() / 255
    with torch.no_grad():
        change = (anomaly_map(model, pasted, sigma=0.0) - anomaly_map(model, x, sigma=0.0)).abs()
    assert change[:, :16, 48:].mean() > 1e-3
    assert change[:, 48:, :16].max() < 1e-5   # O(1) map values: 1e-5 is ~80 float32 ulps at 1 (measured 0)


def test_both_settings_localise_with_their_own_maps(digits, detectors):
    oc, ss = detectors
    assert ss.semi_supervised and not oc.semi_supervised
    x = digits.x_test[:8]
    m_oc, m_ss = oc.anomaly_map(x, sigma=0.0), ss.anomaly_map(x, sigma=0.0)
    assert np.isfinite(m_oc).all() and np.isfinite(m_ss).all()
    assert (m_oc >= 0).all()                               # norms
    assert m_oc.std() > 0 and m_ss.std() > 0 and not np.allclose(m_oc, m_ss)


@pytest.mark.parametrize("which", [0, 1])
def test_traced_heatmap_equals_eager(digits, detectors, which):
    model = detectors[which].network_.eval()
    net = AnomalyMapNet(model, sigma=1.5)
    x = torch.from_numpy(np.repeat(digits.x_test[:4, None], 3, axis=1)).float() / 255
    x = torch.nn.functional.interpolate(x, size=16, mode="bilinear")
    with torch.no_grad():
        traced = torch.jit.trace(net, x[:2])
        # the same kernels on a batch of 4 instead of 2: float32 rounding at most (measured 0)
        torch.testing.assert_close(traced(x), net(x), atol=1e-5, rtol=1e-5)


def test_saved_detector_gives_the_same_heatmap(tmp_path, digits, detectors):
    _, ss = detectors
    path = ss.save(tmp_path / "ss.anomem")
    again = AnoMem.load(path)
    # reloaded parameters are exact copies; only float32 rounding may differ (measured 0)
    np.testing.assert_allclose(again.anomaly_map(digits.x_test[:5]), ss.anomaly_map(digits.x_test[:5]),
                               atol=1e-5)


def test_bad_calls_are_named(digits, detectors):
    with pytest.raises(RequiresFitting):
        AnoMem("digits").anomaly_map(digits.x_test[:2])
    with pytest.raises(InvalidInputError, match="sigma"):
        detectors[0].anomaly_map(digits.x_test[:2], sigma=-1.0)
    with pytest.raises(InvalidInputError, match="images"):
        detectors[0].anomaly_map(np.zeros((0, 8, 8)))
    with pytest.raises(InvalidInputError, match=r"\(B, 3, H, W\)"):
        anomaly_map(detectors[0].network_, torch.zeros(2, 16, 16))
