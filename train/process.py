"""The training program's process set-up: what a whole process is told once, not a layer.

- `reuse_freed_memory`: glibc's malloc keeps freed memory for reuse. TensorFlow's CPU
  allocator takes every tensor from `malloc`; glibc serves blocks above its mmap
  threshold (at most 32 MB) with a fresh `mmap`, returns them on `free`, and trims the
  heap's free top above its trim threshold. A binary network's large kernels (and their
  standardized copies, gradients and clipped gradients, several per kernel and step) then
  cost their page faults again in every step (`benchmarks/malloc_settings.py` times one
  pass over such a tensor both ways).
- `tensorflow_noise_filtered`: TensorFlow's start-up noise kept off stderr (lines about
  CUDA plugins on a machine without GPUs, duplicate registrations, CPU instruction sets);
  everything else written to stderr meanwhile, errors included, is written back once the
  block ends. `LARQ_NOBN_TF_LOGS=1` shows TensorFlow's output unfiltered.

The program calls both (`main.train`); so do the benchmarks, and a user's training script
may. The tests do not keep freed memory: a test worker builds hundreds of models of every
size. Nothing here imports TensorFlow.
"""

import contextlib
import ctypes
import ctypes.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator

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

#: Set to show TensorFlow's output unfiltered.
SHOW_ALL_ENV = "LARQ_NOBN_TF_LOGS"

_NOISE = re.compile(
    "|".join(
        [
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"computation placer already registered",
            r"All log messages before absl::InitializeLog\(\) is called",
            r"failed call to cuInit",
            r"Could not find cuda drivers",
            r"cpu_feature_guard",
            r"To enable the following instructions: .* rebuild TensorFlow",
            r"TF-TRT Warning: Could not find TensorRT",
            r"oneDNN custom operations are on",
        ]
    )
)


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse, for the rest of the process.

    No block is served by its own `mmap` (`M_MMAP_MAX` 0) and the heap is not trimmed
    below 2 GiB of free memory (`M_TRIM_THRESHOLD`): a training step's large tensors
    reuse the pages of the previous step's instead of faulting in new ones. The process
    keeps its peak memory until it exits. Call it before TensorFlow allocates anything.
    Nothing is changed if the environment sets one of glibc's own malloc variables
    (`GLIBC_VARIABLES`, e.g. `MALLOC_MMAP_MAX_=65536`, glibc's default, keeps the
    defaults), or on a C library without `mallopt`.

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


def is_noise(line: str) -> bool:
    """Whether a line of TensorFlow's stderr output is start-up noise."""
    return _NOISE.search(line) is not None


@contextlib.contextmanager
def tensorflow_noise_filtered() -> Iterator[None]:
    """Captures file descriptor 2 (where TensorFlow's C++ code writes) for the block, then
    writes back every captured line that is not noise (`is_noise`)."""
    if os.environ.get(SHOW_ALL_ENV):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
