"""One source of truth: a run's report, page, CSV and runs-list totals agree with the ledger.

The ledger freezes a finished run's carbon and cost with the project's region and PUE and the
factor and tariff versions valid at its end. The report reads that basis back from the ledger,
so its figures equal the ledger's to the last bit — and keep doing so after a newer version is
added over the run's end, or the project's PUE changes (where resolving again would not).
"""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.client import Project, TestClient
from tests.support.ledger import (
    OPERATOR,
    add_factor,
    configure,
    ledger_items,
    metered_run,
    post_chunks,
    region,
)
from thermoledger.service.pages.render import co2e

OCT = datetime(2025, 10, 10, tzinfo=UTC)
HTML = {"Accept": "text/html"}
#: 2 chunks × 500 W × 720 s (`metered_run`).
IT_J = 720_000.0


def _report(client: TestClient, project: Project, run_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/runs/{run_id}/report", headers=project.read)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _csv_total(client: TestClient, project: Project, run_id: str) -> dict[str, str]:
    response = client.get(f"/api/v1/runs/{run_id}/report.csv", headers=project.read)
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows[0]["section"] == "total"
    return rows[0]


def _page(client: TestClient, project: Project, path: str) -> str:
    response = client.get(path, headers={**project.read, **HTML})
    assert response.status_code == 200, response.text[:2000]
    return html.unescape(response.text)


def _ledger(client: TestClient, project: Project, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's current (not superseded) entries by figure."""
    return {
        e["figure"]: e
        for e in ledger_items(client, project, run_id=run_id)
        if e["superseded_by"] is None
    }


def _tariff(client: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"source": "utility schedule", "year": 2025, **fields}
    response = client.post("/api/v1/tariffs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _priced_project(client: TestClient, project: Project) -> dict[str, Any]:
    """A fresh region with location, market and tariff versions valid from 2025; PUE 1.1."""
    code = region()
    configure(client, project, code, pue="hyperscale")
    location = add_factor(
        client, OPERATOR, region=code, intensity="400 gCO2e/kWh", valid_from="2025-01-01T00:00:00Z"
    )
    market = add_factor(
        client,
        project.admin,
        region=code,
        basis="market",
        intensity="0.05 kgCO2e/kWh",
        valid_from="2025-01-01T00:00:00Z",
    )
    tariff = _tariff(
        client,
        project.admin,
        region=code,
        price={"value": 150, "unit": "USD/MWh"},
        valid_from="2025-01-01T00:00:00Z",
    )
    return {"region": code, "location": location, "market": market, "tariff": tariff}


def _assert_report_is_the_ledger(
    report: dict[str, Any], entries: dict[str, dict[str, Any]]
) -> None:
    carbon, cost = report["carbon"], report["cost"]
    assert report["energy"]["total"]["energy_j"] == entries["it_energy"]["value_si"]
    assert carbon["energy_facility_j"] == entries["facility_energy"]["value_si"]
    assert carbon["location_based"]["co2e_g"] == entries["co2e_location"]["value_si"]
    assert carbon["market_based"]["co2e_g"] == entries["co2e_market"]["value_si"]
    assert cost["energy_usd"] == entries["energy_cost"]["value_si"]
    assert cost["total_usd"] == entries["energy_cost"]["value_si"]
    basis = report["accounting"]
    assert basis["frozen"] is True
    assert basis["ledger_entries"] == {f: e["seq"] for f, e in entries.items() if f != "tokens"}
    assert basis["location_factor"] == entries["co2e_location"]["provenance"]["factor"]
    assert basis["market_factor"] == entries["co2e_market"]["provenance"]["factor"]
    assert basis["tariff"] == entries["energy_cost"]["provenance"]["tariff"]
    assert basis["pue"] == entries["facility_energy"]["provenance"]["pue"]


def test_the_report_is_the_ledger(client: TestClient, project: Project) -> None:
    setup = _priced_project(client, project)
    run_id = metered_run(client, project, chunks=2, ended_at=OCT)
    entries = _ledger(client, project, run_id)
    assert set(entries) == {
        "it_energy",
        "facility_energy",
        "co2e_location",
        "co2e_market",
        "energy_cost",
    }
    report = _report(client, project, run_id)

    _assert_report_is_the_ledger(report, entries)
    # 0.2 kWh IT × PUE 1.1 = 0.22 kWh: × 400 g = 88 g; × 50 g = 11 g; × 0.15 USD = 0.033 USD.
    assert report["carbon"]["location_based"]["co2e_g"] == pytest.approx(88.0, rel=1e-12)
    assert report["carbon"]["market_based"]["co2e_g"] == pytest.approx(11.0, rel=1e-12)
    assert report["cost"]["energy_usd"] == pytest.approx(0.033, rel=1e-12)
    basis = report["accounting"]
    assert (basis["region"], basis["source"]) == (setup["region"], "ledger")
    assert basis["location_factor"]["id"] == setup["location"]["id"]
    assert basis["market_factor"]["id"] == setup["market"]["id"]
    assert basis["tariff"]["id"] == setup["tariff"]["id"]
    assert basis["unavailable"] == {}
    factor = report["carbon"]["location_based"]["factor"]
    assert factor["source"] == f"test grid operator [version {setup['location']['id']}]"
    assert any("entries frozen at the run's end" in note for note in report["notes"])


def test_the_csv_carries_the_ledgers_figures(client: TestClient, project: Project) -> None:
    setup = _priced_project(client, project)
    run_id = metered_run(client, project, chunks=2, ended_at=OCT)
    entries = _ledger(client, project, run_id)
    total = _csv_total(client, project, run_id)

    assert float(total["energy_j"]) == entries["it_energy"]["value_si"]
    assert float(total["energy_facility_j"]) == entries["facility_energy"]["value_si"]
    assert float(total["co2e_location_g"]) == entries["co2e_location"]["value_si"]
    assert float(total["co2e_market_g"]) == entries["co2e_market"]["value_si"]
    assert float(total["energy_cost_usd"]) == entries["energy_cost"]["value_si"]
    assert float(total["cost_usd"]) == entries["energy_cost"]["value_si"]
    assert (total["pue"], total["region"], total["accounting_basis"]) == (
        "1.1",
        setup["region"],
        "ledger",
    )
    assert total["location_factor_version"] == f"version {setup['location']['id']}"
    assert total["market_factor_version"] == f"version {setup['market']['id']}"
    assert total["tariff_version"] == f"version {setup['tariff']['id']}"


def test_later_versions_and_settings_change_no_published_figure(
    client: TestClient, project: Project
) -> None:
    setup = _priced_project(client, project)
    code = setup["region"]
    run_id = metered_run(client, project, chunks=2, ended_at=OCT)
    before = _report(client, project, run_id)
    csv_before = _csv_total(client, project, run_id)
    page_before = _page(client, project, f"/runs/{run_id}")

    # The grid operator revises the whole year, backdated over the run's end; the tariff is
    # replaced from September; the project moves to a measured PUE.
    closed = client.post(
        f"/api/v1/factors/{setup['location']['id']}/close",
        json={"valid_to": "2025-03-01T00:00:00Z"},
        headers=OPERATOR,
    )
    assert closed.status_code == 200, closed.text
    newer = add_factor(
        client, OPERATOR, region=code, intensity="600 gCO2e/kWh", valid_from="2025-03-01T00:00:00Z"
    )
    closed = client.post(
        f"/api/v1/tariffs/{setup['tariff']['id']}/close",
        json={"valid_to": "2025-09-01T00:00:00Z"},
        headers=project.admin,
    )
    assert closed.status_code == 200, closed.text
    _tariff(client, project.admin, region=code, price="0.3 USD/kWh", valid_from="2025-09-01T00:00Z")
    configure(client, project, code, pue={"value": 1.3, "source": "facility meter 2025"})
    # Resolving "valid at the run's end" again would now pick the newer version: the report
    # must not, because the ledger did not.
    lookup = client.get(
        "/api/v1/factors/lookup", params={"at": OCT.isoformat()}, headers=project.read
    )
    assert lookup.json()["id"] == newer["id"]

    after = _report(client, project, run_id)
    for path in (
        ("carbon", "location_based", "co2e_g"),
        ("carbon", "market_based", "co2e_g"),
        ("carbon", "energy_facility_j"),
        ("cost", "total_usd"),
        ("accounting",),
    ):
        old, new = before, after
        for key in path:
            old, new = old[key], new[key]
        assert new == old, path
    _assert_report_is_the_ledger(after, _ledger(client, project, run_id))
    assert _csv_total(client, project, run_id) == csv_before
    page_after = _page(client, project, f"/runs/{run_id}")
    for figure in ("co2e_location", "cost"):
        pattern = rf'data-figure="{figure}">([^<]*)<'
        assert re.findall(pattern, page_after) == re.findall(pattern, page_before)

    # A run ending now is derived with the new versions and PUE, and agrees with its ledger too.
    later = metered_run(client, project, chunks=2, ended_at=OCT)
    report = _report(client, project, later)
    _assert_report_is_the_ledger(report, _ledger(client, project, later))
    assert report["accounting"]["location_factor"]["id"] == newer["id"]
    assert report["carbon"]["location_based"]["co2e_g"] == pytest.approx(
        IT_J * 1.3 / 3.6e6 * 600, rel=1e-12
    )


def test_a_configured_region_and_pue_show_in_the_report_and_on_the_page(
    client: TestClient, project: Project
) -> None:
    configure(client, project, "de", pue="hyperscale")
    run_id = metered_run(client, project, chunks=2, ended_at=OCT)
    report = _report(client, project, run_id)
    entries = _ledger(client, project, run_id)

    basis = report["accounting"]
    assert basis["region"] == "DE"
    assert (basis["pue"]["name"], basis["pue"]["value"], basis["pue"]["kind"]) == (
        "hyperscale",
        1.1,
        "published",
    )
    factor = basis["location_factor"]
    assert (factor["id"], factor["builtin"], factor["region"], factor["year"]) == (
        None,
        True,
        "DE",
        2023,
    )
    assert "Ember" in factor["source"]
    assert report["carbon"]["pue"]["name"] == "hyperscale"
    assert report["carbon"]["location_based"]["factor"]["region"] == "DE"
    co2e = report["carbon"]["location_based"]["co2e_g"]
    assert co2e == entries["co2e_location"]["value_si"]
    assert co2e == pytest.approx(IT_J * 1.1 / 3.6e6 * 381.0, rel=1e-12)
    # No market-based factor or tariff for DE: not available, in the ledger's words.
    assert "co2e_market" not in entries
    assert "energy_cost" not in entries
    recorded = entries["facility_energy"]["provenance"]["unavailable"]
    assert set(recorded) == {"co2e_market", "energy_cost"}
    assert report["carbon"]["market_based"]["reason"] == recorded["co2e_market"]
    assert report["cost"]["energy_reason"] == recorded["energy_cost"]

    page = _page(client, project, f"/runs/{run_id}")
    assert re.search(r'data-basis="headline">DE, PUE 1\.1 \(hyperscale\)<', page)
    for text in (
        "PUE 1.1 (hyperscale, published:",
        "region: DE",
        "location-based factor: the built-in default of DE location/average, 381 gCO2e/kWh",
        "the ledger's entries frozen at the run's end",
        recorded["co2e_market"],
        recorded["energy_cost"],
    ):
        assert text in page, text


def test_without_a_region_report_and_ledger_say_the_same(
    client: TestClient, project: Project
) -> None:
    run_id = metered_run(client, project, chunks=2, ended_at=OCT)
    entries = _ledger(client, project, run_id)
    assert set(entries) == {"it_energy", "facility_energy"}
    recorded = entries["facility_energy"]["provenance"]["unavailable"]
    assert set(recorded) == {"co2e_location", "co2e_market", "energy_cost"}
    (reason,) = set(recorded.values())
    assert "no region configured" in reason

    report = _report(client, project, run_id)
    carbon = report["carbon"]
    assert carbon["location_based"] == {
        "status": "not_available",
        "co2e_g": None,
        "factor": None,
        "reason": reason,
    }
    assert carbon["market_based"]["co2e_g"] is None
    assert carbon["market_based"]["reason"] == reason
    assert report["cost"]["energy_usd"] is None
    assert report["cost"]["energy_reason"] == reason
    assert report["sci"] is None
    basis = report["accounting"]
    assert basis["unavailable"] == recorded
    assert (basis["region"], basis["location_factor"], basis["frozen"]) == (None, None, True)
    assert (basis["pue"]["name"], basis["pue"]["value"]) == ("none", 1.0)
    assert carbon["energy_facility_j"] == entries["facility_energy"]["value_si"]

    total = _csv_total(client, project, run_id)
    for column in ("co2e_location_g", "co2e_market_g", "energy_cost_usd", "cost_usd", "region"):
        assert total[column] == "", column  # not available: empty, never 0
    page = _page(client, project, f"/runs/{run_id}")
    assert 'data-figure="co2e_location">not available<' in page
    assert f"not available: {reason}" in page
    assert "no region configured" in page


def test_a_region_without_any_factor_says_so_in_both(client: TestClient, project: Project) -> None:
    code = region()  # no version, and no built-in default
    configure(client, project, code)
    run_id = metered_run(client, project, chunks=1, ended_at=OCT)
    recorded = _ledger(client, project, run_id)["facility_energy"]["provenance"]["unavailable"]
    assert f"no location-based emission factor for region {code}" in recorded["co2e_location"]
    assert "2025-10-10 00:00:00 UTC" in recorded["co2e_location"]
    report = _report(client, project, run_id)
    assert report["carbon"]["location_based"]["reason"] == recorded["co2e_location"]
    assert report["accounting"]["unavailable"] == recorded


def test_a_running_run_is_provisional_on_the_versions_valid_now(
    client: TestClient, project: Project
) -> None:
    setup = _priced_project(client, project)
    run_id = metered_run(client, project, chunks=1, ended_at=OCT, finish=False)
    report = _report(client, project, run_id)
    basis = report["accounting"]
    assert (basis["frozen"], basis["source"]) == (False, "resolved")
    assert basis["location_factor"]["id"] == setup["location"]["id"]
    assert any(note.startswith("provisional") for note in report["notes"])
    assert report["carbon"]["location_based"]["co2e_g"] == pytest.approx(
        360_000 * 1.1 / 3.6e6 * 400, rel=1e-12
    )
    assert ledger_items(client, project, run_id=run_id) == []


def test_late_measurements_and_corrections_are_flagged(
    client: TestClient, project: Project
) -> None:
    _priced_project(client, project)
    run_id = metered_run(client, project, chunks=1, ended_at=OCT)
    post_chunks(client, project, run_id, range(1, 2))  # arrives after the end was ledgered
    report = _report(client, project, run_id)
    assert any("measurements changed since" in note for note in report["notes"])
    carbon = _ledger(client, project, run_id)["co2e_location"]
    fix = client.post(
        "/api/v1/ledger",
        json={
            "figure": "co2e_location",
            "quantity": "1 kgCO2e",
            "reference": "auditor's recount",
            "run_id": run_id,
            "supersedes": carbon["seq"],
            "note": "meter offline for an hour",
        },
        headers=project.admin,
    )
    assert fix.status_code == 201, fix.text
    report = _report(client, project, run_id)
    (correction,) = report["accounting"]["corrections"]
    assert (correction["seq"], correction["supersedes"], correction["value_si"]) == (
        fix.json()["seq"],
        carbon["seq"],
        1000.0,
    )
    assert any(
        f"ledger entry {fix.json()['seq']} corrects co2e_location" in n for n in report["notes"]
    )


def test_runs_list_totals_are_each_runs_ledgered_figures(
    client: TestClient, project: Project
) -> None:
    setup = _priced_project(client, project)
    first = metered_run(client, project, chunks=2, ended_at=OCT)
    configure(client, project, setup["region"], pue="typical")  # the second run ends at 1.56
    second = metered_run(client, project, chunks=1, ended_at=OCT)
    expected = {
        figure: sum(_ledger(client, project, r)[figure]["value_si"] for r in (first, second))
        for figure in ("co2e_location", "co2e_market", "energy_cost")
    }
    page = _page(client, project, "/runs")

    def shown(key: str) -> float:
        match = re.search(rf'data-total="{key}">([\d.,]+) (k?g|USD)', page)
        assert match is not None, key
        value = float(match.group(1).replace(",", ""))
        return value * 1e3 if match.group(2) == "kg" else value

    assert shown("co2e") == pytest.approx(expected["co2e_location"], rel=1e-3)
    assert shown("co2e_market") == pytest.approx(expected["co2e_market"], rel=1e-3)
    assert shown("usd") == pytest.approx(expected["energy_cost"], abs=0.005)
    assert "each run on its own basis" in page  # PUEs differ between the two runs
    for run_id in (first, second):
        row = re.search(rf'data-run="{run_id}".*?</tr>', page, re.S)
        assert row is not None
        grams = _ledger(client, project, run_id)["co2e_location"]["value_si"]
        assert f">{co2e(grams)}<" in row.group(0)


def test_a_project_not_configured_lists_runs_without_carbon(
    client: TestClient, project: Project
) -> None:
    metered_run(client, project, chunks=1, ended_at=OCT)
    page = _page(client, project, "/runs")
    assert 'data-total="co2e">not available<' in page
    assert 'data-total="usd">not priced<' in page
    assert "1 run(s) without it: the project has no region configured" in page


def test_a_negative_tariff_is_priced_as_the_ledger_prices_it(
    client: TestClient, project: Project
) -> None:
    code = region()
    configure(client, project, code, pue="hyperscale")
    _tariff(
        client, project.admin, region=code, price="-0.02 USD/kWh", valid_from="2025-01-01T00:00Z"
    )
    run_id = metered_run(client, project, chunks=2, ended_at=OCT)
    cost = _ledger(client, project, run_id)["energy_cost"]["value_si"]
    assert cost == pytest.approx(-0.02 * 0.2 * 1.1, rel=1e-12)  # wholesale prices dip below 0
    report = _report(client, project, run_id)
    assert report["cost"]["energy_usd"] == report["cost"]["total_usd"] == cost
    assert report["cost"]["energy_reason"] is None
    assert not any("not priced" in note.lower() for note in report["notes"])
    assert float(_csv_total(client, project, run_id)["cost_usd"]) == cost
