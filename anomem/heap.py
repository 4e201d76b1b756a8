"""glibc's heap during CPU training: large blocks in pages of their own (Linux with glibc only).

PyTorch allocates CPU tensors with ``posix_memalign`` (64-byte alignment).  In
glibc (2.36 measured) an aligned request takes size + 64 + 32 bytes from a
free chunk, so the hole a freed tensor leaves is too small for the next tensor
of the same size; a training step frees and allocates the same full-resolution
maps (and oneDNN's reordered copies of them) dozens of times, and the heap
grows by hundreds of MB of holes that it keeps, resident, from step to step.
Blocks of at least ``M_MMAP_THRESHOLD`` bytes get their own ``mmap`` pages
instead, returned to the system when freed: no holes, at the price of a page
fault per 4 KiB when a block is next allocated (measured in
``benchmarks/memory/README.md``).

:func:`large_blocks_mmapped` sets the threshold for a block of code.  glibc
cannot tell the previous value, nor return to its own adaptive threshold
(which starts at 128 KiB and rises to the size of freed mapped blocks, up to
``DYNAMIC_MAX``); on exit the threshold is set to ``DYNAMIC_MAX``, where that
adaptation ends up with large tensors, so allocations below it come from the
heap as before.  Elsewhere than glibc it does nothing.

Example:
    >>> with large_blocks_mmapped(0) as applied:   # 0: leave the allocator alone
    ...     applied
    False
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: ``mallopt`` parameter number of the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
#: The largest value of glibc's adaptive mmap threshold: 4 MiB x sizeof(long).
DYNAMIC_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)


def _glibc_mallopt() -> Any:
    """glibc's ``mallopt``, or None where the C library is not glibc (or cannot be loaded)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


@contextmanager
def large_blocks_mmapped(threshold: int) -> Iterator[bool]:
    """Within the block, allocations of at least ``threshold`` bytes get pages of their own.

    ``threshold`` 0 (or a C library other than glibc) changes nothing; the
    value yielded says whether the threshold was set.  Process-wide: other
    threads allocate under the same threshold meanwhile.
    """
    mallopt = _glibc_mallopt() if threshold > 0 else None
    if mallopt is None or not mallopt(M_MMAP_THRESHOLD, min(int(threshold), DYNAMIC_MAX)):
        yield False
        return
    try:
        yield True
    finally:
        mallopt(M_MMAP_THRESHOLD, DYNAMIC_MAX)
