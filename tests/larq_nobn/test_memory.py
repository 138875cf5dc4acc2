"""`reuse_freed_memory`: glibc serves large blocks from its heap, unless told otherwise."""

import os
import subprocess
import sys

import pytest

# In a fresh process (malloc settings hold for a whole process): the bytes glibc maps for
# one 64 MiB block allocated after the call, from mallinfo2 (glibc >= 2.33).
CODE = """
import ctypes, ctypes.util
import numpy as np
from larq_nobn.memory import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
applied = reuse_freed_memory()
before = libc.mallinfo2().hblkhd
block = np.ones(2**23)  # 64 MiB
print(applied, libc.mallinfo2().hblkhd - before)
"""


def _run(**env) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", CODE],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    applied, mapped = result.stdout.split()
    return applied, int(mapped)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_large_blocks_come_from_the_heap_unless_glibc_variables_say_otherwise():
    assert _run() == ("True", 0)  # no block of its own: the heap's pages, reused
    applied, mapped = _run(MALLOC_MMAP_MAX_="65536")  # glibc's default, set explicitly
    assert applied == "False"
    assert mapped >= 2**26  # glibc's default: the block is mapped (and unmapped) alone
