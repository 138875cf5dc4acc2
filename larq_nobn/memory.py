"""glibc malloc settings for training on CPUs: freed memory is kept for reuse.

TensorFlow's CPU allocator takes every tensor from `malloc`. glibc serves blocks above its
mmap threshold (at most 32 MB) with a fresh `mmap` and returns them on `free`, and trims
the heap's free top above its trim threshold: a kernel-sized tensor (ReActNet-A's last
3x3 kernels are 38 MB, and a step makes several per kernel: standardized, gradient,
clipped) then costs its page faults again in every step. On the 2-core KVM hosts of this
project's CI one elementwise pass over such a tensor took 78 ms with glibc's defaults and
19 ms with freed memory reused (`benchmarks/malloc_settings.py` prints both).
"""

import ctypes
import ctypes.util
import os

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

#: glibc's own variables: if the environment sets one, malloc is left as configured.
GLIBC_VARIABLES = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse, for the rest of the process.

    No block is served by its own `mmap` (`M_MMAP_MAX` 0) and the heap is not trimmed
    below 2 GiB of free memory (`M_TRIM_THRESHOLD`): a training step's large tensors
    reuse the pages of the previous step's instead of faulting in new ones. The process
    keeps its peak memory until it exits. Nothing is changed if the environment sets
    one of glibc's own malloc variables (`GLIBC_VARIABLES`, e.g. `MALLOC_MMAP_MAX_=65536`,
    glibc's default, keeps the defaults), or on a C library without `mallopt`.

    Returns:
        Whether the settings were applied.

    References:
        - [mallopt(3)](https://man7.org/linux/man-pages/man3/mallopt.3.html)
    """
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
