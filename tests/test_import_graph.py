"""The import graph points one way: cluster/ below everything, storage/ below the roles.

Read from the source with ``ast`` (nothing is imported, so an import inside a function,
which runs only on some path, counts as much as one at the top of a module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROLES = {"ypfs", "ypws", "magickd", "hashproxy"}
#: package -> the top-level packages of ours it must never import
FORBIDDEN = {
    "cluster": {"storage", "media"} | ROLES,
    "storage": ROLES,
}


def imported_packages(path: Path, root: Path = ROOT) -> set[tuple[int, str]]:
    """(line, top-level package) of every import in one module, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_parts = path.relative_to(root).with_suffix("").parts
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # "from . import x" inside a/b/c.py is a.b; level 2 is a; our packages are one deep
                base = module_parts[: len(module_parts) - node.level]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            out.add((node.lineno, name.split(".")[0]))
    return out


def violations(package: str, root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for line, top in imported_packages(path, root):
            if top in FORBIDDEN[package]:
                found.append(f"{path.relative_to(root)}:{line} imports {top}")
    return sorted(found)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package):
    assert violations(package) == []


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The check itself can fail: plain, from, relative and function-local imports are all seen."""
    pkg = tmp_path / "cluster"
    pkg.mkdir()
    (pkg / "a.py").write_text("import ypws.app\nfrom storage.base import X\nfrom . import web\n"
                              "def f():\n    from hashproxy import urls\n")
    assert violations("cluster", tmp_path) == ["cluster/a.py:1 imports ypws", "cluster/a.py:2 imports storage",
                                               "cluster/a.py:5 imports hashproxy"]
    assert (3, "cluster") in imported_packages(pkg / "a.py", tmp_path)
