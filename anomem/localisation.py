"""Anomaly localisation: one heatmap at input resolution from the multi-scale deviation maps.

The paper stops at image scores and names "merging the several scale anomaly
maps into a single heatmap" as future work.  This module does it with the
quantities the image score is made of, so that heatmap and score agree:

1. **Per-position scale scores** m(s)_ij, on each memory scale's H(s) x W(s) grid.
   One-class: m(s)_ij = ||Delta(s)_ij||_2, the norm of the Eq. 8 deviation
   vector at that position (Eq. 9 is the l2 norm of all of them together).
   Semi-supervised: the scale head g(s) of Eq. 10 applied position by
   position.  A head sees phi(Delta), the average pooling of Delta to p x p
   cells, flattened; a position cannot be pooled on its own, so m(s)_ij is
   defined as the head's output on the map equal to Delta(s)_ij everywhere:
   phi of that map is Delta_ij repeated in every cell, so the first layer's
   weights are summed over the cells and g(s) becomes a 1x1 convolution
   (:meth:`~anomem.torch_model.ScaleHead.position_map`).  It is exact for a uniform map and piecewise-linear
   in Delta_ij, like g(s) itself.
2. **Upsampling** of each m(s) to the input side (bilinear, ``align_corners=False``).
3. **Fusion** (``scoring.heatmap_scales="all"``; the default ``finest`` keeps the
   earliest memory stage's map alone, see :func:`heatmap_weights`) with the normalised
   alpha(s) weights of Eq. 13 (the ``alphas``
   buffer of :class:`~anomem.torch_model.AnoMemModel`); one-class positions are
   divided by the scale's ``score_std`` (1 unless calibrated), as the image
   score is (:meth:`~anomem.torch_model.AnoMemModel.score_and_maps` computes
   both).  An image-level scale has no position and is left out of the map (it
   would add one constant to every pixel of an image: measured on validation
   data, it lowers the map's pixel AUROC and AUPRO on two image sets,
   ``docs/design.md``); the alphas of the scales read are renormalised to sum to 1.
4. **Smoothing** (optional) by a gaussian of standard deviation ``sigma`` input pixels.
5. **Standardisation pixel by pixel** (``scoring.heatmap_calibration="position"``; off by
   default): (map - mu_ij) / sd_ij, with the mean and standard deviation at each pixel of
   the maps of held-out normal images (the model's ``map_loc`` and ``map_scale``, set by
   :func:`anomem.heatmaps.fit_map_calibration` at the default smoothing).  A pixel where
   normal images score high or vary much, such as a border the network reads
   differently or a structure every part has at the same place, then no longer outranks
   the others.  It assumes the images are aligned (the same part at the same place);
   measured on validation data, it helps on aligned tiles and not on photographs
   (``docs/design.md``).

Under ``scoring.heatmap_reader="head"`` or ``"tuned"`` step 1 is replaced: the position head's logits on the
finest grid it reads (:meth:`~anomem.torch_model.AnoMemModel.position_logits`, trained on
pasted defects by :mod:`anomem.stages.position_head`) are the only map, upsampled, smoothed
and standardised as above.  The key is read at each call, so a fitted network with a head
can be read either way.

With ``scoring.heatmap_margin`` m > 0 the image is first mirrored beyond each
border by round(m S) pixels (``reflect``, at most S - 1), steps 1-4 run on the
larger image and the margin is cropped from the map (before step 5).  A convolution near the
border of a plain input reads its zero padding, so positions within the
network's reach of the border see a frame that no interior position sees: a
constant image gets a map brighter or darker along its edges.  Mirrored, a
constant image stays constant, and with a margin beyond that reach (m = 0.5 at
128 px with the ``mtd`` preset) its map is flat.  Only the heatmap reads the
margin (the image score does not): it costs (1 + 2m)^2 times the compute.

Everything is plain tensor algebra, so :class:`AnomalyMapNet` can be traced
(``torch.jit.trace``) for export.  Higher = more anomalous, as everywhere.

Resolution and cost.  A map is as fine as the earliest memory scale: the
``mtd`` preset (128 x 128 inputs, ImageNet stem, memory after stages 2 and 3)
gives 16 x 16 and 8 x 8 maps (strides 8 and 16) at about the compute of a 32 x 32
CIFAR-stem network, since stage 4 is never evaluated; see
``benchmarks/localisation/README.md`` for the measured cost.

Example:
    >>> from anomem.config import get_config
    >>> from anomem.torch_model import AnoMemModel
    >>> model = AnoMemModel(get_config("digits")).eval()
    >>> anomaly_map(model, torch.rand(2, 3, 16, 16), sigma=1.0).shape
    torch.Size([2, 16, 16])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomem.errors import InvalidInputError
from anomem.scales import Scale
from anomem.torch_model import AnoMemModel


def position_scores(model: AnoMemModel, images: torch.Tensor) -> list[torch.Tensor]:
    """Per-position scale scores m(s), one (B, H(s), W(s)) tensor per map scale the heatmap
    reads (:func:`heatmap_scales`; every ``scoring.views`` view's, each flipped back onto the
    image)."""
    maps = model.score_and_maps(images)[1]
    return [maps[s.index] for s in heatmap_scales(model)]


def heatmap_scales(model: AnoMemModel) -> list[Scale]:
    """The scales step 3 fuses, by ``scoring.heatmap_scales``: ``finest`` (the default), the
    earliest memory stage's map alone, the finest grid; ``all``, every map scale (Eq. 13 gives
    the coarse, semantic scales the most weight, which serves the image score, while a heatmap
    needs resolution).  Chosen on synthetic defects in held-out training normals of two image
    sets (``docs/design.md``).
    """
    spatial = [s for s in model.scales if not s.pooled]
    if model.config.scoring.heatmap_scales == "finest":
        first = min(s.stage for s in spatial)
        spatial = [s for s in spatial if s.stage == first]
    return spatial


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of (B, H, W) maps, edge-replicated; ``sigma`` in pixels (0 = none).

    The kernel is truncated at 3 sigma; it depends on ``sigma`` only, never on the map size.
    """
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1)).squeeze(1)


def anomaly_map(model: AnoMemModel, images: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Fused anomaly heatmap (B, H, W) of float images (B, 3, H, W) in [0, 1].

    Args:
        model: a fitted network, one-class or semi-supervised (put it in eval mode).
        images: the batch, at the model's input side.
        sigma: standard deviation in input pixels of the final gaussian smoothing (0: none).
    """
    if not sigma >= 0:
        raise InvalidInputError(f"sigma must be a non-negative number of pixels, got {sigma!r}")
    if not torch.jit.is_tracing() and (images.ndim != 4 or images.shape[1] != 3):
        raise InvalidInputError(f"images must be a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    ph, pw = margin_pixels(model, h), margin_pixels(model, w)
    padded = F.pad(images, (pw, pw, ph, ph), mode="reflect") if ph or pw else images
    if model.config.scoring.heatmap_reader != "memory":
        scores, weights = [model.position_logits(padded)], model.alphas.new_ones(1)
    else:
        scores, weights = position_scores(model, padded), heatmap_weights(model)
    maps = fuse_maps(scores, weights, padded.shape[-2:], sigma)
    maps = maps[:, ph:ph + h, pw:pw + w]
    if model.config.scoring.heatmap_calibration == "position":
        maps = standardise_pixels(maps, model.map_loc, model.map_scale)
    return maps


def standardise_pixels(maps: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Step 5 of the module docstring: (B, H, W) maps minus ``loc``, divided by ``scale``, pixel
    by pixel; both (S, S) are resized (bilinear) to H x W when the maps have another size."""
    if tuple(loc.shape) != tuple(maps.shape[-2:]):
        loc, scale = (F.interpolate(t[None, None], size=maps.shape[-2:], mode="bilinear",
                                    align_corners=False)[0, 0] for t in (loc, scale))
    return (maps - loc) / scale


def margin_pixels(model: AnoMemModel, side: int) -> int:
    """The mirrored margin of ``scoring.heatmap_margin`` at an input ``side``, in pixels
    (at most ``side - 1``, what a reflection can mirror)."""
    return min(round(model.config.scoring.heatmap_margin * int(side)), int(side) - 1)


def heatmap_weights(model: AnoMemModel) -> torch.Tensor:
    """Step 3's weights of the scales of :func:`heatmap_scales`, in :func:`position_scores`'
    order: Eq. 13's alphas, renormalised to sum to 1 over those scales."""
    w = model.alphas[[s.index for s in heatmap_scales(model)]]
    return w / w.sum()


def fuse_maps(maps: list[torch.Tensor], weights: torch.Tensor, size: tuple[int, int] | torch.Size,
              sigma: float) -> torch.Tensor:
    """Steps 2-4 of the module docstring: upsample each (B, H(s), W(s)) map to ``size``
    (bilinear), sum them with ``weights`` (S,), smooth by a gaussian of ``sigma`` pixels."""
    up = torch.stack([F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
                      .squeeze(1) for m in maps], dim=1)
    return gaussian_smooth(torch.einsum("s,bshw->bhw", weights, up), sigma)


class AnomalyMapNet(nn.Module):
    """:func:`anomaly_map` as a module (fixed ``sigma``), for tracing and export.

    Example:
        >>> from anomem.config import get_config
        >>> net = AnomalyMapNet(AnoMemModel(get_config("digits")).eval(), sigma=1.0)
        >>> traced = torch.jit.trace(net, torch.rand(1, 3, 16, 16))
        >>> traced(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 16, 16])
    """

    def __init__(self, model: AnoMemModel, sigma: float = 4.0) -> None:
        super().__init__()
        self.model, self.sigma = model, float(sigma)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return anomaly_map(self.model, images, self.sigma)
