"""Period rollups against figures worked out by hand.

The scenario (region made up for the test, so no built-in factor applies):

* PUE 1.5 (measured); shared location factor 400 gCO2e/kWh from 2025-01-01; the project's own
  market-based factor 100 gCO2e/kWh over [2025-01-01, 2025-11-01); shared tariff 100 USD/MWh.
* Each chunk is 500 W for 720 s = 360 000 J = 0.1 kWh of IT energy.
* run A, team=vision, 2 chunks, ends 2025-10-10, 1 000 000 tokens; embodied 50 gCO2e posted
* run B, team=nlp,    3 chunks, ends 2025-10-20, 2 000 000 tokens
* run C, team=vision, 1 chunk,  ends 2025-11-05, no tokens (after the market factor ends)
* an offset of 1 kgCO2e on 2025-10-15, with no run

Per run: IT kWh → facility = IT × 1.5 → location = facility × 400 g → market = facility × 100 g
→ cost = facility × 0.10 USD:

    A: 0.2 → 0.30 → 120 g → 30 g → 0.030 USD
    B: 0.3 → 0.45 → 180 g → 45 g → 0.045 USD
    C: 0.1 → 0.15 →  60 g → (no market factor) → 0.015 USD
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.client import Project, TestClient
from tests.support.ledger import OPERATOR, add_factor, configure, metered_run, region

REL = 1e-12


@pytest.fixture
def scenario(client: TestClient, project: Project) -> Project:
    code = region()
    configure(client, project, code, pue={"value": 1.5, "source": "facility meter, 2025"})
    add_factor(
        client, OPERATOR, region=code, intensity="400 gCO2e/kWh", valid_from="2025-01-01T00:00:00Z"
    )
    add_factor(
        client,
        project.admin,
        region=code,
        basis="market",
        intensity="0.1 kgCO2e/kWh",
        valid_from="2025-01-01T00:00:00Z",
        valid_to="2025-11-01T00:00:00Z",
        source="supplier disclosure (residual mix), 2025",
    )
    response = client.post(
        "/api/v1/tariffs",
        json={
            "region": code,
            "price": "100 USD/MWh",
            "valid_from": "2025-01-01T00:00:00Z",
            "source": "tariff sheet",
        },
        headers=OPERATOR,
    )
    assert response.status_code == 201, response.text
    run_a = metered_run(
        client,
        project,
        chunks=2,
        ended_at=datetime(2025, 10, 10, tzinfo=UTC),
        tags={"team": "vision"},
        tokens=1_000_000,
    )
    metered_run(
        client,
        project,
        chunks=3,
        ended_at=datetime(2025, 10, 20, tzinfo=UTC),
        tags={"team": "nlp"},
        tokens=2_000_000,
    )
    metered_run(
        client,
        project,
        chunks=1,
        ended_at=datetime(2025, 11, 5, tzinfo=UTC),
        tags={"team": "vision"},
    )
    for body in (
        {
            "figure": "embodied",
            "quantity": "50 gCO2e",
            "run_id": run_a,
            "reference": "GPU LCA share",
        },
        {
            "figure": "offset",
            "quantity": "1 kgCO2e",
            "at": "2025-10-15T00:00:00Z",
            "reference": "VCS 1234",
        },
    ):
        response = client.post("/api/v1/ledger", json=body, headers=project.admin)
        assert response.status_code == 201, response.text
    return project


def rollups(client: TestClient, project: Project, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/rollups", params=params, headers=project.read)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def test_monthly_rollup_by_project(client: TestClient, scenario: Project) -> None:
    october, november = rollups(client, scenario, period="month")
    assert (october["period"], october["group"], october["runs"]) == ("2025-10", scenario.slug, 2)
    # IT 0.2 + 0.3 = 0.5 kWh; facility 0.30 + 0.45 = 0.75 kWh
    assert october["energy"]["it_kwh"] == pytest.approx(0.5, rel=REL)
    assert october["energy"]["facility"]["kwh"] == pytest.approx(0.75, rel=REL)
    # location 120 + 180 = 300 g; market 30 + 45 = 75 g, side by side
    assert october["co2e"]["location_based"]["g"] == pytest.approx(300.0, rel=REL)
    assert october["co2e"]["market_based"]["status"] == "available"
    assert october["co2e"]["market_based"]["g"] == pytest.approx(75.0, rel=REL)
    # cost 0.030 + 0.045 = 0.075 USD
    assert october["cost"]["usd"] == pytest.approx(0.075, rel=REL)
    assert october["embodied_g"] == 50.0
    assert october["offsets_g"] == 1000.0  # reported, not netted:
    assert october["co2e"]["location_based"]["g"] == pytest.approx(300.0, rel=REL)
    # SCI per run = (O 300 + M 50) / 2 runs = 175 g; per 1k tokens = 350 / 3000 = 0.11666… g
    assert october["sci"]["per_run"]["g_per_unit"] == pytest.approx(175.0, rel=REL)
    assert october["sci"]["per_1k_tokens"]["count"] == 3000.0
    assert october["sci"]["per_1k_tokens"]["g_per_unit"] == pytest.approx(350 / 3000, rel=REL)
    assert october["tokens"] == 3_000_000

    # November: run C only. IT 0.1, facility 0.15, location 60 g, cost 0.015 USD.
    assert (november["period"], november["runs"]) == ("2025-11", 1)
    assert november["co2e"]["location_based"]["g"] == pytest.approx(60.0, rel=REL)
    market = november["co2e"]["market_based"]
    assert (market["status"], market["g"], market["runs_covered"]) == ("not_available", None, 0)
    assert "not substituted" in market["reason"]
    assert november["cost"]["usd"] == pytest.approx(0.015, rel=REL)
    assert november["sci"]["per_run"]["g_per_unit"] == pytest.approx(60.0, rel=REL)
    per_tokens = november["sci"]["per_1k_tokens"]
    assert (per_tokens["status"], per_tokens["reason"]) == (
        "not_available",
        "1 of 1 run(s) declared no tokens",
    )
    assert any("understated" in note for note in november["notes"])


def test_quarterly_rollup_keeps_market_partial_apart(client: TestClient, scenario: Project) -> None:
    (q4,) = rollups(client, scenario, period="quarter")
    assert (q4["period"], q4["runs"]) == ("2025-Q4", 3)
    assert q4["energy"]["it_kwh"] == pytest.approx(0.6, rel=REL)  # 0.2 + 0.3 + 0.1
    assert q4["energy"]["facility"]["kwh"] == pytest.approx(0.9, rel=REL)
    assert q4["co2e"]["location_based"]["g"] == pytest.approx(360.0, rel=REL)  # 120+180+60
    market = q4["co2e"]["market_based"]
    # Run C has no market-based figure: no total, but the covered part is shown apart.
    assert (market["status"], market["g"], market["runs_covered"], market["runs"]) == (
        "not_available",
        None,
        2,
        3,
    )
    assert market["covered_g"] == pytest.approx(75.0, rel=REL)
    assert q4["cost"]["usd"] == pytest.approx(0.09, rel=REL)  # 0.030 + 0.045 + 0.015
    # SCI per run = (360 + 50) / 3 = 136.666… g
    assert q4["sci"]["per_run"]["g_per_unit"] == pytest.approx(410 / 3, rel=REL)


def test_rollup_by_tag(client: TestClient, scenario: Project) -> None:
    rows = rollups(client, scenario, period="month", group_by="tag", tag_key="team")
    keyed = {(r["period"], r["group"]): r for r in rows}
    assert list(keyed) == [
        ("2025-10", "nlp"),
        ("2025-10", "vision"),
        ("2025-10", None),  # the offset, which belongs to no run
        ("2025-11", "vision"),
    ]
    vision = keyed[("2025-10", "vision")]
    # run A: location 120 g, market 30 g, embodied 50 g; SCI per 1k tokens = 170 / 1000
    assert vision["co2e"]["location_based"]["g"] == pytest.approx(120.0, rel=REL)
    assert vision["co2e"]["market_based"]["g"] == pytest.approx(30.0, rel=REL)
    assert vision["sci"]["per_run"]["g_per_unit"] == pytest.approx(170.0, rel=REL)
    assert vision["sci"]["per_1k_tokens"]["g_per_unit"] == pytest.approx(0.17, rel=REL)
    nlp = keyed[("2025-10", "nlp")]
    # run B: SCI per 1k tokens = 180 / 2000 = 0.09 g (no embodied recorded for it)
    assert nlp["sci"]["per_1k_tokens"]["g_per_unit"] == pytest.approx(0.09, rel=REL)
    assert nlp["cost"]["usd"] == pytest.approx(0.045, rel=REL)
    untagged = keyed[("2025-10", None)]
    assert (untagged["runs"], untagged["offsets_g"]) == (0, 1000.0)


def test_a_correction_replaces_the_figure_in_its_own_period(
    client: TestClient, scenario: Project
) -> None:
    entries = client.get(
        "/api/v1/ledger", params={"figure": "co2e_location"}, headers=scenario.read
    ).json()["items"]
    first = entries[0]  # run A's 120 g
    response = client.post(
        "/api/v1/ledger",
        json={
            "figure": "co2e_location",
            "quantity": "100 gCO2e",
            "run_id": first["run_id"],
            "supersedes": first["seq"],
            "source": "derived",
            "reference": "grid operator's corrected hourly factors",
        },
        headers=scenario.admin,
    )
    assert response.status_code == 201, response.text
    october = rollups(client, scenario, period="month")[0]
    assert october["co2e"]["location_based"]["g"] == pytest.approx(280.0, rel=REL)  # 100 + 180
    assert response.json()["seq"] in october["entries"]
    assert first["seq"] not in october["entries"]


def test_the_range_and_the_parameters_are_checked(client: TestClient, scenario: Project) -> None:
    rows = rollups(client, scenario, period="month", **{"from": "2025-11-01T00:00:00Z"})
    assert [r["period"] for r in rows] == ["2025-11"]
    rows = rollups(client, scenario, period="month", **{"to": "2025-11-01T00:00:00Z"})
    assert [r["period"] for r in rows] == ["2025-10"]
    for params, field in (
        ({"group_by": "tag"}, "tag_key"),
        ({"period": "week"}, "period"),
        ({"from": "2025-11-01T00:00:00Z", "to": "2025-10-01T00:00:00Z"}, "to"),
        ({"from": "2025-11-01"}, "from"),
    ):
        response = client.get("/api/v1/rollups", params=params, headers=scenario.read)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["field"] == field
