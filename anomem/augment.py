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
position (i, j) is the same physical patch in both views.  ``aligned`` keeps
the independent crops and flips and gives stage 1 the pixel transform from the
first view to the second (:meth:`TwoViewAugment.aligned_views`), so the
positive of view 1's position (i, j) is the point of view 2 showing the same
part of the image (:func:`corresponding_grid`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from anomem.config import Stage1


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

    @classmethod
    def of(cls, size: int, stage1: Stage1) -> TwoViewAugment:
        """The views stage 1 draws at side ``size`` with a configuration's ``stage1`` section."""
        return cls(size, stage1.crop_scale, stage1.jitter, stage1.blur_sigma, stage1.noise_std,
                   shared_geometry=stage1.view_geometry == "shared")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared_geometry:
            g = self.geometric(x)
            return self.photometric(g).clamp_(0, 1), self.photometric(g).clamp_(0, 1)
        return self.pipeline(x).clamp_(0, 1), self.pipeline(x).clamp_(0, 1)

    def _geometry(self) -> torch.Tensor:
        """Pixel transform (B, 3, 3) from the input to the last view drawn (crop, then flip)."""
        crop, flip = self.geometric
        return flip.transform_matrix @ crop.transform_matrix

    @torch.no_grad()
    def aligned_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two independent views (the same draws as :meth:`forward`) and the transform between them.

        Returns ``(v1, v2, align)``: ``align`` (B, 3, 3) maps homogeneous pixel
        coordinates of view 1 (x right, y down, pixel centres at integers) to
        those of view 2 showing the same point of the input image.
        """
        v1 = self.pipeline(x).clamp_(0, 1)
        m1 = self._geometry()
        v2 = self.pipeline(x).clamp_(0, 1)
        return v1, v2, self._geometry() @ torch.linalg.inv(m1)


def corresponding_grid(pos: torch.Tensor, height: int, width: int, size: int,
                       align: torch.Tensor) -> torch.Tensor:
    """Where view 1's map positions ``pos`` lie in view 2, as a ``grid_sample`` grid (B, 1, P, 2).

    ``pos`` (P,) are flat positions of an ``height`` x ``width`` feature map
    over a ``size`` x ``size`` view; position (i, j) stands for its cell's
    centre, pixel ((j + 0.5) size / width - 0.5, (i + 0.5) size / height - 0.5).
    ``align`` (B, 3, 3) maps view-1 pixels to view-2 pixels
    (:meth:`TwoViewAugment.aligned_views`).  The grid is in ``grid_sample``'s
    [-1, 1] coordinates with ``align_corners=False``, so the identity maps
    every position onto its own cell centre.  A point outside view 2 (the two
    crops do not overlap there) is clamped to view 2's nearest border.
    """
    pos = pos.to(align.device)
    i, j = (pos // width).to(align.dtype), (pos % width).to(align.dtype)
    pts = torch.stack([(j + 0.5) * size / width - 0.5, (i + 0.5) * size / height - 0.5,
                       torch.ones_like(i)])                                        # (3, P)
    q = align @ pts                                                                # (B, 3, P)
    xy = q[:, :2] / q[:, 2:]
    return ((xy + 0.5) * (2.0 / size) - 1.0).clamp(-1.0, 1.0).transpose(1, 2).unsqueeze(1)


def sample_at(fmap: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear feature vectors of ``fmap`` (B, C, H, W) at ``grid`` (B, 1, P, 2): (P, B, C).

    A point on the map's outer edge (a clamped one, see :func:`corresponding_grid`)
    takes the border cell's vector, not a blend with zero padding.
    """
    return F.grid_sample(fmap, grid.to(fmap.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False).squeeze(2).permute(2, 0, 1)


def rot90_transform(turns: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel transforms (k, 3, 3) of ``torch.rot90(image, q, dims=(2, 3))`` for each q in ``turns``.

    One turn takes pixel (x, y) of a ``size`` x ``size`` image to (y, size - 1 - x).
    """
    one = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, size - 1.0], [0.0, 0.0, 1.0]])
    powers = [torch.eye(3), one, one @ one, one @ one @ one]
    return torch.stack([powers[int(q) % 4] for q in turns]) if len(turns) else torch.zeros(0, 3, 3)


@torch.no_grad()
def rotate_each(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """A copy of square ``images`` (B, C, H, H), image i turned by ``turns[i]`` x 90 degrees.

    Example:
        >>> x = torch.arange(4.).view(1, 1, 2, 2)
        >>> rotate_each(x, torch.tensor([1]))[0, 0].tolist()
        [[1.0, 3.0], [0.0, 2.0]]
    """
    out = images.clone()
    for q in (1, 2, 3):
        sel = torch.nonzero(turns == q).squeeze(1)
        out[sel] = torch.rot90(images[sel], q, dims=(2, 3))
    return out


@torch.no_grad()
def rotated_pseudo_anomalies(v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, fraction: float,
                             generator: torch.Generator, align: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stage 1's ``extensions.pseudo_anomalies="rotation"``: the batch plus rotated copies labelled anomalous.

    The paper is silent; this is the distribution-shifting transformation of
    contrastive anomaly detection (rotated normals as anomalies, as in CSI,
    Tack et al. 2020) written in AnoMem's own terms: the copies enter Eq. 3
    with y = 0, so their first view bypasses the memory and every normal
    prototype is a negative of them in Eq. 4.  The first round(fraction * B)
    images of the (shuffled) batch are copied, both views of one image rotated
    by the same multiple of 90 degrees (drawn from 90, 180, 270 with
    ``generator``), so the two views stay a positive pair.  Images are square
    (the augmentation's output).  ``y`` is 1 for normal images.  Measured in
    ``docs/design.md`` (3 seeds): +9.7 one-class AUROC on CIFAR-10 at the full
    ``cpu`` preset (automobile +20.2, airplane -0.9), +6.4 on magnetic-tile
    defects at 64 px, level on digits; the default (``extensions.pseudo_anomalies``).  With
    ``align`` (view 1 to view 2 pixel transforms, B x 3 x 3) a copy's transform
    is its image's, conjugated by the turn: R align R^-1; the fourth output is
    ``align`` extended to the copies (None without it).

    Example:
        >>> v = torch.rand(4, 3, 8, 8)
        >>> a, b, y, _ = rotated_pseudo_anomalies(v, v, torch.ones(4), 0.5, torch.Generator())
        >>> a.shape, y.tolist()
        (torch.Size([6, 3, 8, 8]), [1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    """
    k = max(1, round(fraction * len(v1)))
    turns = torch.randint(1, 4, (k,), generator=generator).to(v1.device)

    def with_turned(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, rotate_each(v[:k], turns)])

    if align is not None:
        r = rot90_transform(turns, v1.shape[-1]).to(align)
        align = torch.cat([align, r @ align[:k] @ torch.linalg.inv(r)])
    return with_turned(v1), with_turned(v2), torch.cat([y, y.new_zeros(k)]), align


def defect_masks(count: int, side: int, generator: torch.Generator,
                 scale: float = 1.0) -> torch.Tensor:
    """``count`` random local defect shapes on a ``side`` x ``side`` grid, (count, side, side) bool.

    Each shape is a capsule: the pixels (centres at integer coordinates) within
    radius r of a segment, with centre uniform over the image, length uniform
    in [0, side / 2], direction uniform, r uniform in [1, max(1, side / 8)].
    Length 0 gives a disc (a blob or hole), a long segment with a small r a
    stroke (a crack or scratch), both common forms of real local defects; the
    paper has no synthetic defects, and nothing here is fitted to one image set.
    ``scale`` multiplies both bounds (``side`` / 2 and ``side`` / 8): 2 draws
    defects that cover a large part of the image (the same draws, so 1 is the default's).

    Example:
        >>> m = defect_masks(3, 32, torch.Generator().manual_seed(0))
        >>> m.shape, bool(m.flatten(1).any(1).all())
        (torch.Size([3, 32, 32]), True)
    """
    centre = torch.rand(count, 1, 2, generator=generator) * (side - 1)
    extent = scale * side
    half = torch.rand(count, 1, 1, generator=generator) * extent / 4
    angle = torch.rand(count, 1, generator=generator) * math.pi
    radius = 1 + torch.rand(count, 1, generator=generator) * max(0.0, extent / 8 - 1)
    direction = torch.stack([angle.cos(), angle.sin()], dim=-1)                # (count, 1, 2)
    a, b = centre - half * direction, centre + half * direction
    ii, jj = torch.meshgrid(torch.arange(side, dtype=torch.float32),
                            torch.arange(side, dtype=torch.float32), indexing="ij")
    pts = torch.stack([jj.flatten(), ii.flatten()], dim=-1).unsqueeze(0)       # (1, side^2, 2) as (x, y)
    ab = b - a
    t = (((pts - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    dist = (pts - (a + t.unsqueeze(-1) * ab)).norm(dim=-1)                    # (count, side^2)
    # the nearest pixel to the centre is always inside, so no mask is empty
    inside = dist <= torch.maximum(radius, dist.min(dim=1, keepdim=True).values)
    return inside.view(count, side, side)


@torch.no_grad()
def local_pseudo_anomalies(v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor, fraction: float,
                           generator: torch.Generator, align: torch.Tensor | None = None,
                           mask_scale: float = 1.0
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stage 1's ``extensions.pseudo_anomalies="local"``: the batch plus copies with a pasted local defect.

    Eq. 3's y is one per image in the paper; this carries it to positions.
    The first round(fraction * B) images of the (shuffled) batch are copied and
    a :func:`defect_masks` shape is pasted into both views of each copy, at the
    same pixels: there each view shows its source view of another image of the
    batch (image i + 1 mod B), shifted by a random offset and scaled in
    brightness by a factor uniform in [0.5, 1.5] (clamped to [0, 1]); this is
    the cut-and-paste defect of CutPaste (Li et al. 2021) under a free-form
    mask.  The labels come back per pixel, (B + k, S, S), 1 = normal, 0 at the
    pasted pixels (and everywhere on an image labelled anomalous);
    :func:`anomem.losses.position_labels` turns them into each scale's
    position labels.  With ``align`` the copies keep their image's transform.
    ``mask_scale``: :func:`defect_masks`' ``scale``.

    Example:
        >>> v = torch.rand(4, 3, 16, 16)
        >>> a, b, y, _ = local_pseudo_anomalies(v, v, torch.ones(4), 0.5, torch.Generator())
        >>> a.shape, y.shape, bool((y[:4] == 1).all()), bool((y[4:] == 0).any())
        (torch.Size([6, 3, 16, 16]), torch.Size([6, 16, 16]), True, True)
    """
    b, side = len(v1), v1.shape[-1]
    k = max(1, round(fraction * b))
    masks = defect_masks(k, side, generator, mask_scale).to(v1.device)
    shift = torch.randint(side, (k, 2), generator=generator).tolist()
    gain = (0.5 + torch.rand(k, 1, 1, 1, generator=generator)).to(v1)
    source = [(i + 1) % b for i in range(k)]

    def with_defects(v: torch.Tensor) -> torch.Tensor:
        patch = torch.stack([torch.roll(v[s], tuple(d), dims=(1, 2)) for s, d in zip(source, shift)])
        copies = torch.where(masks.unsqueeze(1), (patch * gain).clamp(0, 1), v[:k])
        return torch.cat([v, copies])

    pixel_y = y.to(v1.dtype).view(-1, 1, 1).expand(b, side, side)
    labels = torch.cat([pixel_y, pixel_y[:k] * (~masks).to(v1.dtype)])
    if align is not None:
        align = torch.cat([align, align[:k]])
    return with_defects(v1), with_defects(v2), labels, align
