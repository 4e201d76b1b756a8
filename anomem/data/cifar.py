"""CIFAR readers: the CIFAR-10 JPEG tree archive (``train/<class>/*.jpg``, with a decoded
on-disk cache) and the standard CIFAR-10 / CIFAR-100 python-format batches.

See :mod:`anomem.data.locate` for where the archive is looked up.  Images are
returned as uint8 (N, 32, 32, 3) with labels in the standard CIFAR-10 order.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomem.data.dataset import LabelledSplit
from anomem.errors import InvalidInputError
from anomem.serialization import atomic_write_bytes

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


#: Largest archive member read as a CIFAR image (a 32x32 JPEG is about 1-2 KB).
MAX_MEMBER_BYTES = 1 << 20


def _decode(data: bytes, name: str) -> np.ndarray:
    """A 32x32 image file to uint8 (32, 32, 3); the size is checked before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (32, 32):
                raise InvalidInputError(f"image {name!r} is {im.size[0]}x{im.size[1]} px; CIFAR-10 "
                                        f"images are 32x32")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        if isinstance(e, InvalidInputError):
            raise
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
                if m.size > MAX_MEMBER_BYTES:
                    raise InvalidInputError(f"CIFAR-10 archive {str(p)!r}: member {m.name!r} has "
                                            f"{m.size:,} bytes, too many for a 32x32 image")
                f = tf.extractfile(m)
                if f is None:
                    continue
                xs, ys = parts[bits[0]]
                xs.append(_decode(f.read(), m.name))
                ys.append(CIFAR10_CLASSES.index(bits[1]))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise InvalidInputError(f"CIFAR-10 archive {str(p)!r} is not a readable tar file ({e})") from None
    if not parts["train"][0] or not parts["test"][0]:
        raise InvalidInputError(f"CIFAR-10 archive {str(p)!r} has no train/<class>/ or "
                                f"test/<class>/ images")
    (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
    return LabelledSplit(np.stack(xtr), np.asarray(ytr, np.int64), np.stack(xte),
                         np.asarray(yte, np.int64), CIFAR10_CLASSES)


# ---------------------------------------------------------------- decoded cache
def cache_dir() -> Path:
    """Folder of anomem's decoded-data cache: ``ANOMEM_CACHE`` or ``~/.cache/anomem``."""
    env = os.environ.get("ANOMEM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "anomem"


def _cache_key(p: Path) -> str:
    st = p.stat()
    return f"{p.name}-{st.st_size}-{int(st.st_mtime)}"


def cached_cifar10_jpeg(path: str | Path, cache: str | Path | None = None) -> LabelledSplit:
    """:func:`read_cifar10_jpeg_tar` with an on-disk decoded copy (npz, written atomically).

    Decoding the 60,000 JPEGs takes about 20 s; the cache, keyed by the archive's
    name, size and modification time, loads in about one.  A stale or unreadable
    cache file is ignored and rewritten.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"CIFAR-10 archive {str(p)!r} does not exist")
    target = Path(cache) if cache is not None else cache_dir()
    file = target / f"{_cache_key(p)}.npz"
    if file.is_file():
        try:
            with np.load(file, allow_pickle=False) as d:
                return LabelledSplit(d["x_train"], d["y_train"], d["x_test"], d["y_test"],
                                     CIFAR10_CLASSES)
        except (OSError, ValueError, KeyError):
            pass
    split = read_cifar10_jpeg_tar(p)
    buf = io.BytesIO()
    np.savez(buf, x_train=split.x_train, y_train=split.y_train, x_test=split.x_test,
             y_test=split.y_test)
    atomic_write_bytes(file, buf.getvalue())
    return split


# ---------------------------------------------------------------- python-format batches
_ALLOWED_GLOBALS = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "bytes"), ("builtins", "str"),
    ("builtins", "int"), ("__builtin__", "dict"), ("__builtin__", "list"),
    ("__builtin__", "str"), ("__builtin__", "int"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def load_cifar_batch(data: bytes, name: str) -> dict[str, Any]:
    """Decode one CIFAR python-format batch with a restricted unpickler.

    The official CIFAR-10/100 "python version" files are pickles, so reading
    them needs :mod:`pickle`.  Only these globals may be resolved: the builtin
    types dict, list, bytes, str and int, numpy's array reconstruction
    (``_reconstruct``, ``ndarray``, ``dtype``) and ``_codecs.encode`` (how
    protocol-2 pickles store bytes).  A file naming any other global (e.g. one
    crafted to call ``os.system``) raises :class:`InvalidInputError` before
    anything runs.  Keys are returned as ``str``.
    """
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, LookupError, OverflowError, MemoryError) as e:
        raise InvalidInputError(f"CIFAR batch {name!r} is not a valid CIFAR python-format "
                                f"file ({e})") from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"CIFAR batch {name!r} does not hold a dictionary")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


class _Members:
    """Files of a CIFAR python-format release, from its folder or its tar(.gz) archive."""

    def __init__(self, path: Path, folder: str) -> None:
        self.path, self.folder = path, folder
        if not path.exists():
            raise InvalidInputError(f"CIFAR data {str(path)!r} does not exist; pass the "
                                    f"{folder} folder or the archive holding it")

    def read(self, name: str) -> bytes:
        if self.path.is_dir():
            base = self.path if (self.path / name).is_file() else self.path / self.folder
            f = base / name
            if not f.is_file():
                raise InvalidInputError(f"CIFAR data {str(self.path)!r} lacks {name!r}")
            return f.read_bytes()
        try:
            with tarfile.open(self.path) as tf:
                for m in tf:
                    if m.isfile() and m.name.strip("./").split("/")[-1] == name:
                        fh = tf.extractfile(m)
                        if fh is not None:
                            return fh.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:   # zlib: corrupt gzip
            raise InvalidInputError(f"CIFAR archive {str(self.path)!r} is not a readable tar "
                                    f"file ({e})") from None
        raise InvalidInputError(f"CIFAR archive {str(self.path)!r} lacks {name!r}")


def _images(batch: dict[str, Any], name: str) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3072:
        raise InvalidInputError(f"CIFAR batch {name!r}: 'data' must be (N, 3072) uint8, got "
                                f"shape {data.shape}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _labels(batch: dict[str, Any], key: str, n: int, name: str) -> np.ndarray:
    y = np.asarray(batch.get(key, []), dtype=np.int64)
    if y.shape != (n,):
        raise InvalidInputError(f"CIFAR batch {name!r}: {key!r} must hold {n} labels")
    return y


def read_cifar10_python(path: str | Path) -> LabelledSplit:
    """Standard CIFAR-10 python batches: the ``cifar-10-batches-py`` folder or its tar.gz."""
    src = _Members(Path(path), "cifar-10-batches-py")
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        b = load_cifar_batch(src.read(name), name)
        xs.append(_images(b, name))
        ys.append(_labels(b, "labels", len(xs[-1]), name))
    return LabelledSplit(np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5],
                         CIFAR10_CLASSES)


def read_cifar100_python(path: str | Path, coarse: bool = True) -> LabelledSplit:
    """Standard CIFAR-100 python files (``cifar-100-python`` folder or tar.gz).

    With ``coarse`` (the anomaly-detection benchmark), labels are the 20
    superclasses; otherwise the 100 fine classes.
    """
    src = _Members(Path(path), "cifar-100-python")
    key = "coarse_label" if coarse else "fine_label"
    meta = load_cifar_batch(src.read("meta"), "meta")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                  for n in meta.get(f"{key}_names", []))
    parts = []
    for name in ("train", "test"):
        b = load_cifar_batch(src.read(name), name)
        x = _images(b, name)
        parts.append((x, _labels(b, f"{key}s", len(x), name)))
    (xtr, ytr), (xte, yte) = parts
    if len(names) <= int(max(ytr.max(), yte.max())):
        raise InvalidInputError(f"CIFAR-100 'meta' names {len(names)} {key} classes, fewer than "
                                f"the labels use")
    return LabelledSplit(xtr, ytr, xte, yte, names)
