"""The documentation: the API pages name every public name, the site builds strictly (a
broken link or a missing reference fails it), and README.md stays a user's guide."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import larq_nobn
from larq_nobn import zoo

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"


def directives(page: str) -> list[str]:
    """The objects a page renders with mkdocstrings (`::: dotted.path` lines)."""
    return re.findall(r"^::: (\S+)", (API / page).read_text(), flags=re.MULTILINE)


def public_definitions(path: Path) -> set[str]:
    """The module's own public functions and classes (what its page renders)."""
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
    }


def public_paths() -> set[str]:
    """`larq_nobn.NAME` for every public name, as `larq_nobn.MODULE.NAME` of its module."""
    module = {**dict.fromkeys(larq_nobn._SWITCH, "acceleration"), **larq_nobn._LAZY}
    return {f"larq_nobn.{module[name]}.{name}" for name in larq_nobn.__all__}


def test_the_library_page_documents_every_public_name_from_its_module():
    """`larq_nobn.__all__`, name for name, each from the module it is imported from."""
    documented = sorted(directives("larq_nobn.md"))
    expected = sorted(public_paths())
    assert documented == expected


def test_the_zoo_page_documents_every_public_name():
    documented = sorted(path.rsplit(".", 1)[1] for path in directives("zoo.md"))
    assert documented == sorted(zoo.__all__)
    for path in directives("zoo.md"):  # each where it is defined or re-exported
        module, name = path.rsplit(".", 1)
        assert hasattr(__import__(module, fromlist=[name]), name), path


@pytest.mark.parametrize(
    "page, module, path",
    [
        ("recipe.md", "larq_nobn.train.recipe", ROOT / "train" / "recipe.py"),
        ("export.md", "larq_nobn.export", ROOT / "larq_nobn" / "export.py"),
    ],
)
def test_module_pages_render_their_whole_module(page, module, path):
    assert directives(page) == [module]
    assert "members:" not in (API / page).read_text()  # no member list that could go stale
    assert len(public_definitions(path)) >= 5


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr[-3000:]
    return site


@pytest.mark.slow(20)
def test_the_site_builds_strictly_with_an_entry_per_public_name(site):
    def anchors(page: str) -> set[str]:
        return set(
            re.findall(r'id="(larq_nobn\.[\w.]+)"', (site / page / "index.html").read_text())
        )

    library = public_paths()
    assert library <= anchors("api/larq_nobn")
    assert {a.rsplit(".", 1)[1] for a in anchors("api/zoo")} >= set(zoo.__all__)
    for page, module, path in [
        ("api/recipe", "larq_nobn.train.recipe", ROOT / "train" / "recipe.py"),
        ("api/export", "larq_nobn.export", ROOT / "larq_nobn" / "export.py"),
    ]:
        entries = {a for a in anchors(page) if a.count(".") == module.count(".") + 1}
        assert entries == {f"{module}.{name}" for name in public_definitions(path)}
    for guide in (ROOT / "docs" / "guides").glob("*.md"):
        assert (site / "guides" / guide.stem / "index.html").exists(), guide.name


@pytest.mark.slow(15)
@pytest.mark.parametrize(
    "page, message",
    [
        ("See [the guide](guides/no-such-guide.md).\n", "no-such-guide.md"),
        ("See [AGC][larq_nobn.optimizers.NoSuchName].\n", "larq_nobn.optimizers.NoSuchName"),
        ("::: larq_nobn.optimizers.NoSuchName\n", "larq_nobn.optimizers.NoSuchName"),
    ],
    ids=["broken link", "missing cross-reference", "missing API entry"],
)
def test_the_strict_build_fails_on_a_broken_link_or_a_missing_reference(tmp_path, page, message):
    """mkdocs.yml's settings on a one-page site with one fault."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\n{page}")
    config.update(docs_dir=str(docs), hooks=[str(ROOT / config["hooks"][0])])
    config.pop("nav")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "build").symlink_to(ROOT / "build", target_is_directory=True)
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]


# What a README line must not hold: a date, a time of a day, and the words of a measurement
# diary (which host, which CPU generation, which issue).
DIARY = [
    r"\b\d{4}-\d{2}-\d{2}\b",
    r"(?-i:\b(January|February|March|April|May|June|July|August|September|October|November|"
    r"December) \d)",
    r"family",
    r"issue",
    r"\b(AMD|EPYC|Intel|Xeon|Zen|Ryzen|KVM|vCPUs?|cores?)\b",
    r"\b(yesterday|today|tonight|evening|night|morning)\b",
]


def test_readme_is_a_short_users_guide_without_a_diary():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    found = {
        pattern: match.group(0)
        for pattern in DIARY
        if (match := re.search(pattern, text, flags=re.IGNORECASE))
    }
    assert not found, found
    # CI runs README's test command (.ci/run): an install line, then `pytest -n 2`.
    assert re.search(r"^pip install .*&& pytest -n 2$", text, flags=re.MULTILINE)


@pytest.mark.parametrize(
    "line",
    [
        "measured 2026-12-02 with /usr/bin/time",
        "1:34 on an AMD EPYC of family 26",
        "the slow hosts of issue 19",
        "section 10 (evening)",
        "on December 2",
        "on 2 cores",
    ],
)
def test_the_diary_patterns_find_what_they_are_for(line):
    assert any(re.search(pattern, line, flags=re.IGNORECASE) for pattern in DIARY)
