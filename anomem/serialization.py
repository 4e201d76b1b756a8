"""Atomic file writes and pickle-free loading of model and checkpoint files.

Every file anomem writes goes to a temporary sibling first, is flushed and
fsync'ed, then renamed over the target: a crash mid-write leaves the previous
file intact.  Files are read with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain containers, so a crafted pickle cannot run code.
A dictionary saved by :func:`atomic_torch_save` carries a ``checksum`` of its
content, checked on load, so a corrupted (e.g. bit-flipped) file is refused
instead of silently yielding other weights.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from anomem.errors import ModelFileError

CHECKSUM_KEY = "checksum"
#: First bytes of files someone may pass where a model file goes, and what they are.
MAGIC = ((b"\x89PNG", "an image file (PNG)"), (b"\xff\xd8\xff", "an image file (JPEG)"),
         (b"BM", "an image file (BMP)"), (b"II*\x00", "an image file (TIFF)"),
         (b"MM\x00*", "an image file (TIFF)"), (b"\x1f\x8b", "a gzip archive (e.g. a .tar.gz)"))
TORCH_FILE = "a torch file"


def _is_text(head: bytes) -> bool:
    """UTF-8 without NUL bytes (a cut multi-byte character at the end is fine)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def file_kind(path: str | Path) -> str:
    """What a path holds, from its first bytes: :data:`TORCH_FILE` (a ``torch.save`` zip
    archive or pickle, which a model file is), a folder, an image, a text file, etc."""
    p = Path(path)
    if p.is_dir():
        return "a folder"
    head = b""
    try:
        with p.open("rb") as f:
            head = f.read(512)
        if head.startswith(b"PK\x03\x04"):
            with zipfile.ZipFile(p) as z:
                torch_zip = any(n.endswith("data.pkl") for n in z.namelist())
            return TORCH_FILE if torch_zip else "a zip archive that torch did not write"
    except (OSError, zipfile.BadZipFile):
        return TORCH_FILE if head.startswith(b"PK\x03\x04") else "an unreadable file"
    if head.startswith(b"\x80"):            # a pickle: torch's legacy format, or a crafted one
        return TORCH_FILE
    if not head:
        return "an empty file"
    if _is_text(head):
        return "a text file (e.g. a CSV or a list of image paths)"
    return next((k for magic, k in MAGIC if head.startswith(magic)), "a file of unknown format")


def _new_file_mode(p: Path) -> int:
    """The mode a plain ``open(p, "w")`` would leave: the existing file's, else 0o666 less the umask."""
    try:
        return p.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename).

    The file gets the permissions an ordinary write would give it (the
    temporary file's private 0o600 is not kept).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def content_digest(obj: Any) -> str:
    """A digest of nested dicts / lists / tuples of tensors and plain values.

    Tensors count by dtype, shape and bytes; anything else by type and ``repr``;
    dictionaries in their (insertion) order, which ``torch.load`` preserves.
    """
    h = hashlib.blake2b(digest_size=16)

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(f"D{len(o)}:".encode())
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__}{len(o)}:".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"{type(o).__name__}={o!r};".encode())
    walk(obj)
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically; ``obj`` should hold only tensors and plain types.

    A dictionary gets a ``checksum`` entry (its :func:`content_digest`; any old one is replaced).
    """
    if isinstance(obj, dict):
        body = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        obj = {**body, CHECKSUM_KEY: content_digest(body)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | Path, what: str = "model file",
                    expected: str | None = None) -> dict[str, Any]:
    """Load a dict saved by :func:`atomic_torch_save` without executing pickled code.

    The ``checksum`` entry, when present, is checked; callers that need one
    call :func:`require_checksum` on the result.  ``expected`` says what the
    caller wants instead of a wrong file (default: a ``what`` written by anomem).

    Raises:
        ModelFileError: the file is missing, a folder, not a torch file (the
            message says what it looks like: text, an image...), truncated,
            holds anything but tensors and plain containers (e.g. a pickle
            payload that would run code), or its content fails its checksum.
    """
    p = Path(path)
    wanted = expected or f"a {what} written by anomem"
    if not p.exists():
        raise ModelFileError(f"{what} {str(p)!r} does not exist; check the path")
    kind = file_kind(p)
    if kind != TORCH_FILE:
        raise ModelFileError(f"{what} {str(p)!r} is {kind}, not a file anomem wrote; pass {wanted}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode becomes one clear error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"{what} {str(p)!r} cannot be loaded safely ({reason}); it is corrupt, truncated, "
            f"or holds executable pickled objects. Re-create it with anomem.") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{what} {str(p)!r} does not hold an anomem dictionary")
    if CHECKSUM_KEY in obj:
        expected = obj.pop(CHECKSUM_KEY)
        if content_digest(obj) != expected:
            raise ModelFileError(f"{what} {str(p)!r} is corrupt: its content does not match its "
                                 f"checksum (damaged on disk or in transfer); use another copy "
                                 f"or re-create it with anomem")
        obj[CHECKSUM_KEY] = expected
    return obj


def require_checksum(obj: dict[str, Any], what: str, path: str | Path) -> None:
    """Raises :class:`ModelFileError` if a loaded file carried no checksum (it was not
    written by :func:`atomic_torch_save`, or the checksum entry itself was damaged)."""
    if CHECKSUM_KEY not in obj:
        raise ModelFileError(f"{what} {str(path)!r} has no checksum, so it was not written by "
                             f"anomem or is damaged; re-create it with anomem")
