"""The floors of ARCHITECTURE.md: the library imports neither the zoo nor the program, the
zoo does not import the program. Every import statement counts, also inside functions."""

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
        "from larq_nobn import quiet, zoo\n"
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
