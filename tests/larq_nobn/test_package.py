"""Tests for the package entry point: Keras 2 selection and public names."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import larq_nobn

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )


def _stdout(code: str) -> str:
    """The standard output of `code` run as by `_run`, which must succeed."""
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_import_sets_legacy_keras_in_fresh_process():
    code = (
        "import os\n"
        "assert 'TF_USE_LEGACY_KERAS' not in os.environ\n"
        "import larq_nobn\n"
        "print('ENV=' + os.environ['TF_USE_LEGACY_KERAS'])\n"
        "import tensorflow as tf, tf_keras\n"
        "print('LEGACY=' + str(tf.keras.layers.Layer is tf_keras.layers.Layer))\n"
    )
    stdout = _stdout(code)
    assert "ENV=1" in stdout
    assert "LEGACY=True" in stdout


@pytest.mark.parametrize(
    "preamble",
    ["import tensorflow as tf\ntf.keras.layers\n", "import tensorflow as tf\n"],
    ids=["keras3-resolved", "tensorflow-only"],
)
def test_import_after_keras3_raises_import_error(preamble):
    code = (
        preamble + "try:\n"
        "    import larq_nobn\n"
        "except ImportError as error:\n"
        "    print('IMPORT_ERROR=' + str(error))\n"
        "else:\n"
        "    print('NO_ERROR')\n"
    )
    result = _run(code, TF_USE_LEGACY_KERAS="0")
    assert "NO_ERROR" not in result.stdout, result.stdout
    assert "IMPORT_ERROR=" in result.stdout, result.stderr[-2000:]
    message = result.stdout.split("IMPORT_ERROR=", 1)[1]
    assert "TF_USE_LEGACY_KERAS" in message


@pytest.mark.parametrize("name", larq_nobn.__all__)
def test_all_names_importable(name):
    assert hasattr(larq_nobn, name)
    namespace = {}
    exec(f"from larq_nobn import {name}", namespace)
    assert namespace[name] is getattr(larq_nobn, name)


def test_all_is_complete_and_agc_alias():
    assert set(larq_nobn.__all__) >= {
        "AGC",
        "AdaptiveGradientClipping",
        "LearnableBias",
        "MagnitudeAwareSteSign",
        "ScaledWSConv2D",
        "ScaledWSQuantConv2D",
        "WeightStandardization",
        "unitwise_norm",
    }
    assert len(set(larq_nobn.__all__)) == len(larq_nobn.__all__)
    assert larq_nobn.AGC is larq_nobn.AdaptiveGradientClipping
    assert isinstance(larq_nobn.__version__, str)


def test_import_loads_neither_the_zoo_nor_the_program():
    """`import larq_nobn` loads the library only: no module of the zoo, the program, or
    their dependencies; not even TensorFlow, until a public name is used, which registers
    every Keras class of the library."""
    code = (
        "import sys\n"
        "import larq_nobn\n"
        "floors = ('larq_nobn.zoo', 'larq_nobn.train')\n"
        "others = ('larq_zoo', 'tensorflow_datasets', 'matplotlib', 'sklearn')\n"
        "def report():\n"
        "    loaded = [m for m in sys.modules\n"
        "              if m.startswith(floors) or m.split('.')[0] in others]\n"
        "    tf_loaded = 'tensorflow' in sys.modules\n"
        "    print('LOADED=' + ','.join(sorted(loaded)) + ' TF=' + str(tf_loaded))\n"
        "report()\n"
        "import tensorflow as tf\n"
        "report()\n"
        "larq_nobn.conv2d\n"
        "report()\n"
        "print('REGISTERED=' + str(tf.keras.saving.get_registered_object("
        "'larq_nobn>ScaledWSQuantConv2D') is larq_nobn.ScaledWSQuantConv2D))\n"
    )
    out = _stdout(code)
    assert "LOADED= TF=False" in out
    assert out.count("LOADED= TF=True") == 2
    assert "REGISTERED=True" in out


def test_a_saved_model_loads_once_a_public_name_is_used(tmp_path):
    """Each Keras class registers when its module loads; the first public name loads
    them all (no import hook), and a saved model then loads without `custom_objects`, in
    either file format (both in one process: the first load must not register anything the
    second needs)."""
    paths = [str(tmp_path / name) for name in ("model.keras", "model.h5")]
    _stdout(
        "import larq_nobn, tensorflow as tf\n"
        "inputs = tf.keras.Input((6, 6, 3))\n"
        "x = larq_nobn.ScaledWSQuantConv2D(4, 3, kernel_quantizer='magnitude_aware_ste_sign')"
        "(inputs)\n"
        "model = tf.keras.Model(inputs, x)\n"
        "model.compile(larq_nobn.AGC(larq_nobn.TorchAdam(1e-3)), 'mse')\n"
        f"for path in {paths!r}:\n"
        "    model.save(path)\n"
    )
    out = _stdout(
        "import larq_nobn\n"
        "import tensorflow as tf\n"
        "larq_nobn.set_acceleration  # the switch imports no Keras class\n"
        "print(tf.keras.saving.get_registered_object('larq_nobn>AdaptiveGradientClipping'))\n"
        "larq_nobn.conv2d\n"
        f"for path in {paths!r}:\n"
        "    model = tf.keras.models.load_model(path)\n"
        "    print(type(model.layers[1]).__module__, type(model.optimizer).__name__)\n"
    )
    assert out.split() == ["None", *["larq_nobn.layers", "AdaptiveGradientClipping"] * 2]


# In a fresh process: the import system's finders and glibc's malloc as `import larq_nobn`
# and the library's modules leave them. glibc's default serves a 64 MiB block with its own
# mmap (above the largest mmap threshold, 32 MiB); `mallinfo2` (glibc >= 2.33) counts it.
CLEAN_IMPORT = """
import ctypes, ctypes.util, sys
finders = list(sys.meta_path)
import larq_nobn
print("UNCHANGED", sys.meta_path == finders)
import numpy as np
import tensorflow as tf
larq_nobn.conv2d  # every module of the library loaded
print("OURS", [f for f in sys.meta_path if type(f).__module__.startswith("larq_nobn")])

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
block = np.ones(2**23)
print("MAPPED", libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_import_leaves_the_import_system_and_malloc_as_they_were():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_IMPORT],
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["UNCHANGED"] == "True"
    assert lines["OURS"] == "[]"
    assert int(lines["MAPPED"]) >= 2**26  # glibc's defaults, not `reuse_freed_memory`'s
