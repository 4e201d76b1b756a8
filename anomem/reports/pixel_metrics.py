"""Localisation metrics: image AUROC, pixel AUROC and AUPRO (higher score = more anomalous).

* **Image AUROC**: ROC area of image scores, anomalies (label 1) positive.
* **Pixel AUROC**: ROC area over every pixel of every image that has pixel
  truth, defect pixels positive.
* **AUPRO** (per-region overlap, Bergmann et al., MVTec AD): each connected
  defect region r (8-connectivity, per image) is one unit.  At threshold t,
  PRO(t) = mean over regions of |r ∩ {map > t}| / |r| (:func:`pro_at`) and FPR(t) = the share of
  defect-free pixels (over all images, defect-free tiles included) above t.
  The PRO-vs-FPR curve is integrated (trapezoids) from FPR 0 to ``max_fpr``
  (0.3), the last segment interpolated at ``max_fpr``, and divided by
  ``max_fpr`` so a perfect map scores 1.  The curve is exact: every distinct
  score is a threshold (pixels with equal scores cross together), computed
  from one sort instead of a threshold grid.

``valid`` (N,) excludes images from the pixel metrics (e.g. defects whose mask
is empty, which carry no pixel truth); the image AUROC uses every image.

Example:
    >>> masks = np.array([[[0, 1], [0, 0]]], dtype=bool)
    >>> maps = np.array([[[0.1, 0.9], [0.2, 0.3]]])
    >>> pixel_auroc(masks, maps), aupro(masks, maps)
    (1.0, 1.0)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from anomem.errors import InvalidInputError
from anomem.protocols.one_vs_all import auroc
from anomem.reports import metrics

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _pixels(masks: np.ndarray, maps: np.ndarray, valid: np.ndarray | None,
            need_normal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    masks, maps = np.asarray(masks).astype(bool), np.asarray(maps, dtype=np.float64)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise InvalidInputError(f"masks and maps must both be (N, H, W) with the same shape, got "
                                f"{masks.shape} and {maps.shape}")
    if not np.isfinite(maps).all():
        raise InvalidInputError("maps contain NaN or infinite values")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (len(masks),):
            raise InvalidInputError(f"valid must have one flag per image ({len(masks)}), got "
                                    f"shape {valid.shape}")
        masks, maps = masks[valid], maps[valid]
    if not masks.any() or (need_normal and masks.all()):
        what = "both defect and defect-free pixels" if need_normal else "defect pixels"
        raise InvalidInputError(f"pixel metrics need {what} among the valid images")
    return masks, maps


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """The connected defect regions of boolean masks (N, H, W), 8-connectivity within each image:
    int64 labels 1..count numbered across the images (0: no defect), and count."""
    regions = np.zeros(masks.shape, dtype=np.int64)
    count = 0
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=EIGHT_CONNECTED)
        regions[i] = np.where(lab > 0, lab + count, 0)
        count += n
    return regions, count


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level ROC area, labels 1 = anomaly (positives), 0 = normal (inputs validated)."""
    return metrics.auroc(labels, scores)


def pixel_auroc(masks: np.ndarray, maps: np.ndarray, valid: np.ndarray | None = None) -> float:
    """ROC area over all pixels of the valid images, defect pixels positive."""
    masks, maps = _pixels(masks, maps, valid)
    return auroc(masks.ravel(), maps.ravel())


def pro_curve(masks: np.ndarray, maps: np.ndarray, valid: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, PRO) curve, one point per distinct score, from (0, 0) to (1, 1)."""
    masks, maps = _pixels(masks, maps, valid)
    regions, count = label_regions(masks)
    sizes = np.bincount(regions.ravel())
    r, s = regions.ravel(), maps.ravel()
    neg = r == 0
    pro_w = np.where(neg, 0.0, 1.0 / (count * sizes[r]))
    fpr_w = np.where(neg, 1.0 / neg.sum(), 0.0)
    order = np.argsort(-s, kind="stable")
    s, pro_w, fpr_w = s[order], pro_w[order], fpr_w[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]   # last pixel of each tie group
    fpr = np.r_[0.0, np.cumsum(fpr_w)[ends]]
    pro = np.r_[0.0, np.cumsum(pro_w)[ends]]
    return np.minimum(fpr, 1.0), np.minimum(pro, 1.0)


def pro_at(masks: np.ndarray, maps: np.ndarray, threshold: float,
           valid: np.ndarray | None = None) -> tuple[float, int]:
    """PRO(threshold): the mean over connected defect regions of the share of their pixels whose
    map value is above ``threshold``; returned with the number of regions.

    Example:
        >>> masks = np.array([[[1, 1, 0], [0, 0, 0], [0, 0, 1]]], dtype=bool)   # 2 regions
        >>> maps = np.array([[[0.9, 0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.8]]])
        >>> pro_at(masks, maps, 0.5)                                            # (1/2 + 1) / 2
        (0.75, 2)
    """
    masks, maps = _pixels(masks, maps, valid, need_normal=False)
    regions, count = label_regions(masks)
    r = regions.ravel()
    inside = np.bincount(r, weights=(maps.ravel() > threshold), minlength=count + 1)[1:]
    return float(np.mean(inside / np.bincount(r, minlength=count + 1)[1:])), count


def aupro(masks: np.ndarray, maps: np.ndarray, valid: np.ndarray | None = None,
          max_fpr: float = 0.3) -> float:
    """Area under the PRO curve up to ``max_fpr``, normalised by ``max_fpr`` (1 = perfect)."""
    if not 0.0 < max_fpr <= 1.0:
        raise InvalidInputError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(masks, maps, valid)
    k = int(np.searchsorted(fpr, max_fpr, side="right"))   # fpr[:k] <= max_fpr
    x, y = fpr[:k], pro[:k]
    if k < len(fpr) and x[-1] < max_fpr:
        t = (max_fpr - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x = np.r_[x, max_fpr]
        y = np.r_[y, pro[k - 1] + t * (pro[k] - pro[k - 1])]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0) / max_fpr)


def localisation_metrics(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray,
                         maps: np.ndarray, valid: np.ndarray | None = None,
                         max_fpr: float = 0.3) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of one test set in one dict."""
    return {"image_auroc": image_auroc(labels, scores),
            "pixel_auroc": pixel_auroc(masks, maps, valid),
            "aupro": aupro(masks, maps, valid, max_fpr)}
