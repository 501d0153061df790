"""The shape newcomers rely on: no module reaches into another's private names, each finding kind is
registered once and documented in the README in the same order."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from regindex.checks import CHECKS, KINDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "regindex"
MODULES = {p.stem for p in PACKAGE.glob("*.py")}


def test_no_module_uses_another_modules_private_names() -> None:
    offences = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        aliases = {a.asname or a.name: a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module == "regindex" for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("regindex."):
                offences += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                             if a.name.startswith("_") and node.module != f"regindex.{path.stem}"]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and aliases.get(node.value.id) in MODULES and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                offences.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offences == []


def test_each_kind_is_registered_once_and_documented_in_order() -> None:
    assert list(KINDS) == list(CHECKS) and all(KINDS.values())
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Finding kinds", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert documented == list(KINDS)
