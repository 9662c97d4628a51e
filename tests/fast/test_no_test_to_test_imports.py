"""No test module imports another test module: shared helpers live in ``batchinfer_testing``.

A test module (``test_*.py``) or a ``conftest.py`` imported from elsewhere runs its fixtures
and module-level set-up twice, under two names, and ties the two test files together; a helper
used by several tests is library code in ``batchinfer_testing``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def is_test_module(module: str) -> bool:
    """``tests.x.test_y`` or ``tests.x.conftest``: a module pytest collects or runs itself."""
    parts = module.split(".")
    return parts[0] == "tests" and (parts[-1].startswith("test_") or parts[-1] == "conftest")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, by its dotted name (relative imports resolved)."""
    package = ".".join(path.relative_to(TESTS.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_is_test_module() -> None:
    assert is_test_module("tests.test_cli")
    assert is_test_module("tests.dagster.conftest")
    assert not is_test_module("tests.services")
    assert not is_test_module("batchinfer_testing.test_helpers")


def test_no_test_module_imports_another() -> None:
    offending = {
        (str(path.relative_to(TESTS)), module)
        for path in TESTS.rglob("*.py")
        for module in imported_modules(path)
        if is_test_module(module)
    }
    assert offending == set()
