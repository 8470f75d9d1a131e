"""Run reports from stored aggregates: `db.repository.RunUsage` → `accounting.report`.

The chunk table stores each chunk's band as ``[energy_low_j, energy_high_j]`` but not the terms
it was built from (sensor error, one-sided bounds, counter resets), so a device's band is passed
to the accounting core as one-sided bounds (``bound_below_j = E − Σlow``, ``bound_above_j =
Σhigh − E``) with zero sensor term. Bands then add linearly across devices, which is
conservative: the core would combine independent sensor errors root-sum-square. The report
says so in its notes.
"""

from __future__ import annotations

import math
from typing import Any, cast

from accounting.catalog import lookup as catalog_lookup
from accounting.report import (
    DeclaredWork,
    DeviceUsage,
    PhaseUsage,
    ReportSettings,
    RunInfo,
    build_run_report,
)
from db.repository import Conflict, DeviceAggregate, RunUsage

__all__ = ["BAND_NOTE", "report_dict"]

BAND_NOTE = (
    "bands are sums of the stored chunk bands (sensor and bound terms are not stored "
    "separately), so they add linearly across devices: conservative"
)


def _device_usage(device: DeviceAggregate) -> DeviceUsage:
    catalog_id = (
        device.catalog_key if device.catalog_key and catalog_lookup(device.catalog_key) else None
    )
    above = device.energy_high_j - device.energy_j
    return DeviceUsage(
        key=device.key,
        host=device.host,
        index=device.index,
        name=device.name,
        method=device.method,
        energy_j=device.energy_j,
        sensor_uncertainty_j=0.0,
        bound_below_j=max(device.energy_j - device.energy_low_j, 0.0),
        bound_above_j=math.inf if math.isinf(above) else max(above, 0.0),
        t0_s=device.t0_s,
        t1_s=device.t1_s,
        peak_power_w=device.peak_power_w,
        catalog_id=catalog_id,
        gap_s=device.gap_s,
        gap_count=device.gap_count,
        samples=device.samples,
        simulated=device.simulated,
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
    phases = [
        PhaseUsage(
            name=p.phase.name,
            t0_s=p.phase.t0_s,
            t1_s=p.t1_s,
            energy_j=p.energy_j,
            energy_low_j=p.energy_low_j,
            energy_high_j=p.energy_high_j,
            flops=p.phase.flops,
            tokens=None if p.phase.tokens is None else float(p.phase.tokens),
        )
        for p in usage.phases
    ]
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
    out["notes"] = [*out["notes"], BAND_NOTE]
    if usage.phases:
        out["notes"].append(
            "phase energies are pro-rata by time within each chunk that straddles a boundary"
        )
    return cast(dict[str, Any], _json_safe(out))
