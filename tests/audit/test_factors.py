"""Versioned emission factors and tariffs, the project's region and PUE."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.support.client import Project, TestClient
from tests.support.ledger import OPERATOR, add_factor, configure, ledger_items, metered_run, region


def test_versions_of_one_key_never_overlap(client: TestClient, project: Project) -> None:
    code = region()
    first = add_factor(
        client,
        OPERATOR,
        region=code,
        intensity="0.3 kgCO2e/kWh",
        valid_from="2024-01-01T00:00:00Z",
        valid_to="2025-01-01T00:00:00Z",
    )
    assert (first["shared"], first["intensity"], first["intensity_g_per_kwh"]) == (
        True,
        {"value": 0.3, "unit": "kgCO2e/kWh"},
        300.0,
    )
    second = add_factor(
        client,
        OPERATOR,
        region=code.lower(),
        intensity="250 gCO2e/kWh",
        valid_from="2025-01-01T00:00:00Z",
    )
    assert second["region"] == code
    clash = client.post(
        "/api/v1/factors",
        json={
            "region": code,
            "basis": "location",
            "intensity": "1 gCO2e/kWh",
            "valid_from": "2024-06-01T00:00:00Z",
            "valid_to": "2024-07-01T00:00:00Z",
            "source": "x",
        },
        headers=OPERATOR,
    )
    assert clash.status_code == 409
    assert clash.json()["field"] == "valid_from"
    assert f"version {first['id']} of {code} location/average" in clash.json()["detail"]
    # The open-ended version blocks a later one until it is closed.
    later = {
        "region": code,
        "basis": "location",
        "intensity": "200 gCO2e/kWh",
        "valid_from": "2026-01-01T00:00:00Z",
        "source": "grid operator 2026",
    }
    response = client.post("/api/v1/factors", json=later, headers=OPERATOR)
    assert response.status_code == 409
    assert f"version {second['id']}" in response.json()["detail"]
    closed = client.post(
        f"/api/v1/factors/{second['id']}/close",
        json={"valid_to": "2026-01-01T00:00:00Z"},
        headers=OPERATOR,
    )
    assert closed.status_code == 200
    assert closed.json()["valid_to"].startswith("2026-01-01")
    again = client.post(
        f"/api/v1/factors/{second['id']}/close",
        json={"valid_to": "2026-06-01T00:00:00Z"},
        headers=OPERATOR,
    )
    assert again.status_code == 409
    assert client.post("/api/v1/factors", json=later, headers=OPERATOR).status_code == 201
    # A market-based version of the same region is another key; so is the project's own.
    add_factor(
        client,
        OPERATOR,
        region=code,
        basis="market",
        intensity="50 gCO2e/kWh",
        valid_from="2024-01-01T00:00:00Z",
    )
    own = add_factor(
        client,
        project.admin,
        region=code,
        intensity="10 gCO2e/kWh",
        valid_from="2024-01-01T00:00:00Z",
    )
    assert own["shared"] is False
    # A project cannot close a shared version (it does not find it) nor the operator the project's.
    body = {"valid_to": "2030-01-01T00:00:00Z"}
    assert (
        client.post(
            f"/api/v1/factors/{first['id']}/close", json=body, headers=project.admin
        ).status_code
        == 404
    )
    assert (
        client.post(f"/api/v1/factors/{own['id']}/close", json=body, headers=OPERATOR).status_code
        == 404
    )


def test_lookup_prefers_the_projects_version_then_shared_then_built_in(
    client: TestClient, project: Project, other: Project
) -> None:
    code = region()
    add_factor(
        client, OPERATOR, region=code, intensity="300 gCO2e/kWh", valid_from="2025-01-01T00:00:00Z"
    )
    add_factor(
        client,
        project.admin,
        region=code,
        intensity="20 gCO2e/kWh",
        valid_from="2025-06-01T00:00:00Z",
    )

    def lookup(who: Project, at: str, where: str = code) -> object:
        response = client.get(
            "/api/v1/factors/lookup", params={"region": where, "at": at}, headers=who.read
        )
        return (
            response.json().get("intensity_g_per_kwh")
            if response.status_code == 200
            else response.status_code
        )

    assert lookup(project, "2025-07-01T00:00:00Z") == 20.0
    assert lookup(project, "2025-03-01T00:00:00Z") == 300.0  # before the project's version
    assert lookup(other, "2025-07-01T00:00:00Z") == 300.0  # another project sees only shared
    assert lookup(project, "2024-03-01T00:00:00Z") == 404  # no built-in for a made-up region
    assert lookup(project, "2024-03-01T00:00:00Z", "de") == 381.0  # built-in Ember 2023
    builtin = client.get("/api/v1/factors", params={"region": "WORLD"}, headers=project.read).json()
    world = builtin["builtin"][0]
    assert (world["id"], world["builtin"], world["intensity_g_per_kwh"], world["year"]) == (
        None,
        True,
        481.0,
        2023,
    )
    assert "Ember" in world["source"]
    market = client.get(
        "/api/v1/factors/lookup", params={"region": "DE", "basis": "market"}, headers=project.read
    )
    assert market.status_code == 404  # no built-in market factor: never guessed
    listed = client.get("/api/v1/factors", params={"region": code}, headers=other.read).json()
    assert [f["intensity_g_per_kwh"] for f in listed["items"]] == [300.0]


def test_adding_a_version_never_changes_a_ledgered_figure(
    client: TestClient, project: Project
) -> None:
    code = region()
    configure(client, project, code)
    v1 = add_factor(
        client,
        project.admin,
        region=code,
        intensity="400 gCO2e/kWh",
        valid_from="2025-01-01T00:00:00Z",
    )
    october = datetime(2025, 10, 10, tzinfo=UTC)
    run_a = metered_run(client, project, chunks=1, ended_at=october)  # 0.1 kWh × 400 = 40 g
    rollup_before = client.get("/api/v1/rollups", headers=project.read).json()

    # The grid operator revises its figure for the whole of the year: close v1, add v2.
    client.post(
        f"/api/v1/factors/{v1['id']}/close",
        json={"valid_to": "2025-03-01T00:00:00Z"},
        headers=project.admin,
    )
    v2 = add_factor(
        client,
        project.admin,
        region=code,
        intensity="600 gCO2e/kWh",
        valid_from="2025-03-01T00:00:00Z",
    )
    run_b = metered_run(client, project, chunks=1, ended_at=october)  # 0.1 kWh × 600 = 60 g

    def carbon(run_id: str) -> dict[str, object]:
        return next(
            e
            for e in ledger_items(client, project, run_id=run_id)
            if e["figure"] == "co2e_location"
        )

    assert carbon(run_a)["value_si"] == 40.0
    assert carbon(run_a)["provenance"]["factor"]["id"] == v1["id"]  # type: ignore[index]
    assert carbon(run_b)["value_si"] == 60.0
    assert carbon(run_b)["provenance"]["factor"]["id"] == v2["id"]  # type: ignore[index]
    rows = client.get("/api/v1/rollups", headers=project.read).json()["rows"]
    assert rollup_before["rows"][0]["co2e"]["location_based"]["g"] == 40.0
    assert rows[0]["co2e"]["location_based"]["g"] == 100.0  # 40 (frozen) + 60


def test_tariffs_are_versioned_and_price_facility_energy(
    client: TestClient, project: Project
) -> None:
    code = region()
    configure(client, project, code, pue="hyperscale")
    response = client.post(
        "/api/v1/tariffs",
        json={
            "region": code,
            "price": {"value": 150, "unit": "USD/MWh"},
            "valid_from": "2025-01-01T00:00:00Z",
            "source": "utility schedule B-19",
            "year": 2025,
        },
        headers=project.admin,
    )
    assert response.status_code == 201, response.text
    tariff = response.json()
    assert (tariff["usd_per_kwh"], tariff["price"]) == (0.15, {"value": 150, "unit": "USD/MWh"})
    overlap = client.post(
        "/api/v1/tariffs",
        json={
            "region": code,
            "price": "0.2 USD/kWh",
            "valid_from": "2025-06-01T00:00:00Z",
            "source": "x",
        },
        headers=project.admin,
    )
    assert overlap.status_code == 409
    assert f"version {tariff['id']}" in overlap.json()["detail"]
    run_id = metered_run(client, project, chunks=1, ended_at=datetime(2025, 10, 1, tzinfo=UTC))
    cost = next(
        e for e in ledger_items(client, project, run_id=run_id) if e["figure"] == "energy_cost"
    )
    # 0.1 kWh IT × PUE 1.10 (hyperscale default) × 0.15 USD/kWh = 0.0165 USD
    assert abs(cost["value_si"] - 0.1 * 1.10 * 0.15) < 1e-15
    assert cost["provenance"]["tariff"]["id"] == tariff["id"]
    assert cost["provenance"]["pue"]["name"] == "hyperscale"
    lookup = client.get(
        "/api/v1/tariffs/lookup", params={"at": "2025-02-01T00:00:00Z"}, headers=project.read
    )
    assert lookup.json()["id"] == tariff["id"]


def test_bad_input_names_the_field(client: TestClient, project: Project) -> None:
    base = {
        "region": "DE",
        "basis": "location",
        "intensity": "300 gCO2e/kWh",
        "valid_from": "2025-01-01T00:00:00Z",
        "source": "x",
    }
    for change, field, code in (
        ({"intensity": "300 J"}, "intensity", "dimension_mismatch"),
        ({"intensity": "-3 gCO2e/kWh"}, "intensity", "invalid_input"),
        ({"valid_to": "2024-01-01T00:00:00Z"}, "valid_to", "invalid_input"),
        ({"valid_from": "2025-01-01T00:00:00"}, "valid_from", "invalid_request"),
        ({"basis": "vibes"}, "basis", "invalid_request"),
        ({"region": "D E"}, "region", "invalid_request"),
    ):
        response = client.post("/api/v1/factors", json={**base, **change}, headers=project.admin)
        assert response.status_code == 422, (change, response.text)
        assert (response.json()["field"], response.json()["code"]) == (field, code)
    wrong = client.post(
        "/api/v1/tariffs",
        json={
            "region": "DE",
            "price": "0.1 EUR/kWh",
            "valid_from": "2025-01-01T00:00:00Z",
            "source": "x",
        },
        headers=project.admin,
    )
    assert wrong.status_code == 422
    assert wrong.json()["field"] == "price"
    for pue, field in (
        ("martian", "pue"),
        ({"value": 0.9, "source": "x"}, "pue.measured.value"),
        ({"value": 11, "source": "x"}, "pue.measured.value"),
        ("Hyperscale!", "pue.default"),
    ):
        response = client.put(
            "/api/v1/accounting", json={"region": "DE", "pue": pue}, headers=project.admin
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field, response.json()
    assert client.post("/api/v1/factors", json=base, headers=project.read).status_code == 403


def test_the_region_is_explicit(client: TestClient, project: Project) -> None:
    unset = client.get("/api/v1/accounting", headers=project.read).json()
    assert unset["region"] is None
    assert unset["pue"]["name"] == "none"
    lookup = client.get("/api/v1/factors/lookup", headers=project.read)
    assert lookup.status_code == 422
    assert lookup.json()["field"] == "region"
    body = configure(client, project, "world", pue="typical")
    assert body["region"] == "WORLD"
    assert (body["pue"]["value"], body["pue"]["kind"]) == (1.56, "survey")
    assert (
        client.put("/api/v1/accounting", json={"region": "DE"}, headers=project.read).status_code
        == 403
    )
