"""Batched two-view contrastive augmentation on the device (paper §4.2).

Random resized crop, horizontal flip, brightness / contrast / saturation
jitter (no hue: the paper does not use it), gaussian blur and gaussian noise,
each sampled per image but applied to the whole batch at once by kornia.
Randomness comes from torch's global generator, so ``torch.manual_seed``
(and a checkpoint's RNG state) fixes the views.

``shared_geometry`` (the paper is silent): Eq. 7 pairs the vectors at the same
grid position (i, j) of the two views.  With independent crops and flips
(SimCLR's recipe, the default) that position shows different parts of the
image in each view; with the geometry shared, one crop and flip is drawn per
image and only the photometric transforms (jitter, blur, noise) differ, so
position (i, j) is the same physical patch in both views.
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
        shared_geometry: draw one crop and flip per image for both views (see the module
            docstring); ``False`` draws them independently per view.

    Example:
        >>> aug = TwoViewAugment(16)
        >>> v1, v2 = aug(torch.rand(4, 3, 16, 16))
        >>> v1.shape, bool((v1 != v2).any())
        (torch.Size([4, 3, 16, 16]), True)
    """

    def __init__(self, size: int, crop_scale: tuple[float, float] = (0.2, 1.0),
                 jitter: float = 0.4, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 noise_std: float = 0.05, shared_geometry: bool = False) -> None:
        super().__init__()
        kernel = max(3, (size // 10) | 1)
        self.shared_geometry = shared_geometry
        self.geometric = nn.Sequential(K.RandomResizedCrop((size, size), scale=crop_scale),
                                       K.RandomHorizontalFlip())
        ops: list[nn.Module] = []
        if jitter > 0:
            ops.append(K.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, p=0.8))
        ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=blur_sigma, p=0.5))
        if noise_std > 0:
            ops.append(K.RandomGaussianNoise(std=noise_std, p=0.5))
        self.photometric = nn.Sequential(*ops)
        self.pipeline = nn.Sequential(self.geometric, self.photometric)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared_geometry:
            g = self.geometric(x)
            return self.photometric(g).clamp_(0, 1), self.photometric(g).clamp_(0, 1)
        return self.pipeline(x).clamp_(0, 1), self.pipeline(x).clamp_(0, 1)


@torch.no_grad()
def rotated_pseudo_anomalies(v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, fraction: float,
                             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """Stage 1's ``pseudo_anomalies="rotation"``: the batch plus rotated copies labelled anomalous.

    The paper is silent; this is the distribution-shifting transformation of
    contrastive anomaly detection (rotated normals as anomalies, as in CSI,
    Tack et al. 2020) written in AnoMem's own terms: the copies enter Eq. 3
    with y = 0, so their first view bypasses the memory and every normal
    prototype is a negative of them in Eq. 4.  The first round(fraction * B)
    images of the (shuffled) batch are copied, both views of one image rotated
    by the same multiple of 90 degrees (drawn from 90, 180, 270 with
    ``generator``), so the two views stay a positive pair.  Images are square
    (the augmentation's output).  ``y`` is 1 for normal images.  Measured in
    ``docs/design.md``: +6.4 AUROC on magnetic-tile defects, level on digits,
    -3.9 on CIFAR-10 airplane (a rotated aircraft is still normal).

    Example:
        >>> v = torch.rand(4, 3, 8, 8)
        >>> a, b, y = rotated_pseudo_anomalies(v, v, torch.ones(4), 0.5, torch.Generator())
        >>> a.shape, y.tolist()
        (torch.Size([6, 3, 8, 8]), [1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    """
    k = max(1, round(fraction * len(v1)))
    turns = torch.randint(1, 4, (k,), generator=generator).to(v1.device)

    def with_turned(v: torch.Tensor) -> torch.Tensor:
        out = torch.cat([v, v[:k]])
        for q in (1, 2, 3):
            sel = torch.nonzero(turns == q).squeeze(1)
            out[len(v) + sel] = torch.rot90(v[sel], q, dims=(2, 3))
        return out

    return with_turned(v1), with_turned(v2), torch.cat([y, y.new_zeros(k)])
