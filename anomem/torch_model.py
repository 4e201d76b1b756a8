"""The plain, exportable AnoMem network: encoder, memories, scale heads, fusion.

This module holds no training logic (see :mod:`anomem.stages`) and no file or
array handling (see :mod:`anomem.detector`); its ``forward`` maps a batch of
images in [0, 1] to anomaly scores, higher = more anomalous, and can be traced
for TorchScript / ONNX export.
"""

from __future__ import annotations

import torch
from torch import nn

from anomem.backbone import ResNet
from anomem.config import AnoMemConfig
from anomem.memory import HopfieldMemory, KMeansMemory


class ScaleHead(nn.Module):
    """Eq. 10: g(s) o phi, average pooling to ``pool`` x ``pool`` then a two-layer MLP to a scalar."""

    def __init__(self, channels: int, pool: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.mlp = nn.Sequential(nn.Linear(channels * pool * pool, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def phi(self, delta: torch.Tensor) -> torch.Tensor:
        """Pooled, flattened deviation map phi(Delta)."""
        return self.pool(delta).flatten(1)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.phi(delta)).squeeze(-1)


class AnoMemModel(nn.Module):
    """Encoder f, one memory layer per memory scale, optional scale heads.

    Scores (``forward``): one-class, s(s) = ||Delta(s)||_2 over the whole map
    (Eq. 9); semi-supervised, s(s) = g(s)(phi(Delta(s))) (Eq. 10); fused as
    sum_s alpha(s) s(s) / sum_s alpha(s) (Eq. 13).  When ``calibrated`` (one-class
    option ``calibrate``), each s(s) is first standardised with the mean and
    standard deviation of the training normals' scores.

    Example:
        >>> from anomem.config import get_config
        >>> m = AnoMemModel(get_config("digits")).eval()
        >>> m(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2])
    """

    def __init__(self, config: AnoMemConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ResNet(config.arch, config.width, config.stem)
        self.stages = tuple(s - 1 for s in config.memory_stages)
        self.dims = tuple(self.encoder.channels[i] for i in self.stages)
        self.memories = nn.ModuleList(
            HopfieldMemory(d, n, config.beta, config.hopfield_steps, config.hopfield_tol,
                           config.normalize) for d, n in zip(self.dims, config.mem_sizes))
        self.heads: nn.ModuleList | None = None
        alphas = torch.tensor(config.alphas)
        self.register_buffer("alphas", alphas / alphas.sum())
        self.register_buffer("score_mean", torch.zeros(len(self.dims)))
        self.register_buffer("score_std", torch.ones(len(self.dims)))

    @property
    def semi_supervised(self) -> bool:
        return self.heads is not None

    def add_heads(self) -> nn.ModuleList:
        """Create (and return) the per-scale MLPs of the semi-supervised detector (Eq. 10)."""
        c = self.config
        self.heads = nn.ModuleList(ScaleHead(d, c.head_pool, c.head_hidden) for d in self.dims)
        return self.heads

    def use_kmeans(self, centroids: list[torch.Tensor]) -> None:
        """Replace every memory by nearest-k-means-centroid retrieval (Table 4 ablation)."""
        self.memories = nn.ModuleList(KMeansMemory(c, self.config.normalize) for c in centroids)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps z(s) at the memory scales."""
        maps = self.encoder(x, upto=self.stages[-1] + 1)
        return [maps[i] for i in self.stages]

    def deviation_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Eq. 8: Delta(s) = z(s) - HF(s)(z(s)) at every memory scale, each (B, C, H, W)."""
        return [m.deviation(z) for m, z in zip(self.memories, self.features(x))]

    def scale_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-scale anomaly scores (B, S), before fusion and calibration."""
        deltas = self.deviation_maps(x)
        if self.heads is not None:
            return torch.stack([h(d) for h, d in zip(self.heads, deltas)], dim=1)
        return torch.stack([d.flatten(1).norm(dim=1) for d in deltas], dim=1)

    def fuse(self, scores: torch.Tensor) -> torch.Tensor:
        """Eq. 13 on (B, S) per-scale scores, after the optional calibration."""
        return ((scores - self.score_mean) / self.score_std) @ self.alphas

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.scale_scores(x))
