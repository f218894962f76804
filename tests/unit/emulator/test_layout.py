"""The emulator is the other side of the wire: it must not share code with the client it emulates for."""

from __future__ import annotations

import ast
from pathlib import Path

import airflow_provider_modelarts.emulator as emulator_package

PACKAGE = "airflow_provider_modelarts"


def _provider_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name == PACKAGE or name.startswith(f"{PACKAGE}.")}


def test_emulator_imports_nothing_from_the_rest_of_the_provider():
    folder = Path(emulator_package.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert len(modules) > 10
    outside = {
        f"{path.name}: {name}"
        for path in modules
        for name in _provider_imports(path)
        if not name.startswith(f"{PACKAGE}.emulator")
    }
    assert not outside
