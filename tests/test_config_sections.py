"""Each constructor receives its own config section: only the composition roots take the whole Config.

A core that takes the whole ``cluster.config.Config`` can read any key of any section, so
what it depends on is hidden and every test must build a whole cluster config for it. The
composition roots (the apps' ``create_app``/``get_app``, a node's ``serve``) unpack the
Config once and hand each part only the section(s), size profiles and paths it reads.
Read from the source with ``ast``, as tests/test_import_graph.py reads imports.
hashproxy's composition root is its ``__main__`` (which reads the config), so no function
of it takes the Config.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ypws", "ypfs", "magickd", "hashproxy", "storage", "media")
#: the functions that may take the whole Config: where a process puts its parts together
COMPOSITION_ROOTS = {
    "magickd/server.py:serve",
    "ypfs/app.py:create_app",
    "ypws/app.py:_image_service",
    "ypws/app.py:create_app",
    "ypws/app.py:get_app",
}


def _names_config(annotation: ast.expr | None) -> bool:
    """Whether a parameter's annotation mentions ``Config`` (a name, ``config.Config`` or a string)."""
    if annotation is None:
        return False
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and node.id == "Config":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "Config":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "Config" in [part.strip() for part in node.value.split("|")]:
                return True
    return False


def config_takers(packages: tuple[str, ...] = PACKAGES, root: Path = ROOT) -> set[str]:
    """``path:function`` of every function or method with a parameter annotated ``Config``, or named ``cfg``
    without an annotation (an untyped way round the check)."""
    found = set()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, (a.vararg, a.kwarg))]
                if any(_names_config(p.annotation) or (p.arg == "cfg" and p.annotation is None) for p in params):
                    found.add(f"{path.relative_to(root).as_posix()}:{node.name}")
    return found


def test_only_composition_roots_take_the_whole_config():
    assert config_takers() == COMPOSITION_ROOTS


def test_the_check_sees_every_way_of_taking_it(tmp_path):
    """The check itself can fail: plain, dotted, quoted, keyword-only and untyped ``cfg`` parameters."""
    pkg = tmp_path / "ypws"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "def plain(cfg: Config): ...\n"
        "def dotted(x, c: config.Config | None = None): ...\n"
        "def quoted(*, c: 'Config | None'): ...\n"
        "def untyped(cfg): ...\n"
        "class S:\n    def __init__(self, s: YpwsSection, p: NodeConfig, c: S3StoreConfig): ...\n")
    assert config_takers(("ypws",), tmp_path) == {"ypws/a.py:plain", "ypws/a.py:dotted", "ypws/a.py:quoted",
                                                  "ypws/a.py:untyped"}
