"""No zero stands in for "not available" (issue 14, item 3).

A run with no pricing (no tariff, no hardware price), no region (no grid factor) and no declared
work (no FLOPs, no tokens, no model size) is ended and ledgered; every figure of every export
is then walked: the report JSON, the report CSV, the audit export (CSV and JSON) and the
rollups. A figure that is not available must be null (JSON) or an empty cell (CSV); a 0 may
appear only where the quantity is truly zero for this run, and each such figure is listed in
`TRULY_ZERO` (`ROLLUP_TRULY_ZERO`) with why. The economics routes (plan, amortisation) need
FLOPs or inference runs that this run does not have, so they are not walked here.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tests.support.client import Project, TestClient
from tests.support.ledger import metered_run

ENDED_AT = datetime(2025, 10, 10, tzinfo=UTC)

#: The figures that are truly 0 for this run (four chunks of a steady 500 W, no gap, no
#: counter reset, no phase), by their path with list positions dropped; JSON and CSV names.
TRULY_ZERO: dict[str, str] = {
    # Identifiers, not figures: the first device's index.
    "energy.by_device.index": "the first device's index is 0",
    "csv.device.index": "the first device's index is 0",
    # The sampling record: no gap, no counter reset in the chunks posted.
    "energy.by_device.gap_s": "no sampling gap",
    "energy.by_device.gap_count": "no sampling gap",
    "energy.by_device.reset_count": "no counter reset",
    "csv.device.gap_s": "no sampling gap",
    "csv.device.gap_count": "no sampling gap",
    "csv.device.reset_count": "no counter reset",
    # The CSV's total row counts gaps and resets over every device.
    "csv.total.gap_s": "no sampling gap",
    "csv.total.gap_count": "no sampling gap",
    "csv.total.reset_count": "no counter reset",
    # Band bottoms of the energy decomposition: the constant power is at least 0 W, and no idle
    # figure in the catalog bounds it higher (the point is measured; the bottom is a bound).
    "energy_decomposition.components.constant.energy_low_j": "pi0 >= 0 W, nothing tighter",
    "energy_decomposition.devices.pi0_low_w": "pi0 >= 0 W, nothing tighter",
}

#: Rollup figures that are truly 0 here: counts of runs, and offsets (an act: none retired).
ROLLUP_TRULY_ZERO: dict[str, str] = {
    "simulated_runs": "the run was not metered on simulated devices",
    "runs_with_tokens": "no run declared tokens (the token sum itself is null)",
    "co2e.location_based.runs_covered": "no run has a location-based figure (no region)",
    "co2e.market_based.runs_covered": "no run has a market-based figure",
    "cost.energy.runs_covered": "no run has an energy cost (no tariff)",
    "offsets_g": "no offset was retired: 0 g retired, never netted",
}

_ZERO_TEXT = re.compile(r"^[+-]?0+(\.0*)?([eE][+-]?\d+)?$")


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a JSON document with its path (list positions dropped)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value, path)
    else:
        yield path, node


def _is_zero(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, str) and bool(_ZERO_TEXT.match(value.strip()))


def _zeros_json(document: Any, prefix: str = "") -> set[str]:
    return {f"{prefix}{path}" for path, value in _leaves(document) if _is_zero(value)}


def _zeros_csv(text: str, prefix: str, key: str) -> set[str]:
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows, text
    return {
        f"{prefix}.{row[key]}.{column}"
        for row in rows
        for column, value in row.items()
        if _is_zero(value)
    }


def _get(client: TestClient, project: Project, path: str, **params: Any) -> Any:
    response = client.get(path, params=params, headers=project.read)
    assert response.status_code == 200, response.text
    return response


def _unpriced_run(client: TestClient, project: Project) -> str:
    return metered_run(client, project, chunks=4, ended_at=ENDED_AT)


def test_the_report_json_says_null_and_why_never_0(client: TestClient, project: Project) -> None:
    run_id = _unpriced_run(client, project)
    report = _get(client, project, f"/api/v1/runs/{run_id}/report").json()
    cost, carbon, efficiency = report["cost"], report["carbon"], report["efficiency"]
    assert cost["total_usd"] is None
    assert cost["total_status"] == "not_available"
    assert cost["total_reason"]
    assert cost["energy_usd"] is None
    assert cost["energy_status"] == "not_available"
    assert cost["energy_reason"]
    assert cost["hardware_usd"] is None
    assert carbon["location_based"]["co2e_g"] is None
    assert carbon["location_based"]["reason"]
    assert carbon["market_based"]["co2e_g"] is None
    assert (efficiency["flop_per_j"], efficiency["j_per_token"], efficiency["mfu"]) == (
        None,
        None,
        None,
    )
    assert report["work"]["flops"] is None
    assert report["bounds"] is None
    zeros = _zeros_json(report) - TRULY_ZERO.keys()
    assert zeros == set(), f"0 stands in for a figure that is not available: {sorted(zeros)}"


def test_the_report_csv_leaves_the_cell_empty_never_0(client: TestClient, project: Project) -> None:
    run_id = _unpriced_run(client, project)
    text = _get(client, project, f"/api/v1/runs/{run_id}/report.csv").text
    total = next(csv.DictReader(io.StringIO(text)))
    for column in ("cost_usd", "energy_cost_usd", "co2e_location_g", "co2e_market_g"):
        assert total[column] == "", column
    for column in ("flops", "tokens", "flop_per_j", "j_per_token"):
        assert total[column] == "", column
    zeros = _zeros_csv(text, "csv", "section") - TRULY_ZERO.keys()
    assert zeros == set(), f"0 stands in for a figure that is not available: {sorted(zeros)}"


def test_the_audit_export_and_the_rollups_never_show_0_for_not_available(
    client: TestClient, project: Project
) -> None:
    run_id = _unpriced_run(client, project)
    window = {"from": "2025-10-01T00:00:00Z", "to": "2025-11-01T00:00:00Z"}
    exported = _get(client, project, "/api/v1/audit/export", format="json", **window).json()
    entries = exported["entries"]
    assert entries, exported
    assert {e["run_id"] for e in entries} == {run_id}
    # No region, no tariff: energy is ledgered, CO2e and cost are not (never as 0).
    figures = {e["figure"] for e in entries}
    assert "it_energy" in figures
    assert not figures & {"co2e_location", "co2e_market", "energy_cost"}
    # The chain's first entry links to the genesis hash, all zeros by definition.
    assert _zeros_json(entries) <= {"prev_hash"}
    text = _get(client, project, "/api/v1/audit/export", format="csv", **window).text
    assert {z.rsplit(".", 1)[1] for z in _zeros_csv(text, "export", "figure")} <= {"prev_hash"}

    for group in ({"group_by": "project"}, {"group_by": "tag", "tag_key": "team"}):
        rollups = _get(client, project, "/api/v1/rollups", **window, **group).json()
        assert rollups["rows"], rollups
        row = rollups["rows"][0]
        assert row["co2e"]["location_based"]["g"] is None
        assert row["co2e"]["location_based"]["covered_g"] is None
        assert row["cost"]["usd"] is None
        assert row["cost"]["hardware_usd"] is None
        assert row["embodied_g"] is None
        assert row["tokens"] is None
        assert row["sci"]["per_1k_tokens"]["count"] is None
        zeros = _zeros_json(rollups["rows"]) - ROLLUP_TRULY_ZERO.keys()
        assert zeros == set(), f"0 stands in for a figure that is not available: {sorted(zeros)}"
