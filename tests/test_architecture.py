"""The floors of ARCHITECTURE.md: the library imports neither the zoo nor the program, the
zoo does not import the program. Every import statement counts, also inside functions.
And what the library's math may not depend on: no clock, no private TensorFlow module."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Each floor's folder and the packages it must not import.
FLOORS = {
    "larq_nobn": ("larq_nobn.zoo", "larq_nobn.train"),
    "zoo": ("larq_nobn.train",),
}


def imported_modules(source: str) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in `source` may load
    (`from a import b` counts as `a` and `a.b`, since `b` may be a module)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def forbidden(source: str, packages: tuple[str, ...]) -> list[str]:
    """The imported modules of `source` that are, or are inside, one of `packages`."""
    return sorted(
        module
        for module in imported_modules(source)
        if any(module == p or module.startswith(f"{p}.") for p in packages)
    )


def test_the_check_finds_imports_anywhere():
    source = (
        "import larq_nobn\n"
        "from larq_nobn import conv, zoo\n"
        "def f():\n"
        "    import larq_nobn.train.data as d\n"
        "    from larq_nobn.train import spp\n"
        "class C:\n"
        "    from larq_nobn.zooish import x\n"
    )
    assert forbidden(source, FLOORS["larq_nobn"]) == [
        "larq_nobn.train",
        "larq_nobn.train.data",
        "larq_nobn.train.spp",
        "larq_nobn.zoo",
    ]


@pytest.mark.parametrize("floor", FLOORS)
def test_no_floor_imports_a_floor_above(floor):
    files = sorted((ROOT / floor).rglob("*.py"))
    assert len(files) > 3
    violations = {
        str(path.relative_to(ROOT)): found
        for path in files
        if (found := forbidden(path.read_text(), FLOORS[floor]))
    }
    assert not violations, f"{floor} imports a floor above it: {violations}"


# What decides the library's math is the code, the shapes, the dtype and the device kind:
# never a clock (a timing would make a trace depend on the load of the machine), never a
# private TensorFlow module (`tensorflow.python`, whose contents change without notice).
CLOCK_MODULES = ("time", "timeit")
CLOCK_NAMES = frozenset(
    ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "process_time", "time_ns")
)
PRIVATE_TENSORFLOW = ("tensorflow.python",)
#: Library files allowed a private TensorFlow import, each with the reason (none needs one).
PRIVATE_TENSORFLOW_EXCEPTIONS: dict[str, str] = {}


def clocks_and_private_tensorflow(source: str) -> list[str]:
    """What in `source` reads a clock or a private TensorFlow module: imports (also inside
    functions), clock names and `tensorflow.python` in a string (an `import_module`)."""
    found = forbidden(source, CLOCK_MODULES + PRIVATE_TENSORFLOW)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in CLOCK_NAMES:
            found.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in CLOCK_NAMES:
            found.append(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.extend(p for p in PRIVATE_TENSORFLOW if p in node.value.split())
    return sorted(found)


def test_the_clock_check_finds_clocks_and_private_tensorflow():
    source = (
        "import time\n"
        "from time import perf_counter\n"
        "def f():\n"
        "    from tensorflow.python.util import _pywrap_util_port\n"
        "    return time.monotonic(), importlib.import_module('tensorflow.python')\n"
        "import tensorflow as tf\n"
        "from larq_nobn import timing\n"
    )
    assert clocks_and_private_tensorflow(source) == [
        "monotonic",  # a clock's name
        "tensorflow.python",  # in a string
        "tensorflow.python.util",
        "tensorflow.python.util._pywrap_util_port",
        "time",
        "time.perf_counter",
    ]


def test_the_library_reads_no_clock_and_no_private_tensorflow():
    files = sorted((ROOT / "larq_nobn").rglob("*.py"))
    assert len(files) > 3
    found = {
        str(path.relative_to(ROOT)): hits
        for path in files
        if (hits := clocks_and_private_tensorflow(path.read_text()))
        and str(path.relative_to(ROOT)) not in PRIVATE_TENSORFLOW_EXCEPTIONS
    }
    assert not found, f"the library reads a clock or a private TensorFlow module: {found}"
