"""The estimator contract every anomem detector follows (PyOD style).

``fit(images, labels=None)`` (labels: 1 = anomaly, 0 = normal),
``decision_function(images)`` with one convention everywhere, **higher = more
anomalous**, and ``predict(images, threshold=None)`` at ``threshold_`` (set by
a fit that holds normal images out for it, as :class:`anomem.AnoMem` does) or
at a threshold the caller passes.

Example:
    >>> import numpy as np
    >>> from anomem.baselines import PixelKNN
    >>> det = PixelKNN(size=8).fit(np.zeros((5, 8, 8), np.uint8))
    >>> det.predict(np.full((2, 8, 8), 255, np.uint8), threshold=1.0).tolist()
    [1, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from anomem.errors import InvalidInputError, RequiresFitting


def is_real(v: Any) -> bool:
    """An int or float (Python or numpy), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


class Detector:
    """Base of AnoMem and the baselines: ``fit``, ``decision_function``, ``predict``, ``threshold_``."""

    #: score above which :meth:`predict` calls an image an anomaly (None: not set by fit)
    threshold_: float | None = None

    def fit(self, images: Any, labels: Any = None) -> Detector:
        raise NotImplementedError

    def decision_function(self, images: Any) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images: Any, threshold: float | None = None) -> np.ndarray:
        """1 for an anomaly, 0 for a normal image, at ``threshold`` (default :attr:`threshold_`)."""
        t = self.threshold_ if threshold is None else threshold
        if t is None:
            raise RequiresFitting(f"{type(self).__name__} has no threshold: fit a detector that "
                                  f"sets threshold_ or pass threshold=...")
        if not is_real(t) or np.isnan(t):
            raise InvalidInputError(f"threshold must be a number (a score), got {t!r}")
        return (self.decision_function(images) > t).astype(np.int64)


class MapDetector(Detector):
    """A detector with heatmaps: ``anomaly_map(images, batch_size=...)`` and a pixel threshold
    ``pixel_threshold_``, hence :meth:`predict_mask`."""

    #: until fit or load: no threshold, hence no bound and no held-out normals
    threshold_frr_bound_: float | None = None
    threshold_normals_: int = 0
    #: heatmap value above which :meth:`predict_mask` calls a pixel anomalous (None: not set)
    pixel_threshold_: float | None = None

    def anomaly_map(self, images: Any, sigma: float | None = None,
                    batch_size: int = 64) -> np.ndarray | list[np.ndarray]:
        raise NotImplementedError

    def _require_model(self) -> Any:
        raise NotImplementedError

    def predict_mask(self, images: Any, threshold: float | None = None,
                     batch_size: int = 64) -> np.ndarray | list[np.ndarray]:
        """Boolean anomalous-pixel masks: :meth:`anomaly_map` (default smoothing) above
        ``threshold`` (default :attr:`pixel_threshold_`), each at its image's own size.

        Raises:
            RequiresFitting: no threshold given and the detector has no pixel threshold.
            InvalidInputError: ``threshold`` is not a number.
        """
        t = self.pixel_threshold_ if threshold is None else threshold
        if t is None:
            self._require_model()
            raise RequiresFitting("this detector has no pixel threshold (its model file predates "
                                  "it): fit it again or pass threshold=...")
        if not is_real(t) or np.isnan(t):
            raise InvalidInputError(f"threshold must be a number (a heatmap value), got {t!r}")
        maps = self.anomaly_map(images, batch_size=batch_size)
        return maps > t if isinstance(maps, np.ndarray) else [m > t for m in maps]
