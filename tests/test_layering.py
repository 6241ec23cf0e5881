"""`lab/` is plumbing: it imports nothing from the packages built on it (attention, backbones, tasks, train).

Every import statement of every `lab/*.py` module counts, including those inside functions, so a lazy
import cannot hide an upward dependency. The composition root (`train.py`) hands lab what it needs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parent.parent / "lab"
ABOVE_LAB = {"attention", "backbones", "tasks", "train", "bench"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("path", sorted(LAB.glob("*.py")), ids=lambda path: path.name)
def test_lab_module_imports_nothing_above_lab(path):
    upward = [f"{path.name}:{line} imports {module}" for line, module in imported_modules(path) if module in ABOVE_LAB]
    assert not upward, upward


def test_the_walk_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "example.py"
    module.write_text("import os\n\ndef f():\n    from attention.registry import ATTENTIONS\n")
    assert imported_modules(module) == [(1, "os"), (4, "attention")]
