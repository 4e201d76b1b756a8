"""Pixel AUROC, AUPRO and image AUROC against small cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from anomem import InvalidInputError
from anomem.reports.pixel_metrics import aupro, image_auroc, localisation_metrics, pixel_auroc, pro_curve

# One 1x6 image: region A = pixels 0-1 (size 2), region B = pixel 3 (size 1), negatives 2, 4, 5.
ROW_MASK = np.array([[[1, 1, 0, 1, 0, 0]]], dtype=bool)
ROW_MAP = np.array([[[0.9, 0.3, 0.8, 0.6, 0.2, 0.1]]])


def test_image_auroc_hand_worked():
    # anomalies 0.35 and 0.8 against normals 0.1 and 0.4: 3 of 4 pairs ordered -> 0.75
    assert image_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    with pytest.raises(InvalidInputError, match="both normal"):
        image_auroc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_pixel_auroc_hand_worked():
    # positives 0.9, 0.3, 0.6 vs negatives 0.8, 0.2, 0.1: 3 + 2 + 2 = 7 of 9 pairs
    assert pixel_auroc(ROW_MASK, ROW_MAP) == pytest.approx(7 / 9)


def test_pixel_auroc_skips_invalid_images():
    other_mask = np.zeros((1, 1, 6), dtype=bool)            # e.g. a defect with an empty mask
    other_map = np.full((1, 1, 6), 5.0)                     # would outscore every defect pixel
    masks, maps = np.concatenate([ROW_MASK, other_mask]), np.concatenate([ROW_MAP, other_map])
    assert pixel_auroc(masks, maps, valid=np.array([True, False])) == pytest.approx(7 / 9)
    assert pixel_auroc(masks, maps) < 7 / 9 - 0.1


def test_pro_curve_hand_worked():
    # thresholds 0.9 | 0.8 | 0.6 | 0.3 | 0.2 | 0.1 (see ROW_MASK): PRO counts each region once
    fpr, pro = pro_curve(ROW_MASK, ROW_MAP)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.75, 1, 1, 1])


def test_aupro_hand_worked():
    # up to FPR 0.3 the curve is flat at 0.25 -> 0.3 * 0.25 / 0.3
    assert aupro(ROW_MASK, ROW_MAP) == pytest.approx(0.25)
    # whole curve: 0.25 * 1/3 + 1 * 2/3 = 0.75 (pixel-weighted overlap, i.e. TPR, would give 7/9)
    assert aupro(ROW_MASK, ROW_MAP, max_fpr=1.0) == pytest.approx(0.75)


def test_aupro_interpolates_at_max_fpr():
    # 1 region pixel scored between the two negatives: curve (0,0) (1/2,0) (1/2,1) (1,1)
    masks = np.array([[[0, 1, 0]]], dtype=bool)
    maps = np.array([[[0.9, 0.5, 0.1]]])
    assert aupro(masks, maps, max_fpr=0.3) == pytest.approx(0.0)
    # up to 0.75: area 0.25 (from 0.5 to 0.75 at PRO 1) / 0.75
    assert aupro(masks, maps, max_fpr=0.75) == pytest.approx(1 / 3)


def test_ties_cross_together():
    # all scores equal: the only thresholds are "everything" and "nothing": the diagonal
    masks = np.array([[[1, 0], [0, 0]]], dtype=bool)
    maps = np.ones((1, 2, 2))
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(pro, [0, 1])
    assert aupro(masks, maps) == pytest.approx(0.15)       # 0.3^2 / 2 / 0.3
    assert pixel_auroc(masks, maps) == pytest.approx(0.5)


def test_regions_are_eight_connected():
    # (0,0) and (1,1) touch diagonally: one region of 2 pixels; (0,3) is a second region
    masks = np.zeros((1, 3, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 0, 3] = True
    maps = np.zeros((1, 3, 4))
    maps[0, 0, 3] = 1.0
    _, pro = pro_curve(masks, maps)
    assert pro[1] == pytest.approx(0.5)                      # 4-connectivity would give 1/3


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 8, 8)) > 0.8
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert pixel_auroc(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, -masks.astype(float)) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pro_curve_matches_the_definition(seed):
    # Brute force: at every distinct threshold t, FPR and mean per-region overlap of {map >= t}.
    rng = np.random.default_rng(seed)
    masks = rng.random((2, 6, 7)) > 0.75
    maps = np.round(rng.random((2, 6, 7)) + 0.5 * masks, 1)     # rounding makes ties
    regions = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    fpr, pro = pro_curve(masks, maps)
    for k, t in enumerate(np.unique(maps)[::-1], start=1):
        above = maps >= t
        overlaps = [above[i][lab == r].mean() for i, lab in enumerate(regions)
                    for r in range(1, lab.max() + 1)]
        assert pro[k] == pytest.approx(np.mean(overlaps))
        assert fpr[k] == pytest.approx(above[~masks].mean())


def test_bad_inputs_are_named():
    with pytest.raises(InvalidInputError, match="same shape"):
        pixel_auroc(ROW_MASK, ROW_MAP[:, :, :3])
    with pytest.raises(InvalidInputError, match="both defect and defect-free"):
        aupro(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2)))
    with pytest.raises(InvalidInputError, match="NaN"):
        pixel_auroc(ROW_MASK, np.full(ROW_MAP.shape, np.nan))
    with pytest.raises(InvalidInputError, match="one flag per image"):
        aupro(ROW_MASK, ROW_MAP, valid=np.array([True, True]))
    with pytest.raises(InvalidInputError, match="max_fpr"):
        aupro(ROW_MASK, ROW_MAP, max_fpr=0.0)


def test_localisation_metrics_bundles_the_three():
    # a normal image (map all 0) and ROW: 6 more negatives, each below all 3 defect pixels
    res = localisation_metrics(np.array([0, 1]), np.array([0.2, 0.7]),
                               np.concatenate([np.zeros_like(ROW_MASK), ROW_MASK]),
                               np.concatenate([np.zeros_like(ROW_MAP), ROW_MAP]))
    assert res["image_auroc"] == pytest.approx(1.0)
    assert res["pixel_auroc"] == pytest.approx((7 + 3 * 6) / (3 * 9))
    assert 0.25 < res["aupro"] < 1.0     # the extra negatives lower the FPR of every threshold
