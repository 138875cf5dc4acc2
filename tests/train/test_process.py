"""The program's process set-up: glibc serves large blocks from its heap unless told
otherwise (`reuse_freed_memory`), TensorFlow's start-up noise is dropped from stderr and
everything else is kept (`tensorflow_noise_filtered`)."""

import os
import subprocess
import sys

import pytest

from larq_nobn.train import process

# In a fresh process (malloc settings hold for a whole process): the bytes glibc maps for
# one 64 MiB block allocated after the call, from mallinfo2 (glibc >= 2.33).
CODE = """
import ctypes, ctypes.util
import numpy as np
from larq_nobn.train.process import reuse_freed_memory

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


NOISE_CODE = """
import os, sys
from larq_nobn.train.process import tensorflow_noise_filtered
with tensorflow_noise_filtered():
    os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n")
    os.write(2, b"a warning that stays\\n")
    sys.stderr.write("an error that stays\\n")
print("done")
"""


@pytest.mark.parametrize("show_all", [False, True])
def test_tensorflows_start_up_noise_is_dropped_and_everything_else_kept(show_all):
    env = {k: v for k, v in os.environ.items() if k != process.SHOW_ALL_ENV}
    if show_all:
        env[process.SHOW_ALL_ENV] = "1"
    result = subprocess.run(
        [sys.executable, "-c", NOISE_CODE], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout == "done\n"
    lines = result.stderr.splitlines()
    assert "a warning that stays" in lines and "an error that stays" in lines
    assert any("Could not find cuda drivers" in line for line in lines) == show_all
