"""Turn user images (arrays, tensors, PIL images) and labels into validated tensors.

Images become ``uint8`` tensors of shape (N, 3, S, S): grayscale is repeated to
three channels, an alpha channel is dropped, and every image is resized to the
model's side S (bilinear, antialiased).  Labels follow the public convention
1 (or True) = anomaly, 0 = normal; internally the paper's y = 1 normal is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomem.errors import InvalidInputError

#: Most pixels one image may have (PIL's decompression-bomb limit): converting a larger
#: one to float would take gigabytes, so it is refused with a request to downscale it.
MAX_IMAGE_PIXELS = 89_478_485
#: Images converted at a time by :func:`to_image_tensor` (bounds its float temporaries).
CONVERT_CHUNK = 256


def _is_count(v: Any) -> bool:
    """A positive integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def _as_tensor(obj: Any, name: str) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    try:
        with warnings.catch_warnings():   # read-only arrays are fine: nothing writes into them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(np.asarray(obj))
    except (TypeError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"{name} must be numeric arrays of images ({reason})") from None


def _one_image_chw(img: Any, name: str) -> torch.Tensor:
    if hasattr(img, "mode") and hasattr(img, "convert"):  # a PIL image
        img = np.asarray(img.convert("RGB"))
    arr = _as_tensor(img, name)
    if arr.ndim == 2:
        arr = arr.unsqueeze(-1)
    if arr.ndim != 3:
        raise InvalidInputError(f"{name}: each image must be 2-D or 3-D, got shape {tuple(arr.shape)}")
    if arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        arr = arr.permute(2, 0, 1)
    return arr


def to_image_tensor(images: Any, size: int, name: str = "images") -> torch.Tensor:
    """Validate and convert a batch of images to uint8 (N, 3, size, size).

    Accepts a numpy array or tensor of shape (N, H, W), (N, H, W, C) or
    (N, C, H, W) with C in {1, 3, 4}, as uint8 (0-255) or float (0-1), or a
    sequence of such images / PIL images of any sizes.

    Raises:
        InvalidInputError: empty input, wrong rank, unsupported channel count,
            non-numeric, non-finite or out-of-range values, or an image of more
            than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    if not _is_count(size):
        raise InvalidInputError(f"image size must be a positive integer, got {size!r}")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InvalidInputError(f"{name} is empty; pass at least one image")
        return torch.cat([to_image_tensor(_one_image_chw(im, name).unsqueeze(0), size, name)
                          for im in images])
    if hasattr(images, "mode") and hasattr(images, "convert"):
        return to_image_tensor([images], size, name)
    x = _as_tensor(images, name)
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    if x.ndim != 4:
        raise InvalidInputError(
            f"{name} must have shape (N, H, W), (N, H, W, C) or (N, C, H, W); got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty; pass at least one image")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3, 4):
        raise InvalidInputError(f"{name}: images need 1 (gray), 3 (RGB) or 4 (RGBA) channels, "
                                f"got shape {tuple(x.shape)}; convert them to RGB first")
    if min(x.shape[2:]) < 1:
        raise InvalidInputError(f"{name}: images have a zero dimension {tuple(x.shape)}")
    if x.shape[2] * x.shape[3] > MAX_IMAGE_PIXELS:
        raise InvalidInputError(f"{name}: images of {x.shape[2]}x{x.shape[3]} pixels exceed the "
                                f"{MAX_IMAGE_PIXELS:,}-pixel limit; downscale them first")
    if x.dtype == torch.bool or x.is_complex():
        raise InvalidInputError(f"{name}: dtype {x.dtype} is not an image type; use uint8 or float")
    if x.dtype != torch.uint8:
        # min/max in float32, as the conversion sees them (NaN propagates, overflow becomes inf);
        # cast first: torch has no min/max for uint16/32/64
        xf = x if x.is_floating_point() else x.to(torch.float32)
        lo, hi = float(xf.min().float()), float(xf.max().float())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InvalidInputError(f"{name} contain NaN or infinite values")
        if lo < 0 or hi > 1:
            raise InvalidInputError(f"{name}: float images must lie in [0, 1], got range "
                                    f"[{lo:.3g}, {hi:.3g}]; divide uint8 pixels by 255")
    elif x.shape[1] == 3 and tuple(x.shape[2:]) == (size, size):
        return x.contiguous()
    # converted and resized CONVERT_CHUNK images at a time: each image's result is the same,
    # and no float copy of the whole set (4 bytes a pixel, at the output size) is ever held
    return torch.cat([_uint8_rgb(x[sl], size) for sl in batches(len(x), CONVERT_CHUNK)])


def _uint8_rgb(x: torch.Tensor, size: int) -> torch.Tensor:
    """A validated chunk (n, C, H, W) to uint8 RGB (n, 3, size, size)."""
    if x.dtype != torch.uint8:
        x = (x.float() * 255).round().to(torch.uint8)
    x = x[:, :3].expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    if tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def to_normal_flags(labels: Any, n: int, name: str = "labels") -> torch.Tensor:
    """Public labels (1/True = anomaly, 0 = normal) to the paper's y (1 = normal), float (n,)."""
    if labels is None:
        return torch.ones(n)
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise InvalidInputError(f"{name} must have one entry per image ({n}), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        raise InvalidInputError(f"{name} must hold only 0 (normal) and 1 (anomaly)")
    return torch.as_tensor(1 - arr.astype(np.float32))


def batches(n: int, size: int) -> Sequence[slice]:
    """Consecutive slices covering range(n) in chunks of ``size`` (a positive integer)."""
    if not _is_count(size):
        raise InvalidInputError(f"batch_size must be a positive integer, got {size!r}")
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
