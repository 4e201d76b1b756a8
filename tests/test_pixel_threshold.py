"""The pixel threshold set on held-out normals, the masks, the overlays and PRO at the threshold.

Hand-checkable cases: the order statistic on known values, the mask as the map above the
threshold, the contour of a known region, PRO of a two-region example; then the threshold
in the model file, ``anomem score --heatmaps`` and the report on a briefly trained model.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem, RequiresFitting
from anomem.cli.main import main
from anomem.data.convert import to_image_tensor
from anomem.data.folders import find_images, load_images, read_image
from anomem.fit_setup import holdout_indices
from anomem.heatmaps import model_side_maps
from anomem.reports.metrics import detection_metrics
from anomem.reports.pixel_metrics import pro_at, pro_curve
from anomem.reports.report import CONTOUR_RGB, OVERLAY_MIN_SIDE, overlay, write_heatmaps, write_report
from anomem.serialization import atomic_torch_save, safe_torch_load
from anomem.threshold import order_statistic_threshold


@pytest.fixture(scope="module")
def fitted(digits):
    """A one-class digits detector, briefly trained on 100 zeros (20 held out)."""
    return AnoMem("digits", stage1_epochs=1).fit(digits.x_train[digits.y_train == 0][:100])


def cyan(picture: np.ndarray) -> np.ndarray:
    return (picture == CONTOUR_RGB).all(axis=-1)


def test_the_order_statistic_over_pixels_by_hand():
    # 40 values 1..40 as ten 2 x 2 maps: k = floor(41 * 0.05) = 2, the 2nd highest
    assert order_statistic_threshold(np.arange(1.0, 41.0).reshape(10, 2, 2), 0.05) == 39.0
    # 400 values: k = floor(401 * 0.05) = 20, so 381 of 1..400; float32 maps alike
    assert order_statistic_threshold(np.arange(400, 0, -1, dtype=np.float32).reshape(4, 10, 10),
                                     0.05) == 381.0
    # fewer than 19 values: the highest
    assert order_statistic_threshold(np.array([[3.0, 1.0], [2.0, 0.5]]), 0.05) == 3.0


def test_fit_sets_the_pixel_threshold_on_the_held_out_normals(fitted, digits):
    normals = digits.x_train[digits.y_train == 0][:100]
    held = holdout_indices(torch.ones(100), 0.2, fitted.config_.runtime.seed).numpy()
    maps = model_side_maps(fitted.network_, to_image_tensor(normals[held], 16))
    assert maps.shape == (20, 16, 16)
    k = int(np.floor((maps.size + 1) * 0.05))                     # 256 of 5120 pixels
    assert fitted.pixel_threshold_ == float(np.sort(maps.ravel())[::-1][k - 1])
    # the k-th highest: fewer than k pixels above it, at least k at or above it
    assert (maps > fitted.pixel_threshold_).sum() <= k - 1 < (maps >= fitted.pixel_threshold_).sum()


def test_the_mask_is_the_map_above_the_threshold(fitted, digits):
    x = digits.x_test[:6, None]                                    # 8 x 8 images
    maps, masks = fitted.anomaly_map(x), fitted.predict_mask(x)
    assert masks.dtype == bool and masks.shape == maps.shape == (6, 8, 8)
    np.testing.assert_array_equal(masks, maps > fitted.pixel_threshold_)
    t = float(np.median(maps))
    np.testing.assert_array_equal(fitted.predict_mask(x, threshold=t), maps > t)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 30), dtype=np.uint8), digits.x_test[0]]
    got = fitted.predict_mask(images)
    assert [m.shape for m in got] == [(20, 30), (8, 8)]
    for m, heat in zip(got, fitted.anomaly_map(images)):
        np.testing.assert_array_equal(m, heat > fitted.pixel_threshold_)


def test_the_contour_encloses_the_region_above_the_threshold():
    heat = np.zeros((4, 4))
    heat[1:3, 1:3] = 1.0                                           # a 2 x 2 region in the middle
    image = np.zeros((3, 4, 4), np.uint8)
    image[0] = 255                                                 # pure red
    pic = overlay(image, heat, 0.0, 1.0, threshold=0.5)
    scale = OVERLAY_MIN_SIDE // 4                                  # 32: enlarged to 128 px
    assert pic.shape == (128, 128, 3)
    ring = np.zeros((128, 128), bool)
    ring[scale:3 * scale, scale:3 * scale] = True
    ring[scale + 1:3 * scale - 1, scale + 1:3 * scale - 1] = False  # 64 x 64 block, 1 px line
    np.testing.assert_array_equal(cyan(pic), ring)
    assert cyan(pic).sum() == 4 * 64 - 4
    assert not cyan(overlay(image, heat, 0.0, 1.0)).any()          # no threshold, no contour
    # the image under the map is gray: red and its BT.601 gray (76) give one overlay
    gray = np.full((3, 4, 4), round(0.299 * 255), np.uint8)
    np.testing.assert_array_equal(overlay(image, heat, 0.0, 1.0), overlay(gray, heat, 0.0, 1.0))


def test_pro_at_a_threshold_by_hand():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True                 # region A: 4 pixels
    masks[1, 3, 1:4] = True                 # region B: 3 pixels
    maps = np.zeros((2, 4, 4))
    maps[0, 0, :2] = 0.9                    # 2 of A's pixels above 0.5
    maps[1, 3, 1:4] = 0.7                   # all of B
    maps[1, 0, 0] = 0.95                    # a false alarm, which PRO ignores
    pro, regions = pro_at(masks, maps, 0.5)
    assert regions == 2 and pro == pytest.approx((2 / 4 + 3 / 3) / 2)
    assert pro_at(masks, maps, 0.8) == pytest.approx(((2 / 4 + 0) / 2, 2))
    assert pro_at(masks, maps, 0.95)[0] == 0.0                      # "above": 0.95 is not
    # a point of the exact PRO curve (its cumulative sums round differently: 1e-12)
    assert np.isclose(pro_curve(masks, maps)[1], pro, rtol=0, atol=1e-12).any()


def test_the_pixel_threshold_travels_in_the_model_file(fitted, tmp_path, digits):
    path = fitted.save(tmp_path / "m.anomem")
    back = AnoMem.load(path)
    assert back.pixel_threshold_ == fitted.pixel_threshold_
    blob = safe_torch_load(path)
    del blob["pixel_threshold"], blob["checksum"]
    old = AnoMem.load(atomic_torch_save(blob, tmp_path / "old.anomem"))   # written before it
    assert old.pixel_threshold_ is None and old.threshold_ == fitted.threshold_
    with pytest.raises(RequiresFitting, match="pixel threshold"):
        old.predict_mask(digits.x_test[:2, None])
    assert old.predict_mask(digits.x_test[:2, None], threshold=0.0).shape == (2, 8, 8)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_score_writes_heatmaps_at_each_images_own_size(fitted, tmp_path, digits):
    rng = np.random.default_rng(0)
    big = np.kron(digits.x_test[0], np.ones((25, 19), np.uint8))[:200, :150]   # H 200, W 150
    write_png(tmp_path / "in/a_big.png", big)
    write_png(tmp_path / "in/b_small.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    model = fitted.save(tmp_path / "m.anomem")
    assert main(["score", str(model), str(tmp_path / "in"), "-o", str(tmp_path / "s.csv"),
                 "--heatmaps", str(tmp_path / "heat"), "-q"]) == 0
    files = find_images(tmp_path / "in")
    heat = fitted.anomaly_map(load_images(files, 16).images)
    low, high = float(heat.min()), float(heat.max())
    for f, size in zip(files, [(150, 200), (150, 100)]):              # PIL sizes are (W, H)
        with Image.open(tmp_path / "heat" / "in" / f.with_suffix(".png").name) as im:
            assert im.size == size                        # 30 px wide: enlarged 5 times to 150
            got = np.asarray(im.convert("RGB"))
        pixels = read_image(f)
        # the overlay of AnoMem.anomaly_map of the file's own pixels (float32 rounding of one
        # image against a batch of two may move a colour by one level: measured 0)
        want = overlay(pixels.transpose(2, 0, 1), fitted.anomaly_map([pixels])[0], low, high,
                       fitted.pixel_threshold_)
        assert (np.abs(got.astype(int) - want).max(axis=-1) > 1).mean() < 1e-3


def test_overlays_of_a_model_without_pixel_threshold_say_so_once(fitted, tmp_path, digits):
    files = [write_png(tmp_path / f"in/{i}.png", digits.x_test[i]) for i in range(3)]
    old = AnoMem.load(fitted.save(tmp_path / "m.anomem"))
    old.pixel_threshold_ = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_heatmaps(tmp_path / "heat", old, ["0", "1", "2"], files,
                             load_images(files, 16).images)
    said = [str(w.message) for w in caught if "no pixel threshold" in str(w.message)]
    assert len(said) == 1 and "no contour" in said[0]
    for p in out:
        with Image.open(p) as im:
            assert not cyan(np.asarray(im.convert("RGB"))).any()


def test_the_report_gives_pro_at_the_pixel_threshold(fitted, tmp_path, digits):
    pick = np.r_[np.flatnonzero(digits.y_test == 0)[:6], np.flatnonzero(digits.y_test == 7)[:6]]
    images = to_image_tensor(digits.x_test[pick], 16)
    labels = (digits.y_test[pick] == 7).astype(np.int64)
    masks = np.zeros((12, 16, 16), bool)
    masks[6:, 2:8, 4:12] = True                                    # one region per anomaly
    scores = fitted.decision_function(images)
    m = detection_metrics(labels, scores, fitted.threshold_)
    report = write_report(tmp_path, fitted, labels=labels, scores=scores, threshold=fitted.threshold_,
                          names=[f"{i}.png" for i in range(12)], images=images, metrics=m,
                          per_type=[("digit7", 6, m["auroc"], m["recall"])], summary="s", fmt="md",
                          top=3, masks=masks)
    pro, regions = pro_at(masks, fitted.anomaly_map(images), fitted.pixel_threshold_)
    text = report.read_text()
    assert regions == 6 and "of 6 defect regions" in text and f"| {pro:.4f} |" in text
    assert f"pixel threshold {fitted.pixel_threshold_:.4g}" in text
