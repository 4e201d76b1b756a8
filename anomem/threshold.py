"""The decision threshold from held-out normal scores, with a distribution-free guarantee.

Given the scores of ``n`` held-out normal images and a target false-alarm
(false-rejection) rate ``a`` (``scoring.target_frr``), the threshold is the ``k``-th
highest held-out score with ``k = floor((n + 1) * a)`` (conformal / order-
statistic choice), and an image is an anomaly when its score is *above* it.
For a new normal image exchangeable with the held-out ones (drawn from the
same distribution, the model fixed), whatever that distribution:

* in expectation over the held-out draw, the false-alarm rate is at most
  ``k / (n + 1) <= a``;
* for the one held-out set used, the false-alarm rate is a Beta(k, n + 1 - k)
  random variable (continuous scores), so it is below that distribution's
  95 % quantile with 95 % confidence: :func:`frr_upper_bound`.  With
  ``n = 40`` and ``a = 0.05`` (``k = 2``) the bound is 11 %: a threshold set on
  40 images can flag twice its target on new data, which is why more
  held-out normals give a tighter threshold.

When ``(n + 1) * a < 1``, i.e. ``n < 1 / a - 1`` (fewer than 19 held-out
normals for 5 %), no held-out score meets the target: the highest one is
used (expected rate ``1 / (n + 1)``) and :func:`held_out_warning` explains it.
Scores of *training* normals are optimistic (the model fitted them), so
neither bound holds for a threshold set on them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

CONFIDENCE = 0.95


class ThresholdWarning(UserWarning):
    """The threshold cannot hold ``scoring.target_frr``: too few held-out normal images, or none."""


def rank(n: int, target: float) -> int:
    """k = floor((n + 1) * target), at least 1 (the highest score) and at most n."""
    return min(n, max(1, math.floor((n + 1) * target + 1e-9)))


def order_statistic_threshold(scores: np.ndarray, target: float) -> float:
    """The :func:`rank`-th highest of ``scores`` (n >= 1 held-out normal scores, of any shape:
    the pixels of heatmaps count one by one).

    Example:
        >>> order_statistic_threshold(np.arange(1.0, 41.0), 0.05)   # k = floor(41 * 0.05) = 2
        39.0
    """
    s = np.asarray(scores).ravel()
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    at = len(s) - rank(len(s), target)
    return float(np.partition(s, at)[at])


def frr_upper_bound(n: int, target: float, confidence: float = CONFIDENCE) -> float:
    """Upper ``confidence`` bound on the false-alarm rate of the threshold chosen on n scores.

    The ``confidence`` quantile of Beta(k, n + 1 - k), k = :func:`rank` (the
    one-sided Clopper-Pearson form for an order statistic).
    """
    from scipy.special import betaincinv

    k = rank(n, target)
    return float(betaincinv(k, n + 1 - k, confidence))


def too_few(n: int, target: float) -> bool:
    """No held-out score meets ``target``: (n + 1) * target < 1."""
    return (n + 1) * target + 1e-9 < 1


def held_out_warning(n: int, target: float) -> str:
    """Why ``n`` held-out normals cannot hold ``target``, and how many would (see :func:`too_few`)."""
    base = (f"only {n} held-out normal image(s) set the threshold: it is their highest score, which "
            f"flags about {100 / (n + 1):.3g}% of new normal images (at most "
            f"{100 * frr_upper_bound(n, target):.3g}% with {CONFIDENCE:.0%} confidence)")
    if target <= 0:
        return base + ", not target_frr=0, which no held-out set can guarantee"
    need = math.ceil(1 / target - 1 - 1e-9)
    return (base + f", not target_frr={target:g}; hold out at least {need} normal images for "
                   f"this target (more normal images or a larger validation_fraction)")


def describe(n: int, target: float) -> str:
    """One line: how the threshold was chosen from n held-out normals and what it guarantees."""
    k = rank(n, target)
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    nth = "" if k == 1 else f"{k}{suffix} "
    return (f"the {nth}highest of {n} held-out normal scores: expected false-alarm "
            f"rate <= {100 * k / (n + 1):.3g}% (target {100 * target:g}%), at most "
            f"{100 * frr_upper_bound(n, target):.3g}% with {CONFIDENCE:.0%} confidence")


def fit_threshold(scores: np.ndarray, n_held: int, fraction: float, target: float,
                  stacklevel: int = 3) -> tuple[float, float | None]:
    """The image threshold a fit sets, and its false-alarm bound (None without held-out normals).

    ``scores``: the ``n_held`` held-out normals' scores, or the training normals' when
    ``n_held`` is 0.  A :class:`ThresholdWarning` says when the held-out normals are too
    few for ``target`` (:func:`too_few`), or when ``fraction`` > 0 held none out; its
    ``stacklevel`` (3: the caller of the function that calls this one) points at the fit.
    """
    threshold = order_statistic_threshold(scores, target)
    if n_held and too_few(n_held, target):
        warnings.warn(held_out_warning(n_held, target), ThresholdWarning, stacklevel=stacklevel)
    elif not n_held and fraction > 0:
        need = 1 / fraction            # inf for a subnormal fraction
        need_text = f"{math.ceil(need)}" if math.isfinite(need) else "more"
        warnings.warn(f"validation_fraction={fraction:g} holds out no normal image (it needs at "
                      f"least {need_text} normal images): the threshold comes "
                      f"from the training normals, whose scores are optimistic, so it flags "
                      f"more than target_frr of new normal images; add normal images",
                      ThresholdWarning, stacklevel=stacklevel)
    return threshold, frr_upper_bound(n_held, target) if n_held else None
