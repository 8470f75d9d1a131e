"""Suite-wide fixtures: a clean environment, so a developer's shell cannot leak settings in."""

from __future__ import annotations

import os

import pytest

# prometheus_client picks its value storage when first imported: with this set (a developer's
# shell), every in-process test app would write to shared multiprocess files.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


@pytest.fixture(autouse=True)
def _no_thermoledger_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strip THERMOLEDGER_* (except THERMOLEDGER_TEST_*, the suite's own settings: the test
    database URL, and THERMOLEDGER_TEST_REQUIRE_GPU, which makes the `gpu` lane fail instead of
    skipping where it finds no GPU)."""
    for name in list(os.environ):
        if name.startswith("THERMOLEDGER_") and not name.startswith("THERMOLEDGER_TEST_"):
            monkeypatch.delenv(name)
