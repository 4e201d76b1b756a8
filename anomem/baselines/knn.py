"""k-nearest-neighbour detector on AnoMem's encoder features (the memory-bank family).

Every normal training image is stored as a feature vector: at each of the
config's memory stages the encoder's map is globally average-pooled and
L2-normalised, and the scales are concatenated.  The score of an image is the
mean cosine distance to its ``k`` nearest stored vectors (Bergman et al.,
2020).  Unlike AnoMem's N_mem prototypes, the bank grows with the training
set: ``bank_`` holds one row per normal training image.

The encoder is either trained here (AnoMem's stage 1 on the same images) or
taken from an already fitted :class:`~anomem.AnoMem` (``encoder=``), which
compares a stored-everything bank with AnoMem's memory on the very same
features.

Example:
    >>> from sklearn.datasets import load_digits
    >>> X, t = load_digits(return_X_y=True)
    >>> X = X.reshape(-1, 8, 8) / 16.0
    >>> det = KNNDetector("digits", stage1_epochs=1).fit(X[t == 0][:40])
    >>> det.decision_function(X[:5]).shape
    (5,)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomem.base import Detector
from anomem.baselines.common import as_scores, embed, prepare, resolve_config
from anomem.config import AnoMemConfig
from anomem.data.convert import batches
from anomem.detector import AnoMem
from anomem.errors import InvalidInputError
from anomem.torch_model import AnoMemModel


class _PooledScales(nn.Module):
    def __init__(self, model: AnoMemModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.model.features(x)[:self.model.n_maps]      # the memory stages' maps
        return torch.cat([F.normalize(z.mean(dim=(2, 3)), dim=1) for z in maps], dim=1)


class KNNDetector(Detector):
    """Mean distance to the ``k`` nearest normal training images in feature space.

    Args:
        config: AnoMem preset name, YAML path or config.
        k: number of neighbours.
        encoder: a fitted :class:`~anomem.AnoMem` whose encoder is reused
            (None: AnoMem is fitted on the training images first).
        **overrides: configuration keys to change.
    """

    def __init__(self, config: AnoMemConfig | str = "cpu", k: int = 2,
                 encoder: AnoMem | None = None, **overrides: Any) -> None:
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        self.config = resolve_config(config, overrides)
        self.k, self.encoder = k, encoder
        self.bank_: torch.Tensor | None = None
        self._net: _PooledScales | None = None

    def fit(self, images: Any, labels: Any = None) -> KNNDetector:
        """Store the features of the normal images (labels: 1 = anomaly, 0 = normal)."""
        x, y = prepare(images, labels, self.config)
        if self.encoder is None:
            self.encoder = AnoMem(self.config).fit(x, 1 - y.numpy().astype(np.int64),
                                                   validation_fraction=0.0)
        model = self.encoder.network
        self._net = _PooledScales(model)
        self.bank_ = embed(self._net, x[y == 1], model.config)
        return self

    def decision_function(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Mean cosine distance to the k nearest stored normals (higher = more anomalous)."""
        q = embed(self._net, images, self.config, batch_size)
        assert self.bank_ is not None
        k = min(self.k, len(self.bank_))
        out = [(1 - (q[sl] @ self.bank_.T / self.encoder.network.n_maps))
               .topk(k, dim=1, largest=False).values.mean(1) for sl in batches(len(q), 1024)]
        return as_scores(torch.cat(out))
