"""Run reports from stored aggregates: `db.repository.RunUsage` → `accounting.report`.

Each device reaches the accounting core with the band **terms** summed over its chunks (the
chunk table stores the terms, not the band): ``sensor_uncertainty_j`` adds linearly within a
device (its sensor error is systematic), ``bound_below_j``/``bound_above_j`` add linearly, and
``reset_count`` surfaces in the report's notes. Across devices the core combines sensor errors
root-sum-square (or linearly, with ``ReportSettings.combine="linear"``) and bounds linearly.

Phases get each overlapping chunk's energy and terms pro-rata by time (`db.repository`); their
bands are combined across devices the same way as the run's total, so a phase covering the whole
run has the total's band.
"""

from __future__ import annotations

import math
from typing import Any, cast

from accounting.catalog import lookup as catalog_lookup
from accounting.integrate import aggregate_energy
from accounting.report import (
    DeclaredWork,
    DeviceUsage,
    PhaseUsage,
    ReportSettings,
    RunInfo,
    build_run_report,
)
from db.repository import Conflict, DeviceAggregate, PhaseAggregate, RunUsage

__all__ = ["PHASE_NOTE", "report_dict"]

PHASE_NOTE = "phase energies are pro-rata by time within each chunk that straddles a boundary"


def _device_usage(device: DeviceAggregate) -> DeviceUsage:
    catalog_id = (
        device.catalog_key if device.catalog_key and catalog_lookup(device.catalog_key) else None
    )
    return DeviceUsage(
        key=device.key,
        host=device.host,
        index=device.index,
        name=device.name,
        method=device.method,
        energy_j=device.energy_j,
        sensor_uncertainty_j=device.sensor_uncertainty_j,
        bound_below_j=device.bound_below_j,
        bound_above_j=device.bound_above_j,
        t0_s=device.t0_s,
        t1_s=device.t1_s,
        peak_power_w=device.peak_power_w,
        catalog_id=catalog_id,
        gap_s=device.gap_s,
        gap_count=device.gap_count,
        reset_count=device.reset_count,
        samples=device.samples,
        simulated=device.simulated,
    )


def _phase_usage(phase: PhaseAggregate, settings: ReportSettings) -> PhaseUsage:
    energy_j = low_j = high_j = 0.0
    if phase.devices:
        totals = aggregate_energy(
            [d.energy_j for d in phase.devices],
            [d.sensor_uncertainty_j for d in phase.devices],
            [d.bound_below_j for d in phase.devices],
            [d.bound_above_j for d in phase.devices],
            device=[d.device_id for d in phase.devices],
            combine=settings.combine,
        )
        energy_j = float(totals.energy_j[0])
        low_j = float(totals.energy_low_j[0])
        high_j = float(totals.energy_high_j[0])
    return PhaseUsage(
        name=phase.phase.name,
        t0_s=phase.phase.t0_s,
        t1_s=phase.t1_s,
        energy_j=energy_j,
        energy_low_j=low_j,
        energy_high_j=high_j,
        flops=phase.phase.flops,
        tokens=None if phase.phase.tokens is None else float(phase.phase.tokens),
    )


def _json_safe(value: Any) -> Any:
    """Non-finite floats become None (JSON has no inf/NaN); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def report_dict(usage: RunUsage, *, settings: ReportSettings | None = None) -> dict[str, Any]:
    """The run report as JSON-safe plain types (`accounting.report.RunReport.to_dict`).

    Args:
        usage: The run with its device and phase aggregates.
        settings: Accounting context (default: `ReportSettings()`).

    Raises:
        Conflict: The run has no chunks yet: there is nothing to report.
    """
    if not usage.devices:
        raise Conflict(f"run {usage.run.id} has no measurements yet: nothing to report")
    run = usage.run
    settings = settings or ReportSettings()
    phases = [_phase_usage(p, settings) for p in usage.phases]
    work = DeclaredWork(
        flops=run.declared_flops,
        dtype=run.declared_flops_dtype or "bf16",
        tokens=None if run.declared_tokens is None else float(run.declared_tokens),
        model_params=None if run.declared_params is None else float(run.declared_params),
    )
    report = build_run_report(
        run=RunInfo(
            run_id=str(run.id),
            name=run.name,
            kind=run.kind.value,
            status=run.status.value,
        ),
        devices=[_device_usage(d) for d in usage.devices],
        phases=phases,
        work=work,
        settings=settings,
    )
    out = report.to_dict()
    if usage.phases:
        out["notes"].append(PHASE_NOTE)
    return cast(dict[str, Any], _json_safe(out))
