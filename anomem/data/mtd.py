"""Magnetic Tile Defects (MTD): grayscale tiles with pixel masks, five defect types.

The archive ``magnetic_tile_defects.tar.gz`` holds ``MT_<kind>/Imgs/<id>.jpg``
photographs and ``<id>.png`` masks of the same size: 952 defect-free tiles
(``MT_Free``) and 392 defects of five types.  :func:`read_mtd` reads it in place
with :mod:`tarfile` and squashes every image to ``side`` x ``side`` (bilinear,
antialiased; the tiles have 1,225 different sizes and aspect ratios).  Masks
are binarised at ``> 127`` at full resolution, resized the same way and
binarised again at 0.5.  Four ``MT_Uneven`` masks are empty: those images keep
their image-level label but are flagged ``has_mask = False`` so that pixel
metrics skip them.

:func:`split_mtd` fixes the split (there is no official one): a seeded fraction
of ``MT_Free`` trains, the rest of ``MT_Free`` and the defects test.  With
``labelled_per_type = k`` the first k defects of a seeded per-type permutation
move to training as labelled anomalies (semi-supervised); with
``held_out_type`` the labelled defects come from the four other types only and
the test holds the held-out type alone (cross-type protocol).

Example:
    >>> data = read_mtd(side=64)                               # doctest: +SKIP
    >>> split = split_mtd(data, train_fraction=0.7, seed=0)   # doctest: +SKIP
    >>> split.train.labels.sum(), split.test.labels.sum()     # doctest: +SKIP
    (0, 392)
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomem.data.locate import MAGNETIC_TILES, data_file
from anomem.errors import InvalidInputError

MTD_TYPES = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
NORMAL_KIND = "Free"


@dataclass
class MTDImages:
    """A set of MTD tiles at one side S.

    Attributes:
        images: uint8 (N, S, S) grayscale tiles.
        masks: bool (N, S, S) defect pixels (all False for defect-free tiles).
        types: int64 (N,), -1 for defect-free, else the index into :data:`MTD_TYPES`.
        has_mask: bool (N,), False for a defect whose mask is empty (no pixel truth).
        names: ``MT_<kind>/<id>`` of each tile, for the record.
    """

    images: np.ndarray
    masks: np.ndarray
    types: np.ndarray
    has_mask: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.types)

    @property
    def labels(self) -> np.ndarray:
        """Public labels: 1 = anomaly (a defect), 0 = normal."""
        return (self.types >= 0).astype(np.int64)

    @property
    def pixel_valid(self) -> np.ndarray:
        """Tiles whose pixels count in pixel metrics: defect-free ones and defects with a mask."""
        return (self.types < 0) | self.has_mask

    def subset(self, idx: np.ndarray) -> MTDImages:
        """The tiles at integer positions ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return MTDImages(self.images[idx], self.masks[idx], self.types[idx], self.has_mask[idx],
                         tuple(self.names[i] for i in idx))


@dataclass
class MTDSplit:
    """Training tiles (normals, plus labelled defects when semi-supervised) and test tiles."""

    train: MTDImages
    test: MTDImages


def _resize(data: bytes, member: str, side: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L").resize((side, side), Image.BILINEAR))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"MTD member {member!r} cannot be decoded ({e})") from None


def _binary_mask(data: bytes, member: str, side: int) -> tuple[np.ndarray, bool]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            full = np.asarray(im.convert("L")) > 127
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"MTD mask {member!r} cannot be decoded ({e})") from None
    small = Image.fromarray(full.astype(np.uint8) * 255).resize((side, side), Image.BILINEAR)
    return np.asarray(small) > 127, bool(full.any())


def read_mtd(path: str | Path | None = None, side: int = 128) -> MTDImages:
    """Read every tile and mask of the MTD archive, resized to ``side`` x ``side``.

    Args:
        path: the ``magnetic_tile_defects.tar.gz`` archive (default: in the folder ``ANOMEM_DATA`` names).
        side: output side in pixels.

    Raises:
        InvalidInputError: missing or unreadable archive, an image without its mask.
    """
    if not isinstance(side, int) or side < 8:
        raise InvalidInputError(f"side must be an integer >= 8, got {side!r}")
    p = Path(path) if path is not None else data_file(MAGNETIC_TILES)
    if not p.is_file():
        raise InvalidInputError(f"MTD archive {str(p)!r} does not exist; pass the path of "
                                f"{MAGNETIC_TILES} or set ANOMEM_DATA")
    kinds = (NORMAL_KIND, *MTD_TYPES)
    found: dict[str, dict[str, tuple[np.ndarray, bool] | np.ndarray]] = {}
    try:
        with tarfile.open(p) as tf:
            for m in tf:
                bits = m.name.strip("./").split("/")
                if not m.isfile() or len(bits) != 3 or bits[1] != "Imgs":
                    continue
                kind, (stem, ext) = bits[0].removeprefix("MT_"), bits[2].rsplit(".", 1)
                f = tf.extractfile(m)
                if kind not in kinds or ext not in ("jpg", "png") or f is None:
                    continue
                entry = found.setdefault(f"MT_{kind}/{stem}", {})
                entry[ext] = (_resize(f.read(), m.name, side) if ext == "jpg"
                              else _binary_mask(f.read(), m.name, side))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidInputError(f"MTD archive {str(p)!r} is not a readable tar file ({e})") from None
    if not found:
        raise InvalidInputError(f"MTD archive {str(p)!r} holds no MT_<kind>/Imgs/<id>.jpg tiles")
    names = tuple(sorted(found))
    missing = [n for n in names if set(found[n]) != {"jpg", "png"}]
    if missing:
        raise InvalidInputError(f"MTD archive {str(p)!r}: {len(missing)} tile(s) lack their image or "
                                f"mask, e.g. {missing[0]!r}")
    masks = [found[n]["png"] for n in names]
    types = np.array([kinds.index(n.split("/")[0].removeprefix("MT_")) - 1 for n in names])
    return MTDImages(np.stack([found[n]["jpg"] for n in names]), np.stack([m[0] for m in masks]),
                     types.astype(np.int64), np.array([m[1] for m in masks]), names)


def split_mtd(data: MTDImages, train_fraction: float = 0.7, seed: int = 0,
              labelled_per_type: int = 0, held_out_type: str | None = None) -> MTDSplit:
    """The seeded train/test split of one MTD protocol.

    Args:
        data: every tile, as returned by :func:`read_mtd`.
        train_fraction: share of the defect-free tiles used for training.
        seed: fixes both the normal split and the choice of labelled defects.
        labelled_per_type: k labelled defects per type moved into training
            (0 = one-class).  The same seed labels the same defects in every protocol.
        held_out_type: cross-type protocol: this type gets no labelled defect and
            is the only defect type in the test set.
    """
    if not 0.0 < train_fraction < 1.0:
        raise InvalidInputError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not isinstance(labelled_per_type, int) or labelled_per_type < 0:
        raise InvalidInputError(f"labelled_per_type must be a non-negative integer, got "
                                f"{labelled_per_type!r}")
    if held_out_type is not None and held_out_type not in MTD_TYPES:
        raise InvalidInputError(f"held_out_type must be one of {', '.join(MTD_TYPES)}, got "
                                f"{held_out_type!r}")
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(data.types < 0))
    n_train = int(round(train_fraction * len(normal)))
    train, test = [normal[:n_train]], [normal[n_train:]]
    for t, name in enumerate(MTD_TYPES):
        of_type = rng.permutation(np.flatnonzero(data.types == t))
        if labelled_per_type >= len(of_type):
            raise InvalidInputError(f"labelled_per_type={labelled_per_type} leaves no {name} defect "
                                    f"to test ({len(of_type)} exist)")
        if held_out_type is None:
            train.append(of_type[:labelled_per_type])
            test.append(of_type[labelled_per_type:])
        elif name == held_out_type:
            test.append(of_type)
        else:
            train.append(of_type[:labelled_per_type])
    return MTDSplit(data.subset(np.concatenate(train)), data.subset(np.concatenate(test)))
