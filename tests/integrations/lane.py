"""The integrations lane's helpers: its packages, and what a run left in the spool.

The lane runs in its own virtual environment (``make integrations``: torch, transformers and
lightning beside thermoledger). Elsewhere its tests skip, except under ``CI=true``, where a
missing package is a failure: CI runs the lane, and a lane that skipped would pass unseen.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from thermoledger.meters.control import ControlStore
from thermoledger.meters.spool import RunRecord, Spool


def in_ci() -> bool:
    """Whether the suite runs in CI (``CI`` set to a true value), where skips become failures."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(name: str) -> ModuleType:
    """Import ``name`` for a test module: skip the module where it is missing, or fail in CI."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        message = f"{name} is not installed ({e}): run `make integrations` for this lane"
        if in_ci():
            pytest.fail(message + " (CI=true: this is an error, not a skip)", pytrace=False)
        pytest.skip(message, allow_module_level=True)


@dataclass
class SpooledRun:
    """What one run left in the spool and the control outbox."""

    record: RunRecord
    phases: list[dict[str, Any]] = field(default_factory=list)
    work: dict[str, Any] = field(default_factory=dict)
    metrics: dict[tuple[str, int], float] = field(default_factory=dict)

    def phase_names(self) -> list[str]:
        """The phases' names, in the order they began."""
        return [p["name"] for p in sorted(self.phases, key=lambda p: p["t0_s"])]


def spooled_runs(spool_dir: Path) -> list[SpooledRun]:
    """Every run in ``spool_dir``, oldest first, with its phases, work and metrics."""
    runs = []
    with Spool.in_directory(spool_dir) as spool, ControlStore.in_directory(spool_dir) as control:
        for record in sorted(spool.runs(), key=lambda r: r.created_at_s):
            run = SpooledRun(record=record)
            for message in control.messages(record.run_id):
                if message.kind == "phase":
                    run.phases.append(dict(message.body))
                elif message.kind == "work":
                    run.work = dict(message.body)
            for point in spool.metrics(record.run_id):
                run.metrics[(point["name"], point["step"])] = point["value"]
            runs.append(run)
    return runs


def finite_positive(values: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Each of ``keys`` is in ``values`` as a finite number > 0."""
    for key in keys:
        assert key in values, f"{key} missing from {values}"
        value = float(values[key])
        assert math.isfinite(value), f"{key} = {value}"
        assert value > 0, f"{key} = {value}"
