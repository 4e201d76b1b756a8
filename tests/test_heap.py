"""``malloc_mmap_threshold`` (:mod:`anomem.heap`): where memory comes from, never what is computed."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from anomem import AnoMem
from anomem.config import ConfigError, get_config
from anomem.heap import _glibc_mallopt, large_blocks_mmapped

glibc = pytest.mark.skipif(_glibc_mallopt() is None, reason="glibc only")


# In a fresh process: glibc serves a block from a free heap chunk whenever one fits, and the
# tests before this one leave such chunks behind.
_MAPPED_ON_THEIR_OWN = """
import ctypes, torch
from anomem.heap import large_blocks_mmapped

class MallInfo2(ctypes.Structure):
    _fields_ = [(k, ctypes.c_size_t) for k in ("arena ordblks smblks hblks hblkhd usmblks "
                                                "fsmblks uordblks fordblks keepcost").split()]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
with large_blocks_mmapped(1 << 20) as applied:
    before = mallinfo2().hblkhd
    block = torch.empty(3 << 20, dtype=torch.uint8)       # 3 MiB: a mapping of its own
    grown = mallinfo2().hblkhd - before
    del block
    back = mallinfo2().hblkhd - before                    # unmapped when freed
print(applied, grown >= 3 << 20, back == 0)
"""


def test_zero_changes_nothing():
    with large_blocks_mmapped(0) as applied:
        assert applied is False


@glibc
def test_blocks_above_the_threshold_are_mapped_on_their_own():
    out = subprocess.run([sys.executable, "-c", _MAPPED_ON_THEIR_OWN], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == ["True", "True", "True"]


def test_the_cpu_preset_sets_it_and_it_is_validated():
    assert get_config("cpu").runtime.malloc_mmap_threshold == 8 << 20
    assert get_config("digits").runtime.malloc_mmap_threshold == 0
    with pytest.raises(ConfigError, match="malloc_mmap_threshold"):
        get_config("cpu", {"malloc_mmap_threshold": -1})


@glibc
def test_a_fit_computes_the_same_numbers_and_resumes_across_it(digits, tmp_path):
    x = digits.x_train[digits.y_train == 3][:40]
    plain = AnoMem("digits", stage1_epochs=1, stage2_epochs=1, device="cpu").fit(
        x, checkpoint_dir=tmp_path, validation_fraction=0.0)
    # 64 KiB: every feature map of the digits network in pages of its own.
    mapped = AnoMem("digits", stage1_epochs=1, stage2_epochs=1, device="cpu",
                    malloc_mmap_threshold=1 << 16).fit(x, validation_fraction=0.0)
    np.testing.assert_array_equal(plain.decision_function(x), mapped.decision_function(x))
    resumed = AnoMem("digits", stage1_epochs=1, stage2_epochs=1, device="cpu",
                     malloc_mmap_threshold=1 << 16).fit(x, checkpoint_dir=tmp_path,
                                                        validation_fraction=0.0)
    np.testing.assert_array_equal(plain.decision_function(x), resumed.decision_function(x))
