"""Test-session setup: Keras 2 and two logical CPU devices (for tf.distribute tests), and
the order in which `pytest -n 2` hands the tests out (see `pytest_collection_modifyitems`)."""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_nobn  # noqa: E402,F401  (selects Keras 2 before anything else imports TF)
from larq_nobn.train.process import reuse_freed_memory  # noqa: E402

reuse_freed_memory()  # as the program does (see larq_nobn.train.process)

# isort: split
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

# Module fixtures that cost a training run: their tests share one pytest-xdist worker (an
# `xdist_group`), which computes the fixture once.
SHARED_RUNS = ("trained", "one_device_run", "reference_runs")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(seconds): about that long with `pytest -n 2` on 2 cores; run first"
    )
    config.addinivalue_line(
        "markers",
        "torch: compares with PyTorch (the `test` extra installs it); where it is not "
        'installed, deselect these with -m "not torch"',
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """The slow tests first, longest first, then the others in their order.

    setup.cfg's `--dist loadgroup` hands the tests out one at a time as the workers free
    up, so that a slow test started last cannot leave the other worker idle; the tests of
    a shared run go to one worker together.
    """
    for item in items:
        shared = [name for name in SHARED_RUNS if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))

    def seconds(item) -> float:
        marker = item.get_closest_marker("slow")
        return marker.args[0] if marker else 0.0

    items.sort(key=seconds, reverse=True)  # stable: the others keep their order


@pytest.fixture(autouse=True)
def _torch_installed(request):
    """A selected `torch` test fails where PyTorch is missing: it is never skipped."""
    if request.node.get_closest_marker("torch") and importlib.util.find_spec("torch") is None:
        pytest.fail('PyTorch is not installed: install the `test` extra or add -m "not torch"')


@pytest.fixture(autouse=True)
def _clear_keras_session():
    tf.keras.backend.clear_session()
    yield
