"""The package's shape: no import cycle, the web page at the edge, a leaf errors module, one package per command."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "lightning_fusion"
COMMANDS = ("fit", "compare", "predict", "sweep", "app")  # python -m lightning_fusion.<command>


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _imports(module: str) -> set[str]:
    """Every lightning_fusion module ``module`` imports, at the top or inside a function or TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            }
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_import_graph_walks_the_real_package():
    assert len(MODULES) > 80 and "lightning_fusion.fit.run" in GRAPH["lightning_fusion.fit.__main__"]


def test_no_import_cycle_inside_the_package():
    try:
        graphlib.TopologicalSorter(GRAPH).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_a_cycle_would_be_found():
    graph = GRAPH | {"lightning_fusion.errors": {"lightning_fusion.cli"}}  # cli imports errors already
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()


def test_nothing_outside_the_web_page_imports_it():
    offenders = {
        module: sorted(target for target in targets if target.startswith("lightning_fusion.app"))
        for module, targets in GRAPH.items()
        if not module.startswith("lightning_fusion.app")
    }
    assert {module: targets for module, targets in offenders.items() if targets} == {}


def test_errors_is_a_leaf_and_the_command_line_loads_neither_models_nor_data():
    assert GRAPH["lightning_fusion.errors"] == set()
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, lightning_fusion.cli; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    ).stdout.split()
    heavy = ("lightning_fusion.encoders", "lightning_fusion.predict", "lightning_fusion.models", "torch")
    assert [name for name in loaded if name.startswith(heavy)] == []


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_is_a_package_with_a_main(command):
    main = PACKAGE / command / "__main__.py"
    assert main.is_file()
    assert 'if __name__ == "__main__":' in main.read_text(encoding="utf-8")
