"""Helpers shared by the tests that run the training program in this process."""

import hashlib
import os

import tensorflow as tf

from larq_nobn.train import main as main_mod


def run_main(*args: str) -> int:
    """Parses `args` as the program's flags and runs `main` in this process."""
    main_mod.FLAGS.unparse_flags()
    try:
        main_mod.FLAGS(["main.py", *args])
        return main_mod.main(["main.py"])
    finally:
        main_mod.FLAGS.unparse_flags()
        tf.keras.mixed_precision.set_global_policy("float32")


def snapshot(directory) -> dict:
    """Every path under `directory`: size, mtime and a hash of its contents."""
    result = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            result[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns, digest)
    return result
