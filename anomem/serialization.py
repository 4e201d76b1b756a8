"""Atomic file writes and pickle-free loading of model and checkpoint files.

Every file anomem writes goes to a temporary sibling first, is flushed and
fsync'ed, then renamed over the target: a crash mid-write leaves the previous
file intact.  Files are read with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain containers, so a crafted pickle cannot run code.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from anomem.errors import ModelFileError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically; ``obj`` should hold only tensors and plain types."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | Path, what: str = "model file") -> dict[str, Any]:
    """Load a dict saved by :func:`atomic_torch_save` without executing pickled code.

    Raises:
        ModelFileError: the file is missing, truncated, not a torch file, or
            holds anything but tensors and plain containers (e.g. a pickle
            payload that would run code).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{what} {str(p)!r} does not exist; check the path")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode becomes one clear error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"{what} {str(p)!r} cannot be loaded safely ({reason}); it is corrupt, truncated, "
            f"or holds executable pickled objects. Re-create it with anomem.") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{what} {str(p)!r} does not hold an anomem dictionary")
    return obj
