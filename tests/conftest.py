"""Suite-wide fixtures: a clean environment, so a developer's shell cannot leak settings in."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_thermoledger_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strip THERMOLEDGER_* (except the test database URL, which the suite itself reads)."""
    for name in list(os.environ):
        if name.startswith("THERMOLEDGER_") and name != "THERMOLEDGER_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
