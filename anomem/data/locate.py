"""Where the shared benchmark data lives.

Looked up, in order: the ``ANOMEM_DATA`` environment variable, then the
``shared/data`` folder beside the project checkout (``../shared/data`` seen
from the repository root).  Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from anomem.errors import InvalidInputError

CIFAR10_JPEG = "cifar10_jpeg.tar.gz"
MAGNETIC_TILES = "magnetic_tile_defects.tar.gz"


def data_root() -> Path | None:
    """The shared data folder, or None when it is absent."""
    env = os.environ.get("ANOMEM_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return here.resolve() if here.is_dir() else None


def shared_file(name: str) -> Path:
    """Path of a shared data file; raises :class:`InvalidInputError` naming the fix if missing."""
    root = data_root()
    if root is None or not (root / name).is_file():
        raise InvalidInputError(f"{name} not found (looked in {root or 'no data folder'}); set "
                                f"ANOMEM_DATA to the folder holding it")
    return root / name
