"""Deep SAD (Ruff et al., ICLR 2020): the paper's unified one-class / semi-supervised baseline.

A network phi (AnoMem's ResNet, globally pooled, then a bias-free linear map to
``rep_dim``) is trained so that normal images land near a centre c and
labelled anomalies far from it:

    L = 1/n sum_normal ||phi(x) - c||^2 + eta/n sum_anomaly (||phi(x) - c||^2 + eps)^-1

Without labelled anomalies this is Deep SVDD (one-class).  The anomaly score is
||phi(x) - c||^2.  As in the original, c is the mean initial output on the
normal images with near-zero coordinates pushed to +-0.1, and no layer has a
trainable bias (BatchNorm's affine terms are frozen at identity) so the
trivial constant solution is unreachable.  Differences from the original: no
autoencoder pre-training (the same training budget as AnoMem's stage 1 is
spent on the objective itself) and AnoMem's augmentation is applied.

Example:
    >>> from sklearn.datasets import load_digits
    >>> X, t = load_digits(return_X_y=True)
    >>> X = X.reshape(-1, 8, 8) / 16.0
    >>> det = DeepSAD("digits", stage1_epochs=1).fit(X[t == 0][:40])
    >>> det.decision_function(X[:5]).shape
    (5,)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from anomem.base import Detector
from anomem.baselines.common import PooledEncoder, as_scores, embed, prepare, resolve_config, train_loop
from anomem.config import AnoMemConfig


class _DeepSADNet(nn.Module):
    def __init__(self, cfg: AnoMemConfig, rep_dim: int) -> None:
        super().__init__()
        self.encoder = PooledEncoder(cfg)
        self.proj = nn.Linear(self.encoder.dim, rep_dim, bias=False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        self.register_buffer("c", torch.zeros(rep_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.proj(self.encoder(x)) - self.c) ** 2).sum(dim=1)


class DeepSAD(Detector):
    """Deep SAD / Deep SVDD on AnoMem's backbone, augmentation and budget.

    Args:
        config: AnoMem preset name, YAML path or config (backbone, batch size,
            ``stage1.epochs``, augmentation, seed and device are used).
        eta: weight of the labelled-anomaly term.
        rep_dim: output dimension of phi.
        lr: Adam learning rate (Deep SAD's optimiser).
        **overrides: configuration keys to change.
    """

    def __init__(self, config: AnoMemConfig | str = "cpu", eta: float = 1.0, rep_dim: int = 128,
                 lr: float = 1e-3, **overrides: Any) -> None:
        self.config = resolve_config(config, overrides)
        self.eta, self.rep_dim, self.lr = eta, rep_dim, lr
        self.net: _DeepSADNet | None = None
        self.losses_: list[float] = []

    def fit(self, images: Any, labels: Any = None) -> DeepSAD:
        """Train on ``images``; labels 1 = anomaly, 0 = normal (None: all normal)."""
        cfg = self.config
        x, y = prepare(images, labels, cfg)
        torch.manual_seed(cfg.runtime.seed)
        net = _DeepSADNet(cfg, self.rep_dim)
        with torch.no_grad():
            z = embed(nn.Sequential(net.encoder, net.proj), x[y == 1], cfg).mean(0)
            z[(z.abs() < 0.1) & (z < 0)] = -0.1
            z[(z.abs() < 0.1) & (z >= 0)] = 0.1
            net.c.copy_(z)
        eta, eps = self.eta, 1e-6

        def loss_fn(dist: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return torch.where(yb > 0.5, dist, eta / (dist + eps)).mean()

        params = [p for p in net.parameters() if p.requires_grad]
        self.losses_ = train_loop(net, params, x, y, cfg, loss_fn,
                                  lambda ps: torch.optim.Adam(ps, lr=self.lr, weight_decay=1e-6),
                                  name="Deep SAD")
        self.net = net
        return self

    def decision_function(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """||phi(x) - c||^2 of each image (higher = more anomalous)."""
        return as_scores(embed(self.net, images, self.config, batch_size))
