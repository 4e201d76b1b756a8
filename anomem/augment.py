"""Batched two-view contrastive augmentation on the device (SPEC §1, paper §4.2).

Random resized crop, horizontal flip, brightness / contrast / saturation
jitter (no hue: the paper does not use it), gaussian blur and gaussian noise,
each sampled per image but applied to the whole batch at once by kornia.
Randomness comes from torch's global generator, so ``torch.manual_seed``
(and a checkpoint's RNG state) fixes the views.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class TwoViewAugment(nn.Module):
    """Draws two independent augmented views t(x), t'(x) of a batch in [0, 1].

    Args:
        size: output side (square).
        crop_scale: area range of the random resized crop.
        jitter: strength s of brightness/contrast/saturation jitter (factors in [1-s, 1+s]).
        blur_sigma: sigma range of the gaussian blur (applied with probability 0.5).
        noise_std: standard deviation of the additive gaussian noise (probability 0.5).

    Example:
        >>> aug = TwoViewAugment(16)
        >>> v1, v2 = aug(torch.rand(4, 3, 16, 16))
        >>> v1.shape, bool((v1 != v2).any())
        (torch.Size([4, 3, 16, 16]), True)
    """

    def __init__(self, size: int, crop_scale: tuple[float, float] = (0.2, 1.0),
                 jitter: float = 0.4, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 noise_std: float = 0.05) -> None:
        super().__init__()
        kernel = max(3, (size // 10) | 1)
        ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=crop_scale),
                                K.RandomHorizontalFlip()]
        if jitter > 0:
            ops.append(K.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, p=0.8))
        ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=blur_sigma, p=0.5))
        if noise_std > 0:
            ops.append(K.RandomGaussianNoise(std=noise_std, p=0.5))
        self.pipeline = nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipeline(x).clamp_(0, 1), self.pipeline(x).clamp_(0, 1)
