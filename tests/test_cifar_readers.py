"""CIFAR readers: python-format batches (written here in the official pickle layout),
the restricted unpickler, and the decoded cache of the JPEG archive."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomem.data.cifar import (
    CIFAR10_CLASSES,
    cached_cifar10_jpeg,
    load_cifar_batch,
    read_cifar10_jpeg_tar,
    read_cifar10_python,
    read_cifar100_python,
)
from anomem.errors import InvalidInputError


def _batch(rng: np.random.Generator, n: int, **labels: list[int]) -> tuple[bytes, np.ndarray]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    d = {b"batch_label": b"testing batch", b"data": data,
         b"filenames": [f"img_{i}.png".encode() for i in range(n)],
         **{k.encode(): v for k, v in labels.items()}}
    return pickle.dumps(d, protocol=2), data


def _hwc(data: np.ndarray) -> np.ndarray:
    # official layout: 1024 red, then 1024 green, then 1024 blue values, row-major
    return np.stack([data[:, :1024], data[:, 1024:2048], data[:, 2048:]], -1).reshape(-1, 32, 32, 3)


def _write_cifar10(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for i in range(1, 6):
        blob, data = _batch(rng, 4, labels=[i % 10, 3, 5, 9])
        (folder / f"data_batch_{i}").write_bytes(blob)
        train.append(data)
    blob, test = _batch(rng, 3, labels=[0, 1, 2])
    (folder / "test_batch").write_bytes(blob)
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, protocol=2))
    return np.concatenate(train), test


def test_cifar10_python_folder_and_tar_gz(tmp_path: Path) -> None:
    train, test = _write_cifar10(tmp_path, np.random.default_rng(0))
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for src in (tmp_path / "cifar-10-batches-py", tmp_path, tgz):
        s = read_cifar10_python(src)
        assert s.x_train.shape == (20, 32, 32, 3) and s.x_train.dtype == np.uint8
        np.testing.assert_array_equal(s.x_train, _hwc(train))
        np.testing.assert_array_equal(s.x_test, _hwc(test))
        assert s.y_train[:4].tolist() == [1, 3, 5, 9] and s.y_test.tolist() == [0, 1, 2]
        assert s.classes == CIFAR10_CLASSES
    with pytest.raises(InvalidInputError, match="lacks 'test_batch'"):
        (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
        read_cifar10_python(tmp_path / "cifar-10-batches-py")


def test_cifar100_coarse_superclasses(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    blob, train = _batch(rng, 6, fine_labels=[0, 99, 50, 1, 2, 3], coarse_labels=[4, 19, 0, 1, 2, 3])
    (folder / "train").write_bytes(blob)
    blob, _ = _batch(rng, 2, fine_labels=[7, 8], coarse_labels=[19, 0])
    (folder / "test").write_bytes(blob)
    (folder / "meta").write_bytes(pickle.dumps(
        {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
         b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}, protocol=2))
    s = read_cifar100_python(folder)
    assert len(s.classes) == 20 and s.classes[19] == "super19"
    assert s.y_train.tolist() == [4, 19, 0, 1, 2, 3] and s.y_test.tolist() == [19, 0]
    np.testing.assert_array_equal(s.x_train, _hwc(train))
    fine = read_cifar100_python(folder, coarse=False)
    assert len(fine.classes) == 100 and fine.y_train.tolist() == [0, 99, 50, 1, 2, 3]


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.target),)


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(target)}, protocol=2)
    with pytest.raises(InvalidInputError, match="not allowed"):
        load_cifar_batch(payload, "evil")
    assert not target.exists()
    with pytest.raises(InvalidInputError, match="dictionary"):
        load_cifar_batch(pickle.dumps([1, 2], protocol=2), "list")


def _jpeg_tar(path: Path, n: int) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for c in ("cat", "dog"):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), (10 * i, 100, 200)).save(buf, "JPEG")
                    info = tarfile.TarInfo(f"{split}/{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tf.addfile(info, io.BytesIO(buf.getvalue()))


def test_jpeg_cache_is_written_reused_and_keyed_by_the_archive(tmp_path: Path) -> None:
    tar, cache = tmp_path / "c.tar.gz", tmp_path / "cache"
    _jpeg_tar(tar, 3)
    direct = read_cifar10_jpeg_tar(tar)
    first = cached_cifar10_jpeg(tar, cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    np.testing.assert_array_equal(first.x_train, direct.x_train)
    os.utime(files[0])
    np.savez(files[0], x_train=direct.x_train[:1] * 0, y_train=direct.y_train[:1],
             x_test=direct.x_test[:1], y_test=direct.y_test[:1])
    assert len(cached_cifar10_jpeg(tar, cache).x_train) == 1  # read from the cache, not the tar
    time.sleep(1.1)
    _jpeg_tar(tar, 4)  # a new archive: new size and mtime, new key
    again = cached_cifar10_jpeg(tar, cache)
    assert len(again.x_train) == 8 and len(list(cache.glob("*.npz"))) == 2
    current = max(cache.glob("*.npz"), key=lambda f: f.stat().st_mtime)
    current.write_bytes(b"not an npz")  # a damaged cache is ignored and rewritten
    assert len(cached_cifar10_jpeg(tar, cache).x_train) == 8
    with np.load(current) as d:
        assert d["x_train"].shape == (8, 32, 32, 3)


def test_a_corrupt_gzip_stream_is_a_clean_error(tmp_path: Path) -> None:
    # found by fuzzing: a flipped byte inside the compressed stream raised zlib.error
    _write_cifar10(tmp_path, np.random.default_rng(0))
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = bytearray(tgz.read_bytes())
    failures = 0
    for pos in range(30, len(data) - 8, max(1, (len(data) - 38) // 25)):
        bad = tmp_path / f"bad{pos}.tar.gz"
        flipped = bytearray(data)
        flipped[pos] ^= 0x55
        bad.write_bytes(bytes(flipped))
        try:
            read_cifar10_python(bad)
        except InvalidInputError:
            failures += 1
    assert failures > 0                   # every corruption is read or refused cleanly, never raw
