"""Generators of bad outside input and the checks of what each reader makes of it.

Shared by ``tests/test_fuzz.py`` (a few hundred examples per reader, in the
suite) and ``benchmarks/fuzz/run_fuzz.py`` (tens of thousands, on demand).

A ``check_*`` function feeds one example to one entry point and accepts only
two outcomes: a valid result (returns False) or the documented error
(:class:`InvalidInputError` for images and datasets, :class:`ConfigError` for
configurations, :class:`ModelFileError` for model files; returns True).  An
invalid result fails an assertion; any other exception propagates.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from anomem import AnoMem, AnoMemConfig, ConfigError, InvalidInputError, ModelFileError
from anomem.config import FLAT_NAMES, SECTIONS, from_dict, get_config, parse_override, to_dict
from anomem.config import KEYS as CONFIG_KEYS
from anomem.data.cifar import CIFAR10_CLASSES, load_cifar_batch, read_cifar10_jpeg_tar
from anomem.data.convert import MAX_IMAGE_PIXELS, to_image_tensor
from anomem.data.folders import load_images, read_class_folders, read_image
from anomem.data.mtd import read_mtd
from anomem.torch_model import AnoMemModel


# ------------------------------------------------------------------ bytes and files
def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, truncations and bit flips of a real file's ``data``."""
    cut = st.integers(0, len(data) - 1).map(lambda n: data[:n])
    flips = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)),
                     min_size=1, max_size=8).map(lambda fl: _flip(data, fl))
    return st.one_of(st.binary(max_size=4096), cut, flips)


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, mask in flips:
        b[pos] ^= mask
    return bytes(b)


def write_tmp(data: bytes, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix)
    with open(fd, "wb") as f:
        f.write(data)
    return Path(name)


def jpeg(side: int, seed: int, mode: str = "RGB") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG" if mode != "1" else "PNG")
    return buf.getvalue()


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is missing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


# ------------------------------------------------------------------ images in memory
DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.float16, np.float32,
          np.float64, np.bool_, np.complex64]
small_arrays = st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(
    dt, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6)))
# zero-copy views of up to 2^34 pixels per image: over the limit they must be refused
# before any allocation (the fuzzer skips the slow-but-legal sizes just under it)
huge_views = st.tuples(st.integers(1, 3), st.integers(1, 2 ** 17), st.integers(1, 2 ** 17),
                       st.sampled_from([(), (1,), (3,), (4,), (7,)])).filter(
    lambda t: t[1] * t[2] > MAX_IMAGE_PIXELS or t[1] * t[2] < 2 ** 16).map(
    lambda t: np.broadcast_to(np.uint8(7), (t[0], t[1], t[2], *t[3])))
odd_things = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.floats(),
                       st.just(object()), st.just(Image.new("RGB", (3, 5))),
                       st.just(np.arange(12.0)[::-1].reshape(3, 4)))
image_inputs = st.one_of(
    small_arrays, huge_views, small_arrays.map(lambda a: torch.from_numpy(np.array(a))),
    st.lists(st.one_of(small_arrays, odd_things), max_size=4), odd_things)
image_args = st.tuples(image_inputs, st.integers(1, 24))


def check_image_tensor(arg: tuple[Any, int]) -> bool:
    images, size = arg
    try:
        out = to_image_tensor(images, size, "images")
    except InvalidInputError:
        return True
    assert out.dtype == torch.uint8 and out.ndim == 4 and tuple(out.shape[1:]) == (3, size, size)
    return False


# ------------------------------------------------------------------ configuration
KEYS = sorted({*CONFIG_KEYS, *FLAT_NAMES, *SECTIONS})     # section.key, flat names, sections
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
              st.text(max_size=8), st.sampled_from(["resnet18", "cifar", "all", "cpu", "kmeans"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)
config_dicts = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10),
                                         st.integers()), values, max_size=6)
yaml_texts = st.one_of(
    st.text(max_size=300),
    config_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True) if d else ""),
    st.builds(lambda k, v: f"{k}: {v}\n", st.sampled_from(KEYS + ["preset"]),
              st.text(max_size=30)),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.integers(1, 600).map(lambda n: "[" * n + "]" * n),          # deep nesting
)
override_texts = st.one_of(st.text(max_size=40),
                           st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=20)))


def check_config_dict(d: dict[Any, Any]) -> bool:
    refused = True
    for build in (lambda: from_dict(d), lambda: get_config("digits", d)):
        try:
            cfg = build()
        except ConfigError:
            continue
        assert isinstance(cfg, AnoMemConfig) and from_dict(to_dict(cfg)) == cfg
        refused = False
    return refused


def check_yaml(text: str) -> bool:
    path = write_tmp(text.encode("utf-8", "surrogatepass"), ".yaml")
    try:
        cfg = get_config(path)
    except ConfigError:
        return True
    finally:
        path.unlink()
    assert isinstance(cfg, AnoMemConfig)
    return False


def check_override(text: str) -> bool:
    try:
        key, value = parse_override(text)
        get_config("digits", {key: value})
    except ConfigError:
        return True
    return False


# ------------------------------------------------------------------ datasets
def cifar_tar() -> bytes:
    """A well-formed CIFAR-10 JPEG archive: two classes, one 32x32 image each per part."""
    return tar_gz({f"{part}/{cls}/{i}.jpg": jpeg(32, i)
                   for part in ("train", "test") for i, cls in enumerate(CIFAR10_CLASSES[:2])})


def cifar_tars(real: bytes) -> st.SearchStrategy[bytes]:
    """Mutations of ``real`` and archives of images of other sizes."""
    sizes = st.lists(st.integers(1, 64), min_size=2, max_size=4).map(lambda sides: tar_gz(
        {f"{part}/cat/{i}.jpg": jpeg(side, i) for i, side in enumerate(sides)
         for part in ("train", "test")}))
    return st.one_of(mutations(real), sizes)


def check_dataset(reader: Callable[[Path], Any], suffix: str, valid: Callable[[Any], bool],
                  refusal: type[Exception] = InvalidInputError) -> Callable[[bytes], bool]:
    """Check that ``reader`` on a file of the given bytes returns a ``valid`` result or refuses
    (raises ``refusal``)."""
    def check(data: bytes) -> bool:
        path = write_tmp(data, suffix)
        try:
            result = reader(path)
        except refusal:
            return True
        finally:
            path.unlink()
        assert valid(result), result
        return False
    return check


def cifar_shapes(split: Any) -> bool:
    return split.x_train.shape[1:] == split.x_test.shape[1:] == (32, 32, 3)


check_cifar_tar = check_dataset(read_cifar10_jpeg_tar, ".tar.gz", cifar_shapes)


def cifar_batch() -> bytes:
    """A well-formed CIFAR python batch of two images."""
    return pickle.dumps({b"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072),
                         b"labels": [0, 1], b"batch_label": b"fuzz"}, protocol=2)


def check_cifar_batch(data: bytes) -> bool:
    try:
        batch = load_cifar_batch(data, "fuzzed")
    except InvalidInputError:
        return True
    assert isinstance(batch, dict) and all(isinstance(k, str) for k in batch)
    return False


def mtd_tar() -> bytes:
    """A well-formed Magnetic Tile Defects archive: one defect-free and one cracked tile."""
    mask = png(np.eye(24, dtype=np.uint8) * 255)
    return tar_gz({"MT_Free/Imgs/a.jpg": jpeg(24, 1, "L"), "MT_Free/Imgs/a.png": mask,
                   "MT_Crack/Imgs/b.jpg": jpeg(24, 2, "L"), "MT_Crack/Imgs/b.png": mask})


check_mtd_tar = check_dataset(lambda p: read_mtd(p, side=16), ".tar.gz",
                              lambda d: d.images.shape[1:] == (16, 16))


# ------------------------------------------------------------------ image files and folders
SMALL_PNG = png(np.zeros((9, 7, 3), np.uint8))
image_files = st.one_of(mutations(SMALL_PNG), mutations(jpeg(16, 3)),
                        st.builds(png_header, st.integers(0, 2 ** 31 - 1), st.integers(0, 2 ** 31 - 1)))


def check_image_file(data: bytes) -> bool:
    path = write_tmp(data, ".png")
    try:
        try:
            arr = read_image(path)
            assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        except InvalidInputError:
            pass
        try:
            loaded = load_images([path], 8, on_error="skip")
        except InvalidInputError:
            return True
        assert loaded.images.shape == (1, 3, 8, 8)
        return False
    finally:
        path.unlink()


folder_entries = st.lists(st.tuples(st.sampled_from(["a", "b", ".hidden", "a/deep/er"]),
                                     st.sampled_from(["x.png", "y.jpg", "z.txt", ".h.png"]),
                                     st.one_of(mutations(SMALL_PNG), st.just(SMALL_PNG))),
                          max_size=5)
folder_trees = st.tuples(folder_entries, st.sampled_from([None, 8]), st.sampled_from(["fail", "skip"]))


def write_tree(root: Path, files: list[tuple[str, str, bytes]]) -> Path:
    """Write (folder, name, bytes) entries under the new folder ``root``."""
    root.mkdir(parents=True)
    for folder, name, data in files:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(data)
    return root


def check_class_folders(base: Path) -> Callable[[tuple[list[tuple[str, str, bytes]], int | None, str]], bool]:
    """A check of ``read_class_folders`` on trees written in fresh folders under ``base``."""
    made: Iterator[int] = iter(range(10 ** 9))

    def check(tree: tuple[list[tuple[str, str, bytes]], int | None, str]) -> bool:
        files, size, on_error = tree
        root = write_tree(base / str(next(made)), files)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)     # the list of skipped files
                x, y, classes = read_class_folders(root, size=size, on_error=on_error)
        except InvalidInputError:
            return True
        assert x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(y) and len(classes) >= 1
        return False
    return check


# ------------------------------------------------------------------ model files
def tiny_model_file(folder: Path) -> bytes:
    """The bytes of a saved detector with an untrained (random) width-4 network."""
    det = AnoMem("digits", mem_sizes=[4, 4], width=4)
    det.network_ = AnoMemModel(get_config("digits", {"mem_sizes": [4, 4], "width": 4})).eval()
    det.threshold_ = 0.5
    return det.save(folder / "m.anomem").read_bytes()


def check_model_file(model_file: bytes) -> Callable[[bytes], bool]:
    """A check of ``AnoMem.load``: damaged copies of ``model_file`` load identically or are refused."""
    original = AnoMem.load(write_tmp(model_file, ".anomem"))
    reference = original.network_.state_dict()

    def check(data: bytes) -> bool:
        path = write_tmp(data, ".anomem")
        try:
            det = AnoMem.load(path)
        except ModelFileError:
            return True
        finally:
            path.unlink()
        # accepted only if the damage missed the content (e.g. zip metadata torch ignores)
        assert det.threshold_ == original.threshold_ and det.config == original.config
        state = det.network_.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
        return False
    return check
