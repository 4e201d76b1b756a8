"""Where benchmark data files are read from: a folder the caller names, or ``ANOMEM_DATA``.

The package knows no data location of its own.  A caller passes a file's path
(``read_mtd(path)``, a benchmark dataset's ``path``) or a folder, or sets the
``ANOMEM_DATA`` environment variable to the folder that holds the archives.
Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from anomem.errors import InvalidInputError

CIFAR10_JPEG = "cifar10_jpeg.tar.gz"
MAGNETIC_TILES = "magnetic_tile_defects.tar.gz"


def data_root(folder: str | Path | None = None) -> Path | None:
    """``folder`` if given, else the ``ANOMEM_DATA`` folder; None when neither is set."""
    if folder is not None:
        return Path(folder)
    env = os.environ.get("ANOMEM_DATA")
    return Path(env) if env else None


def data_file(name: str, folder: str | Path | None = None) -> Path:
    """Path of the data file ``name`` in ``folder`` (default: ``ANOMEM_DATA``).

    Raises:
        InvalidInputError: no folder is given and ``ANOMEM_DATA`` is unset, or
            the file is not in the folder; the message names the fix.
    """
    root = data_root(folder)
    if root is None:
        raise InvalidInputError(f"{name}: no data folder given; set ANOMEM_DATA to the folder "
                                f"holding it (or pass its path)")
    if not (root / name).is_file():
        raise InvalidInputError(f"{name} not found in {root}; set ANOMEM_DATA to the folder "
                                f"holding it (or pass its path)")
    return root / name

