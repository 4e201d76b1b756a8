"""Fuzzing every reader of outside input with hypothesis.

Each fuzzer feeds bad input (random bytes, truncated and bit-flipped real files,
huge or zero dimensions, wrong types, unknown keys) to one entry point and
accepts only two outcomes: a valid result, or the documented error
(:class:`InvalidInputError` for images and datasets, :class:`ConfigError` for
configurations, :class:`ModelFileError` for model files).  Hypothesis deadlines
catch slow examples and an alarm catches hangs.  Each fuzzer prints how many
examples it tried (``pytest -s tests/test_fuzz.py``) and fails if hypothesis
tried fewer than ``MIN_EXAMPLES``.
"""

from __future__ import annotations

import io
import pickle
import signal
import struct
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from anomem import AnoMem, AnoMemConfig, ConfigError, InvalidInputError, ModelFileError
from anomem.config import from_dict, get_config, parse_override, to_dict
from anomem.data.cifar import CIFAR10_CLASSES, load_cifar_batch, read_cifar10_jpeg_tar
from anomem.data.convert import MAX_IMAGE_PIXELS, to_image_tensor
from anomem.data.folders import load_images, read_class_folders, read_image
from anomem.data.mtd import read_mtd
from anomem.torch_model import AnoMemModel

MIN_EXAMPLES = 40
HANG_S = 120                 # no fuzzer may run longer than this
FAST = settings(max_examples=120, deadline=10_000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail a fuzzer that runs past ``HANG_S`` (an infinite loop would otherwise stall CI)."""
    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"fuzzer still running after {HANG_S} s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fuzz(name: str, strategy: st.SearchStrategy, check: Callable[[Any], bool],
         config: settings = FAST) -> None:
    """Run ``check`` (True: input refused with the documented error; False: a valid
    result) on examples of ``strategy``; print the tally and check the number tried."""
    tally = {True: 0, False: 0}

    @config
    @given(strategy)
    def run(example: Any) -> None:
        tally[check(example)] += 1
    run()
    count = tally[True] + tally[False]
    print(f"\nfuzz {name}: {count} examples, {tally[True]} refused with the documented "
          f"error, {tally[False]} accepted")
    assert count >= MIN_EXAMPLES, f"hypothesis tried only {count} {name} examples"


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


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ------------------------------------------------------------------ images
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


def check_image_tensor(arg: tuple[Any, int]) -> bool:
    images, size = arg
    try:
        out = to_image_tensor(images, size, "images")
    except InvalidInputError:
        return True
    assert out.dtype == torch.uint8 and out.ndim == 4 and tuple(out.shape[1:]) == (3, size, size)
    return False


def test_fuzz_to_image_tensor():
    fuzz("to_image_tensor", st.tuples(image_inputs, st.integers(1, 24)), check_image_tensor,
         settings(FAST, max_examples=300))


# ------------------------------------------------------------------ configuration
KEYS = sorted(to_dict(AnoMemConfig()))
values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(),
              st.text(max_size=8), st.sampled_from(["resnet18", "cifar", "all", "cpu", "kmeans"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)
config_dicts = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10),
                                         st.integers()), values, max_size=6)


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


def test_fuzz_config_dicts():
    fuzz("config dicts", config_dicts, check_config_dict, settings(FAST, max_examples=300))


yaml_texts = st.one_of(
    st.text(max_size=300),
    config_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True) if d else ""),
    st.builds(lambda k, v: f"{k}: {v}\n", st.sampled_from(KEYS + ["preset"]),
              st.text(max_size=30)),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.integers(1, 600).map(lambda n: "[" * n + "]" * n),          # deep nesting
)


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


def test_fuzz_config_yaml_files():
    fuzz("config YAML files", yaml_texts, check_yaml, settings(FAST, max_examples=200))


def check_override(text: str) -> bool:
    try:
        key, value = parse_override(text)
        get_config("digits", {key: value})
    except ConfigError:
        return True
    return False


def test_fuzz_config_overrides():
    texts = st.one_of(st.text(max_size=40),
                      st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.text(max_size=20)))
    fuzz("key=value overrides", texts, check_override, settings(FAST, max_examples=200))


# ------------------------------------------------------------------ datasets
@pytest.fixture(scope="module")
def cifar_tar() -> bytes:
    members = {f"{part}/{cls}/{i}.jpg": jpeg(32, i)
               for part in ("train", "test") for i, cls in enumerate(CIFAR10_CLASSES[:2])}
    return tar_gz(members)


def test_cifar_reader_reads_the_unmutated_archive(cifar_tar):
    path = write_tmp(cifar_tar, ".tar.gz")
    split = read_cifar10_jpeg_tar(path)
    assert split.x_train.shape == (2, 32, 32, 3) and split.x_test.shape == (2, 32, 32, 3)


def check_dataset(reader: Callable[[Path], Any], suffix: str,
                  valid: Callable[[Any], bool]) -> Callable[[bytes], bool]:
    """Check that ``reader`` on a file of the given bytes returns a ``valid`` result or refuses."""
    def check(data: bytes) -> bool:
        path = write_tmp(data, suffix)
        try:
            result = reader(path)
        except InvalidInputError:
            return True
        finally:
            path.unlink()
        assert valid(result), result
        return False
    return check


def cifar_shapes(split: Any) -> bool:
    return split.x_train.shape[1:] == split.x_test.shape[1:] == (32, 32, 3)


def test_fuzz_cifar10_jpeg_tar(cifar_tar):
    sizes = st.lists(st.integers(1, 64), min_size=2, max_size=4).map(lambda sides: tar_gz(
        {f"{part}/cat/{i}.jpg": jpeg(side, i) for i, side in enumerate(sides)
         for part in ("train", "test")}))                     # images of other sizes
    fuzz("read_cifar10_jpeg_tar", st.one_of(mutations(cifar_tar), sizes),
         check_dataset(read_cifar10_jpeg_tar, ".tar.gz", cifar_shapes))


def test_cifar_batch_with_an_unknown_text_encoding_is_refused():
    """A case the fuzzer found: a bit flip in the codec name of ``_codecs.encode``."""
    real = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2)
    assert real.count(b"latin1") == 1
    with pytest.raises(InvalidInputError, match="not a valid CIFAR"):
        load_cifar_batch(real.replace(b"latin1", b"matin1"), "flipped")


def test_fuzz_cifar_python_batches():
    real = pickle.dumps({b"data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072),
                         b"labels": [0, 1], b"batch_label": b"fuzz"}, protocol=2)
    assert load_cifar_batch(real, "real")["labels"] == [0, 1]

    def check(data: bytes) -> bool:
        try:
            batch = load_cifar_batch(data, "fuzzed")
        except InvalidInputError:
            return True
        assert isinstance(batch, dict) and all(isinstance(k, str) for k in batch)
        return False
    fuzz("load_cifar_batch", mutations(real), check)


@pytest.fixture(scope="module")
def mtd_tar() -> bytes:
    mask = io.BytesIO()
    Image.fromarray(np.eye(24, dtype=np.uint8) * 255).save(mask, format="PNG")
    return tar_gz({"MT_Free/Imgs/a.jpg": jpeg(24, 1, "L"), "MT_Free/Imgs/a.png": mask.getvalue(),
                   "MT_Crack/Imgs/b.jpg": jpeg(24, 2, "L"), "MT_Crack/Imgs/b.png": mask.getvalue()})


def test_mtd_reader_refuses_a_png_with_a_broken_chunk(mtd_tar, tmp_path):
    """A case the fuzzer found: PIL raises SyntaxError (not OSError) for a broken PNG chunk."""
    mask = io.BytesIO()
    Image.fromarray(np.eye(24, dtype=np.uint8) * 255).save(mask, format="PNG")
    png = mask.getvalue()
    assert png[37:41] == b"IDAT"
    broken = png[:36] + b"\x04" + png[37:]       # IDAT too short: the next "chunk" is garbage
    path = tmp_path / "mtd.tar.gz"
    path.write_bytes(tar_gz({"MT_Free/Imgs/a.jpg": jpeg(24, 1, "L"), "MT_Free/Imgs/a.png": broken}))
    with pytest.raises(InvalidInputError, match="MT_Free/Imgs/a.png"):
        read_mtd(path, side=16)


def test_fuzz_mtd_archive(mtd_tar):
    assert len(read_mtd(write_tmp(mtd_tar, ".tar.gz"), side=16)) == 2
    fuzz("read_mtd", mutations(mtd_tar), check_dataset(
        lambda p: read_mtd(p, side=16), ".tar.gz", lambda d: d.images.shape[1:] == (16, 16)))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is missing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_fuzz_image_files():
    png = io.BytesIO()
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(png, format="PNG")
    files = st.one_of(mutations(png.getvalue()), mutations(jpeg(16, 3)),
                      st.builds(png_header, st.integers(0, 2 ** 31 - 1), st.integers(0, 2 ** 31 - 1)))

    def check(data: bytes) -> bool:
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
    fuzz("image files", files, check)


def test_fuzz_class_folders(tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(png, format="PNG")
    entries = st.lists(st.tuples(st.sampled_from(["a", "b", ".hidden", "a/deep/er"]),
                                 st.sampled_from(["x.png", "y.jpg", "z.txt", ".h.png"]),
                                 st.one_of(mutations(png.getvalue()), st.just(png.getvalue()))),
                       max_size=5)
    trees = st.tuples(entries, st.sampled_from([None, 8]), st.sampled_from(["fail", "skip"]))
    made = iter(range(10 ** 6))

    def check(tree: tuple[list[tuple[str, str, bytes]], int | None, str]) -> bool:
        files, size, on_error = tree
        root = tmp_path / str(next(made))
        root.mkdir()
        for folder, name, data in files:
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)     # the list of skipped files
                x, y, classes = read_class_folders(root, size=size, on_error=on_error)
        except InvalidInputError:
            return True
        assert x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(y) and len(classes) >= 1
        return False
    fuzz("read_class_folders", trees, check)


# ------------------------------------------------------------------ model files
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> bytes:
    det = AnoMem("digits", mem_sizes=[4, 4], width=4)
    det.model = AnoMemModel(det.config).eval()
    det.threshold_ = 0.5
    return det.save(tmp_path_factory.mktemp("model") / "m.anomem").read_bytes()


def test_fuzz_model_files(model_file):
    original = AnoMem.load(write_tmp(model_file, ".anomem"))
    reference = original.model.state_dict()

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
        state = det.model.state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
        return False
    fuzz("AnoMem.load", mutations(model_file), check, settings(FAST, max_examples=120))
