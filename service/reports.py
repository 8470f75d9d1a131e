"""Run reports from stored aggregates: `db.records.RunUsage` → `accounting.report`.

Each device reaches the accounting core with the band **terms** summed over its chunks (the
chunk table stores the terms, not the band): ``sensor_uncertainty_j`` adds linearly within a
device (its sensor error is systematic), ``bound_below_j``/``bound_above_j`` add linearly, and
``reset_count`` surfaces in the report's notes. Across devices the core combines sensor errors
root-sum-square (or linearly, with ``ReportSettings.combine="linear"``) and bounds linearly.

Phases get each overlapping chunk's energy and terms pro-rata by time (`db.totals`); their
bands are combined across devices the same way as the run's total, so a phase covering the whole
run has the total's band.

Carbon and cost are derived on the run's **accounting basis** (`db.basis`): the project's region
and PUE and the factor and tariff versions the ledger froze at the run's end — or, for a run not
ledgered yet, those valid at its end (now, while it runs), resolved by the very function the
ledger calls (`db.factors.resolve_context`). `report_settings` turns that basis into the
accounting core's `ReportSettings`, so the report's CO2e and cost equal the ledger's figures
for the same energy. What the basis cannot give is not available, with the ledger's own words
for why (no region: no location- or market-based figure and no cost; never a world average).
The report's ``accounting`` section states the basis: region, PUE and its kind, each version's
id, source, year and window, whether it is frozen, and the ledger entries it was read from.

The report is typed once (`service.report_schemas.RunReportPublic`, from the mapping the core
builds) and read by attribute everywhere after: the JSON route, the pages, the CSV, the plan's
comparable runs. A caller that has read a run's usage already passes it in (`usage_report`), so
no run's aggregates are read twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID

from sqlalchemy.orm import Session

from thermoledger.accounting.carbon import EmissionFactor, FactorKind
from thermoledger.accounting.catalog import lookup as catalog_lookup
from thermoledger.accounting.cost import Tariff
from thermoledger.accounting.integrate import aggregate_energy
from thermoledger.accounting.report import (
    DeclaredWork,
    DeviceUsage,
    PhaseUsage,
    ReportSettings,
    RunInfo,
    build_run_report,
    json_safe,
    meter_quality,
    refused_declarations,
)
from thermoledger.db.basis import RunBasis, run_basis
from thermoledger.db.errors import Conflict
from thermoledger.db.factors import AccountingContext, AppliedVersion
from thermoledger.db.records import DeviceAggregate, PhaseAggregate, RunUsage
from thermoledger.db.runs import ESTIMATE_LABEL
from thermoledger.db.totals import run_usage

from .report_schemas import RunReportPublic, TariffRecord

__all__ = [
    "PHASE_NOTE",
    "emission_factor",
    "refused_declarations",
    "report_mapping",
    "report_public",
    "report_settings",
    "run_report",
    "usage_report",
]

PHASE_NOTE = "phase energies are pro-rata by time within each chunk that straddles a boundary"
#: How `accounting.cost.run_cost` notes energy it did not price.
_UNPRICED = "Energy not priced"
_NOT_PRICED = "no tariff applies to the energy and no hardware price is given"


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
        kind=str(device.kind),
        covers=device.covers,
        quiet_power_w=device.quiet_power_w,
        quiet_power_high_w=device.quiet_power_high_w,
        mem_busy_s=device.mem_busy_s,
        mem_observed_s=device.mem_observed_s,
    )


def _phase_usage(
    phase: PhaseAggregate, settings: ReportSettings, counted: frozenset[int]
) -> PhaseUsage:
    energy_j = low_j = high_j = 0.0
    # As the run's total: a device covered by another on its host is not added again.
    devices = [d for d in phase.devices if d.device_id in counted]
    if devices:
        totals = aggregate_energy(
            [d.energy_j for d in devices],
            [d.sensor_uncertainty_j for d in devices],
            [d.bound_below_j for d in devices],
            [d.bound_above_j for d in devices],
            device=[d.device_id for d in devices],
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


def emission_factor(applied: AppliedVersion, kind: FactorKind) -> EmissionFactor:
    """A factor version as the accounting core's `EmissionFactor` (its source names the
    version, so the report's factor record says which one)."""
    p = applied.provenance
    source = str(p.get("source"))
    if applied.id is not None:
        source += f" [version {applied.id}]"
    year, note = p.get("year"), p.get("note")
    return EmissionFactor(
        region=str(p.get("region")),
        intensity_g_per_kwh=applied.per_kwh,
        kind=kind,
        source=source,
        year=int(year) if isinstance(year, int | float) else None,
        note=note if isinstance(note, str) else None,
    )


def _tariff_source(applied: AppliedVersion) -> str:
    return f"{applied.provenance.get('source')} [version {applied.id}]"


def _tariff(applied: AppliedVersion) -> Tariff:
    region = applied.provenance.get("region")
    return Tariff(
        usd_per_kwh=applied.per_kwh,
        source=_tariff_source(applied),
        region=region if isinstance(region, str) else None,
    )


def report_settings(context: AccountingContext) -> ReportSettings:
    """The accounting core's settings for a run on ``context``.

    A negative tariff (wholesale prices dip below zero; the ledger prices with it) has no
    `accounting.cost.Tariff`: it is left out here and `report_mapping` prices the energy with it.
    """
    location = context.location
    tariff = context.tariff
    return ReportSettings(
        pue=context.pue,
        location_factor=(
            emission_factor(location, "location")
            if location is not None
            else ReportSettings().location_factor  # not used: the reason below applies
        ),
        location_unavailable_reason=(
            None if location is not None else context.unavailable.get("co2e_location")
        ),
        market_factor=None if context.market is None else emission_factor(context.market, "market"),
        tariff=None if tariff is None or tariff.per_kwh < 0 else _tariff(tariff),
    )


def _state_basis(out: dict[str, Any], basis: RunBasis) -> None:
    """Add the basis to the report: the ``accounting`` section, the reasons, the notes."""
    context = basis.context
    energy_j = out["energy"]["total"]["energy_j"]
    out["accounting"] = basis.to_dict(energy_j)
    market = out["carbon"]["market_based"]
    if context.market is None and market["co2e_g"] is None:
        market["reason"] = context.unavailable.get("co2e_market", market["reason"])
    cost = out["cost"]
    tariff = context.tariff
    if tariff is not None and tariff.per_kwh < 0:
        energy_usd = context.energy_cost_usd(energy_j)
        cost["energy_usd"] = energy_usd
        cost["total_usd"] = (energy_usd or 0.0) + (cost["hardware_usd"] or 0.0)
        # The same record as a positive tariff's (`_tariff(...).to_dict()`), which the core's
        # `Tariff` cannot hold for a negative price.
        region = tariff.provenance.get("region")
        cost["tariff"] = TariffRecord(
            usd_per_kwh=tariff.per_kwh,
            source=_tariff_source(tariff),
            region=region if isinstance(region, str) else None,
            valid_from=None,
            valid_to=None,
            exchange_rate=None,
        ).model_dump()
    reason = context.unavailable.get("energy_cost") if cost["energy_usd"] is None else None
    cost["energy_status"] = "not_available" if reason is not None else "available"
    cost["energy_reason"] = reason
    # Nothing priced is "not priced", as the page and the CSV say: never a total of 0 USD.
    priced = cost["energy_usd"] is not None or cost["hardware_usd"] is not None
    if not priced:
        cost["total_usd"] = None
    cost["total_status"] = "available" if priced else "not_available"
    cost["total_reason"] = None if priced else (reason or _NOT_PRICED)
    # The core's note says only that no tariff was given; say why, in the ledger's words.
    for notes in (cost["notes"], out["notes"]):
        notes[:] = [
            n
            for n in notes
            if not n.startswith(_UNPRICED) or (reason is None and cost["energy_usd"] is None)
        ]
    if reason is not None:
        out["notes"].append(f"energy not priced: {reason}")
    out["notes"].extend(basis.notes(energy_j))


def _require_measurements(usage: RunUsage) -> None:
    """`Conflict` unless the run has chunks: one saying so, or that the run is an estimate
    (``host_info.estimate``), whose figures live in the ledger, not in chunks."""
    if usage.devices:
        return
    run_id = usage.run.id
    estimate = usage.run.host_info.get(ESTIMATE_LABEL)
    if isinstance(estimate, Mapping):
        raise Conflict(
            f"run {run_id} is an estimate ({estimate.get('source', 'no source')}), not a "
            f"measurement: its figures and band are in the ledger "
            f"(GET /api/v1/ledger?run_id={run_id}) and in its host_info.estimate"
        )
    raise Conflict(f"run {run_id} has no measurements yet: nothing to report")


def report_mapping(usage: RunUsage, *, basis: RunBasis) -> dict[str, Any]:
    """The run report as JSON-safe plain types (`accounting.report.RunReport.to_dict`), with
    its accounting basis stated (``accounting``): what `report_public` types.

    Args:
        usage: The run with its device and phase aggregates.
        basis: The run's accounting basis (`db.basis.run_basis`).

    Raises:
        Conflict: The run has no chunks yet: there is nothing to report.
    """
    _require_measurements(usage)
    run = usage.run
    settings = report_settings(basis.context)
    counted = frozenset(d.id for d in usage.counted)
    phases = [_phase_usage(p, settings, counted) for p in usage.phases]
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
    _state_basis(out, basis)
    out["quality"] = meter_quality(run.host_info)
    out["refused_declarations"] = refused_declarations(run.host_info)
    if out["refused_declarations"]:
        out["notes"].append(
            "the meter refused some declared work (see refused_declarations): the figures "
            "it would have given are missing"
        )
    return cast(dict[str, Any], json_safe(out))


def report_public(usage: RunUsage, *, basis: RunBasis) -> RunReportPublic:
    """The run report, typed (`report_mapping`, validated into `RunReportPublic`).

    Raises:
        Conflict: The run has no chunks yet: there is nothing to report.
    """
    return RunReportPublic.model_validate(report_mapping(usage, basis=basis))


def usage_report(session: Session, *, project_id: int, usage: RunUsage) -> RunReportPublic:
    """The report of a run whose usage the caller has read: its basis is read here, its
    aggregates are not read again.

    Raises:
        Conflict: The run has no measurements yet.
    """
    _require_measurements(usage)
    basis = run_basis(session, project_id=project_id, run=usage.run)
    return report_public(usage, basis=basis)


def run_report(session: Session, *, project_id: int, run_id: UUID) -> RunReportPublic:
    """The report of one of the project's runs, on its accounting basis.

    Raises:
        NotFound: No such run in the project.
        Conflict: The run has no measurements yet.
    """
    usage = run_usage(session, project_id=project_id, run_id=run_id)
    return usage_report(session, project_id=project_id, usage=usage)
