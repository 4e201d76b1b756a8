"""Which preset to use: one line per preset, and the ``auto`` rule that picks one from image size.

``auto`` (the default of :class:`anomem.AnoMem` and ``anomem fit``) looks at
the training images *before* they are resized: their side is the larger of
height and width (for images of mixed sizes, the median over images), and

* side <= 24 px: ``digits`` (16x16 input; small scans such as 8x8 digits),
* side <= 64 px: ``cpu`` (32x32 input; CIFAR-10, 28x28 MNIST-like images),
* larger:        ``mtd`` (128x128 input, ImageNet stem; photos, defect tiles).

``paper`` (the paper read literally) and ``gpu`` (the same network and budget with
the tuned recipe) are never chosen automatically: they are GPU-scale setups.
Overrides (``AnoMem(stage1_epochs=5)``, ``--set``) apply on top of the chosen
preset.

Example:
    >>> auto_preset(8), auto_preset(32), auto_preset(224)
    ('digits', 'cpu', 'mtd')
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomem.data.convert import image_sizes, to_image_tensor

AUTO = "auto"
#: (largest side, preset): the first row whose side the images do not exceed wins.
AUTO_RULE = ((24, "digits"), (64, "cpu"))
AUTO_LARGE = "mtd"

#: One line per preset: what it is for (listed by ``anomem fit --help`` and the README).
PRESET_GUIDE = {
    AUTO: "default: digits, cpu or mtd by the training images' size (<= 24 px, <= 64 px, larger)",
    "digits": "tiny images (8-24 px): ResNet-18 width 8 at 16x16; seconds to minutes on a CPU",
    "cpu": "small images (25-64 px, e.g. CIFAR-10): ResNet-18 width 16 at 32x32; minutes on 2 cores",
    "mtd": "larger images and localisation (> 64 px): ResNet-18 width 16 at 128x128, ImageNet stem, "
           "96 epochs on pasted defects; about 40 minutes for 700 images on a CPU core",
    "paper": "the paper read literally, for a GPU: ResNet-50 width 64 at 32x32, batch 1024, "
             "200 epochs, recipe paper",
    "gpu": "the paper's network and budget with the tuned recipe (beta 20), for a GPU",
}


def auto_preset(side: float) -> str:
    """The preset ``auto`` picks for images of this side (pixels, before resizing)."""
    return next((name for limit, name in AUTO_RULE if side <= limit), AUTO_LARGE)


def input_side(images: Any) -> int:
    """The side of user images before resizing: max(height, width), median over a list.

    Accepts what :meth:`anomem.AnoMem.fit` accepts; input it cannot read raises
    the same :class:`~anomem.errors.InvalidInputError` as fitting would.
    """
    sizes = image_sizes(images)
    if not sizes:
        to_image_tensor(images, 1, "images")   # raises the usual message for no images
    return int(np.median([max(hw) for hw in sizes]))


def files_side(paths: Iterable[str | Path]) -> int:
    """Median over image files of max(width, height), read from the headers only.

    Files whose header cannot be read are left out (reading them later reports
    them); 0 when none can be read.
    """
    sides = []
    for p in paths:
        try:
            with Image.open(p) as im:
                sides.append(max(im.size))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue
    return int(np.median(sides)) if sides else 0
