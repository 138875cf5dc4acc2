"""Test-session setup: Keras 2 and two logical CPU devices (for tf.distribute tests), each
test's own seeds (see `_fresh_keras_and_seeds`), and the order in which `pytest -n 2` hands
the tests out (see `pytest_collection_modifyitems`)."""

import importlib.util
import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_nobn  # noqa: E402,F401  (selects Keras 2 before anything else imports TF)
from larq_nobn.train import process  # noqa: E402

# The program's runs in this process (tests/train/program.run_main) leave malloc as it is.
# `reuse_freed_memory` keeps a process at its peak memory, which suits one training run per
# process; a test worker runs hundreds of models of every size, and with it each of two
# workers grew past 11 GB and the suite thrashed. Runs in subprocesses still apply it.
process.reuse_freed_memory = lambda: False

# isort: split
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Every test sees the library as a user who has used one public name: each Keras class
# registered, so that `tf.keras.models.load_model` in a test does not depend on whether an
# earlier test in the same worker loaded the library's modules. The lazy import itself is
# checked in fresh processes (tests/larq_nobn/test_package.py).
larq_nobn.LearnableBias  # noqa: B018

# Private, for `_release_custom_gradients` alone: TensorFlow has no public way to drop a
# registered gradient.
from tensorflow.python.framework import ops as tf_ops  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

# Module fixtures that cost a training run: their tests share one pytest-xdist worker (an
# `xdist_group`), which computes the fixture once.
SHARED_RUNS = ("trained", "one_device_run", "reference_runs", "two_worker_run")


def seed_from(name: str) -> int:
    """Seeds Python's, NumPy's, TensorFlow's and Keras' random numbers from `name` (a
    test's node id): the same in every process and every order (`hash` is salted)."""
    seed = zlib.crc32(name.encode())
    tf.keras.utils.set_random_seed(seed)
    return seed


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(seconds): about that long with `pytest -n 2` on 2 cores; run first"
    )
    config.addinivalue_line(
        "markers",
        "torch: compares with PyTorch (the `test` extra installs it); where it is not "
        'installed, deselect these with -m "not torch"',
    )
    if config.pluginmanager.hasplugin("randomly"):
        # The seeds are the tests' own (below); pytest-randomly only shuffles the order.
        config.option.randomly_reset_seed = False


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    """A module (or wider) fixture starts from its own seed, whichever test sets it up."""
    if fixturedef.scope != "function":
        seed_from(f"{fixturedef.baseid}::{fixturedef.argname}")


@pytest.fixture(autouse=True)
def _fresh_keras_and_seeds(request):
    """Every test starts with a fresh Keras session and the seeds of its own node id, so
    that every model it builds without a seed of its own is the same in any order, alone
    or after other tests, in any worker."""
    tf.keras.backend.clear_session()
    seed_from(request.node.nodeid)
    yield


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """The slow tests first, longest first, then the others in their order; the tests of
    a shared run one after the other, where their slowest test goes.

    With `-n`, setup.cfg's `--dist loadgroup` makes each test a work unit of its own, and
    the tests of one `xdist_group` (here: those of a shared run) one unit, which one worker
    runs. The units are queued largest first (pytest-xdist >= 3.5; a stable sort, so the
    single tests keep this order), each worker takes one or two, and another whenever it
    has two tests or fewer left: a slow test started last cannot leave the other worker
    idle for long. In one process (plain `pytest`), a module fixture is set up again each
    time its module's tests resume after another module's: the shared run's tests stay
    together, so that it runs once.
    """
    groups = {}
    for item in items:
        shared = [name for name in SHARED_RUNS if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
            groups[item] = shared[0]

    def seconds(item) -> float:
        marker = item.get_closest_marker("slow")
        return marker.args[0] if marker else 0.0

    slowest = {}
    for item, group in groups.items():
        slowest[group] = max(slowest.get(group, 0.0), seconds(item))

    def position(item) -> tuple[float, str]:
        group = groups.get(item)
        return (slowest[group], group) if group else (seconds(item), "")

    items.sort(key=position, reverse=True)  # stable: the others keep their order


@pytest.fixture(autouse=True)
def _group_on_one_worker(request):
    """Under `pytest -n` with `--dist loadgroup`, a grouped test's id ends with its group's
    name: that is how pytest-xdist keeps a group on one worker. Where a pytest release stops
    reading the id pytest-xdist sets (pytest 9.2 with pytest-xdist 3.8), the groups scatter
    and each worker recomputes their training runs: the test fails and says so."""
    node = request.node
    if (
        request.config.getoption("loadgroup", default=False)
        and node.get_closest_marker("xdist_group")
        and "@" not in node.nodeid
    ):
        pytest.fail(
            f"pytest-xdist's --dist loadgroup did not apply with pytest {pytest.__version__}: "
            "install the `test` extra's pytest (setup.cfg)",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _release_custom_gradients():
    """Drops the gradients a test's graphs registered with `tf.custom_gradient`.

    In a graph (a Keras model's construction, a `tf.function`), each `tf.custom_gradient`
    call (larq's quantizers, ours) registers its gradient function under a new name in
    TensorFlow's process-wide gradient registry, for good; its closure holds the graph, and
    the graph holds every variable it read. So each model a test builds stayed in memory
    (a ReActNet-18 about 50 MB), and two pytest-xdist workers outgrew 24 GB. A test's own
    graphs are done when it ends; a module fixture's registrations come before the test's
    and stay.
    """
    registry = tf_ops._gradient_registry._registry
    before = set(registry)
    yield
    for name in set(registry) - before:
        if name.startswith("CustomGradient-"):
            del registry[name]


@pytest.fixture(autouse=True)
def _torch_installed(request):
    """A selected `torch` test fails where PyTorch is missing: it is never skipped."""
    if request.node.get_closest_marker("torch") and importlib.util.find_spec("torch") is None:
        pytest.fail('PyTorch is not installed: install the `test` extra or add -m "not torch"')
