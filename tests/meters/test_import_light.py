"""The meter must stay light: importing it never pulls in the service stack or pint.

Checked in a fresh interpreter, so that whatever this test process has already imported cannot
hide (or fake) a violation. Every module under ``meters/`` is imported, found on disk, so a new
module is covered without editing this list.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("fastapi", "sqlalchemy", "alembic", "pint", "thermoledger.accounting.units")


def _meters_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "meters").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(
            ".".join(["thermoledger", *(parts[:-1] if parts[-1] == "__init__" else parts)])
        )
    return names


def _modules_after_importing(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout))


def _heavy_in(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_importing_every_meters_module_pulls_in_nothing_heavy() -> None:
    modules = _meters_modules()
    assert {
        "thermoledger.meters",
        "thermoledger.meters.backends",
        "thermoledger.meters.backends.nvml",
        "thermoledger.meters.backends.amdsmi",
        "thermoledger.meters.testing",
    } <= set(modules)
    loaded = _modules_after_importing(modules)
    assert set(modules) <= loaded
    assert _heavy_in(loaded) == []
    # pynvml is imported only when an NvmlBackend is built without an injected module
    assert "pynvml" not in loaded
    # and amdsmi only when an AmdSmiBackend is
    assert "amdsmi" not in loaded


def test_the_probe_does_see_a_heavy_import() -> None:
    """Control: the same probe reports pint when something does import it."""
    loaded = _modules_after_importing(["thermoledger.meters", "thermoledger.accounting.units"])
    assert "pint" in _heavy_in(loaded)
    assert "thermoledger.accounting.units" in _heavy_in(loaded)
