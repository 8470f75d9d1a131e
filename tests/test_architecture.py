"""Dependencies point one way: service → db → accounting; meters → nothing heavy.

Checked statically over every module's imports (including function-local ones), so a lazy import
inside a function cannot sneak a heavy dependency into the meter. Relative imports are resolved
to the installed names (``thermoledger.<package>.…``) first, and the bare folder names
(``import meters``, ``from db import …``) are refused everywhere: they are other distributions'
names on PyPI, and a user's own ``meters.py`` shadows them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("accounting", "meters", "db", "service", "migrations", "integrations")
NS = "thermoledger"

# package -> modules (installed names, or third-party top-level names) it must never import
FORBIDDEN: dict[str, set[str]] = {
    "accounting": {
        f"{NS}.meters", f"{NS}.db", f"{NS}.service", f"{NS}.migrations",
        "fastapi", "sqlalchemy", "alembic",
    },
    "db": {f"{NS}.service", f"{NS}.meters", "fastapi"},
    "meters": {
        f"{NS}.db", f"{NS}.service", f"{NS}.migrations",
        "fastapi", "sqlalchemy", "alembic", "pint",
    },
    "migrations": {f"{NS}.service", f"{NS}.meters", "fastapi"},
    "service": set(),
    # the framework callbacks live in the training job's process, beside the meter
    "integrations": {
        f"{NS}.db", f"{NS}.service", f"{NS}.migrations", f"{NS}.accounting",
        "fastapi", "sqlalchemy", "alembic", "pint",
    },
}  # fmt: skip
# What a package may take from another package of ours, where it may not take all of it.
MAY_IMPORT: dict[tuple[str, str], set[str]] = {
    # the meter shares the numpy-only kernels of the accounting core, nothing else of it
    ("meters", "accounting"): {
        f"{NS}.accounting",
        f"{NS}.accounting.integrate",
        f"{NS}.accounting.errors",
        # `thermoledger report` (meters/local_report.py, imported only by that command) builds
        # a run's report from the spool with the core's own report, so the local figures are
        # the service's. These three import numpy and the standard library only (pint only in
        # their from-quantity constructors, which the meter never calls); the import-light
        # test and tests/meters/test_local_report.py check that pint stays out.
        f"{NS}.accounting.report",
        f"{NS}.accounting.carbon",
        f"{NS}.accounting.cost",
        # ... and the energy decomposition's chunk kernel (numpy only), by which the local
        # report finds each device's quietest sustained power and memory-busy time as
        # `db.totals` does for the service
        f"{NS}.accounting.decomposition",
    },
    # the service talks to meters over HTTP; it shares only the wire schema
    ("service", "meters"): {f"{NS}.meters.wire"},
    # the callbacks build on the meter's public API (and read the footprint settings for co2e_g)
    ("integrations", "meters"): {f"{NS}.meters.api", f"{NS}.meters.settings"},
}
# Explicit exceptions, each with its reason.
ALLOWED: dict[str, set[str]] = {
    # The demo is a simulated run by design: its power profiles are the simulated backend's, whose
    # closed-form energy is the ground truth the demo prints beside the measurement; it meters
    # them with the real `Meter`, which uploads to the embedded service over HTTP.
    "service/demo.py": {
        f"{NS}.meters.api",
        f"{NS}.meters.backends.base",
        f"{NS}.meters.backends.simulated",
    },
}


def _module_name(path: Path) -> list[str]:
    """The package a file's relative imports are resolved against, as installed."""
    parts = list(path.relative_to(ROOT).parts[:-1])
    return [NS, *parts]


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, absolute module, level) of every import; relative ones resolved to installed names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path)
    found: list[tuple[int, str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.append((node.lineno, node.module, 0))
                continue
            base = package[: len(package) - node.level + 1]
            assert len(base) >= 2, f"{path}:{node.lineno} reaches above its package"
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module]), node.level))
            else:  # from . import a, b: each name is a module of the base package (or a name in it)
                found.extend(
                    (node.lineno, ".".join([*base, alias.name]), node.level) for alias in node.names
                )
    return found


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    violations = []
    for path in _files(package):
        rel = path.relative_to(ROOT).as_posix()
        for lineno, module, _level in _imports(path):
            where = f"{rel}:{lineno} imports {module}"
            if module in ALLOWED.get(rel, set()):
                continue
            if any(_within(module, banned) for banned in FORBIDDEN[package]):
                violations.append(where)
            for (importer, imported), allowed in MAY_IMPORT.items():
                if (
                    importer == package
                    and _within(module, f"{NS}.{imported}")
                    and not any(module == a for a in allowed)
                ):
                    violations.append(where)
    assert not violations, "\n".join(violations)


def test_inside_a_package_imports_are_relative_and_across_packages_absolute() -> None:
    violations = []
    for path in _files(*PACKAGES):
        rel = path.relative_to(ROOT)
        own = f"{NS}.{rel.parts[0]}"
        loaded_as_a_file = rel.parts[0] == "migrations"  # Alembic runs env.py and versions by path
        for lineno, module, level in _imports(path):
            if module.split(".")[0] in PACKAGES:
                violations.append(f"{rel}:{lineno} imports the bare name {module}")
            elif level == 0 and _within(module, own) and not loaded_as_a_file:
                violations.append(f"{rel}:{lineno} imports its own package absolutely: {module}")
            elif level > 0 and not _within(module, own):
                violations.append(f"{rel}:{lineno} reaches another package relatively: {module}")
    assert not violations, "\n".join(violations)


def test_nothing_outside_the_packages_imports_the_bare_names() -> None:
    violations = [
        f"{path.relative_to(ROOT)}:{lineno} imports {module}"
        for path in [*_files("tests", "bench"), ROOT / NS / "__init__.py"]
        for lineno, module, level in _imports(path)
        if level == 0 and module.split(".")[0] in PACKAGES
    ]
    assert not violations, "\n".join(violations)


def test_the_resolver_sees_a_violation() -> None:
    """Control: the checks above do see what they are there to catch."""
    assert _within("thermoledger.meters.wire", "thermoledger.meters")
    assert not _within("thermoledger.metersx", "thermoledger.meters")
    nvml = ROOT / "meters" / "backends" / "nvml.py"
    modules = {module for _line, module, _level in _imports(nvml)}
    assert "thermoledger.meters.errors" in modules  # `from ..errors import …`, resolved


# The frameworks the callbacks hook into, each imported by its callback's module only: importing
# thermoledger (or its integrations package) must never load torch.
FRAMEWORKS = {
    "torch": {"integrations/hf.py", "integrations/lightning.py"},
    "transformers": {"integrations/hf.py"},
    "accelerate": set(),
    "lightning": {"integrations/lightning.py"},
    "pytorch_lightning": set(),
}


def test_frameworks_are_imported_by_their_callbacks_only() -> None:
    violations = [
        f"{path.relative_to(ROOT)}:{lineno} imports {module}"
        for path in _files(*PACKAGES)
        for lineno, module, _level in _imports(path)
        if module.split(".")[0] in FRAMEWORKS
        and path.relative_to(ROOT).as_posix() not in FRAMEWORKS[module.split(".")[0]]
    ]
    assert not violations, "\n".join(violations)


def test_accounting_integrate_is_numpy_only() -> None:
    """The kernel shared with the meter must not pull pint in."""
    allowed = {"numpy", NS, "__future__"}
    stdlib_ok = {"dataclasses", "typing", "collections", "math", "enum", "functools"}
    files = _files("accounting/integrate")
    assert files, "accounting/integrate/ is a package: every file of it is checked"
    for path in files:
        for lineno, module, _level in _imports(path):
            top = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{lineno} imports {module}"
            assert top in allowed | stdlib_ok, where
            if top == NS:
                assert _within(module, f"{NS}.accounting.integrate") or module == (
                    f"{NS}.accounting.errors"
                ), where
