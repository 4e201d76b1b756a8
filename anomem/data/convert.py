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


#: Sizes an axis of channels has: gray, RGB, RGBA.
CHANNELS = (1, 3, 4)
#: Full scale of 16-bit pixels (16-bit PNG and TIFF files, common in inspection).
UINT16_MAX = 65535


def _is_pil(obj: Any) -> bool:
    return hasattr(obj, "mode") and hasattr(obj, "convert")


def _is_uint16(obj: Any) -> bool:
    """A numpy array or tensor of 16-bit unsigned pixels."""
    dtype = getattr(obj, "dtype", None)
    if isinstance(dtype, np.dtype):
        return dtype.kind == "u" and dtype.itemsize == 2      # either byte order
    return hasattr(torch, "uint16") and dtype == torch.uint16


def _as_tensor(obj: Any, name: str) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    try:
        arr = np.asarray(obj)
        if arr.dtype.kind in "ui" and not arr.dtype.isnative:   # big-endian, e.g. from "I;16B"
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype == np.uint16 and not hasattr(torch, "uint16"):   # torch < 2.3
            arr = arr.astype(np.int32)
        with warnings.catch_warnings():   # read-only arrays are fine: nothing writes into them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(arr)
    except (TypeError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"{name} must be numeric arrays of images ({reason})") from None


def pil_pixels(im: Any) -> np.ndarray:
    """The pixels of a PIL image: (H, W) or (H, W, 3), uint16 for 16-bit modes, else uint8.

    ``I;16`` modes (16-bit PNG / TIFF) keep their 16 bits (scaled from 0-65535 by
    :func:`to_image_tensor`); ``I`` (32-bit integers) is read as 16-bit when a value
    exceeds 255, else as 8-bit; ``F`` as fractions when its maximum is at most 1,
    else as 0-255 (clipped), as :mod:`anomem.data.folders` reads such files; every
    other mode is converted to RGB.
    """
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if im.mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if im.mode == "F" and arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        elif im.mode == "I" and arr.max(initial=0.0) > 255:
            arr = arr * 255.0 / UINT16_MAX
        return np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def _one_image_chw(img: Any, name: str) -> torch.Tensor:
    """One image of a list: (H, W) gray, (H, W, C) or (C, H, W) (channels first when the
    first axis is 1, 3 or 4, else last), or a PIL image, to (C, H, W)."""
    arr = _as_tensor(pil_pixels(img) if _is_pil(img) else img, name)
    if arr.ndim == 2:
        return arr.unsqueeze(0)
    if arr.ndim != 3:
        raise InvalidInputError(f"{name}: each image must be 2-D or 3-D, got shape {tuple(arr.shape)}")
    if arr.shape[-1] in CHANNELS and arr.shape[0] not in CHANNELS:
        arr = arr.permute(2, 0, 1)
    return arr


def _ambiguity(shape: tuple[int, ...]) -> str | None:
    """How a 3-D array could be one image as well as N gray images (N, H, W); None if it cannot.

    (1, H, W) is one gray image either way, and a reading as one image less than 2 px
    high or wide does not count.
    """
    n, h, w = shape
    if w in CHANNELS and min(n, h) >= 2:
        return (f"{n} gray images of {h}x{w} px, or one {n}x{h} px image with {w} channel(s) last; "
                f"pass x[None] for one image (H, W, C), or x[..., None] for {n} gray images")
    if n in (3, 4) and min(h, w) >= 2:
        return (f"{n} gray images of {h}x{w} px, or one {h}x{w} px image with {n} channels first; "
                f"pass x[None] for one image (C, H, W), or x[:, None] for {n} gray images")
    return None


def _batch_nchw(x: torch.Tensor, name: str) -> torch.Tensor:
    """A batch of any accepted layout as (N, C, H, W), its shape checked."""
    if x.ndim == 3:
        why = _ambiguity(tuple(x.shape))
        if why is not None:
            raise InvalidInputError(f"{name}: a 3-D array of shape {tuple(x.shape)} is ambiguous: "
                                    f"{why}")
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise InvalidInputError(
            f"{name} must have shape (N, H, W), (N, H, W, C) or (N, C, H, W); got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InvalidInputError(f"{name} is empty; pass at least one image")
    if x.shape[1] not in CHANNELS and x.shape[-1] in CHANNELS:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in CHANNELS:
        raise InvalidInputError(f"{name}: images need 1 (gray), 3 (RGB) or 4 (RGBA) channels, "
                                f"got shape {tuple(x.shape)}; convert them to RGB first")
    if min(x.shape[2:]) < 1:
        raise InvalidInputError(f"{name}: images have a zero dimension {tuple(x.shape)}")
    if x.shape[2] * x.shape[3] > MAX_IMAGE_PIXELS:
        raise InvalidInputError(f"{name}: images of {x.shape[2]}x{x.shape[3]} pixels exceed the "
                                f"{MAX_IMAGE_PIXELS:,}-pixel limit; downscale them first")
    return x


def one_at_a_time(images: Any) -> bool:
    """Whether ``images`` are single images (a list, a tuple or one PIL image), each of its own size."""
    return isinstance(images, (list, tuple)) or _is_pil(images)


def image_sizes(images: Any, name: str = "images") -> list[tuple[int, int]]:
    """(height, width) of each image as given, before any resizing, read with the layout
    rules of :func:`to_image_tensor` (PIL images from their headers); a 3-D array reads
    as N gray images even where :func:`to_image_tensor` would call it ambiguous (as one
    (C, H, W) image its height and width are the same).

    Raises:
        InvalidInputError: input :func:`to_image_tensor` would refuse for its layout.

    Example:
        >>> image_sizes(np.zeros((2, 5, 7, 3), dtype=np.uint8))
        [(5, 7), (5, 7)]
    """
    if one_at_a_time(images):
        singles = [images] if _is_pil(images) else images
        return [(int(im.size[1]), int(im.size[0])) if _is_pil(im)
                else tuple(int(v) for v in _one_image_chw(im, name).shape[-2:]) for im in singles]
    x = _as_tensor(images, name)
    x = _batch_nchw(x.unsqueeze(1) if x.ndim == 3 else x, name)
    return [(int(x.shape[2]), int(x.shape[3]))] * len(x)


def _check_values(x: torch.Tensor, name: str) -> None:
    """Refuse an image dtype, or fractions outside [0, 1] (uint8 and uint16 are always fine)."""
    if x.dtype == torch.bool or x.is_complex():
        raise InvalidInputError(f"{name}: dtype {x.dtype} is not an image type; use uint8 or float")
    if x.dtype == torch.uint8:
        return
    # min/max in float32, as the conversion sees them (NaN propagates, overflow becomes inf);
    # cast first: torch has no min/max for uint16/32/64
    xf = x if x.is_floating_point() else x.to(torch.float32)
    lo, hi = float(xf.min().float()), float(xf.max().float())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InvalidInputError(f"{name} contain NaN or infinite values")
    if lo >= 0 and hi <= 1:
        return
    if x.is_floating_point():
        raise InvalidInputError(f"{name}: float images must lie in [0, 1], got range "
                                f"[{lo:.3g}, {hi:.3g}]; divide uint8 pixels by 255")
    dtype = str(x.dtype).removeprefix("torch.")
    raise InvalidInputError(f"{name}: images of dtype {dtype} are read as fractions in [0, 1], got "
                            f"range [{lo:.3g}, {hi:.3g}]; pass 8-bit pixels as uint8 "
                            f"(x.astype(np.uint8)), 16-bit ones as uint16, or floats in [0, 1]")


def to_image_tensor(images: Any, size: int, name: str = "images") -> torch.Tensor:
    """Validate and convert a batch of images to uint8 (N, 3, size, size).

    Layouts, read without guessing:

    * a 4-D array or tensor is (N, C, H, W) when its second axis is 1, 3 or 4,
      else (N, H, W, C) with C in {1, 3, 4};
    * a 3-D array is N gray images (N, H, W), unless it could as well be one
      image of at least 2x2 px: last axis 1, 3 or 4 (one (H, W, C) image) or
      first axis 3 or 4 (one (C, H, W) image).  Such a shape is refused with an
      :class:`~anomem.errors.InvalidInputError` naming both readings: pass
      ``x[None]`` for one image, ``x[..., None]`` or ``x[:, None]`` (or any 4-D
      array) for a batch of gray images.  (1, H, W) is one gray image either way;
    * a list or tuple holds single images of any sizes: (H, W) gray, (H, W, C)
      or (C, H, W) (channels first when the first axis is 1, 3 or 4), or PIL
      images (:func:`pil_pixels`).

    Values: uint8 is 0-255; uint16 (16-bit PNG / TIFF pixels) is 0-65535, scaled
    by 255/65535; float images lie in [0, 1]; other integer dtypes are read as
    fractions too, so they may only hold 0 and 1 (a mask), and otherwise are
    refused with a message naming the dtype.

    Raises:
        InvalidInputError: empty input, wrong rank, an ambiguous 3-D shape, an
            unsupported channel count, non-numeric, non-finite or out-of-range
            values, or an image of more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    if not _is_count(size):
        raise InvalidInputError(f"image size must be a positive integer, got {size!r}")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InvalidInputError(f"{name} is empty; pass at least one image")
        return torch.cat([to_image_tensor(_one_image_chw(im, name).unsqueeze(0), size, name)
                          for im in images])
    if _is_pil(images):
        return to_image_tensor([images], size, name)
    full_scale = UINT16_MAX if _is_uint16(images) else 1
    x = _batch_nchw(_as_tensor(images, name), name)
    if full_scale == 1:
        _check_values(x, name)
    if x.dtype == torch.uint8 and x.shape[1] == 3 and tuple(x.shape[2:]) == (size, size):
        return x.contiguous()
    # converted and resized CONVERT_CHUNK images at a time: each image's result is the same,
    # and no float copy of the whole set (4 bytes a pixel, at the output size) is ever held
    return torch.cat([_uint8_rgb(x[sl], size, full_scale)
                      for sl in batches(len(x), CONVERT_CHUNK)])


def _uint8_rgb(x: torch.Tensor, size: int, full_scale: int = 1) -> torch.Tensor:
    """A validated chunk (n, C, H, W) to uint8 RGB (n, 3, size, size); a pixel value of
    ``full_scale`` is white (uint8 input is 0-255 whatever it says)."""
    if x.dtype != torch.uint8:
        xf = x.float() if full_scale == 1 else x.float() / full_scale
        x = (xf * 255).round().to(torch.uint8)
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


def to_defect_masks(masks: Any, sizes: list[tuple[int, int]], size: int,
                    name: str = "masks") -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel masks of defects, one entry per image, to bool (N, size, size) and which images
    have one (N,).

    ``masks`` is a sequence (or an (N, H, W) array) whose entries are None (no mask) or a
    2-D array or PIL image of the image's own height x width ``sizes[i]``; a non-zero pixel
    is a defect (bool, 0 / 1 or 0 / 255 alike).  Each is resized as the images are
    (bilinear, antialiased) and a pixel at least half covered is a defect; an entry
    without a defect pixel after that counts as no mask.

    Raises:
        InvalidInputError: not one entry per image, an entry that is not 2-D, of another
            size than its image, or with NaN.

    Example:
        >>> m = np.zeros((4, 6), dtype=bool); m[:2, :3] = True
        >>> px, has = to_defect_masks([None, m], [(4, 6), (4, 6)], 2)
        >>> px[1].tolist(), has.tolist()
        ([[True, False], [False, False]], [False, True])
    """
    entries = list(masks) if isinstance(masks, (list, tuple)) else list(np.asarray(masks))
    if len(entries) != len(sizes):
        raise InvalidInputError(f"{name} must have one entry per image ({len(sizes)}), got "
                                f"{len(entries)}; use None for an image without a mask")
    out = torch.zeros(len(sizes), size, size, dtype=torch.bool)
    for i, (m, hw) in enumerate(zip(entries, sizes)):
        if m is None:
            continue
        a = np.asarray(m)
        if a.ndim != 2 or tuple(a.shape) != tuple(hw):
            raise InvalidInputError(f"{name}[{i}] has shape {a.shape}; a mask is 2-D, the "
                                    f"height x width of its image {tuple(hw)}")
        if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise InvalidInputError(f"{name}[{i}] must hold finite numbers or booleans "
                                    f"(non-zero = defect), got dtype {a.dtype}")
        t = torch.from_numpy((a != 0).astype(np.float32))[None, None]
        if tuple(hw) != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        out[i] = t[0, 0] >= 0.5
    return out, out.flatten(1).any(1)
