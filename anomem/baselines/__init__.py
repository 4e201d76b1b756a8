"""Baselines of the paper's tables, each an estimator like :class:`anomem.AnoMem`.

``fit(images, labels)`` (labels: 1 = anomaly, 0 = normal, or None) and
``decision_function(images)`` (higher = more anomalous), on the same backbone,
augmentation and training budget as AnoMem's configuration.

:class:`PixelKNN` is the training-free reference: the distance to the nearest
normal image on downscaled pixels (``anomem evaluate`` reports its AUROC
beside the model's).
"""

from anomem.baselines.pixel_knn import PixelKNN

__all__ = ["PixelKNN"]
