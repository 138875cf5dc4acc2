"""MkDocs hook: the installed package's layout, for mkdocstrings to read.

setup.cfg installs the repository's `zoo/` and `train/` as `larq_nobn.zoo` and
`larq_nobn.train` (`package_dir`). mkdocstrings (griffe) reads a package from one folder,
so this hook keeps that folder, `build/docs_src/larq_nobn`, made of links: the library's
modules, and `zoo` and `train` beside them. mkdocs.yml's python handler reads from there.
"""

from pathlib import Path

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "build" / "docs_src" / "larq_nobn"


def _link(link: Path, target: Path) -> None:
    """`link` -> `target`, also when another build made it at the same moment."""
    try:
        link.symlink_to(target, target_is_directory=target.is_dir())
    except FileExistsError:
        pass


# Before mkdocstrings' own `on_config`, which sets its handler's search paths.
@event_priority(100)
def on_config(config):
    """Links every module of the package into `TREE` (idempotent; builds may overlap)."""
    TREE.mkdir(parents=True, exist_ok=True)
    for link in TREE.iterdir():  # a module that was removed or renamed
        if not link.exists():
            link.unlink(missing_ok=True)
    for entry in (ROOT / "larq_nobn").iterdir():
        if entry.name != "__pycache__":
            _link(TREE / entry.name, entry)
    for name in ("zoo", "train"):
        _link(TREE / name, ROOT / name)
    return config
