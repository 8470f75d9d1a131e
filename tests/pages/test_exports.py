"""The CSV export: the JSON report's figures as rows, units in the headers, on both backends."""

from __future__ import annotations

import csv
import io

import pytest

from tests.pages.seed import Fleet
from tests.support.builders import batch, chunk
from tests.support.client import Project, TestClient, create_run
from thermoledger.service.report_csv import CSV_COLUMNS


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_report_matches_the_json_report(
    client: TestClient, seeded: tuple[Project, Fleet]
) -> None:
    project, fleet = seeded
    run = fleet.train
    report = client.get(f"/api/v1/runs/{run.id}/report", headers=project.read).json()
    response = client.get(f"/api/v1/runs/{run.id}/report.csv", headers=project.read)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f"run-{run.id}.csv" in response.headers["content-disposition"]
    assert response.text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    rows = _rows(response.text)
    sections = [r["section"] for r in rows]
    assert sections == ["total"] + ["device"] * run.devices + ["host"] + ["phase"] * 3

    total = rows[0]
    assert float(total["energy_j"]) == report["energy"]["total"]["energy_j"]
    assert float(total["energy_kwh"]) == pytest.approx(float(total["energy_j"]) / 3.6e6)
    assert float(total["co2e_location_g"]) == report["carbon"]["location_based"]["co2e_g"]
    assert total["co2e_market_g"] == ""  # not available is empty, never 0
    assert total["cost_usd"] == total["energy_cost_usd"] == ""  # no tariff: not priced
    # The basis the figures rest on: the project's region and PUE, as the ledger froze them.
    assert (total["region"], total["pue"], total["accounting_basis"]) == ("DE", "1.56", "ledger")
    assert (total["location_factor_version"], total["tariff_version"]) == ("built-in", "")
    assert float(total["energy_facility_j"]) == report["carbon"]["energy_facility_j"]
    assert float(total["flops"]) == pytest.approx(report["work"]["flops"])
    devices = [r for r in rows if r["section"] == "device"]
    assert [d["key"] for d in devices] == [d["key"] for d in report["energy"]["by_device"]]
    assert sum(float(d["energy_j"]) for d in devices) == pytest.approx(float(total["energy_j"]))
    assert all(d["method"] == "counter" and d["simulated"] == "true" for d in devices)
    phases = [r for r in rows if r["section"] == "phase"]
    assert [p["key"] for p in phases] == ["warmup", "train", "eval"]
    assert sum(float(p["energy_j"]) for p in phases) == pytest.approx(
        float(total["energy_j"]), rel=1e-9
    )
    assert all(p["co2e_location_g"] == "" for p in phases)  # carbon is priced per run


def test_csv_report_needs_a_read_token_and_stays_in_its_project(
    client: TestClient, seeded: tuple[Project, Fleet], other: Project
) -> None:
    project, fleet = seeded
    url = f"/api/v1/runs/{fleet.train.id}/report.csv"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=project.ingest).status_code == 403
    assert client.get(url, headers=other.read).status_code == 404
    empty = client.get(f"/api/v1/runs/{fleet.empty.id}/report.csv", headers=project.read)
    assert empty.status_code == 409


def test_csv_quotes_names_a_spreadsheet_would_run_as_formulas(
    client: TestClient, project: Project
) -> None:
    run_id = create_run(client, project, name='=HYPERLINK("http://evil","x")')
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([chunk(0)]), headers=project.ingest
    )
    assert response.status_code == 200, response.text
    text = client.get(f"/api/v1/runs/{run_id}/report.csv", headers=project.read).text
    assert _rows(text)[0]["run_name"] == '\'=HYPERLINK("http://evil","x")'


def test_unbounded_and_missing_values_are_empty_cells(client: TestClient, project: Project) -> None:
    # No region configured, no work declared, a counter reset without a power limit: the band
    # is unbounded above, nothing has FLOPs, CO2e or a price, and the run still runs.
    run_id = create_run(client, project)
    unbounded = {**chunk(0), "energy_high_j": "inf", "bound_above_j": "inf"}
    response = client.post(
        f"/api/v1/runs/{run_id}/chunks", json=batch([unbounded]), headers=project.ingest
    )
    assert response.status_code == 200, response.text
    (row,) = [
        r
        for r in _rows(client.get(f"/api/v1/runs/{run_id}/report.csv", headers=project.read).text)
        if r["section"] == "total"
    ]
    assert row["energy_high_j"] == ""
    assert row["flops"] == ""
    assert float(row["energy_low_j"]) > 0.0
    assert row["cost_usd"] == ""  # nothing priced: empty, not the 0.0 total of no parts
    assert row["region"] == row["co2e_location_g"] == ""
    # The typed report always states its basis: provisional while the run runs.
    assert row["accounting_basis"] == "resolved"
