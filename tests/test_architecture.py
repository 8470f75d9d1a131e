"""Dependencies point one way: service → db → accounting; meters → nothing heavy.

Checked statically over every module's imports (including function-local ones), so a lazy import
inside a function cannot sneak a heavy dependency into the meter.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import
FORBIDDEN: dict[str, set[str]] = {
    "accounting": {"meters", "db", "service", "migrations", "fastapi", "sqlalchemy", "alembic"},
    "db": {"service", "meters", "fastapi"},
    "meters": {"db", "service", "migrations", "fastapi", "sqlalchemy", "alembic", "pint"},
    "migrations": {"service", "meters", "fastapi"},
}
# meters may share the numpy-only kernels of the accounting core, nothing else of it
METERS_MAY_IMPORT_FROM_ACCOUNTING = {"accounting", "accounting.integrate", "accounting.errors"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    violations = []
    for path in _modules(package):
        for lineno, module in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN[package]:
                violations.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
            if (
                package == "meters"
                and top == "accounting"
                and module not in METERS_MAY_IMPORT_FROM_ACCOUNTING
            ):
                violations.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not violations, "\n".join(violations)


def test_accounting_integrate_is_numpy_only() -> None:
    """The kernel shared with the meter must not pull pint in."""
    allowed = {"numpy", "accounting", "__future__"}
    stdlib_ok = {"dataclasses", "typing", "collections", "math", "enum", "functools"}
    for lineno, module in _imports(ROOT / "accounting" / "integrate.py"):
        top = module.split(".")[0]
        assert top in allowed | stdlib_ok, f"integrate.py:{lineno} imports {module}"
        if top == "accounting":
            assert module == "accounting.errors", f"integrate.py:{lineno} imports {module}"
