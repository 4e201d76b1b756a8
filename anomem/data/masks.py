"""Defect masks on disk for labelled anomalies (``anomem fit --anomalies SRC --masks DIR``).

The mask of an anomaly is an image file in DIR at the anomaly's place below its source
(for a folder source, also below the folder itself), with the anomaly's file name or that
name with ``_mask`` appended, in any image format: ``defects/crack/007.png`` finds
``DIR/crack/007.png`` or ``DIR/crack/007_mask.png`` (the layout of MVTec AD's
``ground_truth`` folders).  A non-black pixel is a defect.  An anomaly without a mask
file simply has none.

Example:
    >>> from pathlib import PurePosixPath
    >>> [c.as_posix() for c in candidates(PurePosixPath("defects/crack/007.png"))][:2]
    ['defects/crack/007.png', 'defects/crack/007.jpg']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from anomem.data.convert import to_defect_masks
from anomem.data.folders import IMAGE_SUFFIXES, read_image
from anomem.data.sources import Entry
from anomem.errors import InvalidInputError

#: What a mask's file name may add to its anomaly's stem.
MASK_TAILS = ("", "_mask")


def candidates(name: PurePosixPath) -> list[PurePosixPath]:
    """Relative paths a mask of the anomaly ``name`` (its place in the output tree) may have."""
    places = [name] + ([PurePosixPath(*name.parts[1:])] if len(name.parts) > 1 else [])
    return [p.with_name(p.stem + tail + suffix) for p in places for tail in MASK_TAILS
            for suffix in IMAGE_SUFFIXES]


def mask_path(masks_dir: Path, entry: Entry) -> Path | None:
    """The mask file of ``entry`` in ``masks_dir`` (the first of :func:`candidates`), or None."""
    for rel in candidates(entry.name):
        p = masks_dir / rel
        if p.is_file():
            return p
    return None


def read_masks(masks_dir: str | Path, entries: Sequence[Entry], side: int) -> list[np.ndarray | None]:
    """The masks of ``entries`` as bool (side, side) arrays, resized as their images are
    (:func:`anomem.data.convert.to_defect_masks`); None where an anomaly has no mask file.

    Raises:
        InvalidInputError: ``masks_dir`` is not a folder, holds no mask of any entry, or a
            mask's size differs from its image's.
    """
    root = Path(masks_dir)
    if not root.is_dir():
        raise InvalidInputError(f"--masks {str(root)!r} is not a folder; give the folder of the "
                                f"anomalies' mask images")
    out: list[np.ndarray | None] = []
    for e in entries:
        p = mask_path(root, e)
        if p is None:
            out.append(None)
            continue
        mask = read_image(p).max(axis=-1) > 0
        with Image.open(e.path) as im:
            w, h = im.size
        if mask.shape != (h, w):
            raise InvalidInputError(f"mask {str(p)!r} is {mask.shape[1]}x{mask.shape[0]} px, its "
                                    f"image {str(e.path)!r} {w}x{h} px; a mask has its image's size")
        out.append(to_defect_masks([mask], [(h, w)], side)[0][0].numpy())
    if entries and all(m is None for m in out):
        example = (root / candidates(entries[0].name)[-len(IMAGE_SUFFIXES) * len(MASK_TAILS)]).as_posix()
        raise InvalidInputError(f"--masks {str(root)!r} holds no mask of any of the {len(entries)} "
                                f"anomalies; the mask of {entries[0].name} would be e.g. {example}")
    return out
