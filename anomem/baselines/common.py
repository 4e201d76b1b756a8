"""What the trained baselines share: a pooled ResNet encoder and one training loop.

The loop uses AnoMem's configuration for the backbone (``backbone.arch``, ``backbone.width``,
``backbone.stem``), the augmentation (one view of :class:`anomem.augment.TwoViewAugment`),
the batch size and the number of epochs (``stage1.epochs``), so a baseline
gets the same data, augmentation and budget as AnoMem's stage 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from anomem.augment import TwoViewAugment
from anomem.backbone import ResNet
from anomem.config import AnoMemConfig, get_config
from anomem.data.convert import batches, to_image_tensor, to_normal_flags
from anomem.detector import resolve_device
from anomem.errors import InvalidInputError, RequiresFitting
from anomem.stages.common import check_finite

Sampler = Callable[[int, torch.Generator], torch.Tensor]


def resolve_config(config: AnoMemConfig | str, overrides: dict[str, Any]) -> AnoMemConfig:
    """A config object from a preset name / YAML path / object, with overrides."""
    if isinstance(config, AnoMemConfig):
        return config.replace(**overrides) if overrides else config
    return get_config(config, overrides)


class PooledEncoder(nn.Module):
    """ResNet of the config followed by global average pooling of the last stage."""

    def __init__(self, cfg: AnoMemConfig) -> None:
        super().__init__()
        bb = cfg.backbone
        self.net = ResNet(bb.arch, bb.width, bb.stem, padding=bb.padding)
        self.dim = self.net.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1].mean(dim=(2, 3))


def prepare(images: Any, labels: Any, cfg: AnoMemConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated uint8 images and the paper's y (1 = normal) from public labels."""
    x = to_image_tensor(images, cfg.backbone.image_size, "images")
    y = to_normal_flags(labels, len(x), "labels")
    if int(y.sum()) < 2:
        raise InvalidInputError(f"fit needs at least 2 normal images, got {int(y.sum())}")
    return x, y


def uniform_sampler(n: int, bsz: int) -> Sampler:
    """Each epoch a fresh permutation of all ``n`` images, cut in batches."""
    per_epoch = max(1, n // bsz)

    def draw(step: int, g: torch.Generator) -> torch.Tensor:
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            draw.perm = torch.randperm(n, generator=g)  # type: ignore[attr-defined]
        return draw.perm[i * bsz:(i + 1) * bsz]  # type: ignore[attr-defined]
    return draw


def train_loop(module: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
               cfg: AnoMemConfig, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
               sampler: Sampler | None = None, name: str = "baseline") -> list[float]:
    """Train ``module`` for ``cfg.stage1.epochs`` epochs of ``len(x) // batch_size`` steps.

    Each step draws a batch (``sampler``, default uniform without replacement),
    augments it once and minimises ``loss_fn(module(view), y_batch)``; the
    learning rate follows a cosine schedule.  Returns the per-step losses.
    """
    device = resolve_device(cfg.runtime.device)
    module.to(device).train()
    n = len(x)
    bsz = min(cfg.stage1.batch_size, n)
    total = cfg.stage1.epochs * max(1, n // bsz)
    opt = optimizer(params)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    aug = TwoViewAugment.of(cfg.backbone.image_size, cfg.stage1).pipeline
    draw = sampler or uniform_sampler(n, bsz)
    g = torch.Generator().manual_seed(cfg.runtime.seed)
    losses = []
    for step in range(total):
        idx = draw(step, g)
        with torch.no_grad():
            view = aug(x[idx].to(device).float().div_(255)).clamp_(0, 1)
        loss = loss_fn(module(view), y[idx].to(device))
        losses.append(check_finite(loss, step, name, "stage1.lr"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    module.eval()
    return losses


@torch.no_grad()
def embed(module: nn.Module | None, images: Any, cfg: AnoMemConfig, batch_size: int = 256
          ) -> torch.Tensor:
    """``module`` applied to images in eval mode, batch by batch, on the CPU."""
    if module is None:
        raise RequiresFitting("this detector is not fitted yet; call fit(images) first")
    x = images if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 \
        else to_image_tensor(images, cfg.backbone.image_size, "images")
    device = next(module.parameters()).device
    module.eval()
    return torch.cat([module(x[sl].to(device).float().div_(255)).cpu()
                      for sl in batches(len(x), batch_size)])


def as_scores(t: torch.Tensor) -> np.ndarray:
    """Scores as float64 numpy, shape (N,)."""
    return t.reshape(-1).double().numpy()
