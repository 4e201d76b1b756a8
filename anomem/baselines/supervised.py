"""Supervised binary classifier with batch balancing (the paper's "Supervised" row).

AnoMem's pooled ResNet with a linear output is trained with the binary
cross-entropy, each batch drawn half from the normal and half from the
labelled anomalous images (with replacement), so a few anomalies weigh as
much as the normals.  The score is the anomaly logit.  It needs at least one
labelled anomaly: with none it is undefined (use a one-class method).

Example:
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> X, t = load_digits(return_X_y=True)
    >>> X = X.reshape(-1, 8, 8) / 16.0
    >>> lab = (t[:60] != 0).astype(int)
    >>> det = SupervisedClassifier("digits", stage1_epochs=1).fit(X[:60], lab)
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
from anomem.baselines.common import (
    PooledEncoder,
    Sampler,
    as_scores,
    embed,
    prepare,
    resolve_config,
    train_loop,
)
from anomem.config import AnoMemConfig
from anomem.errors import InvalidInputError


def balanced_sampler(y: torch.Tensor, bsz: int) -> Sampler:
    """Batches with ``bsz // 2`` normal and ``bsz - bsz // 2`` anomalous indices."""
    normal = torch.nonzero(y > 0.5).squeeze(1)
    anomalous = torch.nonzero(y < 0.5).squeeze(1)

    def draw(step: int, g: torch.Generator) -> torch.Tensor:
        a = normal[torch.randint(len(normal), (bsz // 2,), generator=g)]
        b = anomalous[torch.randint(len(anomalous), (bsz - bsz // 2,), generator=g)]
        return torch.cat([a, b])
    return draw


class SupervisedClassifier(Detector):
    """Normal-vs-anomaly classifier trained on balanced batches.

    Args:
        config: AnoMem preset name, YAML path or config (backbone, batch size,
            ``stage1.epochs``, ``stage1.lr``, augmentation, seed, device).
        **overrides: configuration keys to change.
    """

    def __init__(self, config: AnoMemConfig | str = "cpu", **overrides: Any) -> None:
        self.config = resolve_config(config, overrides)
        self.net: nn.Module | None = None
        self.losses_: list[float] = []

    def fit(self, images: Any, labels: Any = None) -> SupervisedClassifier:
        """Train on ``images`` with labels 1 = anomaly, 0 = normal (at least one anomaly)."""
        cfg = self.config
        x, y = prepare(images, labels, cfg)
        if not bool((y < 0.5).any()):
            raise InvalidInputError("the supervised classifier needs labelled anomalies "
                                    "(labels with at least one 1); use AnoMem, DeepSAD or kNN "
                                    "for the one-class setting")
        torch.manual_seed(cfg.runtime.seed)
        enc = PooledEncoder(cfg)
        net = nn.Sequential(enc, nn.Linear(enc.dim, 1))

        def loss_fn(logit: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(logit.squeeze(1), 1 - yb)

        self.losses_ = train_loop(
            net, list(net.parameters()), x, y, cfg, loss_fn,
            lambda ps: torch.optim.SGD(ps, lr=cfg.stage1.lr, momentum=cfg.stage1.momentum,
                                       weight_decay=cfg.stage1.weight_decay, nesterov=True),
            balanced_sampler(y, min(cfg.stage1.batch_size, len(x))), name="supervised")
        self.net = net
        return self

    def decision_function(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Anomaly logit of each image (higher = more anomalous)."""
        return as_scores(embed(self.net, images, self.config, batch_size))
