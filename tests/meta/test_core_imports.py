"""Static layering check: a part never imports what its distribution must not need.

Walks the AST of every module, so imports inside functions and ``try`` blocks count,
as do ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "aimz-core": {"xarray", "zarr", "dask", "pandas", "mlflow"},
    "aimz-io": {"mlflow"},
}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Return ``(line, module)`` for every absolute import found in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(distribution: str) -> list[str]:
    forbidden = FORBIDDEN[distribution]
    src = ROOT / "packages" / distribution / "src"
    bad = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in imported_modules(tree):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("distribution", sorted(FORBIDDEN))
def test_part_does_not_import_forbidden_modules(distribution: str) -> None:
    assert (ROOT / "packages" / distribution / "src").is_dir()
    assert violations(distribution) == []


def test_checker_sees_function_level_and_dynamic_imports() -> None:
    source = (
        "import numpy\n"
        "def f():\n"
        "    import xarray as xr\n"
        "    from dask.array import from_array\n"
        "    importlib.import_module('zarr.storage')\n"
        "    return __import__('pandas')\n"
        "from . import sibling\n"
    )
    modules = [module for _, module in imported_modules(ast.parse(source))]
    assert modules == [
        "numpy",
        "xarray",
        "dask.array",
        "zarr.storage",
        "pandas",
    ]
