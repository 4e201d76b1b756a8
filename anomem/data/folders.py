"""Image files on disk: discovery at any depth and robust decoding to model-ready tensors.

Any PNG, JPEG, BMP or TIFF file is read, whatever its size and whether it is
grayscale, RGB or RGBA (also palette, CMYK, 16-bit and float images): it is
decoded in full (a truncated file is caught here, not half-read), converted
to RGB (alpha dropped, gray repeated) and resized to the model's side exactly
as :func:`anomem.data.convert.to_image_tensor` resizes arrays.

A file that cannot be used is either an error (``on_error="fail"``: a one-line
:class:`~anomem.errors.InvalidInputError` naming the file and the fix) or
skipped (``on_error="skip"``); skipped files are returned with their reasons so
the caller can list them.

Example:
    >>> from anomem.data.folders import find_images, load_images
    >>> paths = find_images("good_parts", "normal")          # doctest: +SKIP
    >>> loaded = load_images(paths, size=32)                  # doctest: +SKIP
    >>> loaded.images.shape                                   # doctest: +SKIP
    torch.Size([120, 3, 32, 32])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from anomem.data.convert import to_image_tensor
from anomem.errors import InvalidInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Colour modes whose pixels are not gray/RGB values: converting them would silently
#: misread the colours, so such files are refused.
UNSUPPORTED_MODES = ("LAB", "HSV")
#: Smallest image side accepted; a 1-pixel line holds no spatial structure to resize.
MIN_SIDE = 2
OnError = Literal["fail", "skip"]


@dataclass
class LoadedImages:
    """Decoded images (uint8 (N, 3, S, S)), the files they came from, and the skipped files."""

    images: torch.Tensor
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def find_images(folder: str | Path, what: str = "image") -> list[Path]:
    """Every image file (by suffix: PNG, JPEG, BMP, TIFF) under ``folder``, at any depth, sorted.

    Hidden files (name starting with ``.``) are ignored.

    Raises:
        InvalidInputError: the folder does not exist, is a file, or holds no image file.
    """
    root = Path(folder)
    if not root.exists():
        raise InvalidInputError(f"{what} folder {str(root)!r} does not exist; check the path")
    if not root.is_dir():
        raise InvalidInputError(f"{what} folder {str(root)!r} is a file, not a folder; pass the "
                                f"folder that holds the images")
    found = sorted(p for p in root.rglob("*") if _is_image_file(p))
    if not found:
        raise InvalidInputError(f"{what} folder {str(root)!r} holds no image files "
                                f"({', '.join(IMAGE_SUFFIXES)}); put images in it or fix the path")
    return found


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand a mix of image files and folders (searched at any depth) into image files.

    Raises:
        InvalidInputError: a path does not exist or a folder holds no image.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(find_images(p))
        elif p.is_file():
            out.append(p)
        else:
            raise InvalidInputError(f"image path {str(p)!r} does not exist; check the path")
    if not out:
        raise InvalidInputError("no image paths given; pass image files or folders")
    return out


def _pixels(im: Image.Image) -> np.ndarray:
    """RGB, gray, palette, CMYK, 16-bit or float PIL image -> uint8 (H, W, 3)."""
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if im.mode == "F" and arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        elif im.mode.startswith("I") and arr.max(initial=0.0) > 255:
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        gray = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.array(im.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """Decode one image file completely to uint8 (H, W, 3) RGB.

    Raises:
        InvalidInputError: unreadable, truncated, too large or too small, or a
            colour mode the model cannot take; the message names the file.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in UNSUPPORTED_MODES:
                raise InvalidInputError(
                    f"image {str(p)!r} has colour mode {im.mode} ({len(im.getbands())} channels), "
                    f"which the model cannot take; save it as grayscale, RGB or RGBA")
            w, h = im.size
            if min(w, h) < MIN_SIDE:
                raise InvalidInputError(
                    f"image {str(p)!r} is {w}x{h} px, which the model cannot take; images need "
                    f"at least {MIN_SIDE} px per side")
            return _pixels(im)
    except InvalidInputError:
        raise
    except Image.DecompressionBombError as e:
        raise InvalidInputError(f"image {str(p)!r} is too large to decode safely ({e}); "
                                f"downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = str(e).strip() or type(e).__name__
        raise InvalidInputError(f"image {str(p)!r} cannot be read ({reason}); it is not an "
                                f"image or is truncated/corrupt: re-save or remove it") from None


def load_images(paths: Iterable[str | Path], size: int, on_error: OnError = "fail",
                progress: bool = False, what: str = "images") -> LoadedImages:
    """Read image files and resize them to ``size`` x ``size`` RGB uint8 (N, 3, size, size).

    Args:
        paths: image files, in the order wanted.
        size: side the model takes (its ``backbone.image_size``).
        on_error: ``"fail"`` raises on the first bad file; ``"skip"`` leaves it out
            and records ``(path, reason)`` in :attr:`LoadedImages.skipped`.
        progress: show a progress bar.
        what: how the images are called in messages (e.g. ``"normal images"``).

    Raises:
        InvalidInputError: a bad file with ``on_error="fail"``, or no usable file left.
    """
    if on_error not in ("fail", "skip"):
        raise InvalidInputError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    paths = [Path(p) for p in paths]
    kept: list[Path] = []
    tensors: list[torch.Tensor] = []
    skipped: list[tuple[Path, str]] = []
    for p in tqdm(paths, desc=f"reading {what}", unit="img", disable=not progress, leave=False):
        try:
            tensors.append(to_image_tensor(read_image(p)[None], size, str(p)))
            kept.append(p)
        except InvalidInputError as e:
            if on_error == "fail":
                raise InvalidInputError(f"{e} (or skip bad files: --bad-images skip)") from None
            skipped.append((p, str(e)))
    if not tensors:
        raise InvalidInputError(f"none of the {len(paths)} {what} could be read: "
                                f"{skipped[0][1] if skipped else 'no files given'}")
    return LoadedImages(torch.cat(tensors), kept, skipped)


def format_skipped(skipped: list[tuple[Path, str]]) -> str:
    """A warning listing every skipped file and why (empty string when none)."""
    if not skipped:
        return ""
    lines = [f"skipped {len(skipped)} image file(s) that cannot be used:"]
    lines += [f"  {reason}" for _, reason in skipped]
    return "\n".join(lines)


def group_name(root: str | Path, path: str | Path) -> str:
    """The first sub-folder of ``path`` below ``root`` (e.g. an anomaly type), or root's name."""
    rel = Path(path).relative_to(Path(root))
    return rel.parts[0] if len(rel.parts) > 1 else Path(root).resolve().name


def read_class_folders(root: str | Path, size: int | None = None, on_error: OnError = "fail"
                       ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a "one sub-folder per class" dataset: ``root/<class>/**/<image>``.

    Classes are the sub-folder names, sorted; images in each are found at any
    depth.  Skipped files (``on_error="skip"``) are reported with one
    :class:`UserWarning` listing them.

    Args:
        root: the dataset folder.
        size: resize every image to ``size`` x ``size``; ``None`` keeps the files'
            size, which must then be the same for all.
        on_error: ``"fail"`` or ``"skip"`` (see :func:`load_images`).

    Returns:
        ``(images, labels, classes)``: uint8 (N, H, W, 3), int64 class indices (N,)
        into ``classes``; the same layout as :class:`anomem.data.dataset.LabelledSplit`.

    Raises:
        InvalidInputError: no class sub-folder, an empty class, a bad file, or
            mixed sizes with ``size=None``.

    Example:
        >>> x, y, classes = read_class_folders("data/train", size=32)  # doctest: +SKIP
    """
    base = Path(root)
    find_images(base, "dataset")  # existence and non-emptiness, with the usual messages
    classes = tuple(sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise InvalidInputError(f"dataset folder {str(base)!r} has no class sub-folders; lay it out "
                                f"as {base}/<class>/<images>")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    skipped: list[tuple[Path, str]] = []
    for k, name in enumerate(classes):
        files = find_images(base / name, f"class {name!r}")
        if size is None:
            arrays, bad = _read_all(files, on_error)
            shapes = {a.shape for a in arrays}
            if len(shapes) > 1:
                raise InvalidInputError(f"dataset folder {str(base)!r} mixes image sizes "
                                        f"{sorted(shapes)[:3]}; pass size=... to resize them")
            if not arrays:
                raise InvalidInputError(f"none of the {len(files)} images of class {name!r} could be "
                                        f"read: {bad[0][1]}")
            x = np.stack(arrays)
        else:
            loaded = load_images(files, size, on_error, what=f"class {name!r} images")
            x, bad = loaded.images.permute(0, 2, 3, 1).numpy(), loaded.skipped
        skipped += bad
        xs.append(x)
        ys.append(np.full(len(x), k, np.int64))
    if skipped:
        warnings.warn(format_skipped(skipped), UserWarning, stacklevel=2)
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise InvalidInputError(f"dataset folder {str(base)!r} mixes image sizes {sorted(shapes)[:3]} "
                                f"across classes; pass size=... to resize them")
    return np.concatenate(xs), np.concatenate(ys), classes


def _read_all(files: list[Path], on_error: OnError) -> tuple[list[np.ndarray], list[tuple[Path, str]]]:
    arrays: list[np.ndarray] = []
    bad: list[tuple[Path, str]] = []
    for f in files:
        try:
            arrays.append(read_image(f))
        except InvalidInputError as e:
            if on_error == "fail":
                raise
            bad.append((f, str(e)))
    return arrays, bad
