"""Keeps TensorFlow's start-up noise off stderr: lines about CUDA plugins on a machine
without GPUs, duplicate registrations, CPU instruction sets. Everything else that is
written to stderr meanwhile (warnings, errors) is written back once the block ends.

Set `LARQ_NOBN_TF_LOGS=1` to see TensorFlow's output unfiltered.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

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


def is_noise(line: str) -> bool:
    """Whether a line of TensorFlow's stderr output is start-up noise."""
    return _NOISE.search(line) is not None


@contextlib.contextmanager
def tensorflow_noise_filtered() -> Iterator[None]:
    """Captures file descriptor 2 (where TensorFlow's C++ code writes) for the block, then
    writes back every captured line that is not noise."""
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


@contextlib.contextmanager
def logger_filtered(name: str, pattern: str) -> Iterator[None]:
    """Drops the records of logger `name` whose message matches `pattern` in the block."""
    compiled = re.compile(pattern)

    def keep(record: logging.LogRecord) -> bool:
        return os.environ.get(SHOW_ALL_ENV) or not compiled.search(record.getMessage())

    logger = logging.getLogger(name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
