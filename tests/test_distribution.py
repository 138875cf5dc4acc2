"""The distribution: one import name, the zoo and the program inside it, a command."""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One worker builds the wheel once for the module's tests.
pytestmark = pytest.mark.xdist_group("wheel")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds,
    # and a build in the checkout itself would race any other build of it (and pack a
    # stale egg-info left there by an earlier one).
    source = tmp_path_factory.mktemp("source") / "larq-nobn"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (name,) = [n for n in os.listdir(out) if n.endswith(".whl")]
    with zipfile.ZipFile(out / name) as archive:
        yield archive


def test_wheel_installs_one_top_level_package(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    (dist_info,) = [t for t in top if t.endswith(".dist-info")]
    assert top == {"larq_nobn", dist_info}
    assert wheel.read(f"{dist_info}/top_level.txt").decode().split() == ["larq_nobn"]


def test_wheel_holds_the_zoo_and_the_program_under_larq_nobn(wheel):
    names = set(wheel.namelist())
    for module in ("zoo/__init__.py", "zoo/blocks.py", "zoo/reactnet18.py", "zoo/reactnet_a.py"):
        assert f"larq_nobn/{module}" in names
    program = ("main.py", "__main__.py", "commands.py", "options.py", "runner.py", "recipe.py")
    for module in (*program, "config.py", "data/__init__.py", "data/digits.py", "spp.py"):
        assert f"larq_nobn/train/{module}" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "zoo/", "train/")) for n in names)


def test_wheel_declares_the_command(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {
        "larq-nobn-train": "larq_nobn.train.commands:train",
        "larq-nobn-spp": "larq_nobn.train.commands:spp",
        "larq-nobn-convert": "larq_nobn.train.commands:convert",
    }
