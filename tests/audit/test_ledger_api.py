"""The ledger through the API: run figures frozen at a run's end, manual entries, auth."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from tests.support.client import Project, TestClient
from tests.support.ledger import (
    OPERATOR,
    add_factor,
    configure,
    finish_run,
    ledger_items,
    metered_run,
    post_chunks,
    region,
)

OCT = datetime(2025, 10, 10, tzinfo=UTC)


def test_a_finished_run_freezes_its_figures(client: TestClient, project: Project) -> None:
    code = region()
    configure(client, project, code, pue={"value": 1.5, "source": "facility meter 2025"})
    factor = add_factor(
        client, OPERATOR, region=code, intensity="400 gCO2e/kWh", valid_from="2025-01-01T00:00:00Z"
    )
    run_id = metered_run(client, project, chunks=2, ended_at=OCT, tokens=1_000_000)

    entries = ledger_items(client, project, run_id=run_id)
    by_figure = {e["figure"]: e for e in entries}
    # 2 chunks × 500 W × 720 s = 720 000 J = 0.2 kWh; × PUE 1.5 = 0.3 kWh; × 400 g/kWh = 120 g.
    assert set(by_figure) == {"it_energy", "facility_energy", "co2e_location", "tokens"}
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    it = by_figure["it_energy"]
    assert (it["kind"], it["source"], it["value_si"], it["unit_si"]) == (
        "energy",
        "measured",
        720_000.0,
        "J",
    )
    measurement = it["provenance"]["measurement"]
    assert measurement["methods"] == {"counter": {"devices": 1, "energy_j": 720_000}}
    assert measurement["band_low_j"] < 720_000 < measurement["band_high_j"]
    assert it["accounted_at"].startswith("2025-10-10T00:00:00")
    assert by_figure["facility_energy"]["value_si"] == 1_080_000.0
    assert by_figure["facility_energy"]["provenance"]["pue"]["source"] == "facility meter 2025"
    carbon = by_figure["co2e_location"]
    assert carbon["value_si"] == 120.0
    assert carbon["provenance"]["inputs"] == {"it_energy": 1, "facility_energy": 2}
    used = carbon["provenance"]["factor"]
    assert (used["id"], used["value"], used["unit"], used["source"], used["year"]) == (
        factor["id"],
        400,
        "gCO2e/kWh",
        "test grid operator",
        2025,
    )
    assert by_figure["tokens"]["value_si"] == 1_000_000
    # No market-based factor and no tariff: those figures are simply absent, never guessed.
    assert "co2e_market" not in by_figure
    assert "energy_cost" not in by_figure

    # Ending it again changes nothing.
    finish_run(client, project, run_id, OCT)
    assert len(ledger_items(client, project)) == 4


def test_late_chunks_supersede_the_figures_on_the_next_finish(
    client: TestClient, project: Project
) -> None:
    run_id = metered_run(client, project, chunks=1, ended_at=OCT)
    first = ledger_items(client, project, run_id=run_id)
    assert [e["figure"] for e in first] == ["it_energy", "facility_energy"]

    post_chunks(client, project, run_id, range(1, 3))  # another node's chunks arrive late
    finish_run(client, project, run_id, OCT)
    entries = ledger_items(client, project, run_id=run_id)
    assert len(entries) == 4
    old, new = entries[0], entries[2]
    assert (old["superseded_by"], new["provenance"]["supersedes"]) == (3, 1)
    assert new["value_si"] == 3 * 360_000.0
    assert "changed" in new["provenance"]["reason"]


def test_a_run_without_a_region_gets_energy_only(client: TestClient, project: Project) -> None:
    run_id = metered_run(client, project, chunks=1, ended_at=OCT)
    figures = {e["figure"]: e for e in ledger_items(client, project, run_id=run_id)}
    assert set(figures) == {"it_energy", "facility_energy"}
    pue = figures["facility_energy"]["provenance"]["pue"]
    assert (pue["name"], pue["value"], pue["kind"]) == ("none", 1.0, "definition")


def test_a_run_without_measurements_appends_nothing(client: TestClient, project: Project) -> None:
    run_id = str(uuid.uuid4())
    response = client.put(f"/api/v1/runs/{run_id}", json={"name": "x"}, headers=project.ingest)
    assert response.status_code == 201
    assert (
        client.post(f"/api/v1/runs/{run_id}/fail", json={}, headers=project.ingest).status_code
        == 200
    )
    assert ledger_items(client, project) == []


def test_manual_entries_are_unit_checked(client: TestClient, project: Project) -> None:
    def post(body: dict[str, Any]) -> Any:
        return client.post("/api/v1/ledger", json=body, headers=project.admin)

    ok = post({"figure": "embodied", "quantity": "1.2 tCO2e", "reference": "Dell R760 LCA"})
    assert ok.status_code == 201, ok.text
    entry = ok.json()
    assert (entry["kind"], entry["value_si"], entry["unit_si"]) == ("carbon", 1.2e6, "gCO2e")
    assert entry["value"] == {"value": 1.2, "unit": "tCO2e"}
    assert entry["provenance"]["reference"] == "Dell R760 LCA"
    assert entry["provenance"]["recorded_by"]["token_id"] == project.token_ids["admin"]

    wrong = post({"figure": "embodied", "quantity": {"value": 3.6, "unit": "MJ"}, "reference": "x"})
    assert wrong.status_code == 422
    body = wrong.json()
    assert body["field"] == "quantity"
    assert body["code"] == "dimension_mismatch"
    assert "[emissions]" in body["detail"]
    assert "[mass] * [length] ** 2 / [time] ** 2" in body["detail"]

    energy = post(
        {"figure": "it_energy", "quantity": {"value": 3.6, "unit": "MJ"}, "reference": "x"}
    )
    assert energy.status_code == 201
    assert energy.json()["value_si"] == 3.6e6

    for bad, field in (
        ({"figure": "joy", "quantity": "1 J", "reference": "x"}, "figure"),
        ({"figure": "offset", "quantity": "-1 kgCO2e", "reference": "x"}, "quantity"),
        ({"figure": "offset", "quantity": "1 kgCO2e"}, "reference"),
        ({"figure": "offset", "quantity": "1 parsec", "reference": "x"}, "quantity"),
        (
            {
                "figure": "offset",
                "quantity": "1 kgCO2e",
                "reference": "x",
                "at": "2999-01-01T00:00:00Z",
            },
            "at",
        ),
        (
            {
                "figure": "offset",
                "quantity": "1 kgCO2e",
                "reference": "x",
                "at": "2025-01-01T00:00:00",
            },
            "at",
        ),
    ):
        response = post(bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["field"] == field, (bad, response.json())


def test_corrections_are_new_entries_that_supersede(client: TestClient, project: Project) -> None:
    run_id = metered_run(client, project, chunks=1, ended_at=OCT)
    it = ledger_items(client, project, run_id=run_id, figure="it_energy")[0]

    def post(body: dict[str, Any]) -> Any:
        return client.post("/api/v1/ledger", json=body, headers=project.admin)

    fix = {
        "figure": "it_energy",
        "quantity": "0.11 kWh",
        "run_id": run_id,
        "supersedes": it["seq"],
        "source": "measured",
        "reference": "PDU readout, rack 7",
        "note": "GPU counter under-read after a driver reload",
    }
    corrected = post(fix)
    assert corrected.status_code == 201, corrected.text
    assert corrected.json()["accounted_at"] == it["accounted_at"]  # same period as the original
    assert (
        ledger_items(client, project, run_id=run_id, figure="it_energy")[0]["superseded_by"]
        == (corrected.json()["seq"])
    )
    again = post(fix)
    assert again.status_code == 409
    assert again.json()["field"] == "supersedes"
    assert f"superseded by entry {corrected.json()['seq']}" in again.json()["detail"]
    other_figure = post({**fix, "figure": "facility_energy", "supersedes": corrected.json()["seq"]})
    assert other_figure.status_code == 422
    assert other_figure.json()["field"] == "supersedes"
    missing = post({**fix, "supersedes": 10_000})
    assert missing.status_code == 404


def test_scopes_and_projects_are_enforced(
    client: TestClient, project: Project, other: Project
) -> None:
    body = {"figure": "offset", "quantity": "1 kgCO2e", "reference": "Gold Standard #1"}
    for headers in (project.read, project.ingest):
        assert client.post("/api/v1/ledger", json=body, headers=headers).status_code == 403
    assert client.post("/api/v1/ledger", json=body, headers=OPERATOR).status_code == 403
    assert client.post("/api/v1/ledger", json=body, headers=project.admin).status_code == 201
    assert client.get("/api/v1/ledger", headers=project.ingest).status_code == 403
    assert client.get("/api/v1/ledger").status_code == 401
    assert ledger_items(client, other) == []
    assert client.get("/api/v1/ledger/1", headers=other.read).status_code == 404
    assert client.get("/api/v1/ledger/1", headers=project.read).json()["figure"] == "offset"
    # Another project's run cannot be named.
    run_id = metered_run(client, other, chunks=1, ended_at=OCT)
    response = client.post("/api/v1/ledger", json={**body, "run_id": run_id}, headers=project.admin)
    assert response.status_code == 404
    for path in ("/api/v1/rollups", "/api/v1/audit/export"):
        assert client.get(path, headers=project.ingest).status_code == 403
    assert client.get("/api/v1/audit/verify", headers=project.ingest).status_code == 403
    assert client.get("/api/v1/audit/verify", headers=project.every).status_code == 200


def test_the_ledger_pages_by_seq(client: TestClient, project: Project) -> None:
    for i in range(5):
        response = client.post(
            "/api/v1/ledger",
            json={"figure": "offset", "quantity": f"{i + 1} kgCO2e", "reference": "cert"},
            headers=project.admin,
        )
        assert response.status_code == 201
    page = client.get("/api/v1/ledger", params={"limit": 2}, headers=project.read).json()
    assert [e["seq"] for e in page["items"]] == [1, 2]
    assert page["next_after"] == 2
    page = client.get(
        "/api/v1/ledger", params={"limit": 3, "after": 2}, headers=project.read
    ).json()
    assert [e["seq"] for e in page["items"]] == [3, 4, 5]
    assert page["next_after"] is None


def test_the_api_names_exactly_the_ledgers_figures(client: TestClient) -> None:
    from typing import get_args

    from thermoledger.db.ledger import FIGURES
    from thermoledger.service.ledger_schemas import FigureName

    assert set(get_args(FigureName)) == set(FIGURES)
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/ledger", "/api/v1/factors", "/api/v1/rollups", "/api/v1/audit/export"):
        assert path in schema["paths"]
