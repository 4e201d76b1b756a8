"""CIFAR-10 readers: the JPEG tree archive (``train/<class>/*.jpg``) and its folder form.

See :mod:`anomem.data.locate` for where the archive is looked up.  Images are
returned as uint8 (N, 32, 32, 3) with labels in the standard CIFAR-10 order.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def _decode(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InvalidInputError(f"image {name!r} cannot be decoded ({e})") from None


def read_cifar10_jpeg_tar(path: str | Path) -> LabelledSplit:
    """Read a CIFAR-10 JPEG archive laid out as ``{train,test}/<class>/<n>.jpg``."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"CIFAR-10 archive {str(p)!r} does not exist")
    parts: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    try:
        with tarfile.open(p) as tf:
            for m in sorted((m for m in tf if m.isfile()), key=lambda m: m.name):
                bits = m.name.strip("./").split("/")
                if len(bits) != 3 or bits[0] not in parts or bits[1] not in CIFAR10_CLASSES:
                    continue
                f = tf.extractfile(m)
                if f is None:
                    continue
                xs, ys = parts[bits[0]]
                xs.append(_decode(f.read(), m.name))
                ys.append(CIFAR10_CLASSES.index(bits[1]))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInputError(f"CIFAR-10 archive {str(p)!r} is not a readable tar file ({e})") from None
    if not parts["train"][0] or not parts["test"][0]:
        raise InvalidInputError(f"CIFAR-10 archive {str(p)!r} has no train/<class>/ or "
                                f"test/<class>/ images")
    (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
    return LabelledSplit(np.stack(xtr), np.asarray(ytr, np.int64), np.stack(xte),
                         np.asarray(yte, np.int64), CIFAR10_CLASSES)
