"""A run report as CSV: one row per figure a spreadsheet wants to sum or plot.

The JSON report (`service.report_schemas.RunReportPublic`) nests; a spreadsheet wants flat rows.
The CSV holds one table with a ``section`` column: a ``total`` row, one ``device`` row per device,
one ``host`` row per host (the node's total) and one ``phase`` row per phase. A run with more
than one kind of device (GPU, CPU, DRAM), or with a device covered by another, also has one
``kind`` row per kind (its counted devices on every host) and one ``node_kind`` row per host and
kind (``counted`` False where a device of another kind on the host covers it: shown, never in
a total). The ``total`` and ``host`` rows, like the kind rows, add each joule once. Every
numeric column has its unit in its header (``energy_j``, ``energy_kwh``, ``mean_power_w``,
``co2e_location_g``), the same names as in the JSON, and a cell that does not apply to a
section, or has no value (an unbounded band, market-based CO2e without a market factor), is
empty, never 0.

Carbon and cost appear on the ``total`` row only: the report prices the run, not each device.
They are the JSON report's, on the run's accounting basis (the ledger's, once the run's end is
ledgered), and the row says which: ``region``, ``pue``, the factor and tariff versions
(``version 12``, or ``built-in`` for a built-in default) and ``accounting_basis`` (``ledger``
when frozen there, ``resolved`` while provisional). A figure that is not available — no region,
no version valid at the run's end, no tariff — is an empty cell, never 0.
The cells follow the service's one CSV policy (`service.csv_writer`): CRLF line ends, UTF-8,
numbers as numbers, and text a spreadsheet would run as a formula (a run named
``=HYPERLINK(...)``) with a leading ``'``.
"""

from __future__ import annotations

from typing import Any

from .csv_writer import write_csv
from .report_schemas import RunReportPublic

__all__ = ["CSV_COLUMNS", "report_csv"]

#: Column order of the CSV (units in the names).
CSV_COLUMNS: tuple[str, ...] = (
    "section",
    "run_id",
    "run_name",
    "key",
    "host",
    "kind",
    "name",
    "catalog_id",
    "method",
    "simulated",
    "counted",
    "covered_by",
    "t0_s",
    "t1_s",
    "duration_s",
    "energy_j",
    "energy_kwh",
    "energy_low_j",
    "energy_high_j",
    "mean_power_w",
    "peak_power_w",
    "gap_s",
    "gap_count",
    "reset_count",
    "samples",
    "flops",
    "tokens",
    "flop_per_j",
    "j_per_token",
    "energy_facility_j",
    "pue",
    "region",
    "co2e_location_g",
    "co2e_market_g",
    "energy_cost_usd",
    "cost_usd",
    "location_factor_version",
    "market_factor_version",
    "tariff_version",
    "accounting_basis",
)
_COLUMNS: set[str] = set(CSV_COLUMNS)


def _version(record: dict[str, Any] | None) -> str | None:
    if record is None:
        return None
    return "built-in" if record.get("builtin") else f"version {record.get('id')}"


def _accounting(report: RunReportPublic) -> dict[str, Any]:
    """The total row's carbon and cost cells, and the basis they rest on."""
    carbon, cost, basis = report.carbon, report.cost, report.accounting
    priced = cost.energy_usd is not None or cost.hardware_usd is not None
    return {
        "energy_facility_j": carbon.energy_facility_j,
        "pue": carbon.pue.value,
        "region": basis.region,
        "co2e_location_g": carbon.location_based.co2e_g,
        "co2e_market_g": carbon.market_based.co2e_g,
        "energy_cost_usd": cost.energy_usd,
        "cost_usd": cost.total_usd if priced else None,
        "location_factor_version": _version(basis.location_factor),
        "market_factor_version": _version(basis.market_factor),
        "tariff_version": _version(basis.tariff),
        "accounting_basis": basis.source,
    }


def _rows(report: RunReportPublic) -> list[dict[str, Any]]:
    run, energy, total = report.run, report.energy, report.energy.total
    base = {"run_id": run.id, "run_name": run.name}
    rows: list[dict[str, Any]] = [
        {
            **base,
            "section": "total",
            "simulated": run.simulated,
            "t0_s": report.t0_s,
            "t1_s": report.t1_s,
            "duration_s": report.duration_s,
            **total.model_dump(),
            "mean_power_w": energy.mean_power_w,
            "flops": report.work.flops,
            "tokens": report.work.tokens,
            "flop_per_j": report.efficiency.flop_per_j,
            "j_per_token": report.efficiency.j_per_token,
            **_accounting(report),
        }
    ]
    # Device, host and phase rows carry the fields whose JSON names are CSV columns.
    rows.extend(
        {**base, "section": "device", **device.model_dump(include=_COLUMNS)}
        for device in energy.by_device
    )
    rows.extend(
        {**base, "section": "host", "key": host, "host": host, **line.model_dump()}
        for host, line in energy.by_host.items()
    )
    covered = any(not d.counted for d in energy.by_device)
    if len(energy.by_kind) > 1 or covered:
        rows.extend(
            {**base, "section": "kind", "key": kind, "kind": kind, **line.model_dump()}
            for kind, line in energy.by_kind.items()
        )
        rows.extend(
            {
                **base,
                "section": "node_kind",
                "key": f"{node.host}/{kind}",
                "host": node.host,
                "kind": kind,
                "counted": line.counted,
                "covered_by": ", ".join(line.covered_by) or None,
                **line.model_dump(include=_COLUMNS),
            }
            for node in energy.by_node
            for kind, line in node.by_kind.items()
        )
    rows.extend(
        {**base, "section": "phase", "key": phase.name, **phase.model_dump(include=_COLUMNS)}
        for phase in energy.by_phase
    )
    return rows


def report_csv(report: RunReportPublic) -> str:
    """The run report as CSV text: header first, CRLF line ends (`service.csv_writer`)."""
    return write_csv(CSV_COLUMNS, _rows(report))
