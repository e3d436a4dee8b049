"""The package is the product: every third-party module ``serving/`` imports is a dependency declared in
pyproject.toml. At module level (imported with the package): one of ``[project] dependencies``; inside a
function (imported when that feature is used): those or an optional extra (``vllm``, ``tls``, ...).
Test- and benchmark-only code (fault injection, a local multi-node cluster) lives in ``benchmarks/``."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _dist(requirement: str) -> str:
    """``ray[serve]>=2.50; python_version < '3.14'`` -> ``ray`` (normalised as PyPI does)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_dist(r) for r in project["dependencies"]}
    extras = {_dist(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return core, extras


def _runtime_body(body: list[ast.stmt]):
    """The statements of a module body that run at import (``if TYPE_CHECKING:`` blocks do not)."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from node.orelse
        else:
            yield node


def third_party_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, at module level) for every absolute import of a non-stdlib, non-serving module."""
    tree = ast.parse(path.read_text())
    at_import = set()
    for node in _runtime_body(tree.body):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            at_import.update(id(n) for n in ast.walk(node))
        elif isinstance(node, ast.ClassDef):  # a class body runs at import; its methods do not
            for stmt in node.body:
                if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    at_import.update(id(n) for n in ast.walk(stmt))
    typing_only = {  # imports under `if TYPE_CHECKING:` never run
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module]
        else:
            continue
        for m in mods:
            top = m.split(".")[0]
            if top in sys.stdlib_module_names or top in ("serving", "__future__"):
                continue
            out.append((top, node.lineno, id(node) in at_import))
    return out


def test_every_import_in_serving_is_a_declared_dependency():
    core, extras = declared()
    dists = importlib.metadata.packages_distributions()
    bad = []
    for path in sorted((ROOT / "serving").rglob("*.py")):
        rel = path.relative_to(ROOT)
        for module, line, at_import in third_party_imports(path):
            names = {_dist(d) for d in dists.get(module, [module])}  # not installed (an extra): its own name
            allowed = core if at_import else core | extras
            if not names & allowed:
                where = "[project] dependencies" if at_import else "dependencies or an extra"
                bad.append(f"{rel}:{line} imports {module} (distribution {sorted(names)}), not in {where}")
    assert bad == [], "\n".join(bad)


def test_the_check_sees_what_it_should(tmp_path):
    """An undeclared module, a module-level import of an extra, and what does not count (stdlib, serving,
    TYPE_CHECKING, relative)."""
    src = tmp_path / "m.py"
    src.write_text(
        "from __future__ import annotations\n"
        "import os, json\n"
        "from typing import TYPE_CHECKING\n"
        "import yaml\n"
        "from serving.core import walk\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    import vllm\n"
        "try:\n"
        "    import psutil\n"
        "except ImportError:\n"
        "    psutil = None\n"
        "class A:\n"
        "    import numpy as np\n"
        "    def f(self):\n"
        "        import cryptography\n"
    )
    assert third_party_imports(src) == [
        ("yaml", 4, True),
        ("psutil", 10, True),
        ("numpy", 14, True),
        ("cryptography", 16, False),
    ]
    core, extras = declared()
    assert {"ray", "torch", "transformers", "pyyaml", "fastapi", "pydantic"} <= core
    assert "psutil" not in core and "cryptography" not in core and {"cryptography", "vllm"} <= extras
