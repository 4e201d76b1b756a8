"""The heatmap a user reads: the fused map at each input's own size, and its pixel threshold.

:func:`anomem.localisation.anomaly_map` computes the fused multi-scale map at
the model's input side S (every image is resized to S x S first).  Here that
map is

1. smoothed by default with a gaussian of :data:`SIGMA_PER_SIDE` times S
   (4 px at 128 px, 1 px at 32 px): :func:`default_sigma`;
2. standardised pixel by pixel under ``scoring.heatmap_calibration="position"`` (off by
   default), with the mean and standard deviation of the held-out normal images' maps
   (:func:`fit_map_calibration`; step 5 of :mod:`anomem.localisation`);
3. resized back to each input's own height x width (:func:`at_input_size`),
   bilinear and antialiased, as :func:`anomem.data.convert.to_image_tensor`
   resizes the images the other way, so a 200 x 150 image gets a 200 x 150 map;
4. compared with a **pixel threshold** (:func:`anomem.fit_setup.fit_thresholds`): the order
   statistic of :mod:`anomem.threshold` over every pixel of the held-out normal
   images' maps at S x S, with the default smoothing (and, under ``"position"``, the
   standardisation those same images set).  A map above it is the
   predicted anomalous region.  Pixels of one image are not independent, so
   the threshold flags about ``scoring.target_frr`` of the pixels of new normal
   images, without the per-image bound of the image threshold.

:meth:`anomem.AnoMem.anomaly_map` and :meth:`anomem.AnoMem.predict_mask`, the
overlays of ``anomem score --heatmaps`` and the evaluation report all use these
functions, so they show one map.

Example:
    >>> from anomem.config import get_config
    >>> from anomem.torch_model import AnoMemModel
    >>> model = AnoMemModel(get_config("digits")).eval()
    >>> x = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    >>> maps = model_side_maps(model, x)
    >>> maps.shape, at_input_size(maps, np.zeros((2, 20, 30)))[0].shape
    ((2, 16, 16), (20, 30))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomem.data import convert
from anomem.localisation import anomaly_map, standardise_pixels
from anomem.stages.common import RunOptions, map_batches
from anomem.torch_model import AnoMemModel

#: Default gaussian smoothing of a heatmap, as a fraction of the model's input side.
SIGMA_PER_SIDE = 1 / 32


def default_sigma(model: AnoMemModel) -> float:
    """:data:`SIGMA_PER_SIDE` times the model's input side, in its pixels (4.0 at 128 px)."""
    return SIGMA_PER_SIDE * model.config.backbone.image_size


def model_side_maps(model: AnoMemModel, x: torch.Tensor, sigma: float | None = None,
                    batch_size: int = 64) -> np.ndarray:
    """Fused heatmaps (N, S, S) float32 of uint8 images (N, 3, S, S) at the model's side S.

    ``sigma``: gaussian smoothing in pixels of S (None: :func:`default_sigma`).
    """
    sigma = default_sigma(model) if sigma is None else sigma
    opts = RunOptions(device=next(model.parameters()).device)
    out = map_batches(model, x, opts, lambda m, b: anomaly_map(m, b, sigma).cpu(), batch_size)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def fit_map_calibration(model: AnoMemModel, x: torch.Tensor, sigma: float | None = None,
                        batch_size: int = 64) -> np.ndarray:
    """Set ``model.map_loc`` / ``model.map_scale`` to the mean and standard deviation, pixel by
    pixel, of the heatmaps (smoothing ``sigma``, None: :func:`default_sigma`, which a fit uses;
    read without standardisation) of the normal uint8 images ``x`` (N, 3, S, S), and return their
    maps as the model reads them: standardised under ``scoring.heatmap_calibration="position"``,
    as computed otherwise.

    The fit sets both whatever the key says, so that the key can be switched on a fitted
    model.  A pixel that does not vary over ``x`` would divide by zero: every standard
    deviation gets 1e-6 times their mean added (1 when all are zero).
    """
    model.map_loc.zero_()
    model.map_scale.fill_(1.0)
    raw = model_side_maps(model, x, sigma, batch_size)
    loc, sd = raw.mean(axis=0), raw.std(axis=0)
    scale = sd + (1e-6 * float(sd.mean()) if sd.mean() > 0 else 1.0)
    model.map_loc.copy_(torch.from_numpy(loc))
    model.map_scale.copy_(torch.from_numpy(scale))
    if model.config.scoring.heatmap_calibration == "position":
        return standardise_pixels(*(torch.from_numpy(a) for a in (raw, loc, scale))).numpy()
    return raw


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps (N, h, w) resized to (N, H, W) = ``size``, bilinear and antialiased (float32).

    Each output pixel is a convex combination of map values: a flat map stays flat.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps)).unsqueeze(1)
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True).squeeze(1).numpy()


def at_input_size(maps: np.ndarray, images: Any) -> np.ndarray | list[np.ndarray]:
    """Model-side maps (N, S, S) of ``images`` at each image's own height x width.

    An array or tensor batch (one size) gives one (N, H, W) array; a list or tuple of
    images (or one PIL image) gives a list of (H, W) arrays, each its image's size.
    """
    sizes = convert.image_sizes(images)
    if convert.one_at_a_time(images):
        return [resize_maps(m[None], s)[0] for m, s in zip(maps, sizes, strict=True)]
    return resize_maps(maps, sizes[0])
