"""Fuzzing every reader of outside input with hypothesis.

Each fuzzer feeds bad input (random bytes, truncated and bit-flipped real files,
huge or zero dimensions, wrong types, unknown keys; generators and checks in
``tests/fuzzing.py``, shared with ``benchmarks/fuzz/run_fuzz.py``) to one entry
point and accepts only two outcomes: a valid result, or the documented error
(:class:`InvalidInputError` for images and datasets, :class:`ConfigError` for
configurations, :class:`ModelFileError` for model files).  Hypothesis deadlines
catch slow examples and an alarm catches hangs.  Each fuzzer prints how many
examples it tried (``pytest -s tests/test_fuzz.py``) and fails if hypothesis
tried fewer than ``MIN_EXAMPLES``.
"""

from __future__ import annotations

import pickle
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fuzzing import (
    check_cifar_batch,
    check_cifar_tar,
    check_class_folders,
    check_config_dict,
    check_image_file,
    check_image_tensor,
    check_model_file,
    check_mtd_tar,
    check_override,
    check_yaml,
    cifar_batch,
    cifar_tar,
    cifar_tars,
    config_dicts,
    folder_trees,
    image_args,
    image_files,
    jpeg,
    mtd_tar,
    mutations,
    override_texts,
    png,
    tar_gz,
    tiny_model_file,
    write_tmp,
    yaml_texts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomem import InvalidInputError
from anomem.data.cifar import load_cifar_batch, read_cifar10_jpeg_tar
from anomem.data.mtd import read_mtd

MIN_EXAMPLES = 40
HANG_S = 120                 # no fuzzer may run longer than this
# derandomize: the same examples on every run, so the suite is reproducible; the fuzz
# benchmark (benchmarks/fuzz) explores with fresh seeds
FAST = settings(max_examples=120, deadline=10_000, database=None, derandomize=True,
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


# ------------------------------------------------------------------ images
def test_fuzz_to_image_tensor():
    fuzz("to_image_tensor", image_args, check_image_tensor, settings(FAST, max_examples=300))


# ------------------------------------------------------------------ configuration
def test_fuzz_config_dicts():
    fuzz("config dicts", config_dicts, check_config_dict, settings(FAST, max_examples=300))


def test_fuzz_config_yaml_files():
    fuzz("config YAML files", yaml_texts, check_yaml, settings(FAST, max_examples=200))


def test_fuzz_config_overrides():
    fuzz("key=value overrides", override_texts, check_override, settings(FAST, max_examples=200))


# ------------------------------------------------------------------ datasets
@pytest.fixture(scope="module", name="cifar_tar")
def cifar_tar_fixture() -> bytes:
    return cifar_tar()


def test_cifar_reader_reads_the_unmutated_archive(cifar_tar):
    path = write_tmp(cifar_tar, ".tar.gz")
    split = read_cifar10_jpeg_tar(path)
    assert split.x_train.shape == (2, 32, 32, 3) and split.x_test.shape == (2, 32, 32, 3)


def test_fuzz_cifar10_jpeg_tar(cifar_tar):
    fuzz("read_cifar10_jpeg_tar", cifar_tars(cifar_tar), check_cifar_tar)


def test_cifar_batch_with_an_unknown_text_encoding_is_refused():
    """A case the fuzzer found: a bit flip in the codec name of ``_codecs.encode``."""
    real = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2)
    assert real.count(b"latin1") == 1
    with pytest.raises(InvalidInputError, match="not a valid CIFAR"):
        load_cifar_batch(real.replace(b"latin1", b"matin1"), "flipped")


def test_fuzz_cifar_python_batches():
    real = cifar_batch()
    assert load_cifar_batch(real, "real")["labels"] == [0, 1]
    fuzz("load_cifar_batch", mutations(real), check_cifar_batch)


@pytest.fixture(scope="module", name="mtd_tar")
def mtd_tar_fixture() -> bytes:
    return mtd_tar()


def test_mtd_reader_refuses_a_png_with_a_broken_chunk(tmp_path):
    """A case the fuzzer found: PIL raises SyntaxError (not OSError) for a broken PNG chunk."""
    mask = png(np.eye(24, dtype=np.uint8) * 255)
    assert mask[37:41] == b"IDAT"
    broken = mask[:36] + b"\x04" + mask[37:]     # IDAT too short: the next "chunk" is garbage
    path = tmp_path / "mtd.tar.gz"
    path.write_bytes(tar_gz({"MT_Free/Imgs/a.jpg": jpeg(24, 1, "L"), "MT_Free/Imgs/a.png": broken}))
    with pytest.raises(InvalidInputError, match="MT_Free/Imgs/a.png"):
        read_mtd(path, side=16)


def test_fuzz_mtd_archive(mtd_tar):
    assert len(read_mtd(write_tmp(mtd_tar, ".tar.gz"), side=16)) == 2
    fuzz("read_mtd", mutations(mtd_tar), check_mtd_tar)


def test_fuzz_image_files():
    fuzz("image files", image_files, check_image_file)


def test_fuzz_class_folders(tmp_path):
    fuzz("read_class_folders", folder_trees, check_class_folders(tmp_path))


# ------------------------------------------------------------------ model files
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> bytes:
    return tiny_model_file(tmp_path_factory.mktemp("model"))


def test_fuzz_model_files(model_file):
    fuzz("AnoMem.load", mutations(model_file), check_model_file(model_file),
         settings(FAST, max_examples=120))
