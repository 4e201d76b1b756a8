"""A reference detector without training: nearest normal image on downscaled pixels.

Every image is resized to ``size`` x ``size`` RGB (as the model resizes its
input, :func:`anomem.data.convert.to_image_tensor`), scaled to [0, 1] and
flattened; the score of an image is its L2 distance to the ``k``-th nearest
normal training image (higher = more anomalous).  It costs one distance
matrix, so a learned detector that scores below it on the same images has
learnt nothing a pixel comparison does not already see.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.integers(100, 156, (20, 32, 32), dtype=np.uint8)
    >>> odd = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    >>> ref = PixelKNN(size=16, k=1).fit(normal)
    >>> s = ref.decision_function(np.concatenate([normal[:3], odd]))
    >>> bool(s[:3].max() < s[3:].min())
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from anomem.base import Detector
from anomem.data.convert import _is_count, batches, to_image_tensor, to_normal_flags
from anomem.errors import InvalidInputError, RequiresFitting


def _vectors(images: Any, size: int) -> torch.Tensor:
    """Images as float64 rows (N, 3 * size * size) in [0, 1]."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4 \
            and images.shape[1] == 3 and tuple(images.shape[2:]) == (size, size):
        x = images
    else:
        x = to_image_tensor(images, size, "images")
    return x.reshape(len(x), -1).double().div_(255)


def _kth_distance(q: torch.Tensor, bank: torch.Tensor, k: int, exclude: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """L2 distance of each row of ``q`` to its k-th nearest row of ``bank``.

    ``exclude[i]`` (optional) is a column of ``bank`` that row i may not use
    (itself, for leave-one-out), or -1.
    """
    out = []
    for sl in batches(len(q), 512):
        d = torch.cdist(q[sl], bank)
        if exclude is not None:
            rows = torch.nonzero(exclude[sl] >= 0).squeeze(1)
            d[rows, exclude[sl][rows]] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


class PixelKNN(Detector):
    """Distance to the ``k``-th nearest normal training image, on ``size`` x ``size`` pixels.

    Args:
        size: side the images are resized to before comparison.
        k: which neighbour (1 = the nearest).

    Attributes:
        bank_: the normal training images as rows (N, 3 * size * size), float64 in [0, 1].
    """

    def __init__(self, size: int = 16, k: int = 1) -> None:
        if not _is_count(size) or not _is_count(k):
            raise InvalidInputError(f"size and k must be positive integers, got size={size!r}, k={k!r}")
        self.size, self.k = int(size), int(k)
        self.bank_: torch.Tensor | None = None

    def fit(self, images: Any, labels: Any = None) -> PixelKNN:
        """Store the normal images (labels: 1 = anomaly, 0 = normal, None = all normal)."""
        x = _vectors(images, self.size)
        normal = to_normal_flags(labels, len(x), "labels") == 1
        if int(normal.sum()) < self.k:
            raise InvalidInputError(f"PixelKNN(k={self.k}) needs at least {self.k} normal image(s), "
                                    f"got {int(normal.sum())}")
        self.bank_ = x[normal]
        return self

    def decision_function(self, images: Any) -> np.ndarray:
        """L2 distance to the k-th nearest stored normal image, float64 (N,); higher = more anomalous."""
        if self.bank_ is None:
            raise RequiresFitting("this PixelKNN is not fitted yet; call fit(images) first")
        return _kth_distance(_vectors(images, self.size), self.bank_, self.k).numpy()


def leave_one_out_scores(images: Any, labels: Any, size: int = 16, k: int = 1) -> np.ndarray:
    """PixelKNN scores of labelled images against the normals among them, each leaving itself out.

    An anomaly is scored against every normal image of the set; a normal image
    against every other one (so it is not its own nearest neighbour).  This
    needs no training set: ``anomem evaluate`` uses it as the reference on the
    very images the model is evaluated on.

    Args:
        labels: 1 = anomaly, 0 = normal, one per image; at least ``k + 1`` normals.
    """
    ref = PixelKNN(size, k)
    x = _vectors(images, ref.size)
    normal = to_normal_flags(labels, len(x), "labels") == 1
    if int(normal.sum()) < ref.k + 1:
        raise InvalidInputError(f"leave-one-out PixelKNN(k={ref.k}) needs at least {ref.k + 1} "
                                f"normal images, got {int(normal.sum())}")
    column = torch.full((len(x),), -1, dtype=torch.long)
    column[normal] = torch.arange(int(normal.sum()))
    return _kth_distance(x, x[normal], ref.k, exclude=column).numpy()
